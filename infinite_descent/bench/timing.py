"""Timing one exact step as the problem grows: shared by ``benchmarks/`` and notebook 03.

Part of the benchmark harness `infinite_descent.bench` (this module needs only the core
dependencies); not imported by ``import infinite_descent``. Every time is a median after
compilation; the time of one inner iteration is the difference between solves of two lengths
divided by the difference in iterations, so the set-up (the basis, the first pass) cancels.

    from infinite_descent.bench import timing
    row = timing.iteration_time(100_000, rank=4, dim=4, terms=2)
    print(row["ms_per_iteration"], row["gram_floor_ms"])
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import infinite_descent as idn

__all__ = ["random_problem", "iteration_time", "gram_floor_ms", "median_ms"]


def _float_dtype():
    """float64 when ``jax_enable_x64`` is on, float32 otherwise (read at call time)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def median_ms(fn, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - began)
    return 1e3 * float(np.median(times))


def random_problem(n: int, rank: int, dim: int, terms: int, *, key: int = 0,
                   spread: float = 0.05, dtype=None):
    """An exactly representable AION target on ``n`` uniform points in ``[-1, 1]^dim`` and a
    start ``spread`` off it (each parameter times ``1 + spread xi``, ``xi ~ N(0, 1)``).

    Returns ``(target, start, x, y)``. The targets are evaluated in batches, so making the
    data never needs more memory than the solve.
    """
    dtype = _float_dtype() if dtype is None else dtype
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    target = idn.AION(rank, dim, terms, key=k1, dtype=dtype)
    x = jax.random.uniform(k2, (n, dim), dtype, minval=-1.0, maxval=1.0)
    y = jax.lax.map(target, x, batch_size=min(n, 65536))
    leaves, treedef = jax.tree.flatten(target)
    keys = jax.random.split(k3, len(leaves))
    start = jax.tree.unflatten(treedef, [
        a * (1 + spread * jax.random.normal(k, a.shape, dtype)) for k, a in zip(keys, leaves)
    ])
    return target, start, x, y


def gram_floor_ms(n: int, m: int, dtype=None, repeats: int = 5) -> float:
    """Time of ``J^T J`` for a random ``n x m`` matrix: the matrix product every dense step
    contains, the floor of its cost."""
    dtype = _float_dtype() if dtype is None else dtype
    jac = jax.random.normal(jax.random.key(1), (n, m), dtype)
    gram = jax.jit(lambda j: j.T @ j)
    return median_ms(lambda: gram(jac), repeats)


def iteration_time(n: int, rank: int, dim: int, terms: int, *, dtype=None,
                   steps: tuple[int, int] = (2, 6), linear_solver: str = "dense",
                   chunk_size: Any = "auto", repeats: int = 5, floor: bool = True,
                   **options) -> dict:
    """Time of one inner iteration of [`solve`][infinite_descent.solve] (tolerances off;
    ``options``: more keywords of `solve`, such as ``sum_dtype``).

    Returns a dict with ``N``, ``M``, ``dtype``, ``linear_solver``, ``ms_per_iteration``,
    ``setup_ms`` (the basis and the first pass), ``data_passes`` per iteration and, with
    ``floor=True``, ``gram_floor_ms`` and ``step_over_floor``.
    """
    _, start, x, y = random_problem(n, rank, dim, terms, dtype=dtype)
    totals, infos = [], []
    for k in steps:
        # The data are arguments, not constants closed over (XLA would fold them).
        run = jax.jit(lambda m, x, y, k=k: idn.solve(
            m, x, y, throw=False, max_steps=k, xtol=0.0, ftol=0.0, chunk_size=chunk_size,
            linear_solver=linear_solver, **options,
        ))
        infos.append(run(start, x, y)[1])
        totals.append(median_ms(lambda: run(start, x, y), repeats))
    span = steps[1] - steps[0]
    per_iteration = (totals[1] - totals[0]) / span
    row = {
        "N": n, "M": 4 * rank * dim * terms, "rank": rank, "dim": dim, "terms": terms,
        "dtype": str(jnp.dtype(start.dtype)), "linear_solver": infos[-1].linear_solver,
        "ms_per_iteration": per_iteration, "setup_ms": totals[0] - steps[0] * per_iteration,
        "data_passes_per_iteration":
            (int(infos[1].data_passes) - int(infos[0].data_passes)) / span,
    }
    if floor:
        row["gram_floor_ms"] = gram_floor_ms(n, row["M"], start.dtype, repeats)
        row["step_over_floor"] = per_iteration / row["gram_floor_ms"]
    return row
