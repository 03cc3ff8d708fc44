"""Many independent fits at once, in segments between which the finished fits are dropped.

Under ``jax.vmap`` a batch of fits runs until its slowest fit stops: every lane pays for the
longest solve. Here the batch runs ``segment_steps`` inner iterations at a time; after each
segment the fits that stopped leave the batch, the others resume from their point with their
damping, and the batch shrinks (padded to a power of two, so that it compiles a handful of
times). The cost follows what the fits need, not what the slowest one needs.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._solution import RESULTS, SolveInfo


def _is_none(x) -> bool:
    return x is None


def full_axes(axes, args):
    """``axes`` (an int, ``None``, or a pytree prefix of ``args`` with those leaves, as
    ``jax.vmap``'s ``in_axes``) broadcast to every leaf of ``args``."""
    return jax.tree.map(lambda ax, sub: jax.tree.map(lambda _: ax, sub), axes, args,
                        is_leaf=_is_none)


def count_fits(params, args, axes, caller: str) -> int:
    """The number of fits ``B``: every parameter's leading axis and every batched argument's
    axis must have that length."""
    sizes = {int(np.shape(a)[0]) if np.ndim(a) else None for a in jax.tree.leaves(params)}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"{caller}: with batched=True every floating leaf of `y0` carries a leading axis "
            f"over the fits, of one length; got leading sizes {sorted(map(str, sizes))}."
        )
    size = sizes.pop()
    try:
        axes_full = full_axes(axes, args)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{caller}: `args_axes` must be an int, None, or a pytree prefix of "
                         f"`args` with such leaves: {error}") from None
    for ax, leaf in zip(jax.tree.leaves(axes_full, is_leaf=_is_none), jax.tree.leaves(args)):
        if ax is None:
            continue
        if isinstance(ax, (bool, np.bool_)) or not isinstance(ax, (int, np.integer)):
            raise ValueError(f"{caller}: the leaves of `args_axes` must be ints or None, got "
                             f"{ax!r}.")
        if np.ndim(leaf) <= ax or np.shape(leaf)[ax] != size:
            raise ValueError(
                f"{caller}: an argument of shape {np.shape(leaf)} has no axis {ax} of length "
                f"{size} (the number of fits in `y0`); mark arguments shared by all fits with "
                "None in `args_axes`."
            )
    return size


def _bucket(n: int, total: int) -> int:
    """The batch width for ``n`` fits in flight: the next power of two, at most ``total``."""
    return min(total, 1 << max(0, (n - 1).bit_length()))


@eqx.filter_jit
def _segment(solve_one, params_all, args_all, bounds_all, axes_full, fits, damping, limit):
    """One segment of the fits ``fits`` (one per lane): each one's solve under ``vmap``."""
    params = jax.tree.map(lambda a: a[fits], params_all)
    args = jax.tree.map(lambda ax, a: a if ax is None else jnp.take(a, fits, axis=ax),
                        axes_full, args_all, is_leaf=_is_none)
    bounds = None if bounds_all is None else jax.tree.map(lambda a: a[fits], bounds_all)
    return jax.vmap(solve_one, in_axes=(0, axes_full, 0, 0, 0))(params, args, bounds, damping,
                                                                 limit)


_RUNNING = int(RESULTS.max_steps_reached._value)


def run_batched(solve_one, params, args, bounds, axes, *, size: int, max_steps: int,
                segment_steps: int, lanes: int, initial_damping: float):
    """Every fit solved by a pool of ``lanes`` vmapped lanes, in segments.

    ``solve_one(steps)`` is a callable (an equinox module, so that equal ones share a compiled
    segment) whose ``(params, args, bounds, damping, limit)`` runs one fit's traced solve of
    at most ``limit <= steps`` inner iterations from ``damping``, returning ``(params,
    SolveInfo)``. After each segment a fit that stopped (or spent ``max_steps``) frees its
    lane for the next fit waiting; the others resume where they stopped, with their damping.
    When no fit waits the pool narrows (powers of two), so the last, slow fits do not pay
    for idle lanes. Returns the fitted parameters (leading axis ``size``) and a `SolveInfo`
    with that leading axis, the counts summed over segments; and the lane utilisation (the
    fits' inner iterations over the lane-iterations paid)."""
    axes_full = full_axes(axes, args)
    host = jax.tree.map(np.array, params)  # writable copies, one row per fit
    dtype = jax.tree.leaves(params)[0].dtype
    damping = np.full(size, initial_damping, dtype)
    loss = np.full(size, np.nan, dtype)
    initial_loss = np.full(size, np.nan, dtype)
    grad_norm = np.full(size, np.nan, dtype)
    steps = np.zeros(size, np.int64)
    accepted = np.zeros(size, np.int64)
    passes = np.zeros(size, np.int64)
    codes = np.full(size, _RUNNING, np.int32)
    info, useful, paid = None, 0, 0
    waiting = np.arange(size)  # fits not yet started, in order
    flight = np.zeros(0, np.int64)  # fits in the pool
    lanes = max(1, min(lanes, size))
    while flight.size or waiting.size:
        take = lanes - flight.size
        flight, waiting = np.concatenate([flight, waiting[:take]]), waiting[take:]
        width = lanes if waiting.size else _bucket(flight.size, lanes)
        fits = np.concatenate([flight, np.full(width - flight.size, flight[-1])])
        limit = np.minimum(segment_steps, max_steps - steps[fits])
        limit[flight.size:] = 0  # padding lanes do no iteration
        batch = jax.tree.map(jnp.asarray, host)
        solved, info = _segment(solve_one(segment_steps), batch, args, bounds, axes_full,
                                jnp.asarray(fits), jnp.asarray(damping[fits]),
                                jnp.asarray(limit, jnp.int32))
        n = flight.size
        done = np.asarray(info.inner_steps)[:n]
        for leaf_all, leaf_new in zip(jax.tree.leaves(host), jax.tree.leaves(solved)):
            leaf_all[flight] = np.asarray(leaf_new)[:n]
        first = np.isnan(initial_loss[flight])
        initial_loss[flight[first]] = np.asarray(info.initial_loss)[:n][first]
        loss[flight] = np.asarray(info.loss)[:n]
        grad_norm[flight] = np.asarray(info.grad_norm)[:n]
        damping[flight] = np.asarray(info.damping)[:n]
        steps[flight] += done
        accepted[flight] += np.asarray(info.accepted_steps)[:n]
        passes[flight] += np.asarray(info.data_passes)[:n]
        codes[flight] = np.asarray(info.result._value)[:n]
        useful += int(done.sum())
        paid += width * int(done.max(initial=0))
        flight = flight[(codes[flight] == _RUNNING) & (steps[flight] < max_steps)]
    # The codes gathered on the host, back into a (batched) RESULTS item.
    result = eqx.tree_at(lambda r: r._value, RESULTS.successful, jnp.asarray(codes))
    summary = SolveInfo(
        loss=jnp.asarray(loss), initial_loss=jnp.asarray(initial_loss),
        grad_norm=jnp.asarray(grad_norm), inner_steps=jnp.asarray(steps, jnp.int32),
        accepted_steps=jnp.asarray(accepted, jnp.int32),
        data_passes=jnp.asarray(passes, jnp.int32), damping=jnp.asarray(damping),
        converged=result == RESULTS.successful, result=result,
        linear_solver=info.linear_solver, hessian=info.hessian, history=None,
    )
    return jax.tree.map(jnp.asarray, host), summary, useful / max(paid, 1)
