r"""The Structured Newton-Raphson (SNR) solver: its configuration and one inner iteration.

Training is the root-finding problem ``F(Delta) = grad Phi(Theta + Delta) = 0`` from
``Delta = 0``. Its Jacobian is the Hessian ``H = 2 J^T J + 2 sum_n r_n Hess f_n``. Undamped
Newton on ``F`` runs to the saddles and maxima that are also roots of ``F``, so one iteration
is a Levenberg-Marquardt globalisation of Newton's method, built from small pure pieces:

- `more_scaling`: ``D``, the running maximum of ``diag(J^T J)`` (Moré);
- the linear solver (`AbstractLinearSolver`) solves ``(G + mu diag(D)) v = -J^T r`` with
  ``G = J^T J`` (Gauss-Newton) or ``G = J^T J + blockdiag K`` (the exact Hessian);
- `geodesic_correction`: Transtrum and Sethna's second-order correction ``a / 2``,
  ``(G + mu D) a = -J^T r_vv``, from the same factorisation; `geodesic_switch` turns it on
  once the loop creeps (``geodesic="auto"``);
- `limit_step`: no step longer (in Moré's scaled norm) than twice the longest step taken
  before it, nor, at the start, than ``step_factor`` times the scaled norm of the
  parameters (MINPACK's ``factor``);
- `gain_ratio` and `accepts`: the step is taken only if ``Phi`` falls and the quadratic model
  predicted a decrease;
- `nielsen_damping`: ``mu *= max(1/3, 1 - (2 rho - 1)^3)`` on success, ``mu *= nu, nu *= 2``
  on failure;
- `converged`: the convergence tests.

`SNR.step` composes them; `iterate`, the one bounded ``while_loop`` every entry point runs,
repeats it, with history (``record_history``) and printing (``verbose``) handled there once,
traced only when asked for. A problem that can (AION, Gaussian atoms, AION on a grid) is
solved in units of its data, from its start's output scaled to the data (`in_units`), so that
the iterates do not depend on the scale of ``y``; everything reported is in the caller's
units.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._problems._base import AbstractProblem, NormalEquations
from .._problems._precision import widened
from .._solution import RESULTS
from ._linear import (
    CG,
    AbstractLinearSolver,
    Cholesky,
    AutoLinearSolver,
    DampedSystem,
    linear_solver_from,
    resolve_linear_solver,
)

HESSIANS = ("gauss_newton", "exact")
# What the solver's numeric options accept: Python, numpy and (concrete) JAX scalars.
Number = Union[int, float, np.integer, np.floating, np.ndarray, jax.Array]
Flag = Union[bool, np.bool_]
GEODESIC_MODES = {True: "on", False: "off", "auto": "auto"}


def _number(value, name: str, *, positive: bool = False, optional: bool = False):
    """``value`` as a Python float; a clear ``ValueError`` unless finite and ``>= 0``
    (``> 0`` when ``positive``)."""
    if value is None and optional:
        return None
    is_scalar_array = isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0
    if isinstance(value, (bool, np.bool_)) or not (
        isinstance(value, (int, float, np.integer, np.floating)) or is_scalar_array
    ):
        raise ValueError(f"SNR: `{name}` must be a finite number, got {value!r}.")
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"SNR: `{name}` must be a concrete number, not a traced value.")
    number = float(value)
    bound = "> 0" if positive else ">= 0"
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"SNR: `{name}` must be a finite number {bound}, got {value!r}.")
    return number


def _sum_dtype(value) -> str | None:
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    try:
        wide = jnp.dtype(value) == np.float64
    except TypeError:
        wide = False
    if not wide:
        raise ValueError(f"SNR: `sum_dtype` must be 'auto', 'float64' or None, got {value!r}.")
    return "float64"


class SNR(eqx.Module):
    """The Structured Newton-Raphson solver: how each inner iteration steps and when the
    loop stops. Hashable and validated when built, like optimistix's solvers; pass it as
    ``solver=`` to `solve`, `solve_once`, `multistart` and `expand`.

    **Arguments** (all optional):

    - ``linear_solver``: how each damped system is solved: `Cholesky` (``"dense"``),
      `Woodbury` (``"woodbury"``), `CG` (``"cg"``), `BlockJacobi` (``"block"``) or
      `AutoLinearSolver` (``"auto"``, the default), as an object or its string.
    - ``hessian``: ``"gauss_newton"`` (``J^T J``, the default) or ``"exact"`` (adds the
      residual-weighted term, block-diagonal over the terms; one more pass per iteration).
    - ``geodesic``: geodesic acceleration: ``"auto"`` (the default; on for good once five
      accepted steps in a row decreased ``Phi`` by less than 0.75 of the predicted amount),
      ``True`` (every iteration) or ``False``.
    - ``initial_damping``: the starting ``mu`` relative to the scaling ``D``, ``> 0``.
    - ``step_factor``: the longest first step, relative to the parameters, in Moré's scaled
      norm (``||D^1/2 s|| <= step_factor ||D^1/2 theta||``, MINPACK's ``factor``; default 1);
      after that a step may be at most twice as long as the longest one taken. A longer step
      is shortened along its direction. ``None``: no limit (and none where the parameters
      are all zero).
    - Convergence tests: ``loss_atol``, ``loss_rtol`` (``Phi <= atol + rtol Phi_0``),
      ``grad_atol``, ``grad_rtol`` (on ``max |grad Phi|``), ``ftol`` (relative decrease of
      ``Phi``, actual and predicted; default ``eps^0.625``) and ``xtol`` (relative step;
      default ``10 eps``); see `solve`.
    - ``sum_dtype``: the dtype of the sums over the data (``J^T J``, ``J^T r``, ``Phi``) and of
      the loop, for a float32 model: ``None`` (the default: the model's own dtype),
      ``"float64"`` (needs ``jax_enable_x64``) or ``"auto"`` (float64 on a CPU when JAX has
      it, the model's dtype otherwise). The residuals and Jacobian are evaluated in float32
      either way; formed in float64 their products are exact, so the step is the exact
      step of the float32 Jacobian. Measured at ``M = 128`` (``benchmarks/precision.py``):
      fewer inner iterations and less time to the end of a solve, at about twice the time
      per iteration; the loss reached is not lower (what ends those solves is a slow tail
      or a curved valley, not the rounding of the sums). On
      accelerators the float32 products always run at full float32 precision (no TF32).
      No effect on float64 models.
    - ``fix_gauge``: hold one amplitude per AION rank and dimension beyond the first.
    - ``variable_projection``: AION only; eliminate the first dimension's linear parameters.

    ```python
    solver = idn.SNR(linear_solver=idn.CG(rtol=1e-8), geodesic=False)
    model, info = idn.solve(start, x, y, solver=solver)
    ```
    """

    linear_solver: AbstractLinearSolver | AutoLinearSolver
    hessian: str
    geodesic: str
    initial_damping: float
    xtol: float | None
    ftol: float | None
    loss_atol: float
    loss_rtol: float
    grad_atol: float
    grad_rtol: float
    fix_gauge: bool
    variable_projection: bool
    geodesic_ratio: float
    geodesic_threshold: float
    geodesic_patience: int
    step_factor: float | None
    sum_dtype: str | None

    def __init__(
        self,
        linear_solver: AbstractLinearSolver | AutoLinearSolver | str = "auto",
        *,
        hessian: str = "gauss_newton",
        geodesic: Flag | str = "auto",
        initial_damping: Number = 1e-1,
        xtol: Number | None = None,
        ftol: Number | None = None,
        loss_atol: Number = 0.0,
        loss_rtol: Number = 0.0,
        grad_atol: Number = 0.0,
        grad_rtol: Number = 0.0,
        fix_gauge: Flag = False,
        variable_projection: Flag = False,
        step_factor: Number | None = 1.0,
        sum_dtype: object = None,
    ):
        self.linear_solver = linear_solver_from(linear_solver)
        if hessian not in HESSIANS:
            raise ValueError(f"SNR: `hessian` must be one of {HESSIANS}, got {hessian!r}.")
        self.hessian = hessian
        if isinstance(geodesic, np.bool_):
            geodesic = bool(geodesic)
        if not isinstance(geodesic, (bool, str)) or geodesic not in GEODESIC_MODES:
            raise ValueError(f"SNR: `geodesic` must be True, False or 'auto', got {geodesic!r}.")
        self.geodesic = GEODESIC_MODES[geodesic]
        self.initial_damping = _number(initial_damping, "initial_damping", positive=True)
        self.xtol = _number(xtol, "xtol", optional=True)
        self.ftol = _number(ftol, "ftol", optional=True)
        self.loss_atol = _number(loss_atol, "loss_atol")
        self.loss_rtol = _number(loss_rtol, "loss_rtol")
        self.grad_atol = _number(grad_atol, "grad_atol")
        self.grad_rtol = _number(grad_rtol, "grad_rtol")
        for name, flag in (("fix_gauge", fix_gauge), ("variable_projection", variable_projection)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"SNR: `{name}` must be True or False, got {flag!r}.")
        self.fix_gauge = bool(fix_gauge)
        self.variable_projection = bool(variable_projection)
        self.geodesic_ratio = 0.75
        self.geodesic_threshold = 0.75
        self.geodesic_patience = 5
        self.step_factor = _number(step_factor, "step_factor", positive=True, optional=True)
        self.sum_dtype = _sum_dtype(sum_dtype)
        if self.hessian == "exact" and isinstance(self.linear_solver, CG):
            raise ValueError(
                "SNR: linear_solver=CG needs a positive definite system, which the exact "
                "Hessian need not give; use 'dense' or 'woodbury' with hessian='exact', or "
                "hessian='gauss_newton' with CG."
            )
        if self.variable_projection:
            if self.hessian != "gauss_newton":
                raise ValueError("SNR: variable_projection=True uses hessian='gauss_newton' only.")
            if not isinstance(self.linear_solver, (AutoLinearSolver, Cholesky)):
                raise ValueError("SNR: variable_projection=True uses linear_solver='dense' only.")
            if self.fix_gauge:
                raise ValueError("SNR: variable_projection=True does not combine with fix_gauge.")

    def resolved(self, num_data: int, num_params: int, itemsize: int,
                 chunked: bool) -> SNR:
        """This solver with its linear solver made concrete for a problem of this size."""
        if self.variable_projection:
            concrete = Cholesky()
        else:
            concrete = resolve_linear_solver(self.linear_solver, num_data, num_params, itemsize,
                                             chunked)
        if concrete is self.linear_solver:
            return self
        return eqx.tree_at(lambda s: s.linear_solver, self, concrete)

    def tolerances(self, dtype) -> tuple[float, float | None]:
        """``(xtol, ftol)`` with the default ``xtol`` of ``dtype`` filled in; ``ftol=None``
        (the default) selects the settling test (see `settled`) instead of MINPACK's."""
        eps = float(jnp.finfo(dtype).eps)
        xtol = 10 * eps if self.xtol is None else self.xtol
        return xtol, self.ftol

    # -- the loop's pieces, composed ---------------------------------------------------------

    def evaluate(self, problem: AbstractProblem, mask: Array, delta: Array):
        """One pass over the data at ``theta + delta``: the sums the linear solver needs and,
        with the exact Hessian, the residual blocks. Frozen parameters get zero gradient."""
        maskf = mask.astype(problem.theta.dtype)
        sums = self.linear_solver.sums()
        if problem.keeps_jacobian and self.geodesic != "off":
            sums = {**sums, "jac": True}
        eq = problem.normal_equations(delta.reshape(problem.theta.shape), **sums)
        eq = eq._replace(g=eq.g * maskf, diag=eq.diag * maskf)
        blocks = None
        if self.hessian == "exact":
            m = maskf.reshape(-1, problem.block_size)
            blocks = 0.5 * problem.rank_blocks(delta.reshape(problem.theta.shape),
                                               residual_only=True)
            blocks = blocks * (m[:, :, None] * m[:, None, :])
        return eq, blocks

    @property
    def grad_test(self) -> bool:
        """Whether a gradient tolerance was asked for."""
        return self.grad_atol > 0 or self.grad_rtol > 0

    @property
    def passes_per_evaluation(self) -> int:
        """Passes over the data per evaluation: one, two with the residual blocks."""
        return 2 if self.hessian == "exact" else 1

    def init(self, problem: AbstractProblem, mask: Array, initial_damping=None,
             bounds: Bounds | None = None, units: Units | None = None) -> SNRState:
        """The state at ``delta = 0``, with the result codes of a bad start or bad data.
        With ``bounds`` the start must lie inside them. ``units``: the loop runs in units of
        the data (`in_units`); the absolute tolerances are the caller's, converted."""
        dtype = problem.theta.dtype
        delta = jnp.zeros(problem.num_params, dtype)
        eq, blocks = self.evaluate(problem, mask, delta)
        data_ok = problem.data_finite()
        start_ok = jnp.isfinite(eq.loss) & jnp.all(jnp.isfinite(eq.g)) & jnp.all(
            jnp.isfinite(eq.diag)
        )
        result = RESULTS.where(
            data_ok,
            RESULTS.where(start_ok, RESULTS.successful, RESULTS.nonfinite_start),
            RESULTS.nonfinite_data,
        )
        mu = self.initial_damping if initial_damping is None else initial_damping
        g0 = projected_gradient(problem.theta.reshape(-1), eq.g, bounds)
        eps = jnp.asarray(jnp.finfo(problem.eval_dtype).eps, dtype)
        data_norm = problem.data_norm()
        loss_unit = jnp.ones((), dtype) if units is None else units.loss
        grad_unit = jnp.ones((), dtype) if units is None else units.grad
        reference = eq.loss if units is None else units.reference_loss
        targets = Targets(
            loss=self.loss_atol / loss_unit + self.loss_rtol * reference,
            grad=self.grad_atol + self.grad_rtol * 2 * jnp.max(jnp.abs(g0 * grad_unit)),
            exact_floor=(2 * eps * data_norm) ** 2,
            rounding_floor=(64 * eps * data_norm) ** 2,
            data_peak=problem.data_peak(),
            loss_unit=loss_unit,
            grad_unit=grad_unit,
            eps=eps,
        )
        if self.step_factor is None:
            radius = jnp.asarray(jnp.inf, dtype)
        else:
            size = jnp.linalg.norm(jnp.sqrt(effective_scaling(eq.diag))
                                   * problem.theta.reshape(-1) * mask.astype(dtype))
            radius = jnp.where(size > 0, self.step_factor * size, jnp.inf)
        return SNRState(
            delta=delta,
            eq=eq,
            blocks=blocks,
            scale=eq.diag,
            radius=radius,
            mu=jnp.asarray(mu, dtype),
            nu=jnp.asarray(2.0, dtype),
            steps=jnp.asarray(0, jnp.int32),
            accepted=jnp.asarray(0, jnp.int32),
            passes=jnp.asarray(self.passes_per_evaluation, jnp.int32),
            done=~(data_ok & start_ok) | converged(eq.loss, g0, targets, self.grad_test) | ~jnp.any(mask),
            creeping=jnp.asarray(0, jnp.int32),
            below=jnp.asarray(0, jnp.int32),
            accelerate=jnp.asarray(self.geodesic == "on"),
            result=result,
            initial_loss=eq.loss,
            targets=targets,
            last=StepReport.empty(dtype),
        )

    def step(self, problem: AbstractProblem, mask: Array, state: SNRState,
             bounds: Bounds | None = None) -> SNRState:
        """One inner iteration: solve, correct, evaluate, accept or reject, adapt, test.

        With ``bounds``, the parameters at a bound whose gradient pushes outward are held for
        this iteration (the active set) and the step is projected into the box, so every
        iterate is feasible; the gradient tests read the projected gradient."""
        dtype = problem.theta.dtype
        theta = problem.theta.reshape(-1)
        now = theta + state.delta
        maskf = mask.astype(dtype) * free_of_bounds(now, state.eq.g, bounds).astype(dtype)
        xtol, ftol = self.tolerances(problem.eval_dtype)
        scale = more_scaling(state.scale, state.eq.diag)
        delta_shaped = state.delta.reshape(problem.theta.shape)
        blocks_now = state.blocks
        if bounds is not None and blocks_now is not None:
            m = maskf.reshape(-1, problem.block_size)
            blocks_now = blocks_now * (m[:, :, None] * m[:, None, :])
        system = DampedSystem(state.eq, effective_scaling(scale), state.mu, maskf, blocks_now,
                              problem, delta_shaped)
        factors = self.linear_solver.init(system)
        velocity, passes = self.linear_solver.solve(factors, system, -state.eq.g * maskf)
        velocity = project(now, velocity * maskf, bounds)
        s, geodesic_ok, passes = self._correct(problem, system, factors, velocity, passes,
                                               state.accelerate)
        s = project(now, s, bounds)
        s, velocity, length, limited = limit_step(s, velocity, system.scale, state.radius)
        eq_new, blocks_new = self.evaluate(problem, mask, state.delta + s)
        # The predicted decrease is the velocity's (the first-order step), as in Transtrum's
        # geodesic LM: an acceleration may only improve on it. Against the accelerated step's
        # own prediction the gain ratio punished the acceleration and the loop crept
        # (measured: 1 of 8 hard problems).
        curvature = velocity @ self.linear_solver.model_product(factors, system, velocity)
        predicted = predicted_decrease(state.eq.g, velocity, curvature)
        actual = state.eq.loss - eq_new.loss
        ratio = gain_ratio(actual, predicted)
        finite = jnp.isfinite(eq_new.loss) & jnp.all(jnp.isfinite(s))
        # A step the limit shortened, like one the damping decided, meets no convergence test.
        damped = limited | damping_decided(state.mu, velocity, system.scale, curvature,
                                           state.eq.g, state.eq.loss, state.targets.eps)
        resolution = loss_resolution(state.eq.loss, state.targets.data_peak, state.targets.eps)
        negligible = finite & (predicted >= 0) & (predicted <= resolution)
        accept = accepts(finite, geodesic_ok, predicted, ratio, eq_new.loss, state.eq.loss,
                         negligible, damped, resolution, state.initial_loss)
        mu, nu = nielsen_damping(state.mu, state.nu, accept, ratio, negligible)
        radius = jnp.where(accept, jnp.maximum(state.radius, 2 * length), state.radius)
        creeping, accelerate = geodesic_switch(
            state.creeping, state.accelerate, accept & ~negligible, ratio,
            self.geodesic_threshold, self.geodesic_patience, hold=negligible,
        )

        def pick(new, old):
            return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)

        delta = pick(state.delta + s, state.delta)
        eq = pick(eq_new, state.eq)
        blocks = None if state.blocks is None else pick(blocks_new, state.blocks)
        below = jnp.where(negligible & ~damped, state.below + 1,
                          jnp.where(negligible, state.below, 0))
        if ftol is None:
            decrease = settled(accept, curvature, state.eq.loss, state.targets) | (
                below >= BELOW_RESOLUTION_STEPS)
        else:
            decrease = decrease_small(finite, actual, predicted, state.eq.loss, ftol)
        small = step_small(length, (theta + delta) * mask.astype(dtype), xtol, system.scale)
        done = (~damped & (small | decrease)) | converged(
            eq.loss, projected_gradient(theta + delta, eq.g, bounds), state.targets,
            self.grad_test)
        # Stalled: the damping had to grow until its step fell below the resolution of Phi,
        # with no undamped step there before (not the floor of a converged solve), and Phi
        # still refused it, by no more than that resolution (a larger rise is a wrong step,
        # and the damping goes on growing: a float32 solve ended at 700 eps^2 on one);
        # or the damping overflowed. Within 64 ulps of an exact fit that is the rounding of
        # the model's values: converged.
        noise = eq_new.loss <= state.eq.loss + resolution
        stalled = (~accept & damped & negligible & noise & (state.below == 0)) | ~jnp.isfinite(mu)
        done = done | (stalled & (eq.loss <= state.targets.rounding_floor))
        stalled = stalled & ~done
        return SNRState(
            delta=delta,
            eq=eq,
            blocks=blocks,
            scale=scale,
            radius=radius,
            mu=mu,
            nu=nu,
            steps=state.steps + 1,
            accepted=state.accepted + accept.astype(jnp.int32),
            passes=state.passes + self.passes_per_evaluation + passes,
            done=done | stalled,
            creeping=creeping,
            below=below,
            accelerate=accelerate,
            result=RESULTS.where(stalled, RESULTS.stalled, state.result),
            initial_loss=state.initial_loss,
            targets=state.targets,
            last=StepReport(candidate_loss=eq_new.loss, ratio=ratio, accepted=accept),
        )

    def _correct(self, problem, system, factors, velocity, passes, accelerate):
        """The step ``v`` with the geodesic correction where it is on: ``(step, ok, passes)``."""
        if self.geodesic == "off":
            return velocity, jnp.asarray(True), passes

        def accelerated(_):
            acceleration, more = geodesic_correction(
                problem, self.linear_solver, factors, system, velocity
            )
            root = jnp.sqrt(system.scale)
            ok = 2 * jnp.linalg.norm(root * acceleration) <= (
                self.geodesic_ratio * jnp.linalg.norm(root * velocity)
            )
            return velocity + 0.5 * acceleration, ok, passes + more + 1

        if self.geodesic == "on":
            return accelerated(None)
        return jax.lax.cond(
            accelerate, accelerated, lambda _: (velocity, jnp.asarray(True), passes), None
        )

    def result(self, state: SNRState) -> RESULTS:
        """The result code of a finished loop: a bad start, bad data or a stall as recorded;
        otherwise successful if a test was met, else ``max_steps_reached``."""
        return RESULTS.where(
            state.result == RESULTS.successful,
            RESULTS.where(state.done, RESULTS.successful, RESULTS.max_steps_reached),
            state.result,
        )


class Bounds(NamedTuple):
    """Lower and upper bounds on the parameters, flat in the problem's layout (``-inf`` and
    ``inf`` where there is none)."""

    lower: Array
    upper: Array


def free_of_bounds(theta: Array, g: Array, bounds: Bounds | None) -> Array:
    """``False`` for a parameter at a bound whose descent direction ``-g`` points out."""
    if bounds is None:
        return jnp.ones(theta.shape, bool)
    held = ((theta <= bounds.lower) & (g > 0)) | ((theta >= bounds.upper) & (g < 0))
    return ~held


def projected_gradient(theta: Array, g: Array, bounds: Bounds | None) -> Array:
    """``g`` with the components that the bounds block set to zero: the first-order
    condition of the bounded problem is that this vanishes."""
    if bounds is None:
        return g
    return jnp.where(free_of_bounds(theta, g, bounds), g, 0.0)


def project(theta: Array, s: Array, bounds: Bounds | None) -> Array:
    """The step ``s`` from ``theta`` cut back into the box: ``clip(theta + s) - theta``."""
    if bounds is None:
        return s
    return jnp.clip(theta + s, bounds.lower, bounds.upper) - theta


class Targets(NamedTuple):
    """The levels of the tests, fixed at the start: the loss target (in the loop's units)
    and the gradient target (in the caller's), the floors of an exact fit
    (``(2 eps |y|)^2``: to 2 units in the last place of the data; ``(64 eps |y|)^2``: the
    rounding of the model's values), the largest datum ``max_n |y_n|``, the caller's units:
    ``Phi = loss_unit Phi_loop``, ``grad Phi = grad_unit grad Phi_loop`` (per parameter),
    and ``eps``, the rounding unit of the dtype the residuals are evaluated in."""

    loss: Float[Array, ""]
    grad: Float[Array, ""]
    exact_floor: Float[Array, ""]
    rounding_floor: Float[Array, ""]
    data_peak: Float[Array, ""]
    loss_unit: Float[Array, ""]
    grad_unit: Float[Array, "..."]
    eps: Float[Array, ""]


class StepReport(NamedTuple):
    """What the last iteration tried (for ``verbose``)."""

    candidate_loss: Float[Array, ""]
    ratio: Float[Array, ""]
    accepted: Bool[Array, ""]

    @classmethod
    def empty(cls, dtype) -> StepReport:
        nan = jnp.asarray(jnp.nan, dtype)
        return cls(candidate_loss=nan, ratio=nan, accepted=jnp.asarray(False))


class SNRState(eqx.Module):
    """The carry of the loop: the accepted point and its sums, the damping, the counters."""

    delta: Float[Array, " params"]
    eq: NormalEquations
    blocks: Array | None
    scale: Float[Array, " params"]
    radius: Float[Array, ""]  # the longest step allowed (scaled norm): grows with the steps taken
    mu: Float[Array, ""]
    nu: Float[Array, ""]
    steps: Int[Array, ""]
    accepted: Int[Array, ""]
    passes: Int[Array, ""]
    done: Bool[Array, ""]
    creeping: Int[Array, ""]  # consecutive accepted steps with a gain ratio below threshold
    below: Int[Array, ""]  # consecutive undamped steps predicted below the resolution of Phi
    accelerate: Bool[Array, ""]  # whether geodesic acceleration is on ("auto" turns it on)
    result: RESULTS
    initial_loss: Float[Array, ""]
    targets: Targets
    last: StepReport


# -- the pieces --------------------------------------------------------------------------------


def more_scaling(previous: Array, diag: Array) -> Array:
    """Moré's scaling: the running maximum of ``diag(J^T J)``."""
    return jnp.maximum(previous, diag)


def effective_scaling(scale: Array) -> Array:
    """The scaling, with a floor where it is zero (a parameter that has had no effect yet),
    so that such a parameter is still damped. Only there: a floor relative to the largest
    entry (``eps max D``) is not invariant to the parameters' scales, and where columns of
    ``J`` differ by more than ``1/sqrt(eps)`` it froze the small ones (NIST MGH10, whose
    ``b1`` column grew to ``1e19`` against ``b2``'s ``1``)."""
    tiny = jnp.finfo(scale.dtype).tiny
    floor = jnp.finfo(scale.dtype).eps * jnp.max(scale) + tiny
    return jnp.where(scale > 0, scale, floor)


def limit_step(s, velocity, scale, radius):
    """The step and its velocity shortened, along their direction, to the longest step
    allowed (``||D^1/2 s|| <= radius``); returns ``(s, velocity, length, limited)``. A
    shortened step is short because of the limit, not because the solve has converged."""
    length = jnp.linalg.norm(jnp.sqrt(scale) * s)
    limited = jnp.isfinite(length) & (length > radius)
    t = jnp.where(limited, radius / length, 1.0)
    return s * t, velocity * t, jnp.where(limited, radius, length), limited


def geodesic_correction(problem, linear_solver, factors, system, velocity):
    """Transtrum and Sethna's acceleration ``a``: ``(G + mu D) a = -J^T r_vv``, with
    ``r_vv`` the exact second directional derivative of the residuals along ``v``, from the
    factorisation at hand; returns ``(a, passes)`` (one pass more for ``r_vv``)."""
    if problem.keeps_jacobian and system.eq.jac is not None:
        # ``J^T r_vv`` with the Jacobian of the pass at hand: no reverse pass for it.
        h = problem.geodesic_rhs(system.delta, velocity, jac=system.eq.jac,
                                 kept=system.eq.kept)
    else:
        h = problem.geodesic_rhs(system.delta, velocity)
    h = h * system.mask
    acceleration, more = linear_solver.solve(factors, system, -h)
    return acceleration * system.mask, more


def geodesic_switch(creeping, accelerate, accept, ratio, threshold, patience, hold=False):
    """``"auto"``: count accepted steps in a row whose decrease the quadratic model
    overpredicted (gain ratio below ``threshold``: the narrow valleys where the damping
    stalls); at ``patience`` turn the acceleration on for good. Where ``hold`` (a step below
    the resolution of ``Phi``) the count is kept."""
    creeping = jnp.where(accept & (ratio < threshold), creeping + 1,
                         jnp.where(hold, creeping, 0))
    return creeping, accelerate | (creeping >= patience)


def predicted_decrease(g: Array, v: Array, curvature: Array) -> Array:
    """The quadratic model's decrease of ``Phi`` for the step ``v``: ``-(2 g.v + v^T G v)``,
    given ``curvature = v^T G v``."""
    return -(2 * (g @ v) + curvature)


def gain_ratio(actual: Array, predicted: Array) -> Array:
    """Actual over predicted decrease."""
    return actual / predicted


def loss_resolution(loss, data_peak, eps):
    """The rounding of ``Phi = r.r``, ``8 eps (Phi + sqrt(Phi) max_n |y_n|)`` (``eps`` that of
    the dtype the residuals are evaluated in, ``max_n |y_n|`` the problem's `data_peak`):
    changes of ``Phi`` below it are noise. Each residual is rounded by about ``eps |y_n|``,
    independently of the others, which moves ``Phi`` by ``2 sum_n r_n delta_n``: within a few
    ``eps sqrt(Phi) max_n |y_n|``. The bound for roundings that all agree, ``eps sqrt(Phi)
    |y|``, is up to ``sqrt(N)`` larger; it stopped float32 solves early, one stalled 5e4 times
    above its floor (``benchmarks/precision.py``)."""
    return 8 * eps * (loss + jnp.sqrt(loss) * data_peak)


def damping_decided(mu, v, scale, curvature, g, loss, eps):
    """Whether the damping rather than the model decided the step ``v``: ``mu > 1`` (``mu``
    is relative to ``D``: after overflowing candidates, or from a large initial damping), or
    ``mu D`` carries most of ``-g.v = v^T (G + mu D) v`` while some column of ``J`` is still
    at an angle to ``r`` (cosine ``|g_i| / sqrt(D_i Phi)`` above ``sqrt(eps)``). Along a null
    direction of ``J`` (a curve of minima) the damping decides too, but there the gradient is
    rounding noise. Such a step meets no convergence test."""
    dominated = mu * ((v * scale) @ v) > curvature
    cosine = jnp.max(jnp.abs(g) / jnp.sqrt(scale * loss))
    return (mu > 1) | (dominated & (cosine > eps**0.5))


def accepts(finite, geodesic_ok, predicted, ratio, loss_new, loss, negligible=False,
            damped=False, resolution=0.0, start_loss=None):
    """A step is taken if it is finite and its acceleration small, and either ``Phi`` fell by
    a fair share of a predicted decrease, or the step is ``negligible`` (predicted below the
    resolution of ``Phi``, where the actual change is rounding noise) and ``Phi`` rises by no
    more than that resolution (nothing while the damping decides), never above the start."""
    improves = (predicted > 0) & (ratio > 1e-4) & (loss_new < loss)
    settles = negligible & (loss_new <= loss + jnp.where(damped, 0.0, resolution))
    if start_loss is not None:
        settles = settles & (loss_new <= start_loss)
    return finite & geodesic_ok & (improves | settles)


def nielsen_damping(mu, nu, accept, ratio, negligible=False):
    """Nielsen's rule: ``mu *= max(1/3, 1 - (2 rho - 1)^3)`` and ``nu = 2`` on success,
    ``mu *= nu`` and ``nu *= 2`` on failure. A negligible step counts as a perfect model
    (``rho = 1``) when taken; refused, it doubles ``mu`` without raising ``nu`` (it is no
    failure of the model)."""
    ratio_safe = jnp.where(accept, jnp.where(negligible, 1.0, ratio), 0.5)
    mu_accept = mu * jnp.maximum(1.0 / 3.0, 1 - (2 * ratio_safe - 1) ** 3)
    return (
        jnp.where(accept, mu_accept, mu * jnp.where(negligible, 2.0, nu)),
        jnp.where(accept, 2.0, jnp.where(negligible, nu, 2 * nu)).astype(nu.dtype),
    )


# Steps in a row below the resolution of Phi (and not damped) after which a solve ends: the
# floor where the steps are rounding noise and Phi cannot confirm any of them.
BELOW_RESOLUTION_STEPS = 8


def settled(accept, curvature, loss, targets) -> Array:
    """The default decrease test: a taken step whose change of the fitted values,
    ``||J v||^2 = v^T G v``, is below the rounding of ``Phi``, ``eps Phi``, or of the data.
    The parameters are then about one contraction of that step from the minimum: settled to
    rounding. (MINPACK's ``ftol`` test on the relative decrease left ``||J s|| ~ sqrt(ftol
    Phi)``: parameters 1e-8 from the minimum on NIST Lanczos3, and runs that differ only in
    rounding that far apart.)

    The data's share is the exact-fit floor ``F = (2 eps |y|)^2`` while ``Phi <= F``, and
    ``F^2 / Phi`` above it: a step's first-order change of ``Phi``, ``2 r.J v``, is then
    within ``2 F``. With ``F`` alone, float32 solves that still gained a few per cent an
    iteration stopped at ``Phi ~ 60 eps^2 |y|^2`` (``benchmarks/precision.py``)."""
    floor = targets.exact_floor
    floor = jnp.where(loss > floor, floor * (floor / jnp.where(loss > floor, loss, 1)), floor)
    return accept & (curvature >= 0) & (curvature <= targets.eps * loss + floor)


def converged(loss, g, targets: Targets, grad_test: bool = True) -> Array:
    """The loss test (``Phi <= loss target``, or an exact fit to the data's rounding), and the
    gradient test where one was asked for (``max|grad| <= grad target``: never met by a
    gradient that merely underflowed)."""
    met = (loss <= targets.loss) | (loss <= targets.exact_floor)
    if grad_test:
        met = met | (2 * jnp.max(jnp.abs(g * targets.grad_unit)) <= targets.grad)
    return met


def step_small(length, params, xtol, scale) -> Array:
    """MINPACK's step test in Moré's scaled norm: ``||D^1/2 s|| <= xtol ||D^1/2 theta||``,
    invariant to the scale of the data and of each parameter; ``length`` is the step's
    ``||D^1/2 s||`` (from `limit_step`)."""
    return length <= xtol * jnp.linalg.norm(jnp.sqrt(scale) * params)


def decrease_small(finite, actual, predicted, loss, ftol) -> Array:
    """MINPACK's decrease test: the actual and the predicted relative decrease both at most
    ``ftol`` (for a rejected step too: then the actual change is rounding noise)."""
    return finite & (jnp.abs(actual) <= ftol * loss) & (predicted <= ftol * loss)


# -- the loop ------------------------------------------------------------------------------------


class Units(NamedTuple):
    """The loop's units against the caller's (see `in_units`): ``Phi = loss Phi_loop`` and
    ``theta = factors theta_loop`` (flat), powers of two, so exact; ``grad Phi = grad
    grad Phi_loop`` (``loss / factors``); the caller's start ``Phi``, in the caller's units
    and (before step zero) in the loop's; the passes over the data it took."""

    loss: Array
    factors: Array
    grad: Array
    initial_loss: Array
    reference_loss: Array
    passes: int


def in_units(problem: AbstractProblem, mask: Array) -> tuple[AbstractProblem, Units | None]:
    r"""``problem`` in units of its data, and those units; ``(problem, None)`` for a problem
    that cannot change units (``target_scale() is None``: a general residual, a regularised
    or robust loss, autodiff of any model).

    Two changes, both through the amplitudes, in which the output is linear:

    - the targets are divided by ``sigma = 2^(d e)``, a power of two near ``max |y|`` (``d``
      amplitude factors per term, each divided by ``2^e``: exact, and undone exactly), so that
      the loop sees data of order one whatever the caller's units, and no sum over- or
      underflows where the data's squares do not;
    - *step zero*: the start's output ``f`` is scaled to the data by
      $c = \langle f, y \rangle / \langle f, f \rangle$, the exact minimiser of ``Phi``
      along ``c f`` (``Phi`` falls by $\langle f, r\rangle^2 / \langle f, f\rangle$), as
      the loop's base point (a shift from ``1`` to ``1e-75`` would keep the amplitude to
      ``eps`` only). Without it a start far from the data's scale (``y ~ 1e12``, amplitudes
      ``~ 1``) sends the first Gauss-Newton steps into the growth rates, whose exponentials
      overflow. Taken where that fall is above the rounding of ``Phi`` and the amplitudes it
      changes are free (``mask``).

    From there the iterates do not depend on the scale of ``y`` up to rounding: the loop is
    invariant to a diagonal rescaling of the parameters (Moré's ``D``, ``mu`` relative to it)
    and to the scale of the residuals (the gain ratio and every test are relative to ``Phi``
    or ``|y|``). Cost: one pass over the data, values only. The quantities of step zero are
    formed as ratios (``rho = |f| / |y|``, the cosine of ``f`` and ``y``), so that only
    ``rho^2`` need be finite.
    """
    scale = problem.target_scale()
    if scale is None:
        return problem, None
    dtype = problem.theta.dtype
    info = jnp.finfo(problem.eval_dtype)  # the range and rounding of the model's values
    eps = float(info.eps)
    dims = problem.amplitude_dims
    exponent = jnp.round(jnp.log2(scale) / dims)
    exponent = jnp.where(jnp.isfinite(exponent), exponent, 0.0)
    # sigma^2, the unit of Phi, a normal number.
    exponent = jnp.clip(exponent, info.minexp // (2 * dims) + 1, info.maxexp // (2 * dims) - 1)
    exponent = exponent.astype(jnp.int32)
    one = jnp.ones((), dtype)
    sigma = jnp.ldexp(one, dims * exponent)
    everything = jnp.ones(problem.num_params, bool)
    unit_factors, _ = problem.output_factors(sigma, everything, jnp.ldexp(one, exponent))
    targets = problem.rescaled(sigma, jnp.ones(problem.num_params, dtype))
    ff, fy, yy, start_loss = targets.output_moments(jnp.zeros_like(problem.theta), sigma)
    c = fy / ff  # the start's output times c fits y / sigma best: step zero's factor
    step_zero, possible = problem.output_factors(c, mask)
    # In units of yy: Phi before step zero is (rho - kappa)^2 + 1 - kappa^2, after it
    # 1 - kappa^2, with rho = |f| / (sigma |y'|) and kappa the cosine of f and y'.
    norm_f, norm_y = jnp.sqrt(ff), jnp.sqrt(yy)
    rho = norm_f / norm_y / sigma
    kappa = jnp.clip(fy / norm_f / norm_y, -1.0, 1.0)
    gain = (rho - kappa) ** 2
    before = gain + (1 - kappa**2)
    take = possible & jnp.isfinite(gain) & (ff > 0) & (yy > 0) & (
        gain > 8 * eps * (before + jnp.sqrt(before)) + 64 * eps**2
    )
    # The loop's start: the caller's in the loop's units (theta / unit_factors, exact), or
    # after step zero (c f fits y / sigma: in the loop's units already).
    start = jnp.where(take, step_zero, 1 / unit_factors)
    loss_unit = sigma * sigma
    units = Units(
        loss=loss_unit,
        factors=unit_factors,
        grad=loss_unit / unit_factors,
        initial_loss=start_loss,
        reference_loss=before * yy,
        passes=1,
    )
    return problem.rescaled(sigma, start), units


class IterateHistory(NamedTuple):
    """The point after each inner iteration (index 0: the start); NaN past the last one.
    In the caller's units: the loss, and the parameters (flat, the problem's layout)."""

    loss: Array  # (max_steps + 1,)
    theta: Array  # (max_steps + 1, M)
    damping: Array  # (max_steps + 1,)
    accepted: Array  # (max_steps + 1,) bool


class IterateResult(NamedTuple):
    """What the loop ends with: the parameters reached (flat, the problem's layout), the
    losses and gradient in the caller's units, the counts and the result code."""

    theta: Array
    loss: Array
    initial_loss: Array
    grad_norm: Array
    inner_steps: Array
    accepted_steps: Array
    data_passes: Array
    damping: Array
    result: RESULTS
    history: IterateHistory | None


def _record(history: IterateHistory, k, state, theta, factors) -> IterateHistory:
    return IterateHistory(
        loss=history.loss.at[k].set(state.eq.loss * state.targets.loss_unit),
        theta=history.theta.at[k].set((theta + state.delta) * factors),
        damping=history.damping.at[k].set(state.mu),
        accepted=history.accepted.at[k].set(state.last.accepted),
    )


def _print(state) -> None:
    unit = state.targets.loss_unit
    jax.debug.print(
        "SNR {k:4d}  Phi {loss:.6e}  max|grad| {grad:.3e}  damping {mu:.2e}  "
        "accepted {accepted}  (candidate Phi {cand:.6e}, gain ratio {ratio:.3f})",
        k=state.steps, loss=state.eq.loss * unit,
        grad=2 * jnp.max(jnp.abs(state.eq.g * state.targets.grad_unit)),
        mu=state.mu, accepted=state.last.accepted, cand=state.last.candidate_loss * unit,
        ratio=state.last.ratio, ordered=True,
    )


def iterate(
    solver: SNR,
    problem: AbstractProblem,
    mask: Array,
    *,
    max_steps: int,
    record_history: bool = False,
    verbose: bool = False,
    initial_damping: Array | None = None,
    bounds: Bounds | None = None,
    step_limit: Array | None = None,
) -> IterateResult:
    """Run ``solver`` on ``problem`` from its ``theta`` for at most ``max_steps`` inner
    iterations. ``mask`` is a boolean vector over the parameters (``False`` never moves);
    ``initial_damping`` (a traced scalar) overrides the solver's, so that a batch of solves
    can each resume with their own damping; ``bounds`` (flat, in the problem's layout) keep
    every iterate in a box, the start inside it; ``step_limit`` (a traced integer, at most
    ``max_steps``) stops the loop earlier, so that each lane of a ``vmap`` can have its own
    budget. Never returns a point worse than the start.

    A problem that can change units (`in_units`) is solved in units of its data, from its
    start's output scaled to the data; without bounds only (they are in the caller's units).
    What is returned is in the caller's units.

    Where the problem can be re-based (`AbstractProblem.rebased`), the loop carries the
    current point and expands about it after every iteration (``delta`` back to zero), so a
    parameter that moves far below its start keeps its relative precision: with a fixed
    start, ``start + delta`` lies on the grid of the start's rounding unit (NIST MGH10: ``b1``
    from 2 to ``2e-53`` and back to ``5.6e-3``). Otherwise ``delta`` is the shift from the
    fixed start."""
    units, start = None, problem.theta.reshape(-1)
    given = problem.theta.dtype
    problem = widened(problem, solver.sum_dtype)
    dtype = problem.theta.dtype
    start = start.astype(dtype)
    if bounds is not None:
        bounds = Bounds(*(b.astype(dtype) for b in bounds))
    if bounds is None:
        problem, units = in_units(problem, mask)
    theta0 = problem.theta.reshape(-1)
    factors = jnp.ones((), dtype) if units is None else units.factors
    state = solver.init(problem, mask, initial_damping, bounds, units)
    if units is not None:
        state = eqx.tree_at(lambda s: s.passes, state, state.passes + units.passes)
    rebase = problem.rebased(problem.theta) is not None

    def at(theta):
        return problem.rebased(theta.reshape(problem.theta.shape)) if rebase else problem

    history = None
    if record_history:
        length = max_steps + 1
        nan = jnp.asarray(jnp.nan, dtype)
        history = IterateHistory(
            loss=jnp.full(length, nan),
            theta=jnp.full((length, problem.num_params), nan),
            damping=jnp.full(length, nan),
            accepted=jnp.zeros(length, bool),
        )
        history = _record(history, 0, state, theta0, factors)
        if units is not None:  # the caller's start, before step zero
            history = history._replace(loss=history.loss.at[0].set(units.initial_loss),
                                       theta=history.theta.at[0].set(start))

    def cond(carry):
        state, _, _ = carry
        going = ~state.done & (state.steps < max_steps)
        return going if step_limit is None else going & (state.steps < step_limit)

    def body(carry):
        state, theta, history = carry
        state = solver.step(at(theta), mask, state, bounds)
        if rebase:
            # The point the step was evaluated at, bit for bit: theta + s.
            theta = theta + state.delta
            state = eqx.tree_at(lambda s: s.delta, state, jnp.zeros_like(state.delta))
        if verbose:
            _print(state)
        if history is not None:
            history = _record(history, state.steps, state, theta, factors)
        return state, theta, history

    state, theta, history = jax.lax.while_loop(cond, body, (state, theta0, history))
    point = theta + state.delta
    result = IterateResult(
        theta=point * factors,
        loss=state.eq.loss * state.targets.loss_unit,
        initial_loss=state.initial_loss if units is None else units.initial_loss,
        grad_norm=2 * jnp.max(jnp.abs(
            projected_gradient(point, state.eq.g, bounds) * state.targets.grad_unit)),
        inner_steps=state.steps,
        accepted_steps=state.accepted,
        data_passes=state.passes,
        damping=state.mu,
        result=solver.result(state),
        history=history,
    )
    # Reported in the model's dtype (a mixed-precision loop ran wider).
    return jax.tree.map(
        lambda a: a.astype(given) if jnp.issubdtype(a.dtype, jnp.floating) else a, result)
