"""``multistart``: many starts solved at once under ``jax.vmap``, the best kept."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._checks import check_model
from ._models._base import AbstractSumOfTerms
from ._options import MAX_STEPS_LIMIT, prepare, solver_from
from ._solution import RESULTS, result_messages
from ._solve import run_solve
from ._solver._snr import SNR


class MultistartInfo(eqx.Module):
    """What [`multistart`][infinite_descent.multistart] did, one entry per start (index 0: the
    model given).

    - ``loss``, ``initial_loss``: ``Phi`` at the end and at the start of each solve.
    - ``inner_steps``, ``data_passes``: per start, over all its segments (each segment re-reads
      its starting point: one pass more per segment).
    - ``result``: per start, a `RESULTS` code (``RESULTS.successful`` if a convergence test
      was met, ``max_steps_reached`` if its budget ran out first); ``info.messages[k]`` is
      start ``k``'s readable message and ``info.result == RESULTS.successful`` a boolean
      array.
    - ``best``: the index of the start with the lowest loss (the model returned).
    - ``segments``: how many batched segments ran.
    - ``lane_utilisation``: inner iterations done by the starts, over the iterations the batch
      paid for (a vmapped while loop runs until its slowest lane ends; finished starts are
      dropped between segments, so the waste is bounded by one segment per start).

    ```python
    best, info = idn.multistart(start, x, y, num_starts=4, key=jax.random.key(0))
    for k in range(4):
        print(k, float(info.loss[k]), int(info.inner_steps[k]), info.messages[k] or "ok")
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

    @property
    def messages(self) -> tuple[str, ...]:
        """Each start's `RESULTS` message (empty for ``successful``)."""
        return result_messages(self.result)


def draw_starts(model: AbstractSumOfTerms, num_starts: int, key, spread: float,
                mask=None) -> AbstractSumOfTerms:
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
    model: AbstractSumOfTerms,
    x,
    y=None,
    *,
    num_starts: int = 16,
    key=None,
    spread: float = 0.3,
    segment_steps: int = 32,
    solver: SNR | None = None,
    max_steps: int = 256,
    trainable=None,
    throw: bool = False,
    chunk_size: int | str | None = "auto",
    record_history: bool = False,
    verbose: bool = False,
    weights=None,
    **solver_options,
) -> tuple[AbstractSumOfTerms, MultistartInfo]:
    """Solve from many starts at once and keep the best: a globalisation for hard problems.

    Starts are drawn around ``model`` (every trainable parameter times ``1 + spread xi``,
    ``xi ~ N(0, 1)``; the given model itself is start 0) and solved together under
    ``jax.vmap`` with the same solver as `solve` (given as ``solver=`` or its keywords; when
    neither sets ``geodesic``, the acceleration is on for every iteration: under ``vmap`` the
    ``"auto"`` switch would compute it anyway). The batch runs in segments of
    ``segment_steps`` inner iterations; between segments the starts that finished are
    dropped and the rest resume from where they stopped, with the damping they had. Each
    start runs at most ``max_steps`` inner iterations over all its segments. Cost: at most
    ``num_starts * max_steps`` inner iterations, in batches; the waste of the vmapped loop is
    reported as ``info.lane_utilisation``.

    ``weights`` as for `solve`. Run options as for `solve`: ``trainable`` (frozen parameters are neither perturbed nor
    moved), ``chunk_size``, ``verbose`` (each segment's inner iterations printed, every start
    of the batch) and ``throw`` (default ``False``: raise when the best start's result is
    not successful). ``record_history`` is refused: a vmapped, segmented solve has no one
    history.

    **Returns** ``(best_model, info)``: the start that reached the lowest ``Phi`` and a
    `MultistartInfo` with every start's loss, iterations, passes and result.

    ```python
    x, y = idn.problems.paper_toy()
    best, info = idn.multistart(idn.problems.paper_toy_start(), x, y, num_starts=8,
                                key=jax.random.key(0))
    print(float(info.loss[info.best]), info.lane_utilisation, info.messages[info.best])
    ```
    """
    caller = "multistart"
    check_model(model, caller)
    if key is None:
        raise ValueError(f"{caller}: pass `key=jax.random.key(...)` to draw the starts.")
    num_starts = _positive_int(num_starts, "num_starts", caller)
    segment_steps = _positive_int(segment_steps, "segment_steps", caller)
    max_steps = _positive_int(max_steps, "max_steps", caller)
    if isinstance(spread, (bool, np.bool_)) or not isinstance(
        spread, (int, float, np.integer, np.floating)
    ) or not (0 <= spread < np.inf):
        raise ValueError(f"{caller}: `spread` must be a finite number >= 0, got {spread!r}.")
    if record_history:
        raise ValueError(
            f"{caller}: record_history=True is not supported (a vmapped, segmented solve has no "
            "one history); solve the best start again with `idn.solve(..., "
            "record_history=True)`."
        )
    if solver is None:
        solver_options.setdefault("geodesic", True)
    snr = solver_from(solver, caller, solver_options)
    prepared = prepare(model, x, y, caller, snr, max_steps=min(segment_steps, max_steps),
                       trainable=trainable, throw=False, chunk_size=chunk_size,
                       verbose=verbose, weights=weights)
    param_masks = None
    if prepared.trainable is not None:
        param_masks = jax.tree.leaves(prepared.trainable)
    starts = draw_starts(model, num_starts, key, float(spread), param_masks)
    params, static = eqx.partition(starts, eqx.is_inexact_array)
    run_solver = prepared.solver

    @functools.lru_cache(maxsize=None)
    def batch_solve(steps: int):
        run = prepared.run._replace(max_steps=steps)
        # The data go in as arguments, not as constants closed over (XLA would fold them).
        return jax.jit(jax.vmap(
            lambda p, mu, x, y, trainable, w: run_solve(eqx.combine(p, static), x, y,
                                                        trainable, run, run_solver, w,
                                                        initial_damping=mu),
            in_axes=(0, 0, None, None, None, None),
        ))

    dtype = model.dtype
    damping = np.full(num_starts, run_solver.initial_damping)
    loss = np.full(num_starts, np.inf)
    initial_loss = np.full(num_starts, np.nan)
    steps = np.zeros(num_starts, np.int64)
    passes = np.zeros(num_starts, np.int64)
    codes = [RESULTS.max_steps_reached] * num_starts
    active = list(range(num_starts))
    segments, useful, paid, done_steps = 0, 0, 0, 0
    host_params = jax.tree.map(lambda a: np.array(a), params)  # writable host copies
    while active and done_steps < max_steps:
        length = min(segment_steps, max_steps - done_steps)
        size = _bucket(len(active))
        lanes = active + [active[-1]] * (size - len(active))
        batch = jax.tree.map(lambda a: jnp.asarray(a[np.array(lanes)]), host_params)
        solved, infos = batch_solve(length)(batch, jnp.asarray(damping[lanes], dtype),
                                            prepared.x, prepared.y, prepared.trainable,
                                            prepared.weights)
        solved_params = jax.tree.map(np.asarray, eqx.filter(solved, eqx.is_inexact_array))
        segment_steps_done = np.asarray(infos.inner_steps)
        unfinished = np.asarray(infos.result == RESULTS.max_steps_reached)
        segments += 1
        done_steps += length
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
            codes[lane] = jax.tree.map(lambda c, slot=slot: c[slot], infos.result)
            if unfinished[slot]:
                still.append(lane)
        active = still
    best = int(np.argmin(np.where(np.isfinite(loss), loss, np.inf)))
    best_model = eqx.combine(
        jax.tree.map(lambda a: jnp.asarray(a[best]), host_params),
        eqx.filter(model, eqx.is_inexact_array, inverse=True),
    )
    result = jax.tree.map(lambda *c: jnp.stack(c), *codes)
    info = MultistartInfo(
        loss=jnp.asarray(loss, dtype), initial_loss=jnp.asarray(initial_loss, dtype),
        inner_steps=jnp.asarray(steps), data_passes=jnp.asarray(passes), result=result,
        best=best, segments=segments, lane_utilisation=useful / max(paid, 1),
    )
    if throw:
        if not bool(codes[best] == RESULTS.successful):
            raise RuntimeError(f"{caller}: the best start (index {best}): {RESULTS[codes[best]]}")
    return best_model, info


def _positive_int(value, name: str, caller: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or (
        not 1 <= value <= MAX_STEPS_LIMIT
    ):
        raise ValueError(f"{caller}: `{name}` must be a positive integer, got {value!r}.")
    return int(value)
