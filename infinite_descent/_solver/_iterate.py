"""The one loop: a bounded ``lax.while_loop`` of `SNR.step`, shared by every entry point.

History (``record_history``) and printing (``verbose``) are handled here, once; both are
traced only when asked for, so they cost nothing when off.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._problems._base import AbstractProblem
from .._solution import RESULTS
from ._snr import SNR, Bounds, projected_gradient


class IterateHistory(NamedTuple):
    """The point after each inner iteration (index 0: the start); NaN past the last one."""

    loss: Array  # (max_steps + 1,)
    delta: Array  # (max_steps + 1, M)
    damping: Array  # (max_steps + 1,)
    accepted: Array  # (max_steps + 1,) bool


class IterateResult(NamedTuple):
    """What the loop ends with: the shift, the counts and the result code."""

    delta: Array
    loss: Array
    initial_loss: Array
    grad_norm: Array
    inner_steps: Array
    accepted_steps: Array
    data_passes: Array
    damping: Array
    result: RESULTS
    history: IterateHistory | None


def _record(history: IterateHistory, k, state) -> IterateHistory:
    return IterateHistory(
        loss=history.loss.at[k].set(state.eq.loss),
        delta=history.delta.at[k].set(state.delta),
        damping=history.damping.at[k].set(state.mu),
        accepted=history.accepted.at[k].set(state.last.accepted),
    )


def _print(state) -> None:
    jax.debug.print(
        "SNR {k:4d}  Phi {loss:.6e}  max|grad| {grad:.3e}  damping {mu:.2e}  "
        "accepted {accepted}  (candidate Phi {cand:.6e}, gain ratio {ratio:.3f})",
        k=state.steps, loss=state.eq.loss, grad=2 * jnp.max(jnp.abs(state.eq.g)),
        mu=state.mu, accepted=state.last.accepted, cand=state.last.candidate_loss,
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
) -> IterateResult:
    """Run ``solver`` on ``problem`` from ``delta = 0`` for at most ``max_steps`` inner
    iterations. ``mask`` is a boolean vector over the parameters (``False`` never moves);
    ``initial_damping`` (a traced scalar) overrides the solver's, so that a batch of solves
    can each resume with their own damping; ``bounds`` (flat, in the problem's layout) keep
    every iterate in a box, the start inside it. Never returns a point worse than the start."""
    state = solver.init(problem, mask, initial_damping, bounds)
    history = None
    if record_history:
        length = max_steps + 1
        nan = jnp.asarray(jnp.nan, problem.theta.dtype)
        history = IterateHistory(
            loss=jnp.full(length, nan),
            delta=jnp.full((length, problem.num_params), nan),
            damping=jnp.full(length, nan),
            accepted=jnp.zeros(length, bool),
        )
        history = _record(history, 0, state)

    def cond(carry):
        state, _ = carry
        return ~state.done & (state.steps < max_steps)

    def body(carry):
        state, history = carry
        state = solver.step(problem, mask, state, bounds)
        if verbose:
            _print(state)
        if history is not None:
            history = _record(history, state.steps, state)
        return state, history

    state, history = jax.lax.while_loop(cond, body, (state, history))
    return IterateResult(
        delta=state.delta,
        loss=state.eq.loss,
        initial_loss=state.initial_loss,
        grad_norm=2 * jnp.max(jnp.abs(projected_gradient(
            problem.theta.reshape(-1) + state.delta, state.eq.g, bounds))),
        inner_steps=state.steps,
        accepted_steps=state.accepted,
        data_passes=state.passes,
        damping=state.mu,
        result=solver.result(state),
        history=history,
    )
