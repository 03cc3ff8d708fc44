"""``multistart``: many starts solved at once under ``jax.vmap``, the best kept."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._checks import check_model
from ._models._aion import AION
from ._solution import RESULTS
from ._solve import _prepare, _solve_jit, trainable_leaves


class MultistartInfo(eqx.Module):
    """What :func:`multistart` did, one entry per start (index 0: the model given).

    - ``loss``, ``initial_loss``: ``Phi`` at the end and at the start of each solve.
    - ``inner_steps``, ``data_passes``: per start, over all its segments (each segment re-reads
      its starting point: one pass more per segment).
    - ``result``: per start, ``RESULTS.successful`` if a convergence test was met,
      ``max_steps_reached`` if its budget ran out first.
    - ``best``: the index of the start with the lowest loss (the model returned).
    - ``segments``: how many batched segments ran.
    - ``lane_utilisation``: inner iterations done by the starts, over the iterations the batch
      paid for (a vmapped while loop runs until its slowest lane ends; finished starts are
      dropped between segments, so the waste is bounded by one segment per start).

    ```python
    best, info = idn.multistart(start, x, y, num_starts=4, key=jax.random.key(0))
    for k in range(4):
        print(k, float(info.loss[k]), int(info.inner_steps[k]), int(info.result._value[k]))
    ```
    """

    loss: Float[Array, " starts"]
    initial_loss: Float[Array, " starts"]
    inner_steps: Int[Array, " starts"]
    data_passes: Int[Array, " starts"]
    result: RESULTS
    best: int = eqx.field(static=True)
    segments: int = eqx.field(static=True)
    lane_utilisation: float = eqx.field(static=True)


def draw_starts(model: AION, num_starts: int, key, spread: float, mask=None) -> AION:
    """``num_starts`` models stacked on a leading axis: the given one first, then copies with
    every trainable parameter multiplied by ``1 + spread * xi``, ``xi ~ N(0, 1)``."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    masks = [None] * len(leaves) if mask is None else mask
    stacked = []
    for k, leaf, m in zip(keys, leaves, masks):
        noise = jax.random.normal(k, (num_starts - 1, *leaf.shape), leaf.dtype)
        if m is not None:
            noise = noise * m.astype(leaf.dtype)[None]
        perturbed = leaf[None] * (1 + spread * noise)
        stacked.append(jnp.concatenate([leaf[None], perturbed]))
    return eqx.combine(jax.tree.unflatten(treedef, stacked), static)


def _bucket(n: int) -> int:
    """Batch sizes are padded to powers of two, so dropping lanes recompiles at most
    ``log2(num_starts)`` times."""
    return 1 << max(0, (n - 1).bit_length())


def multistart(
    model: AION,
    x,
    y=None,
    *,
    num_starts: int = 16,
    key=None,
    spread: float = 0.3,
    segment_steps: int = 32,
    max_steps: int = 256,
    **solve_options,
) -> tuple[AION, MultistartInfo]:
    """Solve from many starts at once and keep the best: a globalisation for hard problems.

    Starts are drawn around ``model`` (see :func:`draw_starts`; ``spread=0.3`` by default, the
    given model itself is start 0) and solved together under ``jax.vmap`` with the options of
    :func:`solve` (geodesic acceleration on every iteration unless ``geodesic`` is given:
    under ``vmap`` the ``"auto"`` switch would compute it anyway). The batch runs in segments of ``segment_steps`` inner iterations; between
    segments the starts that converged or spent ``max_steps`` are dropped and the rest resume
    from where they stopped, with the damping they had. Cost: at most ``num_starts *
    max_steps`` inner iterations, in batches; the waste of the vmapped loop is reported as
    ``info.lane_utilisation``.

    **Returns** ``(best_model, info)``: the start that reached the lowest ``Phi`` and a
    :class:`MultistartInfo` with every start's loss, iterations, passes and result.

    ```python
    x, y = idn.problems.paper_toy()
    best, info = idn.multistart(idn.problems.paper_toy_start(), x, y, num_starts=8,
                                key=jax.random.key(0))
    print(float(info.loss[info.best]), info.lane_utilisation)
    ```
    """
    check_model(model, "multistart")
    if key is None:
        raise ValueError("multistart: pass `key=jax.random.key(...)` to draw the starts.")
    if not isinstance(num_starts, int) or num_starts < 1:
        raise ValueError(f"multistart: `num_starts` must be a positive integer, got {num_starts!r}.")
    if not isinstance(segment_steps, int) or segment_steps < 1:
        raise ValueError("multistart: `segment_steps` must be a positive integer.")
    for name in ("throw", "record_history", "verbose"):
        solve_options.pop(name, None)
    # Under vmap the "auto" switch of the geodesic acceleration becomes a select that computes
    # both branches, so the batch pays for the acceleration anyway: use it on every iteration
    # (which also converged in fewer iterations on the hard class) unless told otherwise.
    solve_options.setdefault("geodesic", True)
    x, y, mask, options, chunk = _prepare(model, x, y, "multistart",
                                          max_steps=segment_steps, **solve_options)
    param_masks = jax.tree.leaves(trainable_leaves(model, solve_options.get("trainable")))
    starts = draw_starts(model, num_starts, key, spread, param_masks)
    params, static = eqx.partition(starts, eqx.is_inexact_array)

    # The data go in as arguments, not as constants closed over (XLA would fold them).
    batch_solve = jax.jit(jax.vmap(
        lambda p, mu, x, y, mask: _solve_jit(eqx.combine(p, static), x, y, mask, options,
                                             chunk, mu),
        in_axes=(0, 0, None, None, None),
    ))

    dtype = model.dtype
    damping = np.full(num_starts, options.initial_damping)
    loss = np.full(num_starts, np.inf)
    initial_loss = np.full(num_starts, np.nan)
    steps = np.zeros(num_starts, np.int64)
    passes = np.zeros(num_starts, np.int64)
    codes = np.zeros(num_starts, np.int32)
    active = list(range(num_starts))
    segments, useful, paid = 0, 0, 0
    host_params = jax.tree.map(lambda a: np.array(a), params)  # writable host copies
    while active:
        size = _bucket(len(active))
        lanes = active + [active[-1]] * (size - len(active))
        batch = jax.tree.map(lambda a: jnp.asarray(a[np.array(lanes)]), host_params)
        solved, infos = batch_solve(batch, jnp.asarray(damping[lanes], dtype), x, y, mask)
        solved_params = jax.tree.map(np.asarray, eqx.filter(solved, eqx.is_inexact_array))
        segment_steps_done = np.asarray(infos.inner_steps)
        segments += 1
        useful += int(segment_steps_done[: len(active)].sum())
        paid += size * int(segment_steps_done.max(initial=0))
        still = []
        for slot, lane in enumerate(active):
            for leaf_all, leaf_new in zip(jax.tree.leaves(host_params),
                                          jax.tree.leaves(solved_params)):
                leaf_all[lane] = leaf_new[slot]
            if np.isnan(initial_loss[lane]):
                initial_loss[lane] = float(infos.initial_loss[slot])
            loss[lane] = float(infos.loss[slot])
            damping[lane] = float(infos.damping[slot])
            steps[lane] += int(segment_steps_done[slot])
            passes[lane] += int(infos.data_passes[slot])
            code = int(infos.result._value[slot])
            codes[lane] = code
            finished = code != int(RESULTS.max_steps_reached._value) or steps[lane] >= max_steps
            if not finished:
                still.append(lane)
        active = still
    best = int(np.argmin(np.where(np.isfinite(loss), loss, np.inf)))
    best_model = eqx.combine(
        jax.tree.map(lambda a: jnp.asarray(a[best]), host_params),
        eqx.filter(model, eqx.is_inexact_array, inverse=True),
    )
    result = jax.tree.map(lambda _: jnp.asarray(codes), RESULTS.successful)
    info = MultistartInfo(
        loss=jnp.asarray(loss, dtype), initial_loss=jnp.asarray(initial_loss, dtype),
        inner_steps=jnp.asarray(steps), data_passes=jnp.asarray(passes), result=result,
        best=best, segments=segments, lane_utilisation=useful / max(paid, 1),
    )
    return best_model, info

