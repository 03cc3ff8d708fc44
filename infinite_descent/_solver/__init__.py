"""The solver: the SNR configuration and its pieces (`_snr`), the linear solvers of the damped
system (`_linear`), and the one bounded loop every entry point runs (`_iterate`)."""
