"""The matrix-pencil start against random starts on one-dimensional AION targets (float64).

    python -m benchmarks.pencil [--out results]

Random AION targets (``AION``'s default initialisation) with ``dim=1``, rank 2-4 and 1-2 terms
per atom, on 200 uniform points in ``[0, 1]``, noiseless and with noise of standard deviation
1e-3 relative to the targets' RMS; 10 targets per size. Each is solved (default ``idn.solve``)
from ``idn.matrix_pencil`` and from 4 random starts of the same size. Success: within 1e-12
(relative) of the best loss reached on that problem by any start, and, noiseless, below 1e-20
relative. Also NIST Lanczos3 from the pencil against its two certified starts. Prints a table
and writes ``OUT/pencil.json``.
"""

from __future__ import annotations

import time

from benchmarks._common import machine, parser, print_table, progress, write_json


def main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import infinite_descent as idn

    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    began = time.perf_counter()
    x = jnp.linspace(0.0, 1.0, 200)
    rows = []
    sizes = [(rank, terms, noise) for rank, terms in ((2, 1), (3, 1), (4, 1), (2, 2), (3, 2))
             for noise in (0.0, 1e-3)]
    for rank, terms, noise in progress(sizes, "target sizes"):
        solve = jax.jit(lambda m, y: idn.solve(m, x[:, None], y, throw=False))
        counts = {"pencil": 0, "random": 0}
        best_counts = {"pencil": 0, "random": 0}
        times = {"pencil": [], "random": []}
        for seed in range(10):
            target = idn.AION(rank, 1, terms, key=jax.random.key(seed))
            y = jax.vmap(target)(x[:, None])
            y = y + noise * jnp.sqrt(jnp.mean(y * y)) * jax.random.normal(
                jax.random.key(100 + seed), y.shape)
            scale = float(jnp.sum(y * y))
            t0 = time.perf_counter()
            start = idn.matrix_pencil(x, y, rank=rank, terms=terms)
            _, info = jax.block_until_ready(solve(start, y))
            times["pencil"].append(time.perf_counter() - t0)
            losses = {"pencil": [float(info.loss)], "random": []}
            for s in range(4):
                start = idn.AION(rank, 1, terms, key=jax.random.key(1000 + 10 * seed + s))
                t0 = time.perf_counter()
                _, info = jax.block_until_ready(solve(start, y))
                times["random"].append(time.perf_counter() - t0)
                losses["random"].append(float(info.loss))
            best = min(min(v) for v in losses.values())
            for key in losses:
                if noise == 0.0:
                    counts[key] += sum(v / scale < 1e-20 for v in losses[key])
                best_counts[key] += sum(v <= best * (1 + 1e-12) + 1e-30 * scale
                                        for v in losses[key])
        for key, tries in (("pencil", 10), ("random", 40)):
            rows.append({
                "size": f"rank {rank}, {terms} term(s)", "noise": noise, "start": key,
                "tries": tries, "reach_best": best_counts[key],
                "below_1e-20": counts[key] if noise == 0.0 else None,
                "median_ms": 1e3 * float(np.median(times[key])),
            })
        print(rows[-2], rows[-1], flush=True)
    lanczos = idn.problems.lanczos3()
    lanczos_rows = []
    for name, start in (("matrix pencil", idn.matrix_pencil(lanczos.x[:, 0], lanczos.y, rank=3,
                                                            real=True)),
                        ("NIST start 1", lanczos.starts[0]), ("NIST start 2", lanczos.starts[1])):
        _, info = idn.solve(start, lanczos.x, lanczos.y, trainable=lanczos.trainable)
        lanczos_rows.append({"start": name, "loss": float(info.loss),
                             "inner_steps": int(info.inner_steps)})
    print_table(rows, [("size", "target"), ("noise", "noise"), ("start", "start"),
                       ("reach_best", "reach best"), ("below_1e-20", "< 1e-20"),
                       ("tries", "of"), ("median_ms", "median ms")])
    print()
    print_table(lanczos_rows, [("start", "Lanczos3 from"), ("loss", "final RSS"),
                               ("inner_steps", "inner iterations")])
    path = write_json(args.out, "pencil.json", {"machine": machine(), "rows": rows,
                                                "lanczos3": lanczos_rows,
                                                "seconds": time.perf_counter() - began})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
