"""What every entry point shares before it compiles anything: the solver object built from
keywords (the one place they are mapped), the run options checked, the data checked.

Run options (``max_steps``, ``trainable``, ``throw``, ``chunk_size``, ``record_history``,
``verbose``) are keywords of the entry functions; the algorithm is an `SNR` object, or the
keywords `SNR` takes, given to the entry function directly (kept for the first releases'
users).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import (
    as_collocation,
    check_collocation,
    check_data,
    check_finite,
    check_grid,
    check_model,
    is_concrete,
)
from ._models._aion import AION
from ._models._base import parameter_arrays
from ._problems._grid import GridData
from ._problems._robust import LOSSES
from ._solver._linear import CG, default_chunk_size, memory_budget_bytes
from ._solver._snr import SNR

SOLVER_KEYWORDS = tuple(
    name for name in inspect.signature(SNR.__init__).parameters if name != "self"
)
RUN_KEYWORDS = ("max_steps", "trainable", "throw", "chunk_size", "record_history", "verbose")
MAX_STEPS_LIMIT = 2**31 - 2  # the counters are int32


DEFAULT_SOLVER = SNR()


class Runtime(NamedTuple):
    """Hyperparameters given as JAX arrays, read when the compiled loop runs rather than
    compiled in, so that a schedule (``optax.inject_hyperparams``) changes them without a
    recompilation: the initial damping and a limit on the inner iterations."""

    initial_damping: jax.Array | None = None
    step_limit: jax.Array | None = None


def runtime_values(caller: str, keywords: dict, max_steps):
    """Split the hyperparameters that may be JAX arrays (``initial_damping``, ``max_steps``)
    off the solver keywords: ``(keywords, max_steps, Runtime)``. Every other option
    configures the compiled loop and must be known before tracing; a traced one is refused
    with the way out."""
    keywords = dict(keywords)
    damping = keywords.get("initial_damping")
    runtime_damping = None
    if isinstance(damping, jax.Array):
        del keywords["initial_damping"]
        if damping.ndim != 0 or not jnp.issubdtype(damping.dtype, jnp.floating):
            raise TypeError(f"{caller}: `initial_damping` must be a real scalar, got an array of "
                            f"shape {damping.shape} and dtype {damping.dtype}.")
        if is_concrete(damping) and not (0 < float(damping) < np.inf):
            raise ValueError(f"{caller}: `initial_damping` must be finite and > 0, got "
                             f"{float(damping)!r}.")
        runtime_damping = damping
    limit = None
    if isinstance(max_steps, jax.Array):
        if max_steps.ndim != 0 or not jnp.issubdtype(max_steps.dtype, jnp.integer):
            raise TypeError(f"{caller}: `max_steps` must be an integer scalar, got an array of "
                            f"shape {max_steps.shape} and dtype {max_steps.dtype}.")
        if is_concrete(max_steps):
            check_max_steps(int(max_steps), caller)
        limit, max_steps = max_steps, MAX_STEPS_LIMIT
    for name, value in keywords.items():
        if isinstance(value, jax.core.Tracer):
            raise TypeError(
                f"{caller}: `{name}` configures the compiled loop and must be known before "
                "tracing (a number, not a traced array); only `initial_damping` and "
                "`max_steps` may be traced (and so scheduled, e.g. by "
                "`optax.inject_hyperparams`)."
            )
    return keywords, max_steps, Runtime(runtime_damping, limit)


def solver_from(solver: SNR | None, caller: str, keywords: dict) -> SNR:
    """The `SNR` an entry point runs: ``solver`` itself, or one built from the keywords `SNR`
    takes. An unknown keyword fails here, at the call, with the names it could mean."""
    if solver is None and not keywords:
        return DEFAULT_SOLVER
    unknown = [k for k in keywords if k not in SOLVER_KEYWORDS]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, SOLVER_KEYWORDS + RUN_KEYWORDS, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise TypeError(f"{caller}: unknown option `{name}`.{hint}")
    if solver is not None:
        if not isinstance(solver, SNR):
            raise TypeError(
                f"{caller}: `solver` must be an `infinite_descent.SNR`, got "
                f"{type(solver).__name__}."
            )
        if keywords:
            raise TypeError(
                f"{caller}: pass the algorithm either as `solver=` or as keywords "
                f"({', '.join(sorted(keywords))}), not both."
            )
        return solver
    try:
        return SNR(**keywords)
    except ValueError as error:
        raise ValueError(str(error).replace("SNR:", f"{caller}:", 1)) from None


def flag(value, name: str, caller: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{caller}: `{name}` must be True or False, got {value!r}.")
    return bool(value)


def check_max_steps(max_steps, caller: str, name: str = "max_steps") -> int:
    if isinstance(max_steps, (bool, np.bool_)) or not isinstance(max_steps, (int, np.integer)):
        raise ValueError(f"{caller}: `{name}` must be a non-negative integer, got {max_steps!r}.")
    if not 0 <= max_steps <= MAX_STEPS_LIMIT:
        raise ValueError(
            f"{caller}: `{name}` must be between 0 and {MAX_STEPS_LIMIT} (the iteration counters "
            f"are int32), got {max_steps!r}."
        )
    return int(max_steps)


class RunOptions(NamedTuple):
    """The run options, checked; static (hashable) for the compiled loop."""

    max_steps: int
    chunk_size: int | None
    record_history: bool
    verbose: bool
    throw: bool


class Prepared(NamedTuple):
    """The checked data, trainable leaves, run options and resolved solver of one call."""

    x: object
    y: object
    trainable: object
    run: RunOptions
    solver: SNR
    weights: object = None
    regularization: object = None
    bounds: object = None


def trainable_leaves(model, trainable, caller: str):
    """``None`` (everything trains), or the ``trainable`` filter spec as a pytree of boolean
    numpy arrays shaped like ``eqx.filter(model, eqx.is_inexact_array)``."""
    if trainable is None or (isinstance(trainable, (bool, np.bool_)) and trainable):
        return None
    params = eqx.filter(model, eqx.is_inexact_array)
    if isinstance(trainable, (bool, np.bool_)):
        return jax.tree.map(lambda a: np.zeros(a.shape, bool), params)
    if type(trainable) is not type(model):
        raise TypeError(
            f"{caller}: `trainable` must be None, a bool, or a pytree with the model's "
            "structure whose leaves are bools (e.g. `jax.tree.map(lambda _: True, model)` edited "
            f"with `eqx.tree_at`), got {type(trainable).__name__}."
        )
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(trainable)
    if len(flags) != len(leaves):
        raise ValueError(
            f"{caller}: `trainable` must have one leaf per parameter array of the model."
        )
    out = []
    for flag, leaf in zip(flags, leaves):
        flag_array = np.asarray(flag)
        if flag_array.dtype != bool:
            raise TypeError(
                f"{caller}: the leaves of `trainable` must be bools or boolean arrays, got "
                f"{flag!r}."
            )
        try:
            out.append(np.broadcast_to(flag_array, leaf.shape))
        except ValueError:
            raise ValueError(
                f"{caller}: a `trainable` leaf of shape {flag_array.shape} does not broadcast "
                f"to the parameter shape {leaf.shape}."
            ) from None
    return jax.tree.unflatten(treedef, out)


def data_shards(x) -> int:
    """Over how many devices the points of ``x`` are split (1 for unsharded or traced
    data): each device holds ``N / shards`` of them."""
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return 1
    rows = x.sharding.shard_shape(x.shape)[0]
    return max(1, x.shape[0] // max(rows, 1))


def _chunk_size(chunk_size, num_data, num_params, itemsize, caller, shards: int = 1):
    if chunk_size == "auto":
        # From one device's share of the data and one device's memory: each chunk holds
        # ``K`` of each device's points (the chunks are strided, see `chunk_data`).
        local = default_chunk_size(-(-num_data // shards), num_params, itemsize)
        chunk_size = None if local is None else local * shards
    elif chunk_size is not None and (
        isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(
            f"{caller}: `chunk_size` must be 'auto', None or a positive integer, got "
            f"{chunk_size!r}."
        )
    if chunk_size is not None and chunk_size >= num_data:
        return None
    return None if chunk_size is None else int(chunk_size)


def prepare(model, x, y, caller: str, solver: SNR, *, max_steps=256, trainable=None,
            throw=False, chunk_size="auto", record_history=False, verbose=False,
            weights=None, regularization=None, bounds=None, step_limit=None) -> Prepared:
    """Check a call's model, data and run options; resolve the solver for the problem's size.
    Cheap: shapes and dtypes in Python, one fused finiteness reduction outside ``jit``."""
    check_model(model, caller)
    leaves = parameter_arrays(model)
    dtype = leaves[0].dtype
    num_params = sum(a.size for a in leaves)
    max_steps = check_max_steps(max_steps, caller)
    throw = flag(throw, "throw", caller)
    record_history = flag(record_history, "record_history", caller)
    verbose = flag(verbose, "verbose", caller)
    terms = as_collocation(x, caller)
    if terms is not None:
        check_collocation_options(y, weights, chunk_size, solver, caller)
        x = check_collocation(model, terms, caller)
        y, num_data, chunk_size = None, sum(t.num_points for t in x), None
    elif isinstance(x, GridData):
        grid = check_grid(model, x, y, caller)
        if chunk_size not in ("auto", None):
            raise ValueError(f"{caller}: `chunk_size` does not apply to GridData.")
        check_finite(caller, model, {"y": grid.y, **{f"axes[{i}]": a
                                                     for i, a in enumerate(grid.axes)}})
        x, y, num_data, chunk_size = grid, None, grid.num_points, None
    else:
        original_x, original_y = x, y
        x, y = check_data(model, x, y, caller, dtype)
        check_finite(caller, model, {"x": x, "y": y}, {"x": original_x, "y": original_y}, dtype)
        num_data = x.shape[0]
    itemsize = dtype.itemsize
    if record_history and step_limit is not None:
        raise ValueError(f"{caller}: record_history=True needs `max_steps` as a number (the "
                         "history's length is fixed when the loop compiles), not an array.")
    if record_history and (max_steps + 1) * num_params * itemsize > memory_budget_bytes():
        raise ValueError(
            f"{caller}: record_history=True with max_steps={max_steps} would keep "
            f"{max_steps + 1} x {num_params} parameters, more than the memory budget; lower "
            "`max_steps` or record no history."
        )
    if solver.variable_projection:
        _check_projection(model, x, trainable, chunk_size, num_data, caller)
        chunk_size = None
    else:
        chunk_size = _chunk_size(chunk_size, num_data, num_params, itemsize, caller,
                                 data_shards(x))
    trainable = trainable_leaves(model, trainable, caller)
    try:
        solver = _resolved(solver, num_data, num_params, itemsize, chunk_size is not None)
    except ValueError as error:
        raise ValueError(f"{caller}: {error}") from None
    if terms is None:
        shape = x.shape if isinstance(x, GridData) else (num_data,)
        weights = check_weights(weights, shape, dtype, caller, solver)
    regularization = check_regularization(regularization, dtype, caller)
    if bounds is not None:
        bounds = check_bounds(bounds, eqx.filter(model, eqx.is_inexact_array), caller, solver)
    run = RunOptions(max_steps, chunk_size, record_history, verbose, throw)
    return Prepared(x, y, trainable, run, solver, weights, regularization, bounds)


def check_collocation_options(y, weights, chunk_size, solver: SNR, caller: str) -> None:
    """What a solve on collocation terms refuses: targets, per-point weights (each term
    has its own), chunks and variable projection."""
    if y is not None:
        raise TypeError(
            f"{caller}: collocation terms hold their own residuals; pass no `y` with them."
        )
    if weights is not None:
        raise TypeError(
            f"{caller}: `weights` do not apply to collocation terms; give each "
            "`Collocation` its own `weight=` (a number or one per point)."
        )
    if chunk_size not in ("auto", None):
        raise ValueError(f"{caller}: `chunk_size` does not apply to collocation terms.")
    if solver.variable_projection:
        raise ValueError(f"{caller}: variable_projection=True does not apply to collocation "
                         "terms.")


def check_weights(weights, shape: tuple, dtype, caller: str, solver: SNR | None = None):
    """Per-point weights ``w_n >= 0`` of ``shape``, cast to ``dtype``, or ``None``."""
    if weights is None:
        return None
    if solver is not None and solver.variable_projection:
        raise ValueError(f"{caller}: variable_projection=True does not take `weights`.")
    array = weights if isinstance(weights, (jax.Array, np.ndarray)) else np.asarray(weights)
    if not (jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype,
                                                                       jnp.integer)):
        raise TypeError(f"{caller}: `weights` must be real numbers, got dtype {array.dtype}.")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(
            f"{caller}: `weights` must have shape {tuple(shape)} (one per data point), got "
            f"{tuple(array.shape)}."
        )
    array = jnp.asarray(array, dtype)
    if is_concrete(array) and not bool(jnp.all(jnp.isfinite(array) & (array >= 0))):
        raise ValueError(f"{caller}: `weights` must be finite and >= 0.")
    return array


def check_loss(loss, f_scale, solver: SNR, caller: str) -> tuple[str, float, SNR]:
    """A robust loss's name and scale, and the solver it runs with: geodesic acceleration
    (``"auto"``) is turned off under a robust loss, which offers no second derivative; asked
    for explicitly, or with the exact Hessian, it is refused."""
    if loss not in LOSSES:
        raise ValueError(f"{caller}: `loss` must be one of {LOSSES}, got {loss!r}.")
    if isinstance(f_scale, (bool, np.bool_)) or not isinstance(
        f_scale, (int, float, np.integer, np.floating)
    ) or not (0 < f_scale < np.inf):
        raise ValueError(f"{caller}: `f_scale` must be a finite number > 0, got {f_scale!r}.")
    if loss == "linear":
        return loss, float(f_scale), solver
    if solver.geodesic == "on" or solver.hessian == "exact" or solver.variable_projection:
        raise ValueError(
            f"{caller}: loss={loss!r} rescales the residuals at every iteration and offers no "
            "second derivative: use geodesic=False or 'auto', hessian='gauss_newton' and no "
            "variable projection with it."
        )
    if solver.geodesic == "auto":
        solver = eqx.tree_at(lambda s: s.geodesic, solver, "off")
    return loss, float(f_scale), solver


def check_bounds(bounds, params, caller: str, solver: SNR | None = None):
    """``(lower, upper)`` as pytrees of arrays shaped like ``params`` (each given as a
    scalar or as such a pytree; ``-inf``/``inf`` where unbounded), checked: ``lower < upper``
    everywhere, and, outside ``jit``, the start inside or on the bounds. ``None`` if no
    bounds."""
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"{caller}: `bounds` must be a pair `(lower, upper)`, got "
                        f"{type(bounds).__name__}.")
    if solver is not None and (solver.variable_projection or isinstance(solver.linear_solver,
                                                                         CG)):
        raise ValueError(f"{caller}: bounds do not combine with variable projection or the CG "
                         "linear solver; use the default (or 'dense', 'woodbury').")
    structure = jax.tree.structure(params)
    out = []
    for name, bound in zip(("lower", "upper"), bounds):
        if isinstance(bound, (int, float, np.integer, np.floating)) and not isinstance(
            bound, (bool, np.bool_)
        ):
            bound = jax.tree.map(lambda a, b=bound: jnp.full(a.shape, b, a.dtype), params)
        elif jax.tree.structure(bound) != structure:
            raise ValueError(
                f"{caller}: the {name} bound must be a number or a pytree shaped like the "
                f"parameters ({structure}), got {jax.tree.structure(bound)}."
            )
        else:
            try:
                bound = jax.tree.map(lambda a, b: jnp.broadcast_to(jnp.asarray(b, a.dtype),
                                                                   a.shape), params, bound)
            except ValueError:
                raise ValueError(f"{caller}: a {name} bound does not broadcast to its "
                                 "parameter's shape.") from None
        out.append(bound)
    lower, upper = out
    leaves = jax.tree.leaves((lower, upper, params))
    if is_concrete(*leaves):
        for lo, hi, p in zip(jax.tree.leaves(lower), jax.tree.leaves(upper),
                             jax.tree.leaves(params)):
            lo, hi, p = np.asarray(lo), np.asarray(hi), np.asarray(p)
            if np.any(np.isnan(lo) | np.isnan(hi)) or not np.all(lo < hi):
                raise ValueError(f"{caller}: every lower bound must be below its upper bound "
                                 "(and neither NaN).")
            if not np.all((lo <= p) & (p <= hi)):
                raise ValueError(
                    f"{caller}: the start lies outside the bounds (a start on a bound is "
                    "accepted; move the others inside)."
                )
    return lower, upper


def strictly_feasible(params, bounds):
    """A start on a bound moved just inside it, as scipy's ``trf`` does: by
    ``1e-10 max(1, |bound|)``, or to the middle where the box is narrower than that."""
    if bounds is None:
        return params
    lower, upper = bounds

    def inside(p, lo, hi):
        p = jnp.clip(p, lo, hi)
        p = jnp.where(p == lo, lo + 1e-10 * jnp.maximum(1.0, jnp.abs(lo)), p)
        p = jnp.where(p == hi, hi - 1e-10 * jnp.maximum(1.0, jnp.abs(hi)), p)
        return jnp.where((p < lo) | (p > hi), 0.5 * (lo + hi), p)

    return jax.tree.map(inside, params, lower, upper)


def check_regularization(value, dtype, caller: str):
    """``lambda >= 0`` as an array of ``dtype``, or ``None``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ) or not (0 <= value < np.inf):
        raise ValueError(f"{caller}: `regularization` must be a finite number >= 0, got "
                         f"{value!r}.")
    return jnp.asarray(float(value), dtype)


@functools.lru_cache(maxsize=256)
def _resolved(solver: SNR, num_data: int, num_params: int, itemsize: int, chunked: bool) -> SNR:
    return solver.resolved(num_data, num_params, itemsize, chunked)


def _check_projection(model, x, trainable, chunk_size, num_data, caller) -> None:
    if not isinstance(model, AION) or model.shared_dims:
        raise ValueError(
            f"{caller}: variable_projection=True needs an AION without shared_dims (the first "
            "dimension's amplitudes and phases are what it eliminates)."
        )
    columns = 2 * model.rank * model.terms
    if num_data < columns:
        raise ValueError(
            f"{caller}: variable_projection=True solves a linear least-squares problem in "
            f"{columns} coefficients (2 rank terms) at every iteration, which needs at least "
            f"that many points; got N = {num_data}."
        )
    if isinstance(x, GridData):
        raise ValueError(f"{caller}: variable_projection=True does not take GridData.")
    if trainable is not None:
        raise ValueError(f"{caller}: variable_projection=True does not combine with `trainable`.")
    if chunk_size not in ("auto", None) or (
        chunk_size == "auto"
        and default_chunk_size(num_data, model.num_params, jnp.dtype(model.dtype).itemsize)
    ):
        raise ValueError(
            f"{caller}: variable_projection=True needs the whole data at once (its least squares "
            "couple every point); this data would be chunked: pass chunk_size=None if it fits."
        )
