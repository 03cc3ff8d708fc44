"""``solve``: fit a model to data by the SNR loop."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._models._aion import AION
from ._models._base import AbstractSumOfTerms
from ._checks import is_concrete
from ._options import Prepared, RunOptions, prepare, solver_from, strictly_feasible
from ._problems._base import AbstractProblem
from ._problems._regularized import regularized
from ._problems._select import make_problem
from ._solution import RESULTS, SolveHistory, SolveInfo
from ._solver._linear import linear_solver_name
from ._solver._snr import SNR, Bounds, iterate


def gauge_mask(model: AION) -> jax.Array:
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


@jax.custom_jvp
def no_derivative(tree):
    """The identity, whose derivative raises a clear error: a solve is not differentiable."""
    return tree


@no_derivative.defjvp
def _no_derivative_jvp(primals, tangents):
    raise NotImplementedError(
        "Differentiating through `infinite_descent.solve` (or `solve_once`) is not supported: "
        "the solution of F(delta) = 0 is in general not isolated (AION's minima form curves), "
        "so its implicit derivative is not defined, and differentiating the iterations would "
        "give a meaningless result. Wrap the inputs in `jax.lax.stop_gradient` if you only "
        "need the solve inside a differentiated program."
    )


def run_problem(problem: AbstractProblem, like, mask, run: RunOptions, solver: SNR,
                initial_damping=None, bounds=None):
    """The loop on ``problem`` and what it reports: ``(solved, info)``, with ``solved`` the
    model (or parameters) ``like`` at the solution. Shared by every entry point, which
    applies ``throw`` itself (`raise_unless_successful`)."""
    flat_bounds = None
    if bounds is not None:
        flat_bounds = Bounds(*(problem.stack(b).reshape(-1) for b in bounds))
    out = iterate(solver, problem, mask, max_steps=run.max_steps,
                  record_history=run.record_history, verbose=run.verbose,
                  initial_damping=initial_damping, bounds=flat_bounds)
    solved = problem.to_model(out.theta.reshape(problem.theta.shape), like)
    history = None
    if out.history is not None:
        thetas = out.history.theta.reshape(-1, *problem.theta.shape)
        history = SolveHistory(
            loss=out.history.loss,
            params=jax.vmap(
                lambda t: eqx.filter(problem.to_model(t, like), eqx.is_inexact_array)
            )(thetas),
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
        linear_solver=linear_solver_name(solver.linear_solver),
        hessian=solver.hessian,
        history=history,
    )
    return solved, info


def run_solve(model, x, y, trainable, run: RunOptions, solver: SNR, weights=None,
              regularization=None, initial_damping=None, bounds=None):
    """The traced body of a solve: the problem, its mask, the loop, the solved model and its
    `SolveInfo`. Shared by `solve`, `solve_once` and `multistart` (under ``vmap``)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params, x, y = no_derivative((params, x, y))
    model = eqx.combine(strictly_feasible(params, bounds), static)
    problem = make_problem(model, x, y, run.chunk_size, projection=solver.variable_projection,
                           weights=weights)
    problem = regularized(problem, regularization)
    if trainable is None:
        mask = jnp.ones(problem.num_params, bool)
    else:
        mask = problem.stack(jax.tree.map(jnp.asarray, trainable)).reshape(-1)
    if solver.fix_gauge and isinstance(model, AION):
        mask = mask & gauge_mask(model)
    return run_problem(problem, model, mask, run, solver, initial_damping, bounds)


_jit_arrays = jax.jit(run_solve, static_argnums=(4, 5))
_jit_filtered = eqx.filter_jit(run_solve)


def compiled_solve(model, prepared: Prepared, caller: str = "solve"):
    """`run_solve` on a prepared call, compiled once per shape and option: ``jax.jit``'s
    dispatch when every leaf of the model is an array (the common case, and the cheaper
    call); ``eqx.filter_jit`` for models with other leaves."""
    p = prepared
    # The result is checked after the call (a clean exception outside jit, eqx.error_if
    # inside), not in the compiled function, so that both throw settings share one program.
    args = (model, p.x, p.y, p.trainable, p.run._replace(throw=False), p.solver, p.weights,
            p.regularization, None, p.bounds)
    if all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(model)):
        solved, info = _jit_arrays(*args)
    else:
        solved, info = _jit_filtered(*args)
    if p.run.throw:
        solved = raise_unless_successful(solved, info, caller)
    return solved, info


def raise_unless_successful(solved, info: SolveInfo, caller: str):
    """``throw=True``: a ``RuntimeError`` with the result's message when the solve was not
    successful; under ``jit`` through ``eqx.error_if`` (raised when the program runs)."""
    if is_concrete(info.converged):
        if not bool(info.converged):
            raise RuntimeError(f"{caller}: {RESULTS[info.result]}")
        return solved
    return info.result.error_if(solved, ~info.converged)


def solve(
    model: AbstractSumOfTerms,
    x,
    y=None,
    *,
    solver: SNR | None = None,
    max_steps: int = 256,
    trainable=None,
    throw: bool = True,
    chunk_size: int | str | None = "auto",
    record_history: bool = False,
    verbose: bool = False,
    weights=None,
    regularization: float | None = None,
    bounds=None,
    **solver_options,
) -> tuple[AbstractSumOfTerms, SolveInfo]:
    r"""Solve ``F(delta) = grad Phi(model + delta) = 0`` by Structured Newton-Raphson.

    ``Phi = sum_n (f(x_n) - y_n)^2``. Each inner iteration evaluates the residuals and the
    Jacobian at ``model + delta`` (for AION through the resummation: the basis is computed
    once at ``model``; one pass over the data), then solves the damped Newton system

    $$
    (J^T J + \mu\, \mathrm{diag}(D))\, s = -J^T r
    $$

    including the cross-rank coupling of ``J^T J`` (the Hessian is not block-diagonal across
    ranks: see the design notes). The step is accepted only if ``Phi`` falls, so the result
    is never worse than the start. The loop is a bounded ``lax.while_loop`` compiled with
    ``jit``. Cost per inner iteration: ``O(N M^2)`` for ``J^T J`` plus ``O(M^3)`` for the
    factorisation (``M`` parameters, ``N`` points), with the default linear solver.

    **Arguments:**

    - ``model``: the model to start from: an `AION`, `GaussianAtoms`, `ShallowNetwork` or
      any `AbstractSumOfTerms`.
    - ``x``: inputs, shape ``(N, dim)``; ``y``: targets, shape ``(N,)``. Or ``x`` a
      `GridData` (tensor-grid data) and no ``y``: for AION the model evaluation and
      ``J^T J`` then cost in proportion to the sum of the grid sizes, not their product.
    - ``solver``: an `SNR` (the algorithm: linear solver, Hessian, damping, geodesic
      acceleration, tolerances). Instead, the keywords `SNR` takes may be given here
      directly (``linear_solver="cg"``, ``hessian="exact"``, ``ftol=...``, ...), not both.
    - ``max_steps``: bound on the inner iterations (default 256).
    - ``trainable``: ``None`` (all), a bool, or a pytree shaped like the model with bool
      (or boolean array) leaves; ``False`` entries never move.
    - ``throw``: raise (through ``eqx.error_if``, so also inside ``jit``) when the result is
      not ``RESULTS.successful``. With ``throw=False`` nothing is raised; read ``info.result``.
    - ``chunk_size``: ``"auto"`` (the default: the whole data when the ``N x M`` Jacobian fits
      an eighth of the memory, else chunks), ``None`` (never chunk) or ``K``: every sum over
      the data is accumulated ``K`` points at a time, so memory is ``O(M^2 + K M)``.
    - ``record_history``: keep every inner iterate in ``info.history`` (a `SolveHistory`).
    - ``verbose``: print, from inside ``jit``, each inner iteration's loss, gradient
      max-norm, damping and whether the step was taken.
    - ``weights``: per-point weights ``w_n >= 0`` (shape ``(N,)``, or the grid's shape):
      ``Phi = sum_n w_n (f(x_n) - y_n)^2``, the same as repeating a point ``w_n`` times where
      the weights are integers.
    - ``regularization``: ``lambda >= 0``; adds ``lambda |theta|^2`` over every parameter to
      ``Phi`` (the residuals ``sqrt(lambda) theta``).
    - ``bounds``: ``(lower, upper)``, each a number or a pytree shaped like
      ``eqx.filter(model, eqx.is_inexact_array)`` (``-inf``/``inf`` where unbounded), as for
      `least_squares`: every iterate stays inside, a start on a bound is moved just inside.

    The convergence tests (fields of `SNR`): the solve stops successfully at the first one
    met:

    - ``loss_atol``, ``loss_rtol``: ``Phi <= loss_atol + loss_rtol * Phi_0``;
    - ``grad_atol``, ``grad_rtol``: ``max|grad Phi| <= grad_atol + grad_rtol max|grad Phi_0|``;
    - ``ftol``: a step (taken or rejected) whose actual and predicted relative changes of
      ``Phi`` are both at most ``ftol`` (default ``eps^0.625``: 1.6e-10 in float64, 5e-5
      in float32), which ends solves on data that cannot be fitted exactly;
    - ``xtol``: a step with ``||s|| <= xtol (||Theta + delta|| + xtol)`` (default ``10 eps``).

    The defaults run to the rounding floor: on an exactly representable target the loss
    ends near ``N eps^2``.

    **Returns** ``(model_star, info)``: the solved model (of the same class) and a
    `SolveInfo` with the loss, the inner iterations, the passes over the data and the
    `RESULTS` code. Differentiating through ``solve`` raises a clear ``NotImplementedError``.

    ```python
    x, y = idn.problems.paper_toy()
    model, info = idn.solve(idn.problems.paper_toy_start(), x, y)
    print(info.loss, info.inner_steps, info.data_passes)
    ```
    """
    snr = solver_from(solver, "solve", solver_options)
    prepared = prepare(model, x, y, "solve", snr, max_steps=max_steps, trainable=trainable,
                       throw=throw, chunk_size=chunk_size, record_history=record_history,
                       verbose=verbose, weights=weights, regularization=regularization,
                       bounds=bounds)
    return compiled_solve(model, prepared)
