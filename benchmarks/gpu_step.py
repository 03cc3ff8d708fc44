"""One exact SNR step on an accelerator against its floor, the J^T J product (and a sweep).

    python -m benchmarks.gpu_step [--out results] [--n 1000000] [--rank 32]

For an exactly representable AION target with ``N`` points, rank ``r``, 4 dimensions and 2
terms (``M = 32 r``; ``M = 1024`` by default) and a start 5% off: the time of one inner
iteration of ``idn.solve`` (the difference of the median times, after warm-up, of solves of 2
and 6 iterations with the tolerances off, so the set-up cancels),
the time of ``J^T J`` for a random ``N x M`` matrix of the same dtype (the matrix product every
dense step contains: the floor), and the time of the pass that forms ``J``, ``J^T r`` and
``Phi``. In float64 and float32. Then time per iteration against ``N`` at ``M = 128``.

Meant for a GPU (it runs on a CPU too, slowly). Prints a table and writes ``OUT/gpu_step.json``.
"""

from __future__ import annotations

import time

from benchmarks._common import machine, parser, print_table, write_json


def _median_ms(fn, repeats=5):
    import jax
    import numpy as np

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - began)
    return 1e3 * float(np.median(times))


def measure(n, rank, dtype, steps=(2, 6), chunk_size="auto"):
    import jax
    import jax.numpy as jnp

    import infinite_descent as idn
    from infinite_descent._resummation import AIONResummation, stack_params

    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    target = idn.AION(rank, 4, 2, key=k1, dtype=dtype)
    x = jax.random.uniform(k2, (n, 4), dtype, minval=-1.0, maxval=1.0)
    y = jax.lax.map(target, x, batch_size=65536)
    leaves, treedef = jax.tree.flatten(target)
    keys = jax.random.split(k3, len(leaves))
    start = jax.tree.unflatten(
        treedef, [a * (1 + 0.05 * jax.random.normal(k, a.shape, dtype)) for k, a in zip(keys, leaves)]
    )
    num_params = 4 * rank * 4 * 2

    # The data are arguments, not constants closed over: XLA would constant-fold them. The
    # time of one iteration is the difference between solves of two lengths (so the set-up,
    # the basis and the first pass, cancels).
    totals = []
    for k in steps:
        solve = jax.jit(lambda m, x, y, k=k: idn.solve(
            m, x, y, throw=False, max_steps=k, xtol=0.0, ftol=0.0, chunk_size=chunk_size,
            linear_solver="dense",
        ))
        _, info = solve(start, x, y)
        assert int(info.inner_steps) == k
        totals.append(_median_ms(lambda: solve(start, x, y)))
    step_ms = (totals[1] - totals[0]) / (steps[1] - steps[0])
    setup_ms = totals[0] - steps[0] * step_ms

    jac = jax.random.normal(k4, (n, num_params), dtype)
    gram = jax.jit(lambda j: j.T @ j)
    gram_ms = _median_ms(lambda: gram(jac))
    del jac

    problem = AIONResummation(start, x, y)
    delta = jnp.zeros_like(stack_params(start))
    one_pass = jax.jit(lambda p, d: p.normal_equations(d, gram=False))
    pass_ms = _median_ms(lambda: one_pass(problem, delta))
    with_gram = jax.jit(lambda p, d: p.normal_equations(d, gram=True))
    pass_gram_ms = _median_ms(lambda: with_gram(problem, delta))
    eq = with_gram(problem, delta)
    factor = jax.jit(lambda g: jax.scipy.linalg.cho_solve(
        jax.scipy.linalg.cho_factor(g + jnp.diag(jnp.diagonal(g) * 0.1)), jnp.ones(g.shape[0], g.dtype)
    ))
    factor_ms = _median_ms(lambda: factor(eq.gram))
    return {
        "N": n, "M": num_params, "dtype": str(jnp.dtype(dtype)), "linear_solver": info.linear_solver,
        "step_ms": step_ms, "gram_floor_ms": gram_ms, "jacobian_pass_ms": pass_ms,
        "pass_with_gram_ms": pass_gram_ms, "cholesky_ms": factor_ms, "setup_ms": setup_ms,
        "step_over_floor": step_ms / gram_ms, "final_loss": float(info.loss),
    }


def main() -> None:
    import jax
    import jax.numpy as jnp

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--sweep", type=int, nargs="*", default=[1_000, 10_000, 100_000, 1_000_000])
    args = p.parse_args()
    print("devices:", jax.devices(), flush=True)
    rows = []
    for dtype in (jnp.float64, jnp.float32):
        print(f"N = {args.n:,}, M = {32 * args.rank}, {jnp.dtype(dtype)} ...", flush=True)
        rows.append({"what": "big step", **measure(args.n, args.rank, dtype)})
        print(rows[-1], flush=True)
    for n in args.sweep:
        print(f"sweep N = {n:,}, M = 128 ...", flush=True)
        rows.append({"what": "sweep", **measure(n, 4, jnp.float64)})
    print_table(rows, [("what", "what"), ("N", "N"), ("M", "M"), ("dtype", "dtype"),
                       ("step_ms", "ms/iteration"), ("gram_floor_ms", "J^T J ms"),
                       ("jacobian_pass_ms", "J pass ms"), ("pass_with_gram_ms", "J+gram ms"),
                       ("cholesky_ms", "Cholesky ms"), ("setup_ms", "set-up ms"),
                       ("step_over_floor", "step/floor")])
    path = write_json(args.out, "gpu_step.json", {"machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
