"""The hard class: exactly representable AION targets with two terms per atom (float64).

    python -m benchmarks.hard_problems [--out results] [--problems 8] [--first 0]
                                       [--spreads 0.01,0.1,0.3] [--quick]

Eight random targets (``AION``'s default initialisation; rank and dimension cycling through
(4, 4), (3, 3), (4, 3), (3, 4); two terms; ``N = 2000`` uniform points in ``[-1, 1]^d``), each
from starts 1%, 10% and 30% off (every parameter times ``1 + s xi``, ``xi ~ N(0, 1)``):

- 1% and 10%: the default ``idn.solve`` (256 inner iterations; geodesic acceleration
  ``"auto"``), the same with the acceleration on every iteration (``geodesic=True``) and off
  (``geodesic=False``, plain Levenberg-Marquardt), and
  ``optimistix.LevenbergMarquardt`` (rtol = atol = 1e-12, 1000 steps);
- 30%: ``idn.multistart`` with 16 starts (budget 256 each) against 16 sequential optimistix
  solves (256 steps each) from the same starts.

Success levels: ``Phi < 1e-20`` from 1%, ``Phi < 1e-16`` from 10% and 30%. Prints a table,
writes ``OUT/hard_problems.json`` and ``OUT/hard_problems.png`` (``Phi`` against inner
iterations of the default solve).
"""

from __future__ import annotations

import time

from benchmarks._common import machine, parser, print_table, progress, write_json

SHAPES = [(4, 4), (3, 3), (4, 3), (3, 4)]


def _problem(i, spread, n):
    import jax

    import infinite_descent as idn
    from infinite_descent.bench import starts as draw

    rank, dim = SHAPES[i % len(SHAPES)]
    k1, k2, k3 = jax.random.split(jax.random.key(500 + i), 3)
    target = idn.AION(rank, dim, 2, key=k1)
    x = jax.random.uniform(k2, (n, dim), minval=-1.0, maxval=1.0)
    y = jax.vmap(target)(x)
    start = jax.tree.map(lambda a: a[1], draw.perturbed(target, 2, k3, spread))
    return f"r{rank} d{dim} P2 #{i}", start, x, y


def _timed(fn, *args):
    """Run ``fn(*args)`` once after compiling it ahead of time; return (output, ms)."""
    import jax

    compiled = jax.jit(fn).lower(*args).compile()
    began = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, 1e3 * (time.perf_counter() - began)



def main() -> None:
    import jax
    import numpy as np

    import infinite_descent as idn
    from infinite_descent.bench import peers
    from infinite_descent.bench import starts as draw

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=8)
    p.add_argument("--spreads", default="0.01,0.1,0.3",
                   help="which start spreads to run (comma-separated, from 0.01, 0.1, 0.3)")
    p.add_argument("--first", type=int, default=0, help="index of the first problem to run")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    problems = range(args.first, args.first + args.problems)
    spreads = {float(v) for v in args.spreads.split(",")}
    n = 500 if args.quick else 2000
    began = time.perf_counter()
    rows, curves = [], {}
    for spread, level in ((0.01, 1e-20), (0.10, 1e-16)):
        if spread not in spreads:
            continue
        for i in progress(problems, f"starts {spread:.0%} off"):
            name, start, x, y = _problem(i, spread, n)
            variants = {
                "idn.solve (default)": dict(),
                "idn.solve, geodesic=True": dict(geodesic=True),
                "idn.solve, geodesic=False": dict(geodesic=False),
            }
            for label, options in variants.items():
                def run(m, x, y, o=options, record=label == "idn.solve (default)"):
                    return idn.solve(m, x, y, throw=False, record_history=record, **o)

                (model, info), ms = _timed(run, start, x, y)
                rows.append({"spread": spread, "problem": name, "method": label,
                             "loss": float(info.loss), "success": float(info.loss) < level,
                             "inner_steps": int(info.inner_steps),
                             "data_passes": int(info.data_passes), "ms": ms})
                if info.history is not None:
                    k = int(info.inner_steps)
                    curves[f"{spread:g} {name}"] = np.asarray(info.history.loss[: k + 1]).tolist()
            lm = peers.optimistix_levenberg_marquardt(x, y, max_steps=1000)(start, repeats=1)
            rows.append({"spread": spread, "problem": name, "method": "optimistix LM, 1000 steps",
                         "loss": lm.final_loss, "success": lm.final_loss < level,
                         "inner_steps": lm.outer_steps, "data_passes": lm.data_passes,
                         "ms": lm.wall_ms})
            print(f"{spread:g} {name}: " + ", ".join(
                f"{r['method']} {r['loss']:.1e} ({r['inner_steps']})"
                for r in rows[-(len(variants) + 1):]),
                flush=True)

    multi = []
    for i in progress(problems, "starts 30% off") if 0.3 in spreads else ():
        name, start, x, y = _problem(i, 0.30, n)
        starts = draw.perturbed(start, 16, jax.random.key(7), 0.3)  # the ones multistart draws
        # Not one jitted function (segments run from Python): a warm-up call, then one timed.
        ms, (best, info) = peers.median_wall_ms(lambda: idn.multistart(
            start, x, y, num_starts=16, key=jax.random.key(7), spread=0.3), repeats=1)
        lm = peers.optimistix_levenberg_marquardt(x, y, max_steps=256)
        lm_runs = [lm(jax.tree.map(lambda a: a[k], starts), repeats=1) for k in range(16)]
        best_lm = min(r.final_loss for r in lm_runs)
        multi.append({
            "problem": name, "multistart_loss": float(info.loss[info.best]),
            "multistart_success": float(info.loss[info.best]) < 1e-16,
            "multistart_ms": ms, "lane_utilisation": info.lane_utilisation,
            "multistart_inner_steps": int(np.sum(np.asarray(info.inner_steps))),
            "lm_best_loss": best_lm, "lm_success": best_lm < 1e-16,
            "lm_sequential_ms": float(sum(r.wall_ms for r in lm_runs)),
        })
        print(f"0.3 {name}: multistart {multi[-1]['multistart_loss']:.1e} in {ms:.0f} ms "
              f"(utilisation {info.lane_utilisation:.2f}); 16 LM best {best_lm:.1e} in "
              f"{multi[-1]['lm_sequential_ms']:.0f} ms", flush=True)
        # Kept after every problem: a long sweep leaves its finished part behind.
        write_json(args.out, "hard_problems.json", {"machine": machine(), "N": n, "rows": rows,
                                                    "multistart": multi, "partial": True})

    summary = []
    for spread in sorted(spreads - {0.3}):
        for method in sorted({r["method"] for r in rows}):
            rs = [r for r in rows if r["spread"] == spread and r["method"] == method]
            summary.append({"spread": spread, "method": method,
                            "successes": sum(r["success"] for r in rs), "problems": len(rs),
                            "median_loss": float(np.median([r["loss"] for r in rs])),
                            "median_inner_steps": float(np.median([r["inner_steps"] for r in rs])),
                            "median_passes": float(np.median([r["data_passes"] for r in rs])),
                            "median_ms": float(np.median([r["ms"] for r in rs]))})
    if multi:
        summary.append({"spread": 0.30, "method": "idn.multistart, 16 starts",
                        "successes": sum(m["multistart_success"] for m in multi),
                        "problems": len(multi),
                        "median_loss": float(np.median([m["multistart_loss"] for m in multi])),
                        "median_ms": float(np.median([m["multistart_ms"] for m in multi]))})
        summary.append({"spread": 0.30, "method": "best of 16 optimistix LM",
                        "successes": sum(m["lm_success"] for m in multi), "problems": len(multi),
                        "median_loss": float(np.median([m["lm_best_loss"] for m in multi])),
                        "median_ms": float(np.median([m["lm_sequential_ms"] for m in multi]))})
    print_table(summary, [("spread", "start"), ("method", "method"), ("successes", "ok"),
                          ("problems", "of"), ("median_loss", "median Phi"),
                          ("median_inner_steps", "median inner"), ("median_passes", "passes"),
                          ("median_ms", "median ms")])
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(curves, args.out / "hard_problems.png")
    path = write_json(args.out, "hard_problems.json", {
        "machine": machine(), "N": n, "rows": rows, "multistart": multi, "summary": summary,
        "seconds": time.perf_counter() - began,
    })
    print(f"wrote {path} ({time.perf_counter() - began:.0f} s)")


def _plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for key, losses in curves.items():
        spread = float(key.split()[0])
        ax = axes[0] if spread < 0.05 else axes[1]
        ax.semilogy(losses, lw=1, label=key.split(" ", 1)[1])
    for ax, title in zip(axes, ("starts 1% off", "starts 10% off")):
        ax.axhline(1e-20 if "1%" in title else 1e-16, color="k", ls=":", lw=1)
        ax.set_title(f"default idn.solve, {title}")
        ax.set_xlabel("inner iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Phi")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
