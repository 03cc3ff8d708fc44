r"""``regularized_newton``: fixed-regularization Newton steps as an optax transformation.

The classical regularized Newton method for a sum-of-terms model (a one-hidden-layer network
above all): each update is

$$
\Delta\theta = -\eta\,(H + \lambda I)^{-1} \nabla \tfrac12\Phi,
\qquad H = J^T J + \mathrm{blockdiag}_j \textstyle\sum_n r_n \mathrm{Hess}\, g_j(x_n),
$$

with a fixed regularization ``lambda`` and step size ``eta``: no line search, no gain ratio,
no adaptive damping (that is [`solve`][infinite_descent.solve]). It is the method whose
overparameterized limit is analysed through the Newton neural tangent kernel: in function
space the residual evolves by ``r <- (I - eta K (K + lambda)^{-1}) r`` to first order, with
``K = J J^T``, so every eigen-direction of the kernel (every frequency, on a uniform grid)
decays at nearly the same rate once ``lambda`` is small against ``K``'s eigenvalues, where
gradient descent decays each at a rate proportional to its eigenvalue.

The system is the one the SNR loop solves (`DampedSystem`) with ``D = I`` and
``mu = lambda``: with more parameters than data (``width x (dim + 2) > N`` for a network)
``linear_solver="auto"`` takes the push-through identity, an ``N x N`` system, never an
``M x M`` one.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int

from ._checks import check_data, check_finite, check_grid, check_model
from ._problems._grid import GridData
from ._problems._select import make_problem
from ._solver._linear import (
    BlockJacobi,
    CG,
    AbstractLinearSolver,
    DampedSystem,
    Woodbury,
    linear_solver_from,
    memory_budget_bytes,
    resolve_linear_solver,
)
from ._solver._snr import HESSIANS


class NewtonState(NamedTuple):
    """State of [`regularized_newton`][infinite_descent.regularized_newton].

    - ``count``: updates done (int32).
    - ``loss``: ``Phi`` at the parameters the last update was computed at (``inf`` before the
      first update).
    - ``regularization``: the absolute ``lambda`` the last update used.
    - ``descent``: whether the last step was a descent direction (``g . s < 0``); ``False``
      flags a regularized Hessian that is not positive definite there (the width is too
      small for the regularization, or the start too far from a minimum).

    ```python
    opt = idn.regularized_newton(1e-2)
    net = idn.ShallowNetwork(8, 2, key=jax.random.key(0))
    updates, state = opt.update(None, opt.init(net), net, x=x, y=y)
    print(int(state.count), float(state.loss), float(state.regularization), bool(state.descent))
    ```
    """

    count: Int[Array, ""]
    loss: Float[Array, ""]
    regularization: Float[Array, ""]
    descent: Bool[Array, ""]


class _Options(NamedTuple):
    regularization: float
    relative: bool
    step_size: float
    hessian: str
    linear_solver: AbstractLinearSolver


@eqx.filter_jit
def _newton_update(model, x, y, options: _Options):
    problem = make_problem(model, x, y)
    zero = jnp.zeros_like(problem.theta)
    solver = options.linear_solver
    eq = problem.normal_equations(zero, **solver.sums())
    blocks = None
    if options.hessian == "exact":
        blocks = 0.5 * problem.rank_blocks(zero, residual_only=True)
    lam = jnp.asarray(options.regularization, eq.loss.dtype)
    if options.relative:
        # The mean diagonal of the tangent kernel K = J J^T (trace(J^T J) / N): lambda scales
        # with the kernel, as the analysis of the overparameterized limit asks (for a width-m
        # network normalised by m^-beta it grows like m^(1 - 2 beta), the paper's scaling).
        # Where the kernel vanishes (every Jacobian column zero, e.g. a network with all
        # weights zero) lambda is taken as given, so that the step is zero, not 0 / 0.
        trace = jnp.sum(eq.diag)
        lam = jnp.where(trace > 0, lam * trace / problem.num_data, lam)
    ones = jnp.ones_like(eq.g)
    system = DampedSystem(eq, ones, lam, ones, blocks, problem, zero)
    # Unlike the SNR loop, which rejects a step from an indefinite system, this method takes
    # the step whatever it is: factor by LU where the system need not be definite.
    state = solver.init(system, definite=False)
    step, _ = solver.solve(state, system, -eq.g)
    step = options.step_size * step
    # The step itself in the model's layout (not (theta + step) - theta, which would round).
    update = eqx.filter(problem.to_model(step.reshape(problem.theta.shape), model),
                        eqx.is_inexact_array)
    descent = jnp.all(jnp.isfinite(step)) & (eq.g @ step < 0)
    return update, eq.loss, lam, descent


def _strategy(name, hessian, num_data, num_params, itemsize) -> AbstractLinearSolver:
    if name == "auto" and num_data < num_params and (
        num_data * num_params * itemsize <= memory_budget_bytes()
    ):
        # Unlike a solve's "auto" (which goes matrix-free above 2048 parameters), the
        # push-through system is N x N whatever M: the point of this method for wide networks.
        return Woodbury()
    strategy = resolve_linear_solver(name, num_data, num_params, itemsize)
    if hessian == "exact" and isinstance(strategy, (CG, BlockJacobi)):
        raise ValueError(
            f"regularized_newton: linear_solver={name!r} needs a positive definite system, "
            "which the exact Hessian need not give; use 'dense' or 'woodbury' (or "
            "hessian='gauss_newton')."
        )
    return strategy


def regularized_newton(
    regularization: float = 1e-3,
    *,
    relative: bool = True,
    step_size: float = 1.0,
    hessian: str = "exact",
    linear_solver: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    r"""Regularized Newton steps ``-eta (H + lambda I)^{-1} grad (Phi / 2)`` as an optax
    transformation, for any [`AbstractSumOfTerms`][infinite_descent.AbstractSumOfTerms] (a
    [`ShallowNetwork`][infinite_descent.ShallowNetwork] above all).

    ``update(updates, state, params, *, x, y)`` ignores ``updates``, computes the step at
    ``params`` on the batch ``(x, y)`` and returns it: apply it with ``optax.apply_updates`` (or
    ``eqx.apply_updates``). One update is one pass over the data for ``J`` and ``J^T r`` (two
    with ``hessian="exact"``, whose residual-weighted blocks are a second sweep), and one
    solve: with more parameters than points the push-through identity (an ``N x N``
    factorisation), else an ``M x M`` one.

    **Arguments:**

    - ``regularization``: ``lambda``, relative to the mean diagonal of the tangent kernel
      ``J J^T`` (``trace(J^T J) / N``) when ``relative`` (the default), so that the same value
      means the same thing at every width and output scale; absolute otherwise.
    - ``step_size``: ``eta``; ``1`` is a full Newton step.
    - ``hessian``: ``"exact"`` (the default: Newton, with the residual-weighted term, which is
      block-diagonal over the terms) or ``"gauss_newton"`` (``J^T J`` only).
    - ``linear_solver``: as for [`solve`][infinite_descent.solve] (``"auto"``: ``"woodbury"``
      when ``N < M``).

    Unlike [`solve`][infinite_descent.solve] nothing guards the step: a step that raises
    ``Phi`` is taken. ``state.descent`` reports whether the step was a descent direction.

    ```python
    net = idn.ShallowNetwork(256, 2, key=jax.random.key(0))   # 1024 parameters
    opt = idn.regularized_newton(1e-1, hessian="gauss_newton")
    state = opt.init(net)
    for _ in range(5):                                        # x: (625, 2): push-through
        updates, state = opt.update(None, state, net, x=x, y=y)
        net = eqx.apply_updates(net, updates)
    print(float(state.loss), bool(state.descent))
    ```
    """
    if isinstance(regularization, bool) or not isinstance(regularization, (int, float)) or not (
        regularization > 0 and regularization < float("inf")
    ):
        raise ValueError(
            f"regularized_newton: `regularization` must be a finite number > 0, got "
            f"{regularization!r}."
        )
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not (
        step_size > 0 and step_size < float("inf")
    ):
        raise ValueError(
            f"regularized_newton: `step_size` must be a finite number > 0, got {step_size!r}."
        )
    if hessian not in HESSIANS:
        raise ValueError(
            f"regularized_newton: `hessian` must be one of {HESSIANS}, got {hessian!r}."
        )
    linear_solver_from(linear_solver, "regularized_newton")  # validates the name

    def init_fn(params) -> NewtonState:
        model = check_model(params, "regularized_newton.init")
        dtype = model.dtype
        return NewtonState(
            count=jnp.zeros((), jnp.int32),
            loss=jnp.full((), jnp.inf, dtype),
            regularization=jnp.zeros((), dtype),
            descent=jnp.ones((), bool),
        )

    def update_fn(updates, state: NewtonState, params=None, *, x=None, y=None, **extra_args):
        del updates, extra_args
        if params is None:
            raise TypeError("regularized_newton.update: `params` (the model) is required.")
        caller = "regularized_newton.update"
        if x is None or (y is None and not isinstance(x, GridData)):
            raise TypeError(
                f"{caller}: pass the data as keywords, `update(..., x=x, y=y)` (or "
                "`x=GridData(...)` alone)."
            )
        model = check_model(params, caller)
        if isinstance(x, GridData):
            x = check_grid(model, x, y, caller)
            check_finite(caller, model, {"y": x.y})
            num_data = x.num_points
        else:
            original = {"x": x, "y": y}
            x, y = check_data(model, x, y, caller)
            check_finite(caller, model, {"x": x, "y": y}, original)
            num_data = x.shape[0]
        strategy = _strategy(linear_solver, hessian, num_data, model.num_params,
                             jnp.dtype(model.dtype).itemsize)
        options = _Options(float(regularization), bool(relative), float(step_size), hessian,
                           strategy)
        step, loss, lam, descent = _newton_update(model, x, y, options)
        new_state = NewtonState(
            count=optax.safe_int32_increment(state.count),
            loss=loss.astype(state.loss.dtype),
            regularization=lam.astype(state.regularization.dtype),
            descent=descent,
        )
        return step, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
