"""One exact SNR step on an accelerator against its floor, the J^T J product (and a sweep).

    python -m benchmarks.gpu_step [--out results] [--n 1000000] [--rank 32]

For an exactly representable AION target with ``N`` points, rank ``r``, 4 dimensions and 2
terms (``M = 32 r``; ``M = 1024`` by default) and a start 5% off: the time of one inner
iteration of ``idn.solve`` (the difference of the median times, after warm-up, of solves of 2
and 6 iterations with the tolerances off, so the set-up cancels),
the time of ``J^T J`` for a random ``N x M`` matrix of the same dtype (the matrix product every
dense step contains: the floor), and the time of the pass that forms ``J``, ``J^T r`` and
``Phi``. In float64 and float32. Then time per iteration against ``N`` at ``M = 128``.

Meant for a GPU (it runs on a CPU too, slowly). The measuring code is
``infinite_descent.bench.timing`` (notebook 03 uses it too). Prints a table and writes
``OUT/gpu_step.json``.

On a CPU, ``--m-sweep`` gives the step against its floor as ``M`` grows (ranks 4 to 32:
``M = 128`` to ``1024``) at ``--m-sweep-n`` points, in float64 and float32, and
``--skip-big`` leaves out the ``N = 1e6`` step:

    python -m benchmarks.gpu_step --skip-big --sweep --m-sweep 4 8 16 32 --m-sweep-n 20000
"""

from __future__ import annotations

from benchmarks._common import machine, parser, print_table, progress, write_json


def measure(n, rank, dtype):
    import jax
    import jax.numpy as jnp

    import equinox as eqx

    import infinite_descent as idn
    from infinite_descent.bench import timing

    row = timing.iteration_time(n, rank, 4, 2, dtype=dtype)
    _, start, x, y = timing.random_problem(n, rank, 4, 2, dtype=dtype)
    F = idn.resummed_residual(start, x, y)
    delta = jax.tree.map(jnp.zeros_like, eqx.filter(start, eqx.is_inexact_array))
    # Phi forms J and J^T r in the same pass; normal_equations adds J^T J.
    row["jacobian_pass_ms"] = timing.median_ms(lambda: F.loss(delta))
    row["pass_with_gram_ms"] = timing.median_ms(lambda: F.normal_equations(delta))
    gram = F.normal_equations(delta)[2]
    factor = jax.jit(lambda g: jax.scipy.linalg.cho_solve(
        jax.scipy.linalg.cho_factor(g + jnp.diag(jnp.diagonal(g) * 0.1)),
        jnp.ones(g.shape[0], g.dtype),
    ))
    row["cholesky_ms"] = timing.median_ms(lambda: factor(gram))
    return row


def main() -> None:
    import jax
    import jax.numpy as jnp

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--sweep", type=int, nargs="*", default=[1_000, 10_000, 100_000, 1_000_000])
    p.add_argument("--m-sweep", type=int, nargs="*", default=[],
                   help="ranks for a sweep over M = 32 rank at --m-sweep-n points")
    p.add_argument("--m-sweep-n", type=int, default=20_000)
    p.add_argument("--skip-big", action="store_true", help="leave out the N = --n step")
    args = p.parse_args()
    print("devices:", jax.devices(), flush=True)
    rows = []
    for rank in progress(args.m_sweep, "sweep over M"):
        for dtype in (jnp.float64, jnp.float32):
            print(f"M sweep: N = {args.m_sweep_n:,}, M = {32 * rank}, {jnp.dtype(dtype)} ...",
                  flush=True)
            rows.append({"what": "M sweep", **measure(args.m_sweep_n, rank, dtype)})
    for dtype in progress(() if args.skip_big else (jnp.float64, jnp.float32), "big step"):
        print(f"N = {args.n:,}, M = {32 * args.rank}, {jnp.dtype(dtype)} ...", flush=True)
        rows.append({"what": "big step", **measure(args.n, args.rank, dtype)})
        print(rows[-1], flush=True)
    for n in progress(args.sweep, "sweep over N"):
        print(f"sweep N = {n:,}, M = 128 ...", flush=True)
        rows.append({"what": "sweep", **measure(n, 4, jnp.float64)})
    print_table(rows, [("what", "what"), ("N", "N"), ("M", "M"), ("dtype", "dtype"),
                       ("ms_per_iteration", "ms/iteration"), ("gram_floor_ms", "J^T J ms"),
                       ("jacobian_pass_ms", "J pass ms"), ("pass_with_gram_ms", "J+gram ms"),
                       ("cholesky_ms", "Cholesky ms"), ("setup_ms", "set-up ms"),
                       ("step_over_floor", "step/floor")])
    path = write_json(args.out, "gpu_step.json", {"machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
