"""``solve_once``: the SNR solve as an optax ``GradientTransformationExtraArgs``."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from ._checks import as_collocation, check_model
from ._least_squares import is_parameter, least_squares
from ._options import check_max_steps, prepare, runtime_values, solver_from
from ._problems._grid import GridData
from ._solution import RESULTS
from ._solve import compiled_solve
from ._solver._snr import SNR


class _ResidualOfParams(eqx.Module):
    """``residual_fn(params)`` as a residual function of ``(params, args)``; equal (so a
    compiled solve is reused) for the same ``residual_fn``."""

    residual_fn: Callable = eqx.field(static=True)

    def __call__(self, params, args):
        del args
        return self.residual_fn(params)


class SolveOnceState(NamedTuple):
    """State of [`solve_once`][infinite_descent.solve_once]. Its dtypes never change between
    updates.

    - ``count``: updates done (int32).
    - ``inner_steps``, ``data_passes``: of the last update's solve (int32).
    - ``loss_before``, ``loss_after``: ``Phi`` before and after the last update (the
      parameters' dtype; ``inf`` before the first update).
    - ``result``: the last solve's [`RESULTS`][infinite_descent.RESULTS] code.

    ```python
    opt = idn.solve_once()
    updates, state = opt.update(None, opt.init(start), start, x=x, y=y)
    print(int(state.count), float(state.loss_after), idn.RESULTS[state.result] or "converged")
    ```
    """

    count: Int[Array, ""]
    inner_steps: Int[Array, ""]
    data_passes: Int[Array, ""]
    loss_before: Float[Array, ""]
    loss_after: Float[Array, ""]
    result: RESULTS


def solve_once(
    solver: SNR | None = None,
    *,
    max_steps: int = 256,
    trainable=None,
    throw: bool = False,
    chunk_size: int | str | None = "auto",
    record_history: bool = False,
    verbose: bool = False,
    initial_damping=None,
    **solver_options,
) -> optax.GradientTransformationExtraArgs:
    """Infinite Descent as an optax transformation: each update is a whole SNR solve.

    ``update(updates, state, params, *, x, y, weights=None, **extra_args)`` ignores the
    incoming ``updates`` (gradients from your loop, or anything else), solves
    ``grad Phi(params + delta) = 0`` on the batch ``(x, y)`` with `solve` and returns
    ``delta*``, so ``optax.apply_updates(params, updates)`` (or ``eqx.apply_updates``) lands on
    the solved model. ``params`` is the model (an `AION` or any `AbstractSumOfTerms`).

    Physics-informed residuals go in place of the data: ``update(updates, state, params, *,
    x=terms)`` with ``terms`` a `Collocation` or a list of them (and no ``y``).

    For any other model, pass the residuals instead of the data:
    ``update(updates, state, params, *, residual_fn)`` with ``residual_fn(params)`` returning
    a pytree of residuals; ``params`` is any pytree (``eqx.filter(model,
    eqx.is_inexact_array)`` with its ``None`` leaves, a dict, ...), and the update is the
    whole solve of `least_squares`.
    Unknown extra keyword arguments are ignored, so it composes with ``optax.chain``. It runs
    under ``jax.jit`` and ``eqx.filter_jit``.

    Each update is a full-batch solve of the data it is given: feed it the whole data set (a
    minibatch would be fitted exactly and forget the rest).

    **Arguments:** the same as `solve`: ``solver`` (an `SNR`, or its keywords given
    directly), and the run options ``max_steps``, ``trainable``, ``throw``, ``chunk_size``,
    ``record_history``, ``verbose``. They are checked here, when the transformation is built.
    ``throw`` defaults to ``False`` here: a training loop reads ``state.result`` rather than
    stopping.

    Hyperparameters: ``initial_damping`` and ``max_steps`` may be JAX arrays, read when the
    compiled loop runs (no recompilation when they change), so
    ``optax.inject_hyperparams(idn.solve_once)(initial_damping=schedule, max_steps=64)``
    schedules them; the tolerances and the other options of `SNR` configure the compiled
    loop and stay numbers (given to the wrapped factory they pass through as constants).

    Cost: one update is one `solve`, its inner iterations and passes over the data in
    ``state.inner_steps`` and ``state.data_passes``.

    ```python
    opt = idn.solve_once()
    state = opt.init(model)
    updates, state = opt.update(grads, state, model, x=x, y=y)
    model = optax.apply_updates(model, updates)
    ```
    """
    caller = "solve_once"
    nested = solver_options.pop("solver_options", None)
    if isinstance(nested, dict):  # optax.inject_hyperparams passes **solver_options by name
        solver_options.update(nested)
    if initial_damping is not None:  # a named argument, so that optax can schedule it
        solver_options["initial_damping"] = initial_damping
    for name in ("x", "y", "model"):
        if name in solver_options:
            raise TypeError(f"{caller}: `{name}` is passed to `update`, not to `solve_once`.")
    solver_options, max_steps, runtime = runtime_values(caller, solver_options, max_steps)
    snr = solver_from(solver, caller, solver_options)
    run = dict(max_steps=check_max_steps(max_steps, caller), trainable=trainable, throw=throw,
               chunk_size=chunk_size, record_history=record_history, verbose=verbose)
    if record_history and runtime.step_limit is not None:
        raise ValueError(f"{caller}: record_history=True needs `max_steps` as a number (the "
                         "history's length is fixed when the loop compiles), not an array.")
    # Given as JAX arrays, the damping and the step limit are read at run time: a schedule
    # (optax.inject_hyperparams) changes them without recompiling.
    runtime_options = {} if runtime.initial_damping is None else {
        "initial_damping": runtime.initial_damping}

    def init_fn(params) -> SolveOnceState:
        leaves = [leaf for leaf in jax.tree.leaves(params) if is_parameter(leaf)]
        if not leaves:
            raise TypeError(f"{caller}.init: `params` has no floating-point leaf to fit.")
        dtype = jnp.result_type(*leaves)
        return SolveOnceState(
            count=jnp.zeros((), jnp.int32),
            inner_steps=jnp.zeros((), jnp.int32),
            data_passes=jnp.zeros((), jnp.int32),
            loss_before=jnp.full((), jnp.inf, dtype),
            loss_after=jnp.full((), jnp.inf, dtype),
            result=RESULTS.successful,
        )

    def update_fn(updates, state: SolveOnceState, params=None, *, x=None, y=None,
                  weights=None, residual_fn=None, **extra_args):
        del updates, extra_args
        if params is None:
            raise TypeError(f"{caller}.update: `params` (the model) is required.")
        if residual_fn is not None:
            if x is not None or y is not None or weights is not None:
                raise TypeError(f"{caller}.update: pass either `residual_fn=` or the data "
                                "`x=, y=` (and `weights=`), not both.")
            if run["trainable"] is not None or run["chunk_size"] != "auto":
                raise ValueError(f"{caller}: `trainable` and `chunk_size` apply to the models "
                                 "of the package (`x=, y=`); with `residual_fn=` filter the "
                                 "parameters you pass instead.")
            solved, info = least_squares(
                _ResidualOfParams(residual_fn), params, None, solver=snr, **runtime_options,
                max_steps=run["max_steps"] if runtime.step_limit is None
                else runtime.step_limit, throw=run["throw"],
                record_history=run["record_history"], verbose=run["verbose"],
            )
            before = params
        else:
            if x is None or (y is None and not isinstance(x, GridData)
                             and as_collocation(x, f"{caller}.update") is None):
                raise TypeError(
                    f"{caller}.update: pass the data as keywords, `update(..., x=x, y=y)` (or "
                    "`x=GridData(...)` alone), or a residual function, "
                    "`update(..., residual_fn=rf)`."
                )
            model = check_model(params, f"{caller}.update")
            prepared = prepare(model, x, y, f"{caller}.update", snr, weights=weights,
                               step_limit=runtime.step_limit, **run)
            solved, info = compiled_solve(model, prepared, f"{caller}.update", runtime)
            solved = eqx.filter(solved, eqx.is_inexact_array)
            before = eqx.filter(model, eqx.is_inexact_array)
        delta = jax.tree.map(
            lambda new, old: new - old if is_parameter(old) else None, solved, before
        )
        new_state = SolveOnceState(
            count=optax.safe_int32_increment(state.count),
            inner_steps=info.inner_steps.astype(jnp.int32),
            data_passes=info.data_passes.astype(jnp.int32),
            loss_before=info.initial_loss.astype(state.loss_before.dtype),
            loss_after=info.loss.astype(state.loss_after.dtype),
            result=info.result,
        )
        return delta, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
