"""``least_squares``: the SNR loop on any residual function over any pytree of parameters."""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._batched import count_fits, full_axes, run_batched
from ._checks import is_concrete
from ._options import (
    RunOptions,
    Runtime,
    check_bounds,
    check_loss,
    check_max_steps,
    flag,
    runtime_values,
    solver_from,
    strictly_feasible,
)
from ._problems._regularized import regularized
from ._problems._residual import ResidualProblem
from ._problems._robust import robust
from ._solve import no_derivative, raise_unless_successful, run_problem
from ._solver._snr import SNR


def is_parameter(leaf) -> bool:
    """A leaf that ``least_squares`` fits: a real floating array (JAX or numpy) or a Python
    float. Anything else (integers, functions, strings, ``None``) stays as it is."""
    if isinstance(leaf, (bool, np.bool_)):
        return False
    if isinstance(leaf, float):
        return True
    if isinstance(leaf, (jax.Array, np.ndarray, np.floating)):
        return jnp.issubdtype(leaf.dtype, jnp.floating)
    return False


def split_parameters(y0, caller: str):
    """``(params, static, dtype)``: the floating leaves as arrays of one dtype, the rest."""
    complex_leaves = [leaf for leaf in jax.tree.leaves(y0)
                      if isinstance(leaf, (jax.Array, np.ndarray, complex))
                      and jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating)]
    if complex_leaves:
        raise TypeError(f"{caller}: complex parameters are not supported; split them into real "
                        "and imaginary parts.")
    params, static = eqx.partition(y0, is_parameter)
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(
            f"{caller}: `y0` has no floating-point leaf to fit (integers, bools and other "
            "objects stay fixed); pass the parameters as float arrays or Python floats."
        )
    dtype = jnp.result_type(*leaves)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    return params, static, dtype


def _count_residuals(fn, params, static, args, caller: str) -> int:
    try:
        shapes = jax.eval_shape(lambda p, a: fn(eqx.combine(p, static), a), params, args)
    except Exception as error:  # noqa: BLE001 - the user's function, reported as such
        raise type(error)(f"{caller}: calling `fn(y0, args)` failed: {error}") from error
    leaves = jax.tree.leaves(shapes)
    if not leaves:
        raise ValueError(f"{caller}: `fn(y0, args)` returned no array of residuals.")
    for leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"{caller}: `fn(y0, args)` must return real floating residuals, got dtype "
                f"{leaf.dtype}."
            )
    total = sum(int(np.prod(leaf.shape)) for leaf in leaves)
    if total == 0:
        raise ValueError(f"{caller}: `fn(y0, args)` returned no residual (size 0).")
    return total


class _WithStatic(eqx.Module):
    """``fn(eqx.combine(params, static), args)``: the user's function on the fitted leaves;
    equal (a compiled solve reused) for equal ``fn`` and ``static``."""

    fn: Callable = eqx.field(static=True)
    static: object

    def __call__(self, params, args):
        return self.fn(eqx.combine(params, self.static), args)


def solve_one(fn, params, static, args, regularization, loss, run: RunOptions, solver: SNR,
              bounds, initial_damping=None, step_limit=None):
    """The traced body of one fit: the residual problem, its wrappers and the loop. Shared by
    `least_squares` (under ``jit``) and its batched mode (under ``vmap``)."""
    params, args = no_derivative((params, args))
    params = strictly_feasible(params, bounds)
    num_data = _count_residuals(fn, params, static, args, "least_squares")
    problem = ResidualProblem(_WithStatic(fn, static), params, args, num_data)
    problem = regularized(robust(problem, *loss), regularization)
    mask = jnp.ones(problem.num_params, bool)
    return run_problem(problem, params, mask, run, solver, initial_damping, bounds=bounds,
                       step_limit=step_limit)


class _OneFit(eqx.Module):
    """One fit of a batch: `solve_one` with everything but the fit's own data fixed."""

    fn: Callable = eqx.field(static=True)
    static: object
    regularization: object
    loss: tuple = eqx.field(static=True)
    run: RunOptions = eqx.field(static=True)
    solver: SNR

    def __call__(self, params, args, bounds, damping, step_limit):
        return solve_one(self.fn, params, self.static, args, self.regularization, self.loss,
                         self.run, self.solver, bounds, damping, step_limit)


@eqx.filter_jit
def _run(fn, params, static, args, regularization, loss, run: RunOptions, solver: SNR,
         bounds, runtime: Runtime):
    solved, info = solve_one(fn, params, static, args, regularization, loss, run, solver,
                             bounds, *runtime)
    return eqx.combine(solved, static), info


def least_squares(
    fn: Callable,
    y0,
    args=None,
    *,
    solver: SNR | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    regularization: float | None = None,
    loss: str = "linear",
    f_scale: float = 1.0,
    bounds=None,
    max_steps: int = 256,
    throw: bool = True,
    record_history: bool = False,
    verbose: bool = False,
    batched: bool = False,
    args_axes=0,
    segment_steps: int = 16,
    batch_size: int = 1024,
    **solver_options,
):
    r"""Minimise $\Phi = \sum_i r_i^2$ for any residual function, by the SNR loop.

    ``fn(params, args)`` returns the residuals: a pytree of real arrays of any shapes (all
    raveled into one vector ``r`` of length ``N``). ``params`` is any pytree (an
    ``equinox`` module with static parts, a dict, a ``flax.nnx`` state): every floating
    leaf (JAX or numpy arrays, Python floats) is a parameter, raveled into one vector of
    length ``M``; every other leaf (an activation function, an integer) stays fixed, and the
    same kind of object comes back. The Jacobian comes from autodiff (forward mode when
    ``M <= N``, reverse mode otherwise); each inner iteration solves the damped
    Gauss-Newton system with the same loop, damping, geodesic acceleration and result codes
    as `solve`.

    **Arguments:**

    - ``fn``, ``y0``, ``args``: the residual function, the starting parameters and the
      (non-fitted) data passed through to ``fn``.
    - ``solver``: an `SNR`, or its keywords given directly (``linear_solver=``,
      ``geodesic=``, ...).
    - ``rtol``: the relative tolerance of the decrease and step tests (``ftol`` and ``xtol``
      of `SNR`); default: those of the dtype (``eps^0.625`` and ``10 eps``).
    - ``atol``: stop once ``Phi <= atol`` (``loss_atol``); default 0.
    - ``regularization``: ``lambda``; adds ``lambda |params|^2`` (the residuals
      ``sqrt(lambda) params``) to ``Phi``.
    - ``loss``, ``f_scale``: a robust loss for data with outliers, scipy's: ``"linear"`` (the
      default, ``Phi = sum r^2``), ``"soft_l1"``, ``"huber"``, ``"cauchy"`` or ``"arctan"``,
      ``Phi = sum C^2 rho(r^2 / C^2)`` with ``C = f_scale``; the minimiser is scipy's
      ``least_squares(loss=..., f_scale=...)``'s. Geodesic acceleration is off under a
      robust loss.
    - ``bounds``: ``(lower, upper)``, each a number or a pytree shaped like ``y0`` (or like
      its floating leaves); ``-inf``/``inf`` where unbounded; inclusive. Every iterate stays
      inside: at each iteration the parameters at a bound whose gradient points outward are
      held and the step is projected into the box, and the gradient tests read the projected
      gradient (the first-order condition of the bounded problem). A start on a bound is
      moved just inside it, as scipy's ``trf`` does; a start outside raises.
    - ``max_steps``, ``throw``, ``record_history``, ``verbose``: as for `solve`.
    - ``batched``: many independent fits at once. Every floating leaf of ``y0`` then carries
      a leading axis over the fits, and ``args_axes`` (as ``jax.vmap``'s ``in_axes``: an
      int, ``None`` for arguments all fits share, or a pytree prefix of ``args``) says where
      the fits' axis is in ``args``. ``batch_size`` fits (default 1024) run together under
      ``vmap``, ``segment_steps`` inner iterations at a time; after each segment a fit that
      finished leaves its lane to the next fit waiting, and the others resume with their
      damping. So the whole set costs about what its fits need, where
      ``jax.vmap(least_squares)`` (the same fits) makes every lane of a batch run until its
      slowest fit ends. Each fit runs at most ``max_steps`` inner iterations over its
      segments. ``bounds`` may be shared or carry the fits' axis; ``throw=True`` raises if
      any fit is not successful. Call it outside ``jit`` (Python drives the segments).

    Cost per inner iteration: the Jacobian (``min(N, M)`` JVPs or VJPs of ``fn``), ``J^T J``
    in ``O(N M^2)`` and an ``M x M`` factorisation (``"auto"`` takes the ``N x N``
    push-through system when ``N < M``).

    **Returns** ``(params, info)``: the fitted parameters, of the same structure as ``y0``,
    and a `SolveInfo` (``loss`` is $\Phi$ with the regulariser, ``inner_steps``,
    ``data_passes``: evaluations of the Jacobian, ``result``). It runs under ``jax.jit`` and
    ``jax.vmap``.

    ```python
    t = jnp.linspace(0.0, 1.0, 50)
    data = 2.0 * jnp.exp(-3.0 * t) + 0.5

    def residuals(p, t):
        return p["a"] * jnp.exp(-p["k"] * t) + p["c"] - data

    fit, info = idn.least_squares(residuals, {"a": 1.0, "k": 1.0, "c": 0.0}, t)
    print(fit["k"], float(info.loss), int(info.inner_steps))   # 3.0 ~1e-30
    ```
    """
    caller = "least_squares"
    if not callable(fn):
        raise TypeError(f"{caller}: `fn` must be callable, got {type(fn).__name__}.")
    keywords, max_steps, runtime = runtime_values(caller, solver_options, max_steps)
    if rtol is not None:
        keywords.update(ftol=rtol, xtol=rtol)
    if atol is not None:
        keywords.update(loss_atol=atol)
    snr = solver_from(solver, caller, keywords)
    loss, f_scale, snr = check_loss(loss, f_scale, snr, caller)
    if snr.variable_projection or snr.fix_gauge:
        raise ValueError(f"{caller}: variable_projection and fix_gauge apply to AION in "
                         "`solve` only.")
    params, static, dtype = split_parameters(y0, caller)
    batched = flag(batched, "batched", caller)
    if batched:
        size = count_fits(params, args, args_axes, caller)
        one_params = jax.tree.map(lambda a: a[0], params)
        one_args = jax.tree.map(lambda ax, a: a if ax is None else jnp.take(a, 0, axis=ax),
                                full_axes(args_axes, args), args, is_leaf=lambda v: v is None)
        num_data = _count_residuals(fn, one_params, static, one_args, caller)
    else:
        num_data = _count_residuals(fn, params, static, args, caller)
    if regularization is not None:
        if isinstance(regularization, (bool, np.bool_)) or not np.isfinite(regularization) or (
            regularization < 0
        ):
            raise ValueError(f"{caller}: `regularization` must be a finite number >= 0, got "
                             f"{regularization!r}.")
        regularization = jnp.asarray(float(regularization), dtype)
    leaves = jax.tree.leaves(params)
    if is_concrete(*leaves) and not all(bool(jnp.all(jnp.isfinite(a))) for a in leaves):
        raise ValueError(f"{caller}: `y0` contains NaN or Inf.")
    num_params = sum(a.size for a in leaves) // (size if batched else 1)
    solver_now = snr.resolved(num_data, num_params, jnp.dtype(dtype).itemsize, False)
    run = RunOptions(check_max_steps(max_steps, caller), None, flag(record_history,
                     "record_history", caller), flag(verbose, "verbose", caller), False)
    if bounds is not None and isinstance(bounds, (tuple, list)) and len(bounds) == 2:
        mask = jax.tree.map(is_parameter, y0)
        bounds = tuple(
            eqx.filter(b, mask) if jax.tree.structure(b) == jax.tree.structure(y0)
            and jax.tree.structure(y0) != jax.tree.structure(params) else b
            for b in bounds
        )
    bounds = check_bounds(bounds, params, caller, solver_now)
    if batched:
        if runtime.initial_damping is not None or runtime.step_limit is not None:
            raise TypeError(f"{caller}: batched=True takes `initial_damping` and `max_steps` as "
                            "numbers, not JAX arrays.")
        if record_history or verbose:
            raise ValueError(f"{caller}: batched=True records no history and prints nothing "
                             "(a segmented batch has no one sequence of iterates).")
        segment_steps = check_max_steps(segment_steps, caller, "segment_steps")
        if segment_steps < 1:
            raise ValueError(f"{caller}: `segment_steps` must be at least 1, got 0.")
        one = functools.partial(_OneFit, fn, static, regularization, (loss, f_scale))
        lanes = check_max_steps(batch_size, caller, "batch_size")
        if lanes < 1:
            raise ValueError(f"{caller}: `batch_size` must be at least 1, got 0.")
        solved, info, _ = run_batched(
            lambda steps: one(run._replace(max_steps=steps), solver_now), params, args, bounds,
            args_axes, size=size, max_steps=run.max_steps, segment_steps=segment_steps,
            lanes=lanes, initial_damping=solver_now.initial_damping)
        solved = eqx.combine(solved, static)
        if flag(throw, "throw", caller) and not bool(jnp.all(info.converged)):
            failed = int(jnp.sum(~info.converged))
            raise RuntimeError(f"{caller}: {failed} of {size} fits were not successful (see "
                               "`info.result`); pass throw=False to keep them as they are.")
        return solved, info
    if record_history and runtime.step_limit is not None:
        raise ValueError(f"{caller}: record_history=True needs `max_steps` as a number (the "
                         "history's length is fixed when the loop compiles), not an array.")
    solved, info = _run(fn, params, static, args, regularization, (loss, f_scale), run,
                        solver_now, bounds, runtime)
    if flag(throw, "throw", caller):
        solved = raise_unless_successful(solved, info, caller)
    return solved, info

