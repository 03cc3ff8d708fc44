"""Does variable projection widen the basin of convergence? A measurement (float64).

    python -m benchmarks.variable_projection [--out results] [--starts 16] [--quick]

In an AION the amplitude and phase of each first-dimension atom enter linearly:
``A e^{alpha x} cos(omega x + phi) = e^{alpha x} (a cos(omega x) - b sin(omega x))`` with
``a = A cos phi``, ``b = A sin phi``, and the rest of the rank multiplies it. Variable
projection (Golub-Pereyra) eliminates those ``2 r P`` coefficients exactly: for the remaining
(nonlinear) parameters ``theta`` it solves the linear least squares for ``(a, b)`` and
minimises the projected residual ``r(theta) = B(theta) c*(theta) - y``, here with
``optimistix.LevenbergMarquardt`` and the exact Jacobian of ``r`` by autodiff through the
least-squares solve. The fitted model is then rebuilt (``A = |a + i b|``,
``phi = arg(a + i b)``) and polished by ``idn.solve`` (at most 50 inner iterations).

Compared, from the same random starts (``AION``'s default initialisation, keys 0..starts-1;
variable projection uses their nonlinear parameters): ``idn.solve`` on the full problem
(500 inner iterations), ``optimistix.LevenbergMarquardt`` on the full problem (the same
solver as the projected one, 500 steps), and LM on the projected problem (500 steps) then
the polish. Success: ``Phi / sum y^2 < 1e-20``.

Problem classes: one-dimensional sums of damped cosines (rank 3 and 5, N = 200 uniform
points in ``[-1, 1]``), the two-dimensional rank-3 AION and the four-dimensional two-term
rank-2 AION (the hard class), N = 1000 uniform points in ``[-1, 1]^d``; targets are random
AIONs (default initialisation, their own keys). Reported: successes, median wall time after
compilation (both projected rows: the projected solve and the polish together), median
steps. Prints a table and writes ``OUT/variable_projection.json``.
"""

from __future__ import annotations

import time

from benchmarks._common import machine, parser, print_table, write_json

LEVEL = 1e-20


def _projection(model, x, y):
    """``(residual, rebuild, theta0)`` of the projected problem for an AION ``model``."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    # Nonlinear parameters: alpha and omega everywhere, A and phi of dimensions 1.. .
    theta0 = {"alpha": model.alpha, "omega": model.omega, "A": model.A[:, 1:],
              "phi": model.phi[:, 1:]}

    def basis(theta):
        alpha0, omega0 = theta["alpha"][:, 0], theta["omega"][:, 0]  # (r, P)
        x0 = x[:, 0][:, None, None]
        growth = jnp.exp(alpha0[None] * x0)
        cos_part = growth * jnp.cos(omega0[None] * x0)  # (N, r, P)
        sin_part = -growth * jnp.sin(omega0[None] * x0)
        rest = jnp.ones((x.shape[0], alpha0.shape[0]), x.dtype)
        if x.shape[1] > 1:
            xs = x[:, 1:][:, None, :, None]  # (N, 1, d-1, 1)
            atoms = theta["A"][None] * jnp.exp(theta["alpha"][None, :, 1:] * xs) * jnp.cos(
                theta["omega"][None, :, 1:] * xs + theta["phi"][None])
            rest = jnp.prod(jnp.sum(atoms, axis=-1), axis=-1)  # (N, r)
        columns = jnp.concatenate([cos_part * rest[..., None], sin_part * rest[..., None]],
                                  axis=-1)  # (N, r, 2P)
        return columns.reshape(x.shape[0], -1)

    def coefficients(theta):
        # Least squares through a QR factorisation: differentiable, and stable where the
        # columns are nearly dependent (an SVD's derivative is not, at repeated values).
        q, r = jnp.linalg.qr(basis(theta))
        return jax.scipy.linalg.solve_triangular(r, q.T @ y)

    def residual(theta, _=None):
        return basis(theta) @ coefficients(theta) - y

    def rebuild(theta):
        c = coefficients(theta).reshape(model.rank, 2, model.terms)
        a, b = c[:, 0], c[:, 1]
        A = model.A.at[:, 1:].set(theta["A"]).at[:, 0].set(jnp.hypot(a, b))
        phi = model.phi.at[:, 1:].set(theta["phi"]).at[:, 0].set(jnp.arctan2(b, a))
        return eqx.tree_at(lambda m: (m.A, m.alpha, m.omega, m.phi), model,
                           (A, theta["alpha"], theta["omega"], phi))

    return residual, rebuild, theta0


def _problems(quick):
    import jax

    import infinite_descent as idn

    specs = [(1, 3, 1, 200), (2, 3, 1, 1000)] if quick else [
        (1, 3, 1, 200), (1, 5, 1, 200), (2, 3, 1, 1000), (4, 2, 2, 1000)]
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


def _timed(fn, *args):
    import jax

    jax.block_until_ready(fn(*args))  # compile (and warm up)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, 1e3 * (time.perf_counter() - t0)


def main() -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optimistix as optx

    import infinite_descent as idn

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=16)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    began = time.perf_counter()
    solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-12)
    rows = []
    for prob in _problems(args.quick):
        x, y = prob["x"], prob["y"]
        scale = float(jnp.sum(y * y))
        print(f"{prob['name']} ...", flush=True)

        @eqx.filter_jit
        def ours(model):
            fitted, info = idn.solve(model, x, y, max_steps=500, throw=False)
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
            residual, rebuild, theta0 = _projection(model, x, y)
            sol = optx.least_squares(residual, solver, theta0, max_steps=500, throw=False)
            rebuilt = rebuild(sol.value)
            r = residual(sol.value)
            polished, info = idn.solve(rebuilt, x, y, max_steps=50, throw=False)
            return r @ r, sol.stats["num_steps"], info.loss, info.inner_steps

        results = {"idn.solve (full)": [], "optimistix LM (full)": [],
                   "optimistix LM (projected)": [], "projected LM + idn.solve polish": []}
        for i in range(args.starts):
            start = idn.AION(prob["rank"], prob["dim"], prob["terms"], key=jax.random.key(i))
            (loss, steps), ms = _timed(ours, start)
            results["idn.solve (full)"].append((float(loss), int(steps), ms))
            (loss, steps), ms = _timed(full_lm, start)
            results["optimistix LM (full)"].append((float(loss), int(steps), ms))
            (loss, steps, polished, polish_steps), ms = _timed(projected_lm, start)
            results["optimistix LM (projected)"].append((float(loss), int(steps), ms))
            results["projected LM + idn.solve polish"].append(
                (float(polished), int(steps) + int(polish_steps), ms))
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
