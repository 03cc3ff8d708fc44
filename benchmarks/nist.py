"""The whole NIST StRD nonlinear-regression suite: 27 certified problems from both starts.

    python -m benchmarks.nist [--out results] [--only NAME[,NAME]] [--max-steps 10000]
                              [--scipy-tol 1e-15|default] [--quick]

Each of NIST's 27 problems (``tests/data/nist-strd/*.dat``, read by
`infinite_descent.bench.nist`) from its two certified starts, 54 runs per method, all in one
process, float64, the analytic Jacobian where a method takes one:

- ``idn.least_squares`` (default tolerances, ``max_steps``);
- ``optimistix.LevenbergMarquardt(rtol=1e-12, atol=1e-12)`` (``max_steps``, throw=False);
- scipy ``least_squares(method="lm")`` and ``(method="trf")`` with
  ``xtol = ftol = gtol = 1e-15`` (``--scipy-tol default``: scipy's own 1e-8) and
  ``max_nfev = max_steps``; residuals and Jacobian (``jax.jacfwd``) jitted.

Scored as NIST scores: the log relative error ``LRE = -log10(|b - b*| / |b*|)`` (correct
significant digits, capped at 11, 0 below one) of every parameter (the table gives the
smallest), of the residual sum of squares (recomputed in float64 from the fitted parameters,
the same code for every method), and, for every method's fit, of ``idn.standard_errors``
against NIST's certified standard deviations. A run certifies when every parameter and the RSS
have ``LRE >= 6`` (and, for ``least_squares``, the standard errors ``LRE >= 4``). Work:
inner iterations for ``least_squares``, steps for optimistix, residual evaluations (``nfev``)
for scipy. Times are after compilation (one warm-up run of the same start), single runs.
Prints a table and writes ``OUT/nist.json``.
"""

from __future__ import annotations

import time

from benchmarks._common import REPO, machine, parser, print_table, write_json

DATA = REPO / "tests" / "data" / "nist-strd"
QUICK = ("Misra1a", "DanWood", "BoxBOD")
METHODS = ("least_squares", "optimistix LM", "scipy lm", "scipy trf")
SHORT = {"least_squares": "ID", "optimistix LM": "optx", "scipy lm": "lm", "scipy trf": "trf"}
PARAMETER_DIGITS, RSS_DIGITS, SE_DIGITS = 6, 6, 4


def _timed(fn, *args):
    """``fn(*args)`` once to compile and warm up, then once timed: ``(out, ms)``."""
    import jax

    jax.block_until_ready(fn(*args))
    began = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, 1e3 * (time.perf_counter() - began)


def _runners(problem, max_steps: int, scipy_tol):
    """``{method: run(start) -> (beta, work, converged, ms)}`` for one problem."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optimistix as optx
    from scipy.optimize import least_squares as scipy_least_squares

    import infinite_descent as idn
    from infinite_descent.bench import nist

    args = nist.data(problem)

    def ours(start):
        def fit(b):
            return idn.least_squares(nist.residual, b, args, max_steps=max_steps, throw=False)

        (beta, info), ms = _timed(fit, start)
        converged = bool(info.result == idn.RESULTS.successful)
        return (np.asarray(beta), int(info.inner_steps), converged, ms,
                {"data_passes": int(info.data_passes),
                 "result": idn.RESULTS[info.result] or "successful"})

    solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-12)

    @jax.jit
    def optx_fit(b):
        sol = optx.least_squares(nist.residual, solver, b, args, max_steps=max_steps,
                                 throw=False)
        return sol.value, sol.stats["num_steps"], sol.result == optx.RESULTS.successful

    def optimistix(start):
        (beta, steps, ok), ms = _timed(optx_fit, start)
        return np.asarray(beta), int(steps), bool(ok), ms, {}

    fun = jax.jit(lambda b: nist.residual(b, args))
    jac = jax.jit(jax.jacfwd(lambda b: nist.residual(b, args)))
    tolerances = {} if scipy_tol is None else dict(xtol=scipy_tol, ftol=scipy_tol,
                                                   gtol=scipy_tol)

    def scipy(method):
        def run(start):
            def f(b):
                return np.asarray(fun(jnp.asarray(b)))

            def j(b):
                return np.asarray(jac(jnp.asarray(b)))

            def fit(b):
                return scipy_least_squares(f, np.asarray(b), jac=j, method=method,
                                           max_nfev=max_steps, **tolerances)

            res, ms = _timed(fit, start)
            return (np.asarray(res.x), int(res.nfev), bool(res.status > 0), ms,
                    {"njev": int(res.njev), "status": int(res.status)})

        return run

    return {"least_squares": ours, "optimistix LM": optimistix, "scipy lm": scipy("lm"),
            "scipy trf": scipy("trf")}


def main() -> None:
    import warnings

    import jax.numpy as jnp
    import numpy as np
    from tqdm.auto import tqdm

    import infinite_descent as idn
    from infinite_descent.bench import nist

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated problem names (e.g. MGH10,Rat43)")
    p.add_argument("--max-steps", type=int, default=10_000,
                   help="inner iterations (least_squares), steps (optimistix), max_nfev (scipy)")
    p.add_argument("--scipy-tol", default="1e-15",
                   help="xtol = ftol = gtol of scipy's least_squares, or 'default' (1e-8)")
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    args = p.parse_args()
    scipy_tol = None if args.scipy_tol == "default" else float(args.scipy_tol)
    names = QUICK if args.quick else nist.NAMES
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    began = time.perf_counter()
    rows = []
    for name in tqdm(names, desc="NIST problems"):
        problem = nist.load(DATA / f"{name}.dat")
        runners = _runners(problem, args.max_steps, scipy_tol)
        for index, start in enumerate(problem.starts, 1):
            row = {"problem": name, "difficulty": problem.difficulty, "start": index,
                   "N": int(problem.y.shape[0]), "M": int(problem.certified.shape[0])}
            for method, run in runners.items():
                with warnings.catch_warnings():
                    # scipy's overflows on the way, and parameters a fit far from the minimum
                    # cannot identify (standard error inf, LRE 0): scored, not printed.
                    warnings.simplefilter("ignore")
                    beta, work, converged, ms, extra = run(jnp.asarray(start))
                    se = np.asarray(idn.standard_errors(nist.residual, jnp.asarray(beta),
                                                        nist.data(problem)))
                key = SHORT[method]
                parameter_lre = nist.lre(beta, problem.certified)
                row.update({
                    f"{key}_params": beta.tolist(),
                    f"{key}_parameter_lre": parameter_lre.tolist(),
                    f"{key}_min_lre": float(parameter_lre.min()),
                    f"{key}_rss_lre": nist.lre(nist.rss(beta, problem), problem.certified_rss),
                    f"{key}_se_lre": float(nist.lre(se, problem.certified_sd).min()),
                    f"{key}_work": work, f"{key}_converged": converged, f"{key}_ms": ms,
                    **{f"{key}_{k}": v for k, v in extra.items()},
                })
                row[f"{key}_certified"] = bool(row[f"{key}_min_lre"] >= PARAMETER_DIGITS
                                               and row[f"{key}_rss_lre"] >= RSS_DIGITS)
            row["ID_se_certified"] = bool(row["ID_se_lre"] >= SE_DIGITS)
            peers = [SHORT[m] for m in METHODS[1:]]
            row["best_peer_min_lre"] = max(row[f"{k}_min_lre"] for k in peers)
            # Behind the best peer: some peer certified this run and least_squares did not.
            row["ID_behind_best_peer"] = bool(not row["ID_certified"] and any(
                row[f"{k}_certified"] for k in peers))
            rows.append(row)
        write_json(args.out, "nist.json", {"machine": machine(), "rows": rows, "partial": True})

    print_table(rows, [
        ("problem", "problem"), ("start", "s"),
        *[(f"{k}_min_lre", f"P {k}") for k in SHORT.values()],
        *[(f"{k}_rss_lre", f"RSS {k}") for k in SHORT.values()],
        ("ID_se_lre", "SE ID"),
        *[(f"{k}_work", f"n {k}") for k in SHORT.values()],
    ])
    summary = []
    for method in METHODS:
        k = SHORT[method]
        summary.append({
            "method": method, "runs": len(rows),
            "certified": sum(r[f"{k}_certified"] for r in rows),
            "parameters_6": sum(r[f"{k}_min_lre"] >= PARAMETER_DIGITS for r in rows),
            "rss_6": sum(r[f"{k}_rss_lre"] >= RSS_DIGITS for r in rows),
            "se_4": sum(r[f"{k}_se_lre"] >= SE_DIGITS for r in rows),
            "reported_converged": sum(r[f"{k}_converged"] for r in rows),
            "median_work": float(np.median([r[f"{k}_work"] for r in rows])),
            "total_work": int(sum(r[f"{k}_work"] for r in rows)),
        })
    print()
    print_table(summary, [("method", "method"), ("certified", "certified"), ("runs", "of"),
                          ("parameters_6", "params>=6"), ("rss_6", "RSS>=6"),
                          ("se_4", "SE>=4"), ("reported_converged", "says converged"),
                          ("median_work", "median work"), ("total_work", "total work")])
    behind = [f"{r['problem']} start {r['start']}" for r in rows if r["ID_behind_best_peer"]]
    print(f"\nleast_squares behind the best peer (a peer certified, it did not): "
          f"{', '.join(behind) or 'none'}")
    path = write_json(args.out, "nist.json", {
        "machine": machine(), "max_steps": args.max_steps,
        "scipy_tol": "default (1e-8)" if scipy_tol is None else scipy_tol,
        "optimistix": {"rtol": 1e-12, "atol": 1e-12},
        "thresholds": {"parameters": PARAMETER_DIGITS, "rss": RSS_DIGITS,
                       "standard_errors": SE_DIGITS},
        "rows": rows, "summary": summary, "behind_best_peer": behind,
        "seconds": time.perf_counter() - began,
    })
    print(f"wrote {path} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
