"""Runs of Infinite Descent and of the optimisers users would otherwise pick, measured alike.

Shared by ``benchmarks/`` and the notebooks (which must run from the installed package
alone). Needs the ``benchmarks`` extra: ``pip install "infinite_descent[benchmarks]"``
(optimistix, scipy). Not imported by ``import infinite_descent``.

Every runner is built once for a data set (so JAX compiles once) and then called on a start
model; it returns a :class:`MethodRun` whose ``final_loss`` is always
``Phi = sum_n (f(x_n) - y_n)^2`` recomputed by :func:`loss` from the final model, whatever the
method minimises internally. ``wall_ms`` is the median over ``repeats`` runs after a warm-up
run (so compilation is excluded). Counting conventions (``None`` where a field does not
apply):

- ``outer_steps``: the method's own iterations (Infinite Descent: 1 update).
- ``inner_steps``: work inside an outer step (SNR inner iterations; line-search trials; CG
  iterations).
- ``data_passes``: sweeps over the ``N`` points, whatever each computes: a value, a gradient,
  a Jacobian with its residuals, or a Hessian-vector product each count once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ._models._aion import AION
from ._transform import solve_once

__all__ = [
    "MethodRun",
    "loss",
    "median_wall_ms",
    "infinite_descent",
    "optimistix_levenberg_marquardt",
    "optax_lbfgs",
    "optax_adam",
    "steepest_descent_armijo",
    "scipy_newton_cg",
    "scipy_least_squares",
]


@dataclasses.dataclass
class MethodRun:
    """One method from one start: what it reached and what it cost."""

    method: str
    final_loss: float
    outer_steps: int | None
    inner_steps: int | None
    data_passes: int | None
    wall_ms: float
    model: AION
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The JSON row of a results table."""
        return {
            "source": "measured",
            "method": self.method,
            "outer_steps": self.outer_steps,
            "inner_steps": self.inner_steps,
            "data_passes": self.data_passes,
            "wall_ms": self.wall_ms,
            "final_loss": self.final_loss,
            **self.extra,
        }


def loss(model: AION, x, y) -> float:
    """``Phi = sum_n (f(x_n) - y_n)^2``, the one loss every method is judged by."""
    return float(_loss(model, x, y))


@eqx.filter_jit
def _loss(model, x, y):
    return jnp.sum((jax.vmap(model)(x) - y) ** 2)


def median_wall_ms(fn: Callable[[], Any], repeats: int = 5) -> tuple[float, Any]:
    """Median wall time of ``fn()`` in milliseconds after one warm-up call, and its result.

    The result is blocked on (``jax.block_until_ready``) inside the timed region.
    """
    out = jax.block_until_ready(fn())  # warm-up: compilation and caches
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)), out


def _split(model: AION):
    return eqx.partition(model, eqx.is_inexact_array)


def infinite_descent(x, y, **solve_options) -> Callable[..., MethodRun]:
    """One ``idn.solve_once`` update, jit-compiled, from the given start."""
    opt = solve_once(**solve_options)

    @eqx.filter_jit
    def update(model):
        state = opt.init(model)
        updates, state = opt.update(None, state, model, x=x, y=y)
        return eqx.apply_updates(model, updates), state

    def run(model: AION, repeats: int = 5) -> MethodRun:
        ms, (final, state) = median_wall_ms(lambda: update(model), repeats)
        return MethodRun(
            method="Infinite Descent",
            final_loss=loss(final, x, y),
            outer_steps=1,
            inner_steps=int(state.inner_steps),
            data_passes=int(state.data_passes),
            wall_ms=ms,
            model=final,
        )

    return run


def optimistix_levenberg_marquardt(
    x, y, *, rtol: float = 1e-12, atol: float = 1e-12, max_steps: int = 256
) -> Callable[..., MethodRun]:
    """``optimistix.least_squares`` with ``LevenbergMarquardt`` on the residuals ``f - y``.

    Data passes: one per step (residuals and Jacobian at the new point) plus the start, the
    same accounting as Infinite Descent's.
    """
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=rtol, atol=atol)

    @eqx.filter_jit
    def fit(model):
        params, static = _split(model)

        def residuals(p, _):
            return jax.vmap(eqx.combine(p, static))(x) - y

        sol = optx.least_squares(residuals, solver, params, max_steps=max_steps, throw=False)
        return eqx.combine(sol.value, static), sol.stats["num_steps"]

    def run(model: AION, repeats: int = 5) -> MethodRun:
        ms, (final, steps) = median_wall_ms(lambda: fit(model), repeats)
        return MethodRun(
            method="optimistix LevenbergMarquardt",
            final_loss=loss(final, x, y),
            outer_steps=int(steps),
            inner_steps=None,
            data_passes=int(steps) + 1,
            wall_ms=ms,
            model=final,
        )

    return run


def _objective(static, x, y):
    def phi(params):
        return jnp.sum((jax.vmap(eqx.combine(params, static))(x) - y) ** 2)

    return phi


def optax_lbfgs(
    x, y, *, max_steps: int = 1000, gtol: float = 1e-14
) -> Callable[..., MethodRun]:
    """``optax.lbfgs`` (zoom line search) on ``Phi`` until ``||grad|| < gtol``.

    Data passes: every line-search trial evaluates ``Phi`` and its gradient (one pass each).
    """

    @eqx.filter_jit
    def fit(model):
        params, static = _split(model)
        phi = _objective(static, x, y)
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(phi)

        def body(carry):
            params, state, trials = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = opt.update(
                grad, state, params, value=value, grad=grad, value_fn=phi
            )
            trials = trials + optax.tree.get(state, "num_linesearch_steps").astype(trials.dtype)
            return optax.apply_updates(params, updates), state, trials

        def cond(carry):
            _, state, _ = carry
            count = optax.tree.get(state, "count")
            grad = optax.tree.get(state, "grad")
            return (count == 0) | ((count < max_steps) & (optax.tree.norm(grad) >= gtol))

        init = (params, opt.init(params), jnp.zeros((), jnp.int32))
        params, state, trials = jax.lax.while_loop(cond, body, init)
        return eqx.combine(params, static), optax.tree.get(state, "count"), trials

    def run(model: AION, repeats: int = 5) -> MethodRun:
        ms, (final, steps, trials) = median_wall_ms(lambda: fit(model), repeats)
        return MethodRun(
            method="optax L-BFGS",
            final_loss=loss(final, x, y),
            outer_steps=int(steps),
            inner_steps=int(trials),
            data_passes=int(trials) + 1,
            wall_ms=ms,
            model=final,
        )

    return run


def optax_adam(x, y, *, learning_rate: float, steps: int = 2000) -> Callable[..., MethodRun]:
    """``optax.adam`` on ``Phi`` for a fixed number of full-batch steps (one pass each)."""

    @eqx.filter_jit
    def fit(model):
        params, static = _split(model)
        phi = _objective(static, x, y)
        opt = optax.adam(learning_rate)
        grad_fn = jax.grad(phi)

        def body(_, carry):
            params, state = carry
            updates, state = opt.update(grad_fn(params), state, params)
            return optax.apply_updates(params, updates), state

        params, _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params)))
        return eqx.combine(params, static)

    def run(model: AION, repeats: int = 5) -> MethodRun:
        ms, final = median_wall_ms(lambda: fit(model), repeats)
        return MethodRun(
            method="optax Adam",
            final_loss=loss(final, x, y),
            outer_steps=steps,
            inner_steps=None,
            data_passes=steps,
            wall_ms=ms,
            model=final,
            extra={"learning_rate": learning_rate},
        )

    return run


def steepest_descent_armijo(
    x, y, *, steps: int = 1000, c1: float = 1e-4, rho: float = 0.5, max_backtracking: int = 60,
    record_path: bool = False,
) -> Callable[..., MethodRun]:
    """Steepest descent with Armijo backtracking, as the paper sets it.

    Built from optax: ``sgd(1)`` (the direction ``-grad``) chained with
    ``scale_by_backtracking_linesearch(slope_rtol=c1, decrease_factor=rho,
    max_learning_rate=1)``; a huge ``increase_factor`` makes every iteration start from the
    unit step, as the paper's does. Data passes: one gradient per iteration plus one value per
    line-search trial.
    """
    linesearch = optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=max_backtracking,
        slope_rtol=c1,
        decrease_factor=rho,
        increase_factor=1e300,
        max_learning_rate=1.0,
    )
    opt = optax.chain(optax.sgd(1.0), linesearch)

    @eqx.filter_jit
    def fit(model):
        params, static = _split(model)
        phi = _objective(static, x, y)
        value_and_grad = jax.value_and_grad(phi)

        def body(carry, _):
            params, state, trials = carry
            value, grad = value_and_grad(params)
            updates, state = opt.update(
                grad, state, params, value=value, grad=grad, value_fn=phi
            )
            trials = trials + optax.tree.get(state, "num_linesearch_steps").astype(trials.dtype)
            params = optax.apply_updates(params, updates)
            return (params, state, trials), (params if record_path else None)

        init = (params, opt.init(params), jnp.zeros((), jnp.int32))
        (params, _, trials), path = jax.lax.scan(body, init, None, length=steps)
        return eqx.combine(params, static), trials, path

    def run(model: AION, repeats: int = 5) -> MethodRun:
        ms, (final, trials, path) = median_wall_ms(lambda: fit(model), repeats)
        extra = {}
        if record_path:
            extra["path"] = path
        return MethodRun(
            method="Steepest Descent",
            final_loss=loss(final, x, y),
            outer_steps=steps,
            inner_steps=int(trials),
            data_passes=steps + int(trials),
            wall_ms=ms,
            model=final,
            extra=extra,
        )

    return run


def _numpy_objective(model: AION, x, y):
    params, static = _split(model)
    flat, unravel = ravel_pytree(params)
    phi = _objective(static, x, y)

    def phi_flat(v):
        return phi(unravel(v))

    value = jax.jit(phi_flat)
    grad = jax.jit(jax.grad(phi_flat))
    hvp = jax.jit(lambda v, p: jax.jvp(jax.grad(phi_flat), (v,), (p,))[1])
    return np.asarray(flat), unravel, static, value, grad, hvp


def scipy_newton_cg(
    x, y, *, max_iterations: int = 50, stop_below: float = 1e-8, record_path: bool = False
) -> Callable[..., MethodRun]:
    """``scipy.optimize.minimize(method="Newton-CG")`` with JAX's exact gradient and
    Hessian-vector products, up to ``max_iterations`` or until ``Phi < stop_below`` (the
    paper's setting). Data passes: function + gradient + Hessian-vector product evaluations.
    """
    from scipy.optimize import minimize

    def run(model: AION, repeats: int = 5) -> MethodRun:
        v0, unravel, static, value, grad, hvp = _numpy_objective(model, x, y)

        def f(v):
            return float(value(v))

        def g(v):
            return np.asarray(grad(v))

        def hessp(v, p):
            return np.asarray(hvp(v, p))

        path = []

        def callback(intermediate_result):
            if record_path:
                path.append(np.array(intermediate_result.x))
            if intermediate_result.fun < stop_below:
                raise StopIteration

        def fit():
            path.clear()
            return minimize(
                f, v0, jac=g, hessp=hessp, method="Newton-CG", callback=callback,
                options={"maxiter": max_iterations},
            )

        ms, res = median_wall_ms(fit, repeats)
        final = eqx.combine(unravel(jnp.asarray(res.x)), static)
        extra = {"path": np.array([v0] + path)} if record_path else {}
        return MethodRun(
            method="Newton-CG",
            final_loss=loss(final, x, y),
            outer_steps=int(res.nit),
            inner_steps=int(res.get("nhev", 0)),
            data_passes=int(res.nfev) + int(res.njev) + int(res.get("nhev", 0)),
            wall_ms=ms,
            model=final,
            extra=extra,
        )

    return run


def scipy_least_squares(
    x, y, *, tol: float = 1e-15, max_nfev: int | None = None
) -> Callable[..., MethodRun]:
    """``scipy.optimize.least_squares(method="lm")`` (MINPACK) with JAX's exact Jacobian.

    ``ftol = xtol = gtol = tol`` (the tightest MINPACK allows is just above machine epsilon).
    Data passes: residual evaluations plus Jacobian evaluations.
    """
    from scipy.optimize import least_squares

    def run(model: AION, repeats: int = 5) -> MethodRun:
        params, static = _split(model)
        v0, unravel = ravel_pytree(params)

        def residual_flat(v):
            return jax.vmap(eqx.combine(unravel(v), static))(x) - y

        residual = jax.jit(residual_flat)
        jacobian = jax.jit(jax.jacfwd(residual_flat))

        def fit():
            return least_squares(
                lambda v: np.asarray(residual(v)), np.asarray(v0),
                jac=lambda v: np.asarray(jacobian(v)), method="lm",
                ftol=tol, xtol=tol, gtol=tol, max_nfev=max_nfev,
            )

        ms, res = median_wall_ms(fit, repeats)
        final = eqx.combine(unravel(jnp.asarray(res.x)), static)
        njev = int(res.njev) if res.njev is not None else 0
        return MethodRun(
            method="scipy least_squares",
            final_loss=loss(final, x, y),
            outer_steps=njev,
            inner_steps=int(res.nfev),
            data_passes=int(res.nfev) + njev,
            wall_ms=ms,
            model=final,
        )

    return run
