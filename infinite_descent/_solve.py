"""``solve`` and ``resummed_residual``: the public entry points to the SNR machinery."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_data, check_grid, check_params_finite
from ._grid import GridData
from ._linear_solve import default_chunk_size, resolve_linear_solver
from ._models._aion import AION
from ._models._protocol import SumOfTerms
from ._projection import ProjectedAION
from ._resummation import ResummedResidual
from ._terms import make_problem, stack_tree, unstack_tree
from ._snr import SNROptions, run_snr
from ._solution import RESULTS, SolveHistory, SolveInfo

HESSIANS = ("gauss_newton", "exact")


def resummed_residual(model: AION, x, y=None) -> ResummedResidual:
    """The resummed residual ``F(delta) = grad Phi(model + delta)``.

    ``Phi(Theta) = sum_n (f(x_n; Theta) - y_n)^2`` (no 1/2, no mean). The basis
    ``exp(z(x_n; Theta))`` is computed here, once; every call ``F(delta)`` then costs one pass
    over the data: ``r d P`` complex multiplications by the shift ``exp(<a, delta>)`` per
    point, leave-one-out products (prefix and suffix, no division) and a reduction.

    **Arguments:**

    - ``model``: an :class:`AION` at ``Theta``.
    - ``x``: inputs, shape ``(N, dim)``; ``y``: targets, shape ``(N,)``. Real floating arrays,
      cast to the model's dtype. Or ``x`` a :class:`GridData` and no ``y``.

    **Returns** a pure function (an ``eqx.Module``) ``F``: ``F(delta)`` takes ``delta`` shaped
    like ``eqx.filter(model, eqx.is_inexact_array)`` and returns ``grad Phi`` at
    ``model + delta`` in that same structure. ``F.loss(delta)`` is ``Phi`` there and
    ``F.rank_blocks(delta)`` the per-rank diagonal blocks of the Hessian.

    ```python
    F = idn.resummed_residual(model, x, y)
    zero = jax.tree.map(jnp.zeros_like, eqx.filter(model, eqx.is_inexact_array))
    grad_at_start = F(zero)
    ```
    """
    if isinstance(x, GridData):
        problem = make_problem(model, check_grid(model, x, y, "resummed_residual"), None)
    else:
        x, y = check_data(model, x, y, "resummed_residual")
        problem = make_problem(model, x, y)
    return ResummedResidual(
        resummation=problem,
        structure=eqx.filter(model, eqx.is_inexact_array),
    )


def _gauge_mask(model: AION) -> jax.Array:
    """Fix the amplitude gauge: in every rank, for every dimension but the first, hold the
    term with the largest amplitude at its value (``False`` in the mask).

    Scaling one dimension's atom by ``c`` and another's by ``1 / c`` leaves a rank unchanged:
    ``r (d - 1)`` exact null directions of ``J``. Holding one amplitude per (rank, dimension >
    0) removes them and leaves the rank's scale to dimension 0; the model returned is an
    ordinary AION with the same function class. Shared dimensions have no such freedom.
    """
    size = 4 * model.A.size
    if model.shared_dims or model.dim == 1:
        return jnp.ones(size, bool)
    leading = jnp.argmax(jnp.abs(model.A), axis=-1)  # (rank, dim)
    held = jax.nn.one_hot(leading, model.terms, dtype=bool)  # (rank, dim, terms)
    held = held.at[:, 0, :].set(False)
    keep = jnp.ones((model.rank, 4, model.dim, model.terms), bool)
    keep = keep.at[:, 0].set(~held)  # the A slot of the stacked (rank, 4, dim, terms) layout
    return keep.reshape(size)


def trainable_leaves(model: SumOfTerms, trainable):
    """The ``trainable`` filter spec as a pytree of boolean arrays shaped like the model's
    parameters (``eqx.filter(model, eqx.is_inexact_array)``)."""
    params = eqx.filter(model, eqx.is_inexact_array)
    if trainable is None or isinstance(trainable, bool):
        flag = True if trainable is None else trainable
        return jax.tree.map(lambda a: jnp.full(a.shape, flag), params)
    if type(trainable) is not type(model):
        raise TypeError(
            "solve: `trainable` must be None, a bool, or a pytree with the model's structure "
            "whose leaves are bools (e.g. `jax.tree.map(lambda _: True, model)` edited with "
            f"`eqx.tree_at`), got {type(trainable).__name__}."
        )
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(trainable)
    if len(flags) != len(leaves):
        raise ValueError("solve: `trainable` must have one leaf per parameter array of the model.")
    out = []
    for flag, leaf in zip(flags, leaves):
        flag_array = np.asarray(flag) if not isinstance(flag, jax.Array) else flag
        if flag_array.dtype != bool:
            raise TypeError(
                f"solve: the leaves of `trainable` must be bools or boolean arrays, got {flag!r}."
            )
        try:
            out.append(jnp.broadcast_to(flag_array, leaf.shape))
        except ValueError:
            raise ValueError(
                f"solve: a `trainable` leaf of shape {flag_array.shape} does not broadcast to "
                f"the parameter shape {leaf.shape}."
            ) from None
    return jax.tree.unflatten(treedef, out)


def _trainable_mask(model: SumOfTerms, trainable) -> jax.Array:
    """A boolean vector over the solver's flat parameters from an equinox-style filter spec."""
    return stack_tree(model, trainable_leaves(model, trainable)).reshape(-1)


@jax.custom_jvp
def _no_derivative(tree):
    return tree


@_no_derivative.defjvp
def _no_derivative_jvp(primals, tangents):
    raise NotImplementedError(
        "Differentiating through `infinite_descent.solve` (or `solve_once`) is not supported: "
        "the solution of F(delta) = 0 is in general not isolated (AION's minima form curves), "
        "so its implicit derivative is not defined, and differentiating the iterations would "
        "give a meaningless result. Wrap the inputs in `jax.lax.stop_gradient` if you only "
        "need the solve inside a differentiated program."
    )


@eqx.filter_jit
def _solve_jit(model, x, y, mask, options: SNROptions, chunk_size: int | None = None,
               initial_damping=None, projection: bool = False):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params, x, y = _no_derivative((params, x, y))
    model = eqx.combine(params, static)
    if projection:
        problem = ProjectedAION(model, x, y)
        mask = jnp.ones(problem.num_params, bool)

        def to_model(theta):
            return problem.to_model(theta, model)
    else:
        problem = make_problem(model, x, y, chunk_size)

        def to_model(theta):
            return unstack_tree(model, theta)
    out = run_snr(problem, mask, options, initial_damping)
    theta_star = problem.theta + out.delta.reshape(problem.theta.shape)
    model_star = to_model(theta_star)
    history = None
    if out.history is not None:
        thetas = problem.theta[None] + out.history.delta.reshape(-1, *problem.theta.shape)
        history = SolveHistory(
            loss=out.history.loss,
            params=jax.vmap(lambda t: eqx.filter(to_model(t), eqx.is_inexact_array))(
                thetas
            ),
            damping=out.history.damping,
            accepted=out.history.accepted,
        )
    info = SolveInfo(
        loss=out.loss,
        initial_loss=out.initial_loss,
        grad_norm=out.grad_norm,
        inner_steps=out.inner_steps,
        accepted_steps=out.accepted_steps,
        data_passes=out.data_passes,
        damping=out.damping,
        converged=out.result == RESULTS.successful,
        result=out.result,
        linear_solver=options.linear_solver,
        hessian=options.hessian,
        history=history,
    )
    return model_star, info


def _check_projection(model, x, flag, options, trainable, fix_gauge, chunk_size,
                      linear_solver) -> None:
    if flag is not True:
        raise ValueError(f"solve: `variable_projection` must be True or False, got {flag!r}.")
    if not isinstance(model, AION) or model.shared_dims:
        raise ValueError(
            "solve: variable_projection=True needs an AION without shared_dims (the first "
            "dimension's amplitudes and phases are what it eliminates)."
        )
    if isinstance(x, GridData):
        raise ValueError("solve: variable_projection=True does not take GridData.")
    if options.hessian != "gauss_newton":
        raise ValueError("solve: variable_projection=True uses hessian='gauss_newton' only.")
    if linear_solver not in ("auto", "dense"):
        raise ValueError("solve: variable_projection=True uses linear_solver='dense' only.")
    if trainable is not None or fix_gauge:
        raise ValueError(
            "solve: variable_projection=True does not combine with `trainable` or `fix_gauge`."
        )
    if chunk_size is not None:
        raise ValueError(
            "solve: variable_projection=True needs the whole data at once (its least squares "
            "couple every point); this data would be chunked: pass chunk_size=None if it fits."
        )


def _check_options(max_steps, hessian, tolerances) -> None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        raise ValueError(f"solve: `max_steps` must be a non-negative integer, got {max_steps!r}.")
    if hessian not in HESSIANS:
        raise ValueError(f"solve: `hessian` must be one of {HESSIANS}, got {hessian!r}.")
    for name, value in tolerances.items():
        if value is None and name in ("xtol", "ftol"):
            continue
        if not isinstance(value, (int, float, np.floating)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"solve: `{name}` must be a finite number >= 0, got {value!r}.")


def _geodesic_mode(geodesic, caller) -> str:
    if geodesic is True or geodesic is False:
        return "on" if geodesic else "off"
    if geodesic == "auto":
        return "auto"
    raise ValueError(f"{caller}: `geodesic` must be True, False or 'auto', got {geodesic!r}.")


def _prepare(model, x, y, caller, *, max_steps=256, linear_solver="auto",
             hessian="gauss_newton", trainable=None, xtol=None, ftol=None, grad_atol=0.0,
             grad_rtol=0.0, loss_atol=0.0, loss_rtol=0.0, initial_damping=1e-1,
             record_history=False, geodesic="auto", chunk_size="auto", verbose=False,
             fix_gauge=False):
    """Check the input and the options; return ``(x, y, mask, options, chunk_size)``."""
    grid = isinstance(x, GridData)
    if grid:
        x = check_grid(model, x, y, caller)
        num_data = x.num_points
        if chunk_size not in ("auto", None):
            raise ValueError(f"{caller}: `chunk_size` does not apply to GridData.")
        chunk_size = None
    else:
        x, y = check_data(model, x, y, caller)
        num_data = x.shape[0]
    check_params_finite(model, caller)
    tolerances = dict(xtol=xtol, ftol=ftol, grad_atol=grad_atol, grad_rtol=grad_rtol,
                      loss_atol=loss_atol, loss_rtol=loss_rtol, initial_damping=initial_damping)
    _check_options(max_steps, hessian, tolerances)
    num_params = model.num_params
    itemsize = jnp.dtype(model.dtype).itemsize
    if chunk_size == "auto":
        chunk_size = default_chunk_size(num_data, num_params, itemsize)
    elif chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(
            f"{caller}: `chunk_size` must be 'auto', None or a positive integer, got {chunk_size!r}."
        )
    if chunk_size is not None and chunk_size >= num_data:
        chunk_size = None
    strategy = resolve_linear_solver(
        linear_solver, num_data, num_params, itemsize, chunked=chunk_size is not None
    )
    mask = _trainable_mask(model, trainable)
    if fix_gauge and isinstance(model, AION):
        mask = mask & _gauge_mask(model)
    options = SNROptions(
        max_steps=int(max_steps),
        linear_solver=strategy,
        hessian=hessian,
        xtol=None if xtol is None else float(xtol),
        ftol=None if ftol is None else float(ftol),
        grad_atol=float(grad_atol),
        grad_rtol=float(grad_rtol),
        loss_atol=float(loss_atol),
        loss_rtol=float(loss_rtol),
        initial_damping=float(initial_damping),
        record_history=bool(record_history),
        geodesic=_geodesic_mode(geodesic, caller),
        verbose=bool(verbose),
    )
    return x, y, mask, options, None if chunk_size is None else int(chunk_size)


def solve(
    model: AION,
    x,
    y=None,
    *,
    max_steps: int = 256,
    linear_solver: str = "auto",
    hessian: str = "gauss_newton",
    trainable=None,
    throw: bool = True,
    xtol: float | None = None,
    ftol: float | None = None,
    grad_atol: float = 0.0,
    grad_rtol: float = 0.0,
    loss_atol: float = 0.0,
    loss_rtol: float = 0.0,
    initial_damping: float = 1e-1,
    record_history: bool = False,
    geodesic: bool | str = "auto",
    chunk_size: int | str | None = "auto",
    verbose: bool = False,
    fix_gauge: bool = False,
    variable_projection: bool = False,
) -> tuple[AION, SolveInfo]:
    r"""Solve ``F(delta) = grad Phi(model + delta) = 0`` by Structured Newton-Raphson.

    ``Phi = sum_n (f(x_n) - y_n)^2``. The basis is computed once at ``model``; each inner
    iteration evaluates the residuals and the closed-form Jacobian at ``model + delta``
    through the resummation (one pass over the data), then solves the damped Newton system

    .. math:: (J^T J + \mu\, \mathrm{diag}(D))\, s = -J^T r

    including the cross-rank coupling of ``J^T J`` (see DESIGN.md: the Hessian is not
    block-diagonal across ranks). The step is accepted only if ``Phi`` falls, so the result
    is never worse than the start. The loop is a bounded ``lax.while_loop`` compiled with
    ``jit``. Cost per inner iteration: ``O(N M^2)`` for ``J^T J`` plus ``O(M^3)`` for the
    factorisation (``M`` parameters, ``N`` points).

    **Arguments:**

    - ``model``: the :class:`AION` to start from.
    - ``x``: inputs, shape ``(N, dim)``; ``y``: targets, shape ``(N,)``. Or ``x`` a
      :class:`GridData` (tensor-grid data) and no ``y``: the model evaluation and ``J^T J``
      then cost in proportion to the sum of the grid sizes, not their product.
    - ``max_steps``: bound on the inner iterations.
    - ``linear_solver``: how each damped system is solved (reported in ``info``):
        - ``"dense"``: ``J^T J`` accumulated over the data, one ``M x M`` Cholesky; the exact
          damped step with the cross-rank coupling. ``O(N M^2 + M^3)``.
        - ``"woodbury"``: the push-through identity, an ``N x N`` system; exact, cheaper when
          ``N < M``. Needs ``J`` in memory (no chunks).
        - ``"cg"``: matrix-free conjugate gradients, each product a JVP and a VJP over the
          data (counted as passes), preconditioned by the per-rank blocks; for large ``M``.
        - ``"block"``: the paper's block-diagonal step, which drops the cross-rank coupling (a
          block-Jacobi approximation, kept to be measured as what it is).
        - ``"auto"`` (default): ``"cg"`` above 2048 parameters, ``"woodbury"`` when
          ``N < M`` and ``J`` fits in memory, else ``"dense"``.
    - ``hessian``: ``"gauss_newton"`` (``J^T J``, positive semidefinite; the default) or
      ``"exact"``, which adds the residual-weighted second-order term
      ``sum_n r_n Hess f_n`` (block-diagonal over ranks, from ``jax.jacfwd`` of each rank's
      part of ``F``; one more pass over the data per iteration). The paper's step is
      ``linear_solver="block", hessian="exact"``.
    - ``trainable``: ``None`` (all), a bool, or a pytree shaped like the model with bool
      (or boolean array) leaves; ``False`` entries never move.
    - ``throw``: raise (through ``eqx.error_if``, so also inside ``jit``) when the result is
      not ``RESULTS.successful``. With ``throw=False`` nothing is raised; read ``info.result``.
    - Convergence tests; the solve stops successfully at the first one met:
        - ``loss_atol``, ``loss_rtol``: ``Phi <= loss_atol + loss_rtol * Phi_0``;
        - ``grad_atol``, ``grad_rtol``: ``max|grad Phi| <= grad_atol + grad_rtol * max|grad Phi_0|``;
        - ``ftol``: a step (taken or rejected) whose actual and predicted relative changes of
          ``Phi`` are both at most ``ftol`` (default ``eps^0.625``: 1.6e-10 in float64, 5e-5
          in float32), which ends solves on data that cannot be fitted exactly;
        - ``xtol``: a step with ``||s|| <= xtol (||Theta + delta|| + xtol)`` (default ``10 eps``).

      The defaults run to the rounding floor: on an exactly representable target the loss
      ends near ``N eps^2``.
    - ``initial_damping``: the starting ``mu``, relative to the scaling ``D``.
    - ``record_history``: keep every inner iterate in ``info.history`` (a
      :class:`SolveHistory`); off by default, free when off.
    - ``geodesic``: geodesic acceleration (Transtrum & Sethna): the step ``v`` gets the
      second-order correction ``a / 2``, ``(G + mu D) a = -J^T r_vv``, with ``r_vv`` the exact
      second directional derivative of the residuals along ``v`` (a JVP of a JVP) and the
      factorisation already at hand; it costs one more pass over the data where it is used,
      and is taken only if ``2 |a| <= 0.75 |v|``. ``"auto"`` (the default) turns it on, for
      the rest of the solve, once five accepted steps in a row have each decreased ``Phi``
      by less than 0.75 of what the quadratic model predicted: the creeping of plain
      Levenberg-Marquardt in the narrow valleys of separable models, where the damping
      stalls. Problems the model predicts well never pay for it. ``True`` uses it on every
      iteration, ``False`` never.
    - ``chunk_size``: ``"auto"`` (the default: whole data when the ``N x M`` Jacobian fits an
      eighth of the memory, else chunks), ``None`` (never chunk) or ``K``: every sum over the
      data is accumulated ``K`` points at a time, so memory is ``O(M^2 + K M)``, never
      ``O(N M)``.
    - ``verbose``: print, from inside ``jit``, per inner iteration the loss, the gradient's
      max-norm, the damping and whether the step was accepted. Free when off.
    - ``fix_gauge``: hold one amplitude per rank and dimension beyond the first (the largest),
      removing the ``r (d - 1)`` exact null directions of the amplitude gauge. Off by default:
      it did not change convergence on the problems measured.

    - ``variable_projection``: AION only (not ``shared_dims``). Eliminate the first
      dimension's amplitudes and phases, which enter linearly, at every iteration
      (Golub-Pereyra): the loop runs on the other parameters and the projected residual, its
      exact Jacobian by Golub and Pereyra's formula from a QR factorisation of the
      ``N x 2 r P`` basis; the result is rebuilt with the optimal coefficients. Off by
      default. Measured from random starts (``benchmarks/variable_projection.py``): on
      one-dimensional sums of damped cosines (rank 3-5) it reached the exact fit from 48 of
      48 starts where the full problem reached 3; on random AIONs in 2 and 3 dimensions 30
      of 32 against 25, at about twice the time per solve; on the hard two-term class no
      gain. Gauss-Newton only, dense linear algebra, no chunks, no ``trainable`` and no
      ``fix_gauge``; ``info.inner_steps`` and ``data_passes`` count as usual (one pass
      builds ``B``, its QR and the Jacobian).

    **Returns** ``(model_star, info)``: the solved model (an ordinary :class:`AION`) and a
    :class:`SolveInfo` with the loss, the inner iterations, the passes over the data and the
    :class:`RESULTS` code.

    Differentiating through ``solve`` raises a clear ``NotImplementedError``.

    ```python
    x, y = idn.problems.paper_toy()
    model, info = idn.solve(idn.problems.paper_toy_start(), x, y)
    print(info.loss, info.inner_steps, info.data_passes)
    ```
    """
    x, y, mask, options, chunk_size = _prepare(
        model, x, y, "solve", max_steps=max_steps, linear_solver=linear_solver,
        hessian=hessian, trainable=trainable, xtol=xtol, ftol=ftol, grad_atol=grad_atol,
        grad_rtol=grad_rtol, loss_atol=loss_atol, loss_rtol=loss_rtol,
        initial_damping=initial_damping, record_history=record_history, geodesic=geodesic,
        chunk_size=chunk_size, verbose=verbose, fix_gauge=fix_gauge,
    )
    if variable_projection is not False:
        _check_projection(model, x, variable_projection, options, trainable, fix_gauge,
                          chunk_size, linear_solver)
        options = options._replace(linear_solver="dense")
        chunk_size = None
    model_star, info = _solve_jit(model, x, y, mask, options, chunk_size,
                                  projection=bool(variable_projection))
    if throw:
        model_star = info.result.error_if(model_star, ~info.converged)
    return model_star, info
