"""Does variable projection widen the basin of convergence? A measurement (float64).

    python -m benchmarks.variable_projection [--out results] [--starts 16] [--quick]

In an AION the amplitude and phase of each first-dimension atom enter linearly:
``A e^{alpha x} cos(omega x + phi) = e^{alpha x} (a cos(omega x) - b sin(omega x))`` with
``a = A cos phi``, ``b = A sin phi``, and the rest of the rank multiplies it. Variable
projection (Golub-Pereyra) eliminates those ``2 r P`` coefficients exactly: for the remaining
(nonlinear) parameters ``theta`` it solves the linear least squares for ``(a, b)`` and
minimises the projected residual ``r(theta) = B(theta) c*(theta) - y`` with the exact
Jacobian (``variable_projection=True`` of ``idn.solve``; for optimistix the same residual is
written here with ``jnp`` and differentiated by autodiff through its QR factorisation).

Compared, from the same random starts (``AION``'s default initialisation, keys
0..starts-1; the projected solves use their nonlinear parameters), each with a budget of 500
inner iterations (steps): ``idn.solve`` on the full problem and with
``variable_projection=True``; ``optimistix.LevenbergMarquardt`` (rtol = atol = 1e-12) on the
full problem and on the projected residual (the same elimination under another solver).
Success: ``Phi / sum y^2 < 1e-20``.

Problem classes (targets: random AIONs, default initialisation, their own keys):
one-dimensional sums of damped cosines of rank 3, 4 and 5 (N = 200 uniform points in
``[-1, 1]``); AIONs of dimension 2 (rank 3) and 3 (rank 4), and the four-dimensional
two-term rank-2 AION (the hard class), N = 1000 uniform points in ``[-1, 1]^d``. Reported:
successes, median final ``Phi / sum y^2``, median steps, median wall time of a run after
compilation. Prints a table and writes ``OUT/variable_projection.json``.
"""

from __future__ import annotations

import time

from benchmarks._common import machine, parser, print_table, progress, write_json

LEVEL = 1e-20


def _problems(quick):
    import jax

    import infinite_descent as idn

    specs = [(1, 4, 1, 200), (2, 3, 1, 1000)] if quick else [
        (1, 3, 1, 200), (1, 4, 1, 200), (1, 5, 1, 200), (2, 3, 1, 1000), (3, 4, 1, 1000),
        (4, 2, 2, 1000)]
    out = []
    for dim, rank, terms, n in specs:
        k1, k2 = jax.random.split(jax.random.key(31 * dim + 7 * rank + n))
        target = idn.AION(rank, dim, terms, key=k1)
        if dim == 1:
            x = jax.numpy.linspace(-1.0, 1.0, n)[:, None]
        else:
            x = jax.random.uniform(k2, (n, dim), minval=-1.0, maxval=1.0)
        out.append({"name": f"AION d={dim} r={rank} P={terms} N={n}", "x": x,
                    "y": jax.vmap(target)(x), "rank": rank, "dim": dim, "terms": terms})
    return out


def projected_residual(model, x, y):
    """The projected residual of an AION over ``(x, y)`` and its nonlinear parameters.

    ``theta``: ``alpha`` and ``omega`` in every dimension, ``A`` and ``phi`` in the dimensions
    after the first. For fixed ``theta`` the first dimension's atoms give ``2 r P`` columns
    ``e^{alpha x_0} (cos(omega x_0), -sin(omega x_0))`` times the rest of their rank; the
    coefficients are the least-squares solution through a QR factorisation.
    """
    import jax.numpy as jnp
    from jax.scipy.linalg import solve_triangular

    theta = {"alpha": model.alpha, "omega": model.omega, "A": model.A[:, 1:],
             "phi": model.phi[:, 1:]}

    def residual(q):
        x0 = x[:, :1, None]  # (N, 1, 1) against (r, P)
        e = jnp.exp(q["alpha"][:, 0] * x0)
        rest = x[:, None, 1:, None]  # (N, 1, d - 1, 1)
        atoms = jnp.sum(q["A"] * jnp.exp(q["alpha"][:, 1:] * rest)
                        * jnp.cos(q["omega"][:, 1:] * rest + q["phi"]), axis=-1)
        others = jnp.prod(atoms, axis=-1)[:, :, None]  # (N, r, 1)
        columns = jnp.concatenate([e * jnp.cos(q["omega"][:, 0] * x0) * others,
                                   -e * jnp.sin(q["omega"][:, 0] * x0) * others], axis=-1)
        basis = columns.reshape(x.shape[0], -1)
        qmat, rmat = jnp.linalg.qr(basis)
        return basis @ solve_triangular(rmat, qmat.T @ y) - y

    return residual, theta


def main() -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optimistix as optx

    import infinite_descent as idn
    from infinite_descent.bench import peers

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=16)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    began = time.perf_counter()
    solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-12)
    rows = []
    for prob in progress(_problems(args.quick), "problems"):
        x, y = prob["x"], prob["y"]
        scale = float(jnp.sum(y * y))
        print(f"{prob['name']} ...", flush=True)

        @eqx.filter_jit
        def ours(model, projection):
            _, info = idn.solve(model, x, y, max_steps=500, throw=False,
                                variable_projection=projection)
            return info.loss, info.inner_steps

        @eqx.filter_jit
        def full_lm(model):
            params, static = eqx.partition(model, eqx.is_inexact_array)

            def residual(q, _):
                return jax.vmap(eqx.combine(q, static))(x) - y

            sol = optx.least_squares(residual, solver, params, max_steps=500, throw=False)
            r = residual(sol.value, None)
            return r @ r, sol.stats["num_steps"]

        @eqx.filter_jit
        def projected_lm(model):
            residual, theta = projected_residual(model, x, y)
            sol = optx.least_squares(lambda q, _: residual(q), solver, theta,
                                     max_steps=500, throw=False)
            r = residual(sol.value)
            return r @ r, sol.stats["num_steps"]

        methods = {
            "idn.solve": lambda m: ours(m, False),
            "idn.solve, variable_projection=True": lambda m: ours(m, True),
            "optimistix LM": full_lm,
            "optimistix LM, projected": projected_lm,
        }
        results = {name: [] for name in methods}
        for i in progress(range(args.starts), "starts"):
            start = idn.AION(prob["rank"], prob["dim"], prob["terms"], key=jax.random.key(i))
            for name, fn in methods.items():
                # One warm-up (compilation), then one timed run.
                ms, (loss, steps) = peers.median_wall_ms(lambda: fn(start), repeats=1)
                results[name].append((float(loss), int(steps), ms))
        for method, runs in results.items():
            losses = np.array([r[0] for r in runs]) / scale
            rows.append({
                "problem": prob["name"], "method": method, "starts": len(runs),
                "successes": int(np.sum(losses < LEVEL)),
                "median_relative_loss": float(np.median(losses)),
                "median_steps": float(np.median([r[1] for r in runs])),
                "median_ms": float(np.median([r[2] for r in runs])),
            })
        print_table([r for r in rows if r["problem"] == prob["name"]], [
            ("method", "method"), ("successes", "ok"), ("starts", "of"),
            ("median_relative_loss", "median Phi/sum y^2"), ("median_steps", "median steps"),
            ("median_ms", "median ms (whole run)"),
        ])
        path = write_json(args.out, "variable_projection.json", {
            "machine": machine(), "starts": args.starts, "level": LEVEL, "rows": rows,
            "seconds": time.perf_counter() - began,
        })
    print(f"\nwrote {path} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
