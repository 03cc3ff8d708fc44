"""float32 against float64: the loss each reaches and the time per inner iteration.

    python -m benchmarks.precision [--out results] [--sizes 10000 100000] [--starts 5]

An exactly representable AION target (rank 4, 4 dimensions, 2 terms: ``M = 128``) on ``N``
uniform points, starts 5% off it (``infinite_descent.bench.timing.random_problem``, one key
per start). Three ways to solve it:

- ``float64``: the model and everything else in float64;
- ``float32``: the model in float32, the sums over the data and the loop in float32 (the
  default, ``SNR(sum_dtype=None)``);
- ``float32, sums in float64``: the model evaluated in float32, ``J^T J``, ``J^T r`` and the
  loop in float64 (``sum_dtype="float64"``).

The targets, starts and data are made in float32 for every way (the float64 way fits them cast
up, exactly), so all three fit the same numbers. The targets' parameters are float32 numbers,
but their values ``y`` are rounded to float32, so no parameters fit them exactly, in any
precision: float32's floor is about ``eps^2 = 1.4e-14`` relative (the float32 target itself
evaluated in float32 is at 2 to 3 ``eps^2`` of its data; float64 ends near 2 ``eps^2``).

For each: the relative loss ``Phi / sum y^2`` a default solve ends at (median over the starts,
each start its own target; also each start's loss and, per start, the loss of the returned
model cast to float32 and evaluated in float32), its inner iterations, passes over the data
and wall time after compilation, and the time of one inner iteration (solves of 2 and 6
iterations, tolerances off, medians after warm-up) with its ratio to plain float32's. Prints a
table and writes ``OUT/precision.json``.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks._common import machine, parser, print_table, progress, write_json

WAYS = (
    ("float64", "float64", None),
    ("float32", "float32", None),
    ("float32, sums in float64", "float32", "float64"),
)


def solve_row(n: int, dtype, sum_dtype, starts: int) -> dict:
    """Solves of the float32 targets (made in float32 whatever the way, so every way fits the
    same data; the float64 way gets them cast up, exactly)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import infinite_descent as idn
    from infinite_descent.bench import timing

    def cast(tree, to):
        return jax.tree.map(lambda a: a.astype(to) if eqx.is_inexact_array(a) else a, tree)

    def relative_loss32(model, x, y, norm):  # the float32 model's loss, in float32
        r = jax.vmap(cast(model, jnp.float32))(x) - y
        return float(jnp.sum(r.astype(jnp.float64) ** 2)) / norm

    run = jax.jit(lambda m, x, y: idn.solve(m, x, y, throw=False, sum_dtype=sum_dtype))
    losses, as32, floors, steps, passes, seconds, results = [], [], [], [], [], [], []
    for key in range(starts):
        target, start, x32, y32 = timing.random_problem(n, 4, 4, 2, dtype=jnp.float32, key=key)
        start, x, y = cast((start, x32, y32), dtype)
        jax.block_until_ready(run(start, x, y))
        began = time.perf_counter()
        model, info = jax.block_until_ready(run(start, x, y))
        seconds.append(time.perf_counter() - began)
        y64 = np.asarray(y, np.float64)
        norm = float(y64 @ y64)
        losses.append(float(info.loss) / norm)
        as32.append(relative_loss32(model, x32, y32, norm))
        floors.append(relative_loss32(target, x32, y32, norm))
        steps.append(int(info.inner_steps))
        passes.append(int(info.data_passes))
        results.append(idn.RESULTS[info.result] or "successful")
    return {
        "relative_loss": float(np.median(losses)), "relative_losses": losses,
        "relative_losses_float32_model": as32, "target_relative_losses_float32": floors,
        "inner_steps": float(np.median(steps)), "inner_steps_each": steps,
        "data_passes": float(np.median(passes)),
        "solve_s": float(np.median(seconds)), "results": results,
    }


def main() -> None:
    import jax.numpy as jnp

    from infinite_descent.bench import timing

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--starts", type=int, default=5)
    args = p.parse_args()
    eps2 = float(jnp.finfo(jnp.float32).eps) ** 2
    rows = []
    for n in args.sizes:
        for name, dtype, sum_dtype in progress(WAYS, f"N = {n:,}"):
            dtype = getattr(jnp, dtype)
            row = {"N": n, "way": name}
            row.update(timing.iteration_time(n, 4, 4, 2, dtype=dtype, linear_solver="dense",
                                             chunk_size=None, floor=False,
                                             sum_dtype=sum_dtype))
            row.update(solve_row(n, dtype, sum_dtype, args.starts))
            rows.append(row)
            print(row, flush=True)
        plain = next(r for r in rows if r["N"] == n and r["way"] == "float32")
        for r in rows:
            if r["N"] == n:
                r["time_over_float32"] = r["ms_per_iteration"] / plain["ms_per_iteration"]
                r["loss_over_eps2"] = r["relative_loss"] / eps2
    print_table(rows, [("N", "N"), ("way", "way"), ("relative_loss", "Phi/sum y^2"),
                       ("loss_over_eps2", "/ eps32^2"), ("inner_steps", "iterations"),
                       ("data_passes", "passes"), ("solve_s", "solve s"),
                       ("ms_per_iteration", "ms/iteration"),
                       ("time_over_float32", "x float32")])
    path = write_json(args.out, "precision.json",
                      {"machine": machine(), "float32_eps_squared": eps2, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
