"""Many small independent fits, one per pixel: ``jax.vmap`` over ``idn.least_squares``.

    python -m benchmarks.many_fits [--out results] [--fits 100000] [--batch 1000]
                                   [--scipy-sample 1000] [--max-steps 200] [--quick]

The problem, as in fluorescence-lifetime imaging (FLIM): ``--fits`` decays
``y(t) = a1 exp(-t / tau1) + a2 exp(-t / tau2) + c`` at 256 times on ``[0, 10]``, with
``tau1 ~ U(0.3, 1)``, ``tau2 ~ U(2, 5)``, ``a1 + a2 = 1000`` counts at the peak split by
``f ~ U(0.3, 0.7)``, and a background ``c ~ U(5, 20)``; the data are Poisson counts with that
mean (numpy's generator, seed 0). Each fit minimises the weighted sum of squares
``sum_t ((model(t) - y(t)) / sigma_t)^2`` with ``sigma_t = sqrt(max(y(t), 1))`` (Neyman's
chi-square, the usual least-squares weighting of counts); the parameters are ``a1, a2, c``
and the log-lifetimes ``log tau1, log tau2``, from one common start read off the data:
``tau = 0.5, 3``, ``a1 = a2 = y(0) / 2``, ``c = 0``. A fit succeeds when both fitted lifetimes
(sorted) are within 5% of the truth. At these counts the noise alone puts about two thirds of
the exact minimisers outside 5% (measured on 2000 decays: the median error of ``tau1`` is about
5.5% even with the true variances as weights, and every fit of the noise-free means lands on
the truth), so the fraction is the data's as much as the method's; what matters is that the
methods agree, which ``= scipy`` reports (lifetimes equal to scipy's to 1e-4 on its sample),
and ``chi2 <= scipy`` (the weighted sum of squares at most scipy's, to a relative 1e-9).

Methods, all on the same data and starts, float64:

- ``idn.least_squares`` under ``jax.jit(jax.vmap(...))`` over batches of ``--batch`` fits,
  with its default tolerances, with ``rtol=1e-8``, and with ``geodesic=False`` (under
  ``vmap`` the ``"auto"`` geodesic step's ``lax.cond`` becomes a select, so every lane pays
  for the acceleration on every iteration);
- ``optimistix.least_squares`` with ``LevenbergMarquardt`` under the same ``jax.vmap`` and
  batches, ``rtol = atol = 1e-12`` (the harness's setting) and ``1e-8``;
- ``idn.least_squares(..., batched=True)``: all fits in one call, a pool of ``--batch``
  vmapped lanes run 16 inner iterations at a time, a finished fit's lane taken by the next
  fit waiting (with the default geodesic setting and with ``geodesic=False``); compiled on
  the first ``2 --batch`` fits, then timed on all; no per-batch lane utilisation (nan);
- scipy's ``curve_fit`` (``method="lm"``, MINPACK, default tolerances ``1.49e-8``) in a Python
  loop, with the analytic Jacobian (``jac=``) and without (finite differences, the default
  call), on the first ``--scipy-sample`` fits only; its fits per second are extrapolated to
  all ``--fits`` (a loop's rate does not depend on how many it runs).

Batches of 1000 by default, not 10,000: on a 2-core CPU an inner iteration cost about 9 us
of CPU time per lane at 1000 lanes and 17 us at 10,000 (ours; a bare vmapped LM loop 4.5 and
12 us: the larger batch's arrays leave the cache), and a lane that never converges holds up
its whole batch (below). Every JAX method gets ``--max-steps`` iterations and is compiled and
warmed up on the first batch; then every batch is timed (``jax.block_until_ready``; wall and
process CPU time). A vmapped while loop runs until its slowest lane finishes, so besides fits
per second each batch's lane utilisation is reported: the lanes' iterations summed, over the
batch size times the slowest lane's (1: every lane worked every iteration). Reported per
method: fits per second (wall and CPU) after compilation, the success fraction (within 5%, and
within 10%; for the JAX methods also on the scipy sample), agreement with scipy, the fraction
flagged converged, median and maximum iterations, passes over the data, lane utilisation, and
ours' speed over each. Prints a table and writes ``OUT/many_fits.json`` (with each batch's
time, utilisation and slowest lane, and each method's histogram of iterations).
"""

from __future__ import annotations

import os
import time

from benchmarks._common import machine, parser, print_table, write_json

NUM_TIMES = 256
T_MAX = 10.0
OURS = "idn.least_squares"
OURS_LOOSE = "idn.least_squares, rtol=1e-8"
OURS_FLAT = "idn.least_squares, geodesic=False"
OURS_POOL = "idn.least_squares, batched=True"
OURS_POOL_FLAT = "idn.least_squares, batched=True, geodesic=False"
OPTX = "optimistix LM, rtol=atol=1e-12"
OPTX_LOOSE = "optimistix LM, rtol=atol=1e-8"
SCIPY_JAC = "scipy curve_fit, analytic jac"
SCIPY_FD = "scipy curve_fit, finite differences"


def simulate(num: int, seed: int = 0):
    """``(t, counts, truth)``: Poisson counts of ``num`` two-exponential decays."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, T_MAX, NUM_TIMES)
    tau1 = rng.uniform(0.3, 1.0, num)
    tau2 = rng.uniform(2.0, 5.0, num)
    frac = rng.uniform(0.3, 0.7, num)
    a1, a2 = 1000.0 * frac, 1000.0 * (1 - frac)
    c = rng.uniform(5.0, 20.0, num)
    mean = (a1[:, None] * np.exp(-t / tau1[:, None]) + a2[:, None] * np.exp(-t / tau2[:, None])
            + c[:, None])
    counts = rng.poisson(mean).astype(np.float64)
    truth = {"a1": a1, "a2": a2, "c": c, "tau1": tau1, "tau2": tau2}
    return t, counts, truth


def starts(counts):
    """The common start read off the data: ``tau = 0.5, 3``, ``a1 = a2 = y(0) / 2``, ``c = 0``."""
    import numpy as np

    n = counts.shape[0]
    half = counts[:, 0] / 2
    return {"a": np.stack([half, half], axis=1), "c": np.zeros(n),
            "log_tau": np.tile(np.log([0.5, 3.0]), (n, 1))}


def lifetimes_ok(tau_fit, truth, rel: float = 0.05):
    """Both sorted fitted lifetimes within ``rel`` of the truth (NaN counts as a miss)."""
    import numpy as np

    tau = np.sort(np.asarray(tau_fit), axis=1)
    err1 = np.abs(tau[:, 0] / truth["tau1"] - 1)
    err2 = np.abs(tau[:, 1] / truth["tau2"] - 1)
    return (err1 < rel) & (err2 < rel)


def _model(p, t):
    import jax.numpy as jnp

    tau = jnp.exp(p["log_tau"])
    return p["a"][0] * jnp.exp(-t / tau[0]) + p["a"][1] * jnp.exp(-t / tau[1]) + p["c"]


def _jax_methods(t, max_steps: int):
    """``{name: batch_fit}``; ``batch_fit(p0, counts, inv_sigma)`` returns
    ``(log_tau (B, 2), steps (B,), passes (B,) or None, converged (B,))``."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optimistix as optx

    import infinite_descent as idn

    t = jnp.asarray(t)

    def residuals(p, args):
        y, inv_sigma = args
        return (_model(p, t) - y) * inv_sigma

    def chi2(p, y, inv_sigma):
        r = residuals(p, (y, inv_sigma))
        return r @ r

    def ours(**options):
        def one(p0, y, inv_sigma):
            p, info = idn.least_squares(residuals, p0, (y, inv_sigma), max_steps=max_steps,
                                        throw=False, **options)
            return (p["log_tau"], info.inner_steps, info.data_passes,
                    info.result == idn.RESULTS.successful, chi2(p, y, inv_sigma))

        return jax.jit(jax.vmap(one))

    def theirs(tol):
        solver = optx.LevenbergMarquardt(rtol=tol, atol=tol)

        def one(p0, y, inv_sigma):
            sol = optx.least_squares(residuals, solver, p0, (y, inv_sigma), max_steps=max_steps,
                                     throw=False)
            return (sol.value["log_tau"], sol.stats["num_steps"],
                    sol.stats["num_steps"],  # one residual-and-Jacobian evaluation per step
                    sol.result == optx.RESULTS.successful, chi2(sol.value, y, inv_sigma))

        return eqx.filter_jit(jax.vmap(one))

    return {OURS: ours(), OURS_LOOSE: ours(rtol=1e-8), OURS_FLAT: ours(geodesic=False),
            OPTX: theirs(1e-12), OPTX_LOOSE: theirs(1e-8)}


def _run_jax(fit, counts, batch: int, progress: str):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm.auto import tqdm

    p0 = starts(counts)
    inv_sigma = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    n = counts.shape[0]
    chunks = [slice(i, min(i + batch, n)) for i in range(0, n, batch)]

    def call(sl):
        return fit({k: jnp.asarray(v[sl]) for k, v in p0.items()}, jnp.asarray(counts[sl]),
                   jnp.asarray(inv_sigma[sl]))

    t0 = time.perf_counter()
    jax.block_until_ready(call(chunks[0]))  # compilation (every batch but a short last one)
    compile_s = time.perf_counter() - t0
    outs, seconds, cpu, compiled = [], [], [], {chunks[0].stop - chunks[0].start}
    for sl in tqdm(chunks, desc=progress, leave=False):
        if sl.stop - sl.start not in compiled:  # a short last batch compiles once more
            jax.block_until_ready(call(sl))
            compiled.add(sl.stop - sl.start)
        start, start_cpu = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(call(sl))
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        outs.append([np.asarray(a) for a in out])
    log_tau, steps, passes, converged, chi2 = (np.concatenate([o[i] for o in outs])
                                               for i in range(5))
    utilisation = [float(np.sum(o[1]) / (len(o[1]) * max(int(np.max(o[1])), 1))) for o in outs]
    return {"tau": np.exp(log_tau), "chi2": chi2, "steps": steps, "passes": passes,
            "converged": converged,
            "seconds": float(np.sum(seconds)), "cpu_seconds": float(np.sum(cpu)),
            "batch_seconds": seconds,
            "compile_and_first_batch_s": compile_s, "lane_utilisation": utilisation,
            "slowest_lane_steps": [int(np.max(o[1])) for o in outs]}


def _run_pool(t, counts, batch: int, max_steps: int, **options):
    """All fits in one ``least_squares(batched=True)`` call: a pool of ``batch`` lanes, a
    finished fit's lane taken by the next. Compiled and warmed up on the first ``2 batch``
    fits (the full width and every narrower one), then timed on all."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import infinite_descent as idn

    tj = jnp.asarray(t)

    def residuals(p, args):
        y, inv_sigma = args
        return (_model(p, tj) - y) * inv_sigma

    p0 = starts(counts)
    inv_sigma = 1.0 / np.sqrt(np.maximum(counts, 1.0))

    def call(n):
        return idn.least_squares(
            residuals, {k: jnp.asarray(v[:n]) for k, v in p0.items()},
            (jnp.asarray(counts[:n]), jnp.asarray(inv_sigma[:n])), batched=True,
            batch_size=batch, max_steps=max_steps, throw=False, **options)

    n = counts.shape[0]
    t0 = time.perf_counter()
    jax.block_until_ready(call(min(n, 2 * batch)))
    compile_s = time.perf_counter() - t0
    start, start_cpu = time.perf_counter(), time.process_time()
    fit, info = jax.block_until_ready(call(n))
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    r = jax.vmap(residuals)(fit, (jnp.asarray(counts), jnp.asarray(inv_sigma)))
    return {"tau": np.exp(np.asarray(fit["log_tau"])), "chi2": np.asarray(jnp.sum(r * r, 1)),
            "steps": np.asarray(info.inner_steps), "passes": np.asarray(info.data_passes),
            "converged": np.asarray(info.converged), "seconds": seconds, "cpu_seconds": cpu,
            "compile_and_first_batch_s": compile_s, "lane_utilisation": [float("nan")]}


def _run_scipy(t, counts, jac: bool):
    import warnings

    import numpy as np
    from scipy.optimize import OptimizeWarning, curve_fit

    def f(t, a1, a2, c, s1, s2):
        return a1 * np.exp(-t / np.exp(s1)) + a2 * np.exp(-t / np.exp(s2)) + c

    def jacobian(t, a1, a2, c, s1, s2):
        tau1, tau2 = np.exp(s1), np.exp(s2)
        e1, e2 = np.exp(-t / tau1), np.exp(-t / tau2)
        return np.stack([e1, e2, np.ones_like(t), a1 * e1 * t / tau1, a2 * e2 * t / tau2],
                        axis=1)

    p0 = starts(counts)
    taus, chi2, nfev, ok = [], [], [], []
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in range(counts.shape[0]):
        y = counts[i]
        guess = [p0["a"][i, 0], p0["a"][i, 1], p0["c"][i], *p0["log_tau"][i]]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, _, info, _, _ = curve_fit(
                    f, t, y, p0=guess, sigma=np.sqrt(np.maximum(y, 1.0)), absolute_sigma=True,
                    method="lm", jac=jacobian if jac else None, full_output=True)
            taus.append(np.exp(popt[3:]))
            chi2.append(float(np.sum(((f(t, *popt) - y) / np.sqrt(np.maximum(y, 1.0))) ** 2)))
            # Passes over the data: residual evaluations plus Jacobian evaluations (MINPACK's
            # finite differences are counted in nfev).
            nfev.append(int(info["nfev"]) + int(info.get("njev", 0) or 0))
            ok.append(True)
        except RuntimeError:  # MINPACK gave up (maxfev)
            taus.append([np.nan, np.nan])
            chi2.append(np.nan)
            nfev.append(-1)
            ok.append(False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"tau": np.asarray(taus), "chi2": np.asarray(chi2), "nfev": np.asarray(nfev),
            "converged": np.asarray(ok),
            "seconds": seconds, "cpu_seconds": cpu}


def main() -> None:
    import numpy as np

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--fits", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--scipy-sample", type=int, default=1000)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, for a smoke test (200 fits, batches of 100, 20 for scipy)")
    args = p.parse_args()
    if args.quick:
        args.fits, args.batch, args.scipy_sample = 200, 100, 20
    began = time.perf_counter()
    load_at_start = os.getloadavg()
    t, counts, truth = simulate(args.fits)
    sample = slice(0, min(args.scipy_sample, args.fits))
    truth_sample = {k: v[sample] for k, v in truth.items()}
    print(f"{args.fits} two-exponential decays, {NUM_TIMES} times, batches of {args.batch}; "
          f"scipy on the first {sample.stop}", flush=True)
    rows, runs = [], {}
    methods = dict(_jax_methods(t, args.max_steps))
    methods[OURS_POOL] = {}
    methods[OURS_POOL_FLAT] = {"geodesic": False}
    for name, fit in methods.items():
        if isinstance(fit, dict):
            run = _run_pool(t, counts, args.batch, args.max_steps, **fit)
        else:
            run = _run_jax(fit, counts, args.batch, name)
        runs[name] = run
        ok = lifetimes_ok(run["tau"], truth)
        rows.append({
            "method": name, "fits": args.fits, "seconds": run["seconds"],
            "fits_per_second": args.fits / run["seconds"], "cpu_seconds": run["cpu_seconds"],
            "fits_per_cpu_second": args.fits / run["cpu_seconds"], "extrapolated": False,
            "success_fraction": float(np.mean(ok)),
            "success_fraction_10pct": float(np.mean(lifetimes_ok(run["tau"], truth, 0.10))),
            "success_fraction_on_scipy_sample": float(np.mean(ok[sample])),
            "converged_fraction": float(np.mean(run["converged"])),
            "median_iterations": float(np.median(run["steps"])),
            "mean_iterations": float(np.mean(run["steps"])),
            "max_iterations": int(np.max(run["steps"])),
            "median_passes": float(np.median(run["passes"])),
            "lane_utilisation": float(np.mean(run["lane_utilisation"])),  # nan: the pool
            "compile_and_first_batch_s": run["compile_and_first_batch_s"],
        })
        print(f"  {name}: {run['seconds']:.1f} s, {rows[-1]['fits_per_second']:.0f} fits/s, "
              f"success {rows[-1]['success_fraction']:.3f}", flush=True)
    for name, jac in ((SCIPY_JAC, True), (SCIPY_FD, False)):
        run = _run_scipy(t, counts[sample], jac)
        runs[name] = run
        ok = lifetimes_ok(run["tau"], truth_sample)
        rate = sample.stop / run["seconds"]
        rows.append({
            "method": name, "fits": sample.stop, "seconds": run["seconds"],
            "fits_per_second": rate, "cpu_seconds": run["cpu_seconds"],
            "fits_per_cpu_second": sample.stop / run["cpu_seconds"], "extrapolated": True,
            "extrapolated_seconds_for_all": args.fits / rate,
            "success_fraction": float(np.mean(ok)),
            "success_fraction_10pct": float(np.mean(lifetimes_ok(run["tau"], truth_sample, 0.10))),
            "success_fraction_on_scipy_sample": float(np.mean(ok)),
            "converged_fraction": float(np.mean(run["converged"])),
            "median_passes": float(np.median(run["nfev"][run["nfev"] > 0]))
            if np.any(run["nfev"] > 0) else None,
        })
        print(f"  {name}: {run['seconds']:.1f} s for {sample.stop}, {rate:.0f} fits/s", flush=True)
    ours = rows[0]
    for r in rows:
        r["speed_ratio_of_ours"] = ours["fits_per_second"] / r["fits_per_second"]
        r["cpu_speed_ratio_of_ours"] = ours["fits_per_cpu_second"] / r["fits_per_cpu_second"]
    # Do the methods find the same minimiser? Fraction of the scipy sample where a method's
    # lifetimes agree with scipy's (analytic Jacobian) to 1e-4.
    reference = np.sort(runs[SCIPY_JAC]["tau"], axis=1)
    for r in rows:
        tau = np.sort(np.asarray(runs[r["method"]]["tau"])[sample], axis=1)
        with np.errstate(invalid="ignore"):
            r["agrees_with_scipy"] = float(np.mean(np.all(np.abs(tau / reference - 1) < 1e-4,
                                                          axis=1)))
    # And is it as good a minimiser? Fraction of the sample where a method's chi-square is at
    # most scipy's (to a relative 1e-9), and the median relative excess over scipy's.
    reference = runs[SCIPY_JAC]["chi2"]
    for r in rows:
        chi2 = np.asarray(runs[r["method"]]["chi2"])[sample]
        with np.errstate(invalid="ignore"):
            r["chi2_at_most_scipy"] = float(np.mean(chi2 <= reference * (1 + 1e-9)))
            r["median_chi2_excess_over_scipy"] = float(np.nanmedian(chi2 / reference - 1))
    print()
    print_table(rows, [
        ("method", "method"), ("fits", "fits"), ("seconds", "s"),
        ("fits_per_second", "fits/s"), ("speed_ratio_of_ours", "ours x"),
        ("fits_per_cpu_second", "fits/cpu s"), ("cpu_speed_ratio_of_ours", "ours x (cpu)"),
        ("success_fraction", "success"), ("success_fraction_10pct", "within 10%"),
        ("success_fraction_on_scipy_sample", "on sample"),
        ("agrees_with_scipy", "= scipy"), ("chi2_at_most_scipy", "chi2 <= scipy"),
        ("converged_fraction", "converged"),
        ("median_iterations", "median it"), ("max_iterations", "max it"),
        ("median_passes", "passes"), ("lane_utilisation", "lane use"),
    ])
    by = {r["method"]: r for r in rows}
    pool = by[OURS_POOL]
    goals = {
        "pool_over_scipy_analytic_jac": pool["fits_per_second"]
        / by[SCIPY_JAC]["fits_per_second"],
        "pool_over_optimistix_1e-12": pool["fits_per_second"] / by[OPTX]["fits_per_second"],
        "pool_over_vmap": pool["fits_per_second"] / ours["fits_per_second"],
        "ours_over_scipy_analytic_jac": ours["fits_per_second"]
        / by[SCIPY_JAC]["fits_per_second"],
        "ours_over_scipy_finite_differences": ours["fits_per_second"]
        / by[SCIPY_FD]["fits_per_second"],
        "ours_over_optimistix_1e-12": ours["fits_per_second"] / by[OPTX]["fits_per_second"],
        "ours_rtol_1e-8_over_optimistix_1e-8": by[OURS_LOOSE]["fits_per_second"]
        / by[OPTX_LOOSE]["fits_per_second"],
    }
    best = max(ours["fits_per_second"], pool["fits_per_second"])
    goals["at_least_100x_scipy"] = bool(best / max(by[SCIPY_JAC]["fits_per_second"],
                                                   by[SCIPY_FD]["fits_per_second"]) >= 100)
    goals["at_least_3x_optimistix"] = bool(best / by[OPTX]["fits_per_second"] >= 3
                                           and goals["ours_rtol_1e-8_over_optimistix_1e-8"] >= 3)
    # Same success: ours against optimistix on every fit, against scipy on its sample.
    goals["success_gap_to_optimistix"] = ours["success_fraction"] - max(
        by[OPTX]["success_fraction"], by[OPTX_LOOSE]["success_fraction"])
    goals["success_gap_to_scipy_on_sample"] = ours["success_fraction_on_scipy_sample"] - max(
        by[SCIPY_JAC]["success_fraction"], by[SCIPY_FD]["success_fraction"])
    print(f"\ngoals: {goals}")
    per_batch = {name: {"batch_seconds": run["batch_seconds"],
                        "lane_utilisation": run["lane_utilisation"],
                        "slowest_lane_steps": run["slowest_lane_steps"]}
                 for name, run in runs.items() if "batch_seconds" in run}
    iterations = {name: np.bincount(np.asarray(run["steps"], int)).tolist()
                  for name, run in runs.items() if "steps" in run}
    path = write_json(args.out, "many_fits.json", {
        "machine": machine(), "load_average_at_start": load_at_start,
        "load_average_now": os.getloadavg(), "quick": args.quick, "fits": args.fits,
        "batch": args.batch, "scipy_sample": sample.stop, "max_steps": args.max_steps,
        "num_times": NUM_TIMES, "t_max": T_MAX, "results": rows, "goals": goals,
        "per_batch": per_batch, "iteration_histogram": iterations,
        "seconds": time.perf_counter() - began,
    })
    print(f"\nwrote {path} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
