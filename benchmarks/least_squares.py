"""``idn.least_squares`` on models that are not AION alone, against optimistix and scipy.

    python -m benchmarks.least_squares [--out results] [--starts 8] [--only WORD[,WORD]]
                                       [--quick]

Problems (float64, inputs uniform in ``[-1, 1]^2``):

- ``MLP``: an ``eqx.nn.MLP(2, "scalar", 16, 2, activation=tanh)`` (2 -> 16 -> 16 -> 1, 337
  parameters) fitted to ``y = sin(pi x1) cos(pi x2 / 2)`` at ``N = 1000`` points (not exactly
  representable); starts: the MLP's default initialisation with keys ``0..starts-1``;
  success: ``Phi / sum y^2 < 1e-6`` (a 0.1% RMS fit).
- ``AION + offset``: an ``equinox`` module holding ``idn.AION(3, 2, 1)`` and a scalar offset
  (25 parameters), fitted to an exactly representable target of the same form (a random
  ``AION(3, 2, 1)`` plus 0.5) at ``N = 1000`` points; starts: the target with every parameter
  times ``1 + 0.3 xi`` (``xi ~ N(0, 1)``, keys ``1000 + i``), as in `versus_peers`;
  success: ``Phi / sum y^2 < 1e-20``.

Methods, same process, same starts, the residuals ``f(x_n) - y_n`` of the same function:
``idn.least_squares`` (default tolerances) under ``eqx.filter_jit``;
``optimistix.least_squares`` with ``LevenbergMarquardt(rtol=1e-12, atol=1e-12)`` (the harness's
`peers.optimistix_levenberg_marquardt`); scipy ``least_squares(method="lm")`` with JAX's
jitted residual and exact Jacobian, ``ftol = xtol = gtol = 1e-15`` (`peers.scipy_least_squares`).
Every method gets the same budget per problem: 300 iterations on the MLP, 200 on AION
(``max_steps``; scipy ``max_nfev`` residual evaluations). Each method is compiled and warmed
up on the first start; then every start is run once timed (on AION, the median of 5 timed
runs) and once instrumented (ours with ``record_history=True``, the peers
with an evaluation counter), which gives the loss trace. Times are wall time and the process's
CPU time (the machine may be shared). Ours stops at a loss (``atol = target * sum y^2``), so
its time to the target is measured, from a run stopped there; the peers' is read off their
traces (the timed run's time spread evenly over its passes over the data, up to where the trace
first reaches the target, as in `versus_peers`), as is ours for comparison. Reported per problem
and method: successes, median whole-run time, median time to target and its ratio to ours,
iterations and data passes (whole run and to the target), CPU time per iteration, median final
loss. Prints a table and writes ``OUT/least_squares.json`` (with the loss traces,
``Phi / sum y^2`` against passes, or inner iterations for ours, whose history does not say
which iterations took a second, geodesic pass).
"""

from __future__ import annotations

import os
import time

from benchmarks._common import machine, parser, print_table, write_json

OURS = "idn.least_squares"
OPTX = "optimistix LevenbergMarquardt"
SCIPY = "scipy least_squares"


def _residuals(model, args):
    import jax

    x, y = args
    return jax.vmap(model)(x) - y


def _aion_plus_offset():
    import equinox as eqx
    import jax

    import infinite_descent as idn

    class AIONPlusOffset(eqx.Module):
        aion: idn.AION
        offset: jax.Array

        def __call__(self, x):
            return self.aion(x) + self.offset

    return AIONPlusOffset


def _problems(quick: bool):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import infinite_descent as idn

    n = 300 if quick else 1000
    width = 8 if quick else 16
    out = []
    x = jax.random.uniform(jax.random.key(0), (n, 2), minval=-1.0, maxval=1.0)
    y = jnp.sin(jnp.pi * x[:, 0]) * jnp.cos(0.5 * jnp.pi * x[:, 1])
    out.append({
        "name": f"MLP 2-{width}-{width}-1 tanh N={n}", "x": x, "y": y, "target": 1e-6,
        "max_steps": 40 if quick else 300, "repeats": 1,
        "start": lambda i: eqx.nn.MLP(2, "scalar", width, 2, activation=jnp.tanh,
                                      key=jax.random.key(i)),
    })

    AIONPlusOffset = _aion_plus_offset()
    k1, k2 = jax.random.split(jax.random.key(7))
    truth = AIONPlusOffset(idn.AION(3, 2, 1, key=k1), jnp.asarray(0.5))
    xa = jax.random.uniform(k2, (n, 2), minval=-1.0, maxval=1.0)
    ya = jax.vmap(truth)(xa)

    def start(i, truth=truth):
        leaves, treedef = jax.tree.flatten(truth)
        keys = jax.random.split(jax.random.key(1000 + i), len(leaves))
        return jax.tree.unflatten(treedef, [
            a * (1 + 0.3 * jax.random.normal(k, a.shape)) for k, a in zip(keys, leaves)])

    out.append({"name": f"AION(3, 2, 1) + offset N={n}", "x": xa, "y": ya, "target": 1e-20,
                "max_steps": 40 if quick else 200, "repeats": 1 if quick else 5, "start": start})
    return out


def _timed(fn, repeats: int, warmup: bool):
    """``(wall_ms, cpu_ms, out)``: medians over ``repeats`` calls of ``fn()`` after a warm-up.

    ``cpu_ms`` is the process's CPU time (all threads): on a machine shared with other jobs it
    counts the work done, where the wall time also counts the waiting.
    """
    import jax
    import numpy as np

    if warmup:
        jax.block_until_ready(fn())  # compilation and caches
    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        wall, cpu = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(fn())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return 1e3 * float(np.median(walls)), 1e3 * float(np.median(cpus)), out


def _loss_fn(x, y):
    import equinox as eqx

    @eqx.filter_jit
    def phi(model):
        r = _residuals(model, (x, y))
        return r @ r

    return lambda model: float(phi(model))


def _ours(x, y, max_steps: int, repeats: int):
    """``idn.least_squares`` from a start, jit-compiled: the whole run (timed, then traced with
    ``record_history``), and a run stopped at a loss (``atol``)."""
    import equinox as eqx
    import jax
    import numpy as np

    import infinite_descent as idn

    loss = _loss_fn(x, y)

    @eqx.filter_jit
    def fit(model, record_history=False, atol=None):
        return idn.least_squares(_residuals, model, (x, y), max_steps=max_steps, throw=False,
                                 record_history=record_history, atol=atol)

    def run(model, warmup: bool) -> dict:
        wall, cpu, (final, info) = _timed(lambda: fit(model), repeats, warmup)
        _, traced = jax.block_until_ready(fit(model, record_history=True))
        steps = int(traced.inner_steps)
        return {
            "wall_ms": wall, "cpu_ms": cpu, "final_loss": loss(final),
            "inner_steps": int(info.inner_steps), "data_passes": int(info.data_passes),
            "successful": bool(info.result == idn.RESULTS.successful),
            # History index k is the point after inner iteration k (0: the start); the
            # history does not say which iterations took a second pass (geodesic).
            "trace": {"x": list(range(steps + 1)), "x_is": "inner iterations",
                      "loss": [float(v) for v in np.asarray(traced.history.loss[: steps + 1])]},
        }

    def to_level(model, level: float, warmup: bool) -> dict:
        wall, cpu, (final, info) = _timed(lambda: fit(model, atol=level), repeats, warmup)
        return {"wall_ms": wall, "cpu_ms": cpu, "loss": loss(final),
                "inner_steps": int(info.inner_steps), "data_passes": int(info.data_passes)}

    return run, to_level


def _optimistix(x, y, max_steps: int, repeats: int):
    """``optimistix.least_squares`` with ``LevenbergMarquardt(rtol=1e-12, atol=1e-12)``, as
    `peers.optimistix_levenberg_marquardt` runs it (one pass over the data per step), timed
    in wall and CPU time; the trace from an instrumented twin (``peers.EvaluationLog``)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optimistix as optx

    from infinite_descent.bench.peers import EvaluationLog

    solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-12)
    loss = _loss_fn(x, y)

    def make_fit(log):
        @eqx.filter_jit
        def fit(model):
            params, static = eqx.partition(model, eqx.is_inexact_array)

            def residuals(p, _):
                r = _residuals(eqx.combine(p, static), (x, y))
                if log is not None:
                    jax.debug.callback(log.value, jnp.sum(r * r), ordered=True)
                return r

            sol = optx.least_squares(residuals, solver, params, max_steps=max_steps,
                                     throw=False)
            return eqx.combine(sol.value, static), sol.stats["num_steps"]

        return fit

    fit = make_fit(None)

    def run(model, warmup: bool) -> dict:
        wall, cpu, (final, steps) = _timed(lambda: fit(model), repeats, warmup)
        log = EvaluationLog()
        jax.block_until_ready(make_fit(log)(model))
        trace = log.trace()
        return {"wall_ms": wall, "cpu_ms": cpu, "final_loss": loss(final),
                "inner_steps": int(steps), "data_passes": int(steps),
                "trace": {"x": trace["data_passes"], "x_is": "data passes",
                          "loss": trace["loss"]}}

    return run


def _scipy(x, y, max_nfev: int, repeats: int):
    """scipy ``least_squares(method="lm")`` (MINPACK) with JAX's jitted residual and exact
    (forward-mode) Jacobian of the flat parameter vector, ``ftol = xtol = gtol = 1e-15``, as
    `peers.scipy_least_squares` runs it. Passes: residual plus Jacobian evaluations."""
    import equinox as eqx
    import jax
    import numpy as np
    from jax.flatten_util import ravel_pytree
    from scipy.optimize import least_squares

    from infinite_descent.bench.peers import EvaluationLog

    loss = _loss_fn(x, y)
    cache = {}

    def functions(model):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        flat, unravel = ravel_pytree(params)
        key = jax.tree.structure(model)
        if key not in cache:
            def residual(v):
                return _residuals(eqx.combine(unravel(v), static), (x, y))

            cache[key] = (jax.jit(residual), jax.jit(jax.jacfwd(residual)))
        return cache[key], np.asarray(flat), lambda v: eqx.combine(unravel(v), static)

    def fit(fns, v0, log):
        residual_fn, jacobian_fn = fns

        def residual(v):
            r = np.asarray(residual_fn(v))
            if log is not None:
                log.value(r @ r)
            return r

        def jacobian(v):
            if log is not None:
                log.other()
            return np.asarray(jacobian_fn(v))

        return least_squares(residual, v0, jac=jacobian, method="lm", ftol=1e-15, xtol=1e-15,
                             gtol=1e-15, max_nfev=max_nfev)

    def run(model, warmup: bool) -> dict:
        fns, v0, to_model = functions(model)
        wall, cpu, res = _timed(lambda: fit(fns, v0, None), repeats, warmup)
        log = EvaluationLog()
        fit(fns, v0, log)
        trace = log.trace()
        njev = int(res.njev) if res.njev is not None else 0
        return {"wall_ms": wall, "cpu_ms": cpu, "final_loss": loss(to_model(res.x)),
                "inner_steps": njev, "data_passes": int(res.nfev) + njev,
                "trace": {"x": trace["data_passes"], "x_is": "data passes",
                          "loss": trace["loss"]}}

    return run


def _first_hit(trace, level):
    """Index into the trace where the running best first reaches ``level`` (or None)."""
    import numpy as np

    best = np.minimum.accumulate(np.asarray(trace["loss"], float))
    hit = np.nonzero(best <= level)[0]
    return int(hit[0]) if len(hit) else None


def _time_to(run, level):
    """``(wall_ms, cpu_ms, x)``: the run's times spread evenly over its trace (passes, or
    iterations for ours) up to where it first reaches ``level``, and the trace's ``x`` there."""
    trace = run["trace"]
    k = _first_hit(trace, level)
    if k is None:
        # Reached (by the recomputed final loss) but the method's own last trace value, computed
        # in another order, sits just above: the whole run.
        return run["wall_ms"], run["cpu_ms"], trace["x"][-1]
    share = trace["x"][k] / max(trace["x"][-1], 1)
    return run["wall_ms"] * share, run["cpu_ms"] * share, trace["x"][k]


def _median(values):
    import numpy as np

    return float(np.median(values)) if len(values) else None


def main() -> None:
    import numpy as np
    from tqdm.auto import tqdm

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--only", default="",
                   help="run only the problems whose name contains one of these "
                        "comma-separated words, e.g. MLP or AION")
    args = p.parse_args()
    began = time.perf_counter()
    # The machine may be shared: the load beside the run, to read the wall times by.
    load_at_start = os.getloadavg()
    results, traces, goals = [], {}, []
    path = None
    for prob in _problems(args.quick):
        if args.only and not any(w in prob["name"] for w in args.only.split(",")):
            continue
        x, y, steps, repeats = prob["x"], prob["y"], prob["max_steps"], prob["repeats"]
        scale = float(np.sum(np.asarray(y) ** 2))
        level = prob["target"] * scale
        print(f"{prob['name']} (target Phi / sum y^2 < {prob['target']:g}, budget {steps}) ...",
              flush=True)
        ours, ours_to_level = _ours(x, y, steps, repeats)
        runners = {
            OURS: ours,
            OPTX: _optimistix(x, y, steps, repeats),
            # MINPACK counts residual evaluations (accepted and rejected trials) against
            # max_nfev; its Jacobians, one per accepted step, come on top.
            SCIPY: _scipy(x, y, steps, repeats),
        }
        runs = {}
        for name, runner in runners.items():
            t0 = time.perf_counter()
            runs[name] = [runner(prob["start"](i), warmup=i == 0)
                          for i in tqdm(range(args.starts), desc=name, leave=False)]
            print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        direct = [ours_to_level(prob["start"](i), level, warmup=i == 0)
                  for i in tqdm(range(args.starts), desc="stopped at target", leave=False)]
        print(f"  {OURS} stopped at the target: {time.perf_counter() - t0:.0f} s", flush=True)
        traces[prob["name"]] = {
            name: [{"x": r["trace"]["x"], "x_is": r["trace"]["x_is"],
                    "relative_loss": [v / scale for v in r["trace"]["loss"]]} for r in rs]
            for name, rs in runs.items()}
        rows = []
        for name, rs in runs.items():
            ok = [r for r in rs if r["final_loss"] <= level]
            row = {
                "problem": prob["name"], "method": name, "starts": len(rs),
                "successes": len(ok), "target": prob["target"], "success_level": level,
                "budget": steps, "repeats": repeats,
                "median_wall_ms": _median([r["wall_ms"] for r in rs]),
                "median_cpu_ms": _median([r["cpu_ms"] for r in rs]),
                "median_iterations": _median([r["inner_steps"] for r in rs]),
                "median_passes": _median([r["data_passes"] for r in rs]),
                "cpu_ms_per_iteration": _median(
                    [r["cpu_ms"] / max(r["inner_steps"], 1) for r in rs]),
                "median_relative_loss": _median([r["final_loss"] for r in rs]) / scale,
                "best_relative_loss": min(r["final_loss"] for r in rs) / scale,
            }
            hits = [_time_to(r, level) for r in ok]
            row["interpolated_wall_ms_to_target"] = _median([h[0] for h in hits])
            row["interpolated_cpu_ms_to_target"] = _median([h[1] for h in hits])
            if name == OURS:
                # Ours stops at a loss (atol): its time to the target is measured, not read
                # off a trace (its iterations cost more once the geodesic step is on).
                reached = [d for d in direct if d["loss"] <= level]
                row.update({
                    "to_target": "measured, stopped at the target (atol)",
                    "successes_stopped_at_target": len(reached),
                    "wall_ms_to_target": _median([d["wall_ms"] for d in reached]),
                    "cpu_ms_to_target": _median([d["cpu_ms"] for d in reached]),
                    "iterations_to_target": _median([d["inner_steps"] for d in reached]),
                    "passes_to_target": _median([d["data_passes"] for d in reached]),
                    "interpolated_iterations_to_target": _median([h[2] for h in hits]),
                    "converged_flags": sum(r["successful"] for r in rs),
                })
            else:
                row.update({
                    "to_target": "interpolated: run time spread evenly over its passes",
                    "wall_ms_to_target": row["interpolated_wall_ms_to_target"],
                    "cpu_ms_to_target": row["interpolated_cpu_ms_to_target"],
                    "passes_to_target": _median([h[2] for h in hits]),
                })
                if name == OPTX:  # one pass per step
                    row["iterations_to_target"] = row["passes_to_target"]
            rows.append(row)
        ours_row = rows[0]
        for r in rows:
            for unit in ("wall", "cpu"):
                r[f"{unit}_ratio_to_ours"] = r[f"median_{unit}_ms"] / ours_row[f"median_{unit}_ms"]
                if r[f"{unit}_ms_to_target"] and ours_row[f"{unit}_ms_to_target"]:
                    r[f"{unit}_to_target_ratio_to_ours"] = (r[f"{unit}_ms_to_target"]
                                                            / ours_row[f"{unit}_ms_to_target"])
        results.extend(rows)
        print_table(rows, [
            ("method", "method"), ("successes", "ok"), ("median_cpu_ms", "cpu ms"),
            ("median_wall_ms", "wall ms"), ("cpu_ms_to_target", "cpu ms to target"),
            ("cpu_to_target_ratio_to_ours", "/ ours"), ("wall_ms_to_target", "wall ms to target"),
            ("wall_to_target_ratio_to_ours", "/ ours"), ("median_iterations", "iterations"),
            ("median_passes", "passes"), ("iterations_to_target", "it. to target"),
            ("passes_to_target", "passes to target"), ("cpu_ms_per_iteration", "cpu ms / it."),
            ("median_relative_loss", "median Phi/sum y^2"),
        ])
        peer_rows = rows[1:]
        optx_row = next(r for r in rows if r["method"] == OPTX)
        best_peer = max(r["successes"] for r in peer_rows)
        speedup = optx_row.get("cpu_to_target_ratio_to_ours")
        goals.append({
            "problem": prob["name"], "successes": ours_row["successes"],
            "best_peer_successes": best_peer,
            "as_many_successes_as_the_best_peer": ours_row["successes"] >= best_peer,
            "cpu_speedup_to_target_over_optimistix": speedup,
            "wall_speedup_to_target_over_optimistix": optx_row.get(
                "wall_to_target_ratio_to_ours"),
            "at_least_2x_optimistix": bool(speedup is not None and speedup >= 2.0),
        })
        print(f"  goals: {goals[-1]}", flush=True)
        path = write_json(args.out, "least_squares.json", {
            "machine": machine(), "load_average_at_start": load_at_start,
            "load_average_now": os.getloadavg(), "starts": args.starts, "quick": args.quick,
            "results": results, "goals": goals, "traces": traces,
            "seconds": time.perf_counter() - began,
        })
    print(f"\nwrote {path} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
