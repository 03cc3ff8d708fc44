"""Runs of Infinite Descent and of the optimisers users would otherwise pick, measured alike.

Shared by ``benchmarks/`` and the notebooks (which must run from the installed package
alone). Part of the benchmark harness `infinite_descent.bench`, which uses only the
package's public API. Needs the ``benchmarks`` extra: ``pip install
"infinite_descent[benchmarks]"`` (optimistix, scipy). Not imported by ``import infinite_descent``.

Every runner is built once for a data set (so JAX compiles once) and then called on a start
model; it returns a `MethodRun` whose ``final_loss`` is always
``Phi = sum_n (f(x_n) - y_n)^2`` recomputed by `loss` from the final model, whatever the
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
import optimistix as optx
from jax.flatten_util import ravel_pytree
from scipy.optimize import least_squares, minimize

import infinite_descent as idn
from infinite_descent import AION

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
        """The JSON row of a results table (scalar extras such as a learning rate included;
        traces and iterates left out)."""
        scalars = {k: v for k, v in self.extra.items() if isinstance(v, (int, float, str))}
        return {
            "source": "measured",
            "method": self.method,
            "outer_steps": self.outer_steps,
            "inner_steps": self.inner_steps,
            "data_passes": self.data_passes,
            "wall_ms": self.wall_ms,
            "final_loss": self.final_loss,
            **scalars,
        }


def loss(model: AION, x, y) -> float:
    """``Phi = sum_n (f(x_n) - y_n)^2``, the one loss every method is judged by."""
    return float(_loss(model, x, y))


@eqx.filter_jit
def _loss(model, x, y):
    return jnp.sum((jax.vmap(model)(x) - y) ** 2)


def median_wall_ms(fn: Callable[[], Any], repeats: int = 5,
                   warmup: bool = True) -> tuple[float, Any]:
    """Median wall time of ``fn()`` in milliseconds after one warm-up call, and its result.

    The result is blocked on (``jax.block_until_ready``) inside the timed region.
    ``warmup=False`` skips the warm-up call: for a caller that already ran the same compiled
    computation (another start of the same shapes).
    """
    if warmup:
        jax.block_until_ready(fn())  # compilation and caches
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)), out


class EvaluationLog:
    """Counts passes over the data during an instrumented (untimed) run and records ``Phi``.

    ``value(phi)`` records a pass that computed ``Phi``; ``other()`` one that did not (a
    Jacobian or a Hessian-vector product alone).
    """

    def __init__(self):
        self.passes: list[int] = []
        self.loss: list[float] = []
        self.count = 0

    def value(self, phi) -> None:
        self.count += 1
        self.passes.append(self.count)
        self.loss.append(float(phi))

    def other(self) -> None:
        self.count += 1

    def trace(self) -> dict[str, list]:
        """``{"data_passes": [...], "loss": [...]}``: ``Phi`` at each evaluation, in order."""
        return {"data_passes": list(self.passes), "loss": list(self.loss)}


def _log_phi(log: EvaluationLog | None, phi):
    if log is not None:
        jax.debug.callback(log.value, phi, ordered=True)


def _split(model: AION):
    return eqx.partition(model, eqx.is_inexact_array)


def infinite_descent(x, y, *, grid: idn.GridData | None = None, method: str =
                     "Infinite Descent", **solve_options) -> Callable[..., MethodRun]:
    """One ``idn.solve_once`` update, jit-compiled, from the given start. With ``grid`` (the
    same points as ``x, y`` as a `GridData`) the solve runs on the grid path (its Kronecker
    sums); the loss is reported on ``x, y`` either way."""
    opt = idn.solve_once(**solve_options)
    data = {"x": x, "y": y} if grid is None else {"x": grid}

    @eqx.filter_jit
    def update(model):
        state = opt.init(model)
        updates, state = opt.update(None, state, model, **data)
        return eqx.apply_updates(model, updates), state

    def run(model: AION, repeats: int = 5, trace: bool = False,
            warmup: bool = True) -> MethodRun:
        ms, (final, state) = median_wall_ms(lambda: update(model), repeats, warmup)
        extra = {}
        if trace:
            options = {k: v for k, v in solve_options.items() if k != "throw"}
            _, info = idn.solve(model, *data.values(), throw=False, record_history=True,
                                **options)
            steps = int(info.inner_steps)
            history = info.history
            extra["trace"] = {
                "data_passes": list(range(1, steps + 2)),
                "loss": [float(v) for v in history.loss[: steps + 1]],
            }
            extra["iterates"] = jax.tree.map(lambda a: np.asarray(a[: steps + 1]), history.params)
        return MethodRun(
            method=method,
            final_loss=loss(final, x, y),
            outer_steps=1,
            inner_steps=int(state.inner_steps),
            data_passes=int(state.data_passes),
            wall_ms=ms,
            model=final,
            extra=extra,
        )

    return run


def optimistix_levenberg_marquardt(
    x, y, *, rtol: float = 1e-12, atol: float = 1e-12, max_steps: int = 256
) -> Callable[..., MethodRun]:
    """``optimistix.least_squares`` with ``LevenbergMarquardt`` on the residuals ``f - y``.

    Data passes: one per step; each step evaluates the residuals (and the Jacobian) at one
    point, the first at the start (checked by counting evaluations in the traced run). The
    same accounting as Infinite Descent's.
    """
    solver = optx.LevenbergMarquardt(rtol=rtol, atol=atol)

    def make_fit(log):
        @eqx.filter_jit
        def fit(model):
            params, static = _split(model)

            def residuals(p, _):
                r = jax.vmap(eqx.combine(p, static))(x) - y
                _log_phi(log, jnp.sum(r * r))
                return r

            sol = optx.least_squares(residuals, solver, params, max_steps=max_steps, throw=False)
            return eqx.combine(sol.value, static), sol.stats["num_steps"]

        return fit

    fit = make_fit(None)

    def run(model: AION, repeats: int = 5, trace: bool = False,
            warmup: bool = True) -> MethodRun:
        ms, (final, steps) = median_wall_ms(lambda: fit(model), repeats, warmup)
        extra = {}
        if trace:
            log = EvaluationLog()
            jax.block_until_ready(make_fit(log)(model))
            extra["trace"] = log.trace()
        return MethodRun(
            method="optimistix LevenbergMarquardt",
            final_loss=loss(final, x, y),
            outer_steps=int(steps),
            inner_steps=None,
            data_passes=int(steps),
            wall_ms=ms,
            model=final,
            extra=extra,
        )

    return run


def _objective(static, x, y, log: EvaluationLog | None = None):
    def phi(params):
        value = jnp.sum((jax.vmap(eqx.combine(params, static))(x) - y) ** 2)
        _log_phi(log, value)
        return value

    return phi


def _traced(make_fit, model, trace: bool) -> dict:
    """Run the instrumented twin of a JAX runner once and return its ``trace``."""
    if not trace:
        return {}
    log = EvaluationLog()
    jax.block_until_ready(make_fit(log)(model))
    return {"trace": log.trace()}


def optax_lbfgs(
    x, y, *, max_steps: int = 1000, gtol: float = 1e-10
) -> Callable[..., MethodRun]:
    """``optax.lbfgs`` (zoom line search) on ``Phi`` until ``||grad Phi|| < gtol``.

    ``gtol = 1e-10`` takes the toy below the success threshold of the Table 1 reproduction
    (``reproduction.SUCCESS``; measured, the figure is on the figures page); tighter
    tolerances are never met at the rounding floor and only add line-search trials. Data
    passes: every line-search trial evaluates ``Phi`` and its gradient (one pass), plus the
    start.
    """

    def make_fit(log):
        @eqx.filter_jit
        def fit(model):
            params, static = _split(model)
            phi = _objective(static, x, y, log)
            opt = optax.lbfgs()
            value_and_grad = optax.value_and_grad_from_state(phi)

            def body(carry):
                params, state, trials = carry
                value, grad = value_and_grad(params, state=state)
                updates, state = opt.update(
                    grad, state, params, value=value, grad=grad, value_fn=phi
                )
                trials = trials + optax.tree.get(state, "num_linesearch_steps").astype(
                    trials.dtype
                )
                return optax.apply_updates(params, updates), state, trials

            def cond(carry):
                _, state, _ = carry
                count = optax.tree.get(state, "count")
                grad = optax.tree.get(state, "grad")
                return (count == 0) | ((count < max_steps) & (optax.tree.norm(grad) >= gtol))

            init = (params, opt.init(params), jnp.zeros((), jnp.int32))
            params, state, trials = jax.lax.while_loop(cond, body, init)
            return eqx.combine(params, static), optax.tree.get(state, "count"), trials

        return fit

    fit = make_fit(None)

    def run(model: AION, repeats: int = 5, trace: bool = False,
            warmup: bool = True) -> MethodRun:
        ms, (final, steps, trials) = median_wall_ms(lambda: fit(model), repeats, warmup)
        return MethodRun(
            method="optax L-BFGS",
            final_loss=loss(final, x, y),
            outer_steps=int(steps),
            inner_steps=int(trials),
            data_passes=int(trials) + 1,
            wall_ms=ms,
            model=final,
            extra=_traced(make_fit, model, trace),
        )

    return run


def optax_adam(x, y, *, learning_rate: float, steps: int = 2000) -> Callable[..., MethodRun]:
    """``optax.adam`` on ``Phi`` for a fixed number of full-batch steps (one pass each)."""

    def make_fit(log):
        @eqx.filter_jit
        def fit(model):
            params, static = _split(model)
            phi = _objective(static, x, y, log)
            opt = optax.adam(learning_rate)
            grad_fn = jax.grad(phi)

            def body(_, carry):
                params, state = carry
                updates, state = opt.update(grad_fn(params), state, params)
                return optax.apply_updates(params, updates), state

            params, _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params)))
            return eqx.combine(params, static)

        return fit

    fit = make_fit(None)

    def run(model: AION, repeats: int = 5, trace: bool = False,
            warmup: bool = True) -> MethodRun:
        ms, final = median_wall_ms(lambda: fit(model), repeats, warmup)
        return MethodRun(
            method="optax Adam",
            final_loss=loss(final, x, y),
            outer_steps=steps,
            inner_steps=None,
            data_passes=steps,
            wall_ms=ms,
            model=final,
            extra={"learning_rate": learning_rate, **_traced(make_fit, model, trace)},
        )

    return run


def steepest_descent_armijo(
    x, y, *, steps: int = 1000, c1: float = 1e-4, rho: float = 0.5, max_backtracking: int = 60
) -> Callable[..., MethodRun]:
    """Steepest descent with Armijo backtracking, as the paper sets it.

    Built from optax: ``sgd(1)`` (the direction ``-grad``) chained with
    ``scale_by_backtracking_linesearch(slope_rtol=c1, decrease_factor=rho,
    max_learning_rate=1)``; a huge ``increase_factor`` makes every iteration start from the
    unit step, as the paper's does. Data passes: one gradient per iteration plus one value per
    line-search trial. With ``trace=True`` the run also returns the path (``extra["path"]``,
    the parameters after each iteration).
    """
    linesearch = optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=max_backtracking,
        slope_rtol=c1,
        decrease_factor=rho,
        increase_factor=1e300,
        max_learning_rate=1.0,
    )
    opt = optax.chain(optax.sgd(1.0), linesearch)

    def make_fit(log, record_path=False):
        @eqx.filter_jit
        def fit(model):
            params, static = _split(model)
            phi = _objective(static, x, y, log)
            value_and_grad = jax.value_and_grad(phi)

            def body(carry, _):
                params, state, trials = carry
                value, grad = value_and_grad(params)
                updates, state = opt.update(
                    grad, state, params, value=value, grad=grad, value_fn=phi
                )
                trials = trials + optax.tree.get(state, "num_linesearch_steps").astype(
                    trials.dtype
                )
                params = optax.apply_updates(params, updates)
                return (params, state, trials), (params if record_path else None)

            init = (params, opt.init(params), jnp.zeros((), jnp.int32))
            (params, _, trials), path = jax.lax.scan(body, init, None, length=steps)
            return eqx.combine(params, static), trials, path

        return fit

    fit = make_fit(None)

    def run(model: AION, repeats: int = 5, trace: bool = False,
            warmup: bool = True) -> MethodRun:
        ms, (final, trials, _) = median_wall_ms(lambda: fit(model), repeats, warmup)
        extra = {}
        if trace:
            log = EvaluationLog()
            _, _, path = jax.block_until_ready(make_fit(log, record_path=True)(model))
            start = eqx.filter(model, eqx.is_inexact_array)
            extra["trace"] = log.trace()
            extra["iterates"] = jax.tree.map(
                lambda a, b: np.concatenate([np.asarray(a)[None], np.asarray(b)]), start, path
            )
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


class _FlatFunctions:
    """JAX functions of the flat parameter vector, compiled once per model structure."""

    def __init__(self, model: AION, x, y):
        params, self.static = _split(model)
        _, self.unravel = ravel_pytree(params)

        def residual_flat(v):
            return jax.vmap(eqx.combine(self.unravel(v), self.static))(x) - y

        def phi_flat(v):
            r = residual_flat(v)
            return r @ r

        self.residual = jax.jit(residual_flat)
        self.jacobian = jax.jit(jax.jacfwd(residual_flat))
        self.value = jax.jit(phi_flat)
        self.grad = jax.jit(jax.grad(phi_flat))
        self.hvp = jax.jit(lambda v, p: jax.jvp(jax.grad(phi_flat), (v,), (p,))[1])

    def model(self, v) -> AION:
        return eqx.combine(self.unravel(jnp.asarray(v)), self.static)


def _flat_functions_cache(x, y):
    cache: dict = {}

    def get(model: AION) -> tuple[_FlatFunctions, np.ndarray]:
        params, _ = _split(model)
        flat, _ = ravel_pytree(params)
        key = jax.tree.structure(model), tuple(a.shape for a in jax.tree.leaves(params))
        if key not in cache:
            cache[key] = _FlatFunctions(model, x, y)
        return cache[key], np.asarray(flat)

    return get


def scipy_newton_cg(
    x, y, *, max_iterations: int = 50, stop_below: float = 1e-8
) -> Callable[..., MethodRun]:
    """``scipy.optimize.minimize(method="Newton-CG")`` with JAX's exact gradient and
    Hessian-vector products, up to ``max_iterations`` or until ``Phi < stop_below`` (the
    paper's setting). Data passes: function + gradient + Hessian-vector product evaluations.
    With ``trace=True`` the run also returns the path (``extra["iterates"]``).
    """
    functions = _flat_functions_cache(x, y)

    def fit(fns: _FlatFunctions, v0, log: EvaluationLog | None, path: list | None):
        def f(v):
            phi = float(fns.value(v))
            if log is not None:
                log.value(phi)
            return phi

        def g(v):
            if log is not None:
                log.other()
            return np.asarray(fns.grad(v))

        def hessp(v, p):
            if log is not None:
                log.other()
            return np.asarray(fns.hvp(v, p))

        def callback(intermediate_result):
            if path is not None:
                path.append(np.array(intermediate_result.x))
            if intermediate_result.fun < stop_below:
                raise StopIteration

        return minimize(
            f, v0, jac=g, hessp=hessp, method="Newton-CG", callback=callback,
            options={"maxiter": max_iterations},
        )

    def run(model: AION, repeats: int = 5, trace: bool = False,
            warmup: bool = True) -> MethodRun:
        fns, v0 = functions(model)
        ms, res = median_wall_ms(lambda: fit(fns, v0, None, None), repeats, warmup)
        extra = {}
        if trace:
            log, path = EvaluationLog(), [v0]
            fit(fns, v0, log, path)
            extra["trace"] = log.trace()
            models = [fns.model(v) for v in path]
            extra["iterates"] = jax.tree.map(
                lambda *a: np.stack(a), *[eqx.filter(m, eqx.is_inexact_array) for m in models]
            )
        nhev = int(res.get("nhev", 0))
        return MethodRun(
            method="Newton-CG",
            final_loss=loss(fns.model(res.x), x, y),
            outer_steps=int(res.nit),
            inner_steps=nhev,
            data_passes=int(res.nfev) + int(res.njev) + nhev,
            wall_ms=ms,
            model=fns.model(res.x),
            extra=extra,
        )

    return run


def scipy_least_squares(
    x, y, *, tol: float = 1e-15, max_nfev: int | None = None
) -> Callable[..., MethodRun]:
    """``scipy.optimize.least_squares(method="lm")`` (MINPACK) with JAX's exact Jacobian.

    ``ftol = xtol = gtol = tol`` (MINPACK needs them above machine epsilon; 1e-15 is as tight
    as it goes). Data passes: residual evaluations plus Jacobian evaluations.
    """
    functions = _flat_functions_cache(x, y)

    def fit(fns: _FlatFunctions, v0, log: EvaluationLog | None):
        def residual(v):
            r = np.asarray(fns.residual(v))
            if log is not None:
                log.value(r @ r)
            return r

        def jacobian(v):
            if log is not None:
                log.other()
            return np.asarray(fns.jacobian(v))

        return least_squares(
            residual, v0, jac=jacobian, method="lm", ftol=tol, xtol=tol, gtol=tol,
            max_nfev=max_nfev,
        )

    def run(model: AION, repeats: int = 5, trace: bool = False,
            warmup: bool = True) -> MethodRun:
        fns, v0 = functions(model)
        ms, res = median_wall_ms(lambda: fit(fns, v0, None), repeats, warmup)
        extra = {}
        if trace:
            log = EvaluationLog()
            fit(fns, v0, log)
            extra["trace"] = log.trace()
        njev = int(res.njev) if res.njev is not None else 0
        return MethodRun(
            method="scipy least_squares",
            final_loss=loss(fns.model(res.x), x, y),
            outer_steps=njev,
            inner_steps=int(res.nfev),
            data_passes=int(res.nfev) + njev,
            wall_ms=ms,
            model=fns.model(res.x),
            extra=extra,
        )

    return run
