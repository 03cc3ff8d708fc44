"""Iterative architecture expansion against fixed-rank solves from random starts (float64).

    python -m benchmarks.expansion [--out results] [--quick]

Targets: random AION targets (default initialisation, one term per atom) of rank 4, 6 and 8 in
2, 4 and 6 dimensions (N = 2000 uniform points in ``[-1, 1]^d``). Two ways to fit each:

- ``idn.expand`` from a random rank-1 AION up to the target's rank, with its default 4
  candidates per new rank (the residual fit, from 4 starts, and 3 random new ranks, each
  followed by a joint solve), and with ``candidates=1`` (the residual fit alone);
- ``idn.solve`` at the target's rank from 4 random starts (``AION``'s default initialisation),
  each with the same budget of 500 inner iterations.

Success: ``Phi / sum y^2 < 1e-20``. Reported: successes, wall time of the whole run after
compilation (each expansion is run twice, the second timed; the fixed-rank solve is compiled
first), inner iterations of every solve (expansion: its residual fits too) and the number of
joint (full-model) solves. Prints a
table and writes ``OUT/expansion.json`` and ``OUT/expansion.png``.
"""

from __future__ import annotations

import time

from benchmarks._common import machine, parser, print_table, progress, write_json

LEVEL = 1e-20


def main() -> None:
    import jax
    import jax.numpy as jnp

    import infinite_descent as idn

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    configs = [(4, 2), (6, 4)] if args.quick else [(4, 2), (4, 4), (6, 4), (6, 6), (8, 2), (8, 4)]
    n = 500 if args.quick else 2000
    began = time.perf_counter()
    rows = []
    for rank, dim in progress(configs, "targets"):
        k1, k2 = jax.random.split(jax.random.key(1000 * rank + dim))
        target = idn.AION(rank, dim, 1, key=k1)
        x = jax.random.uniform(k2, (n, dim), minval=-1.0, maxval=1.0)
        y = jax.vmap(target)(x)
        scale = float(jnp.sum(y * y))

        for candidates in (4, 1):
            def grow(candidates=candidates):
                return idn.expand(
                    idn.AION(1, dim, 1, key=jax.random.key(7)), x, y, max_terms=rank,
                    target_loss=LEVEL * scale, key=jax.random.key(8), max_steps=500,
                    candidates=candidates,
                )

            grow()  # compiles a solve per rank; the timed run below is the same computation
            t0 = time.perf_counter()
            model, history = grow()
            expand_s = time.perf_counter() - t0
            rows.append({
                "target": f"rank {rank}, dim {dim}",
                "method": f"idn.expand from rank 1, candidates={candidates}",
                "successes": int(history[-1].loss < LEVEL * scale), "tries": 1,
                "relative_loss": history[-1].loss / scale, "seconds": expand_s,
                "inner_steps": sum(h.inner_steps for h in history),
                "joint_solves": sum(h.candidates for h in history), "final_rank": model.rank,
            })
        fixed = []
        idn.solve(idn.AION(rank, dim, 1, key=jax.random.key(99)), x, y, throw=False,
                  max_steps=500)  # compile (the options are static: the same ones)
        t0 = time.perf_counter()
        for s in range(4):
            start = idn.AION(rank, dim, 1, key=jax.random.key(100 + s))
            _, info = idn.solve(start, x, y, throw=False, max_steps=500)
            fixed.append((float(info.loss), int(info.inner_steps)))
        fixed_s = time.perf_counter() - t0
        rows.append({
            "target": f"rank {rank}, dim {dim}", "method": "idn.solve at full rank, 4 starts",
            "successes": sum(loss < LEVEL * scale for loss, _ in fixed), "tries": 4,
            "relative_loss": min(loss for loss, _ in fixed) / scale, "seconds": fixed_s,
            "inner_steps": sum(steps for _, steps in fixed), "joint_solves": 4,
            "final_rank": rank,
        })
        print(f"rank {rank} dim {dim}: expand {rows[-3]['relative_loss']:.1e} in "
              f"{rows[-3]['seconds']:.1f} s (residual fit only: {rows[-2]['relative_loss']:.1e}); "
              f"fixed rank {rows[-1]['successes']}/4, best {rows[-1]['relative_loss']:.1e} in "
              f"{fixed_s:.1f} s", flush=True)
    print_table(rows, [("target", "target"), ("method", "method"), ("successes", "ok"),
                       ("tries", "of"), ("relative_loss", "best Phi/sum y^2"),
                       ("seconds", "seconds"), ("inner_steps", "inner iterations"),
                       ("joint_solves", "full-size solves")])
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(rows, args.out / "expansion.png")
    path = write_json(args.out, "expansion.json", {"machine": machine(), "N": n, "rows": rows,
                                                   "seconds": time.perf_counter() - began})
    print(f"wrote {path}")


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        rs = [next(r for r in rows if r["target"] == t and r["method"] == method) for t in targets]
        pos = np.arange(len(targets)) + (k - (len(methods) - 1) / 2) * width
        a.bar(pos, [max(r["relative_loss"], 1e-32) for r in rs], width, label=method)
        b.bar(pos, [r["seconds"] for r in rs], width, label=method)
    for ax, label in ((a, "best Phi / sum y^2"), (b, "seconds (whole run, after compilation)")):
        ax.set_xticks(np.arange(len(targets)), targets, rotation=20, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    a.axhline(LEVEL, color="k", ls=":", lw=1)
    a.legend(fontsize=8)
    fig.suptitle("Growing the rank from one against solving at full rank from random starts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
