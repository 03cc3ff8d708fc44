r"""The Structured Newton-Raphson (SNR) loop for ``F(Delta) = 0``.

Training is the root-finding problem ``F(Delta) = grad Phi(Theta + Delta) = 0`` from
``Delta = 0``. Its Jacobian is the Hessian ``H = 2 J^T J + 2 sum_n r_n Hess f_n``. Undamped
Newton on ``F`` runs to the saddles and maxima that are also roots of ``F``, so the loop is a
Levenberg-Marquardt globalisation of Newton's method:

- every iterate is evaluated through the resummation (basis at ``Theta``, shift
  ``exp(<a, Delta>)``): residuals and the closed-form Jacobian in one pass over the data;
- the step solves ``(G + mu diag(D)) s = -J^T r`` with ``G = J^T J`` (Gauss-Newton, positive
  semidefinite) or ``G = J^T J + blockdiag K`` (the exact Hessian, ``hessian="exact"``);
  ``D`` is More's scaling, the running maximum of ``diag(J^T J)``;
- the gain ratio ``rho`` (actual over predicted decrease of ``Phi``) accepts the step only if
  ``Phi`` falls, and adapts ``mu`` by Nielsen's rule (``mu *= max(1/3, 1 - (2 rho - 1)^3)`` on
  success, ``mu *= nu, nu *= 2`` on failure);
- geodesic acceleration (Transtrum & Sethna) adds ``a / 2`` to the step ``v``, with
  ``(G + mu D) a = -J^T r_vv`` from the same factorisation; ``"auto"`` switches it on once
  the loop creeps (several accepted steps in a row with a poor gain ratio);
- it is a bounded ``jax.lax.while_loop``: no Python loop, no host round-trip.

The loop never returns a point with a larger ``Phi`` than the start.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._linear_solve import DampedSystem
from ._resummation import NormalEquations
from ._solution import RESULTS


class SNROptions(NamedTuple):
    """Static options of the loop (hashable, so a change recompiles)."""

    max_steps: int
    linear_solver: str
    hessian: str
    xtol: float | None
    ftol: float | None
    grad_atol: float
    grad_rtol: float
    loss_atol: float
    loss_rtol: float
    initial_damping: float
    record_history: bool = False
    geodesic: str = "off"  # "off", "on", or "auto" (on once the loop is seen creeping)
    geodesic_ratio: float = 0.75
    geodesic_threshold: float = 0.75
    geodesic_patience: int = 5
    verbose: bool = False


class SNRHistory(NamedTuple):
    """The point after each inner iteration (index 0: the start); NaN past the last one."""

    loss: jax.Array  # (max_steps + 1,)
    delta: jax.Array  # (max_steps + 1, M)
    damping: jax.Array  # (max_steps + 1,)
    accepted: jax.Array  # (max_steps + 1,) bool


class SNRResult(NamedTuple):
    delta: jax.Array
    loss: jax.Array
    initial_loss: jax.Array
    grad_norm: jax.Array
    inner_steps: jax.Array
    accepted_steps: jax.Array
    data_passes: jax.Array
    damping: jax.Array
    result: RESULTS
    history: SNRHistory | None


class _Carry(NamedTuple):
    delta: jax.Array
    eq: NormalEquations
    blocks: jax.Array | None
    scale: jax.Array
    mu: jax.Array
    nu: jax.Array
    steps: jax.Array
    accepted: jax.Array
    passes: jax.Array
    done: jax.Array
    creeping: jax.Array  # consecutive accepted steps with a gain ratio below the threshold
    accelerate: jax.Array  # whether the geodesic acceleration is on ("auto" turns it on once)
    result: RESULTS
    history: SNRHistory | None


def _default_tolerances(dtype, options: SNROptions) -> tuple[float, float]:
    eps = float(jnp.finfo(dtype).eps)
    xtol = 10 * eps if options.xtol is None else options.xtol
    # Relative decrease of Phi: about 1.6e-10 in float64, 5e-5 in float32. Loose enough to end
    # a solve whose residual cannot vanish (noisy data) once steps only move rounding noise;
    # on an exactly representable target the relative decrease stays near 1 until the
    # rounding floor, so it never stops such a solve early.
    ftol = eps**0.625 if options.ftol is None else options.ftol
    return xtol, ftol


def run_snr(
    problem, mask: jax.Array, options: SNROptions, initial_damping: jax.Array | None = None
) -> SNRResult:
    """Solve ``F(Delta) = 0`` for ``problem`` (an :class:`AIONResummation`).

    ``mask`` is a boolean vector over the stacked parameters; ``False`` entries never move.
    ``initial_damping`` (a traced scalar) overrides ``options.initial_damping``, so that a
    batch of solves can each start from their own damping.
    """
    theta = problem.theta.reshape(-1)
    shape = problem.theta.shape
    dtype = theta.dtype
    num_params = theta.shape[0]
    block_size = problem.block_size
    strategy = options.linear_solver
    use_blocks = options.hessian == "exact"
    xtol, ftol = _default_tolerances(dtype, options)
    tiny = jnp.finfo(dtype).tiny
    maskf = mask.astype(dtype)
    # Passes over the data: one per evaluation (two with the residual blocks, which are a
    # separate jacfwd sweep); geodesic acceleration adds one per iteration (J^T r_vv); CG adds
    # one per matrix-vector product, counted as it runs.
    passes_per_eval = 2 if use_blocks else 1
    passes_per_step = passes_per_eval
    mu0 = jnp.asarray(
        options.initial_damping if initial_damping is None else initial_damping, dtype
    )

    def evaluate(delta):
        d = delta.reshape(shape)
        eq = problem.normal_equations(
            d, gram=strategy in ("dense", "block"), rank_grams=strategy == "cg",
            jac=strategy == "woodbury",
        )
        # Frozen parameters get zero gradient (and are masked out of the systems), so the
        # damped system gives them a zero step.
        eq = eq._replace(g=eq.g * maskf, diag=eq.diag * maskf)
        blocks = None
        if use_blocks:
            m = maskf.reshape(-1, block_size)
            blocks = 0.5 * problem.rank_blocks(d, residual_only=True)
            blocks = blocks * (m[:, :, None] * m[:, None, :])
        return eq, blocks

    data_ok = problem.data_finite()
    delta0 = jnp.zeros_like(theta)
    eq0, blocks0 = evaluate(delta0)
    loss0 = eq0.loss
    start_ok = jnp.isfinite(loss0) & jnp.all(jnp.isfinite(eq0.g)) & jnp.all(
        jnp.isfinite(eq0.diag)
    )
    result0 = RESULTS.where(
        data_ok,
        RESULTS.where(start_ok, RESULTS.successful, RESULTS.nonfinite_start),
        RESULTS.nonfinite_data,
    )
    grad0 = 2 * jnp.max(jnp.abs(eq0.g))
    loss_target = options.loss_atol + options.loss_rtol * loss0
    grad_target = options.grad_atol + options.grad_rtol * grad0

    def converged_at(loss, g):
        return (loss <= loss_target) | (2 * jnp.max(jnp.abs(g)) <= grad_target)

    history0 = None
    if options.record_history:
        length = options.max_steps + 1
        nan = jnp.asarray(jnp.nan, dtype)
        history0 = SNRHistory(
            loss=jnp.full(length, nan).at[0].set(loss0),
            delta=jnp.full((length, num_params), nan).at[0].set(delta0),
            damping=jnp.full(length, nan).at[0].set(mu0),
            accepted=jnp.zeros(length, bool),
        )

    init = _Carry(
        delta=delta0,
        eq=eq0,
        blocks=blocks0,
        scale=eq0.diag,
        mu=mu0,
        nu=jnp.asarray(2.0, dtype),
        steps=jnp.asarray(0, jnp.int32),
        accepted=jnp.asarray(0, jnp.int32),
        passes=jnp.asarray(passes_per_eval, jnp.int32),
        done=~(data_ok & start_ok) | converged_at(loss0, eq0.g) | ~jnp.any(mask),
        creeping=jnp.asarray(0, jnp.int32),
        accelerate=jnp.asarray(options.geodesic == "on"),
        result=result0,
        history=history0,
    )

    def cond(c: _Carry):
        return ~c.done & (c.steps < options.max_steps)

    def body(c: _Carry) -> _Carry:
        scale = jnp.maximum(c.scale, c.eq.diag)  # More's scaling: the running maximum
        scale_eff = jnp.maximum(scale, jnp.finfo(dtype).eps * jnp.max(scale) + tiny)
        delta_shaped = c.delta.reshape(shape)
        system = DampedSystem(
            strategy, c.eq, scale_eff, c.mu, block_size, maskf, c.blocks,
            problem=problem, delta=delta_shaped,
        )
        velocity, passes = system.solve(-c.eq.g)
        velocity = velocity * maskf
        geodesic_ok = jnp.asarray(True)
        if options.geodesic != "off":
            # Transtrum & Sethna: the second-order correction along the geodesic,
            # (G + mu D) a = -J^T r_vv, with the system already at hand; the step is
            # v + a / 2, taken only if the acceleration is small against the velocity.
            def accelerated(_):
                h = problem.geodesic_rhs(delta_shaped, velocity) * maskf
                acceleration, more = system.solve(-h)
                acceleration = acceleration * maskf
                root = jnp.sqrt(scale_eff)
                ok = 2 * jnp.linalg.norm(root * acceleration) <= (
                    options.geodesic_ratio * jnp.linalg.norm(root * velocity)
                )
                return velocity + 0.5 * acceleration, ok, passes + more + 1

            if options.geodesic == "on":
                s, geodesic_ok, passes = accelerated(None)
            else:
                # "auto": off until the loop creeps (several accepted steps in a row whose
                # decrease the quadratic model overpredicted: the narrow valley where the
                # damping stalls), then on for good; well-modelled problems pay nothing.
                s, geodesic_ok, passes = jax.lax.cond(
                    c.accelerate, accelerated,
                    lambda _: (velocity, jnp.asarray(True), passes), None,
                )
        else:
            s = velocity
        eq_new, blocks_new = evaluate(c.delta + s)
        loss_new = eq_new.loss
        # Quadratic model of Phi: Phi + 2 g.v + v^T G v. The predicted decrease is the
        # velocity's (the first-order step), as in Transtrum's geodesic LM: an acceleration
        # may only improve on it. Against the accelerated step's own prediction the gain
        # ratio punished the acceleration and the loop crept (measured: 1 of 8 hard problems).
        predicted = -(2 * (c.eq.g @ velocity) + velocity @ system.model_product(velocity, c.eq.g))
        actual = c.eq.loss - loss_new
        ratio = actual / predicted
        finite = jnp.isfinite(loss_new) & jnp.all(jnp.isfinite(s))
        accept = (
            finite & geodesic_ok & (predicted > 0) & (ratio > 1e-4) & (loss_new < c.eq.loss)
        )

        ratio_safe = jnp.where(accept, ratio, 0.5)
        mu_accept = c.mu * jnp.maximum(1.0 / 3.0, 1 - (2 * ratio_safe - 1) ** 3)
        mu = jnp.where(accept, mu_accept, c.mu * c.nu)
        nu = jnp.where(accept, 2.0, 2 * c.nu).astype(dtype)

        creeping = jnp.where(accept & (ratio < options.geodesic_threshold), c.creeping + 1, 0)

        def pick(new, old):
            return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)

        delta = pick(c.delta + s, c.delta)
        eq = pick(eq_new, c.eq)
        blocks = None if c.blocks is None else pick(blocks_new, c.blocks)

        # Convergence tests (MINPACK-style, plus absolute/relative loss and gradient).
        params_norm = jnp.linalg.norm((theta + delta) * maskf)
        step_small = jnp.linalg.norm(s) <= xtol * (params_norm + xtol)
        # MINPACK's test: both the actual and the predicted relative decrease are negligible
        # (for a rejected step too: then the actual change is rounding noise).
        decrease_small = (
            finite & (jnp.abs(actual) <= ftol * c.eq.loss) & (predicted <= ftol * c.eq.loss)
        )
        done = step_small | decrease_small | converged_at(eq.loss, eq.g)
        if options.verbose:
            # Printed from inside jit; traced only when asked for, so free when off.
            jax.debug.print(
                "SNR {k:4d}  Phi {loss:.6e}  max|grad| {grad:.3e}  damping {mu:.2e}  "
                "accepted {accepted}  (candidate Phi {cand:.6e}, gain ratio {ratio:.3f})",
                k=c.steps + 1, loss=eq.loss, grad=2 * jnp.max(jnp.abs(eq.g)), mu=mu,
                accepted=accept, cand=loss_new, ratio=ratio,
                ordered=True,
            )
        history = c.history
        if history is not None:
            k = c.steps + 1
            history = SNRHistory(
                loss=history.loss.at[k].set(eq.loss),
                delta=history.delta.at[k].set(delta),
                damping=history.damping.at[k].set(mu),
                accepted=history.accepted.at[k].set(accept),
            )
        return _Carry(
            delta=delta,
            eq=eq,
            blocks=blocks,
            scale=scale,
            mu=mu,
            nu=nu,
            steps=c.steps + 1,
            accepted=c.accepted + accept.astype(jnp.int32),
            passes=c.passes + passes_per_step + passes,
            done=done,
            creeping=creeping,
            accelerate=c.accelerate | (creeping >= options.geodesic_patience),
            result=c.result,
            history=history,
        )

    final = jax.lax.while_loop(cond, body, init)
    result = RESULTS.where(
        final.result == RESULTS.successful,
        RESULTS.where(final.done, RESULTS.successful, RESULTS.max_steps_reached),
        final.result,
    )
    return SNRResult(
        delta=final.delta,
        loss=final.eq.loss,
        initial_loss=loss0,
        grad_norm=2 * jnp.max(jnp.abs(final.eq.g)),
        inner_steps=final.steps,
        accepted_steps=final.accepted,
        data_passes=final.passes,
        damping=final.mu,
        result=result,
        history=final.history,
    )
