"""The solver: the SNR configuration, its pieces and the one bounded loop every entry point
runs (`_snr`), and the linear solvers of the damped system (`_linear`)."""
