"""Checks of user input at the public boundary.

Shapes and dtypes are checked at trace time, always. Values (NaN, Inf) are checked only when
the arrays are concrete and addressable, i.e. outside ``jit``; inside ``jit`` the solver
reports non-finite data through its result code instead.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._models._aion import AION


def is_concrete(*arrays) -> bool:
    """True when every array can be read on the host (not a tracer, fully addressable)."""
    for a in arrays:
        if isinstance(a, jax.core.Tracer):
            return False
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return False
    return True


def _as_real_array(value, name: str, caller: str):
    if isinstance(value, jax.core.Tracer) or isinstance(value, jax.Array):
        array = value
    else:
        array = np.asarray(value)
    dtype = array.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        kind = "complex" if jnp.issubdtype(dtype, jnp.complexfloating) else str(dtype)
        raise TypeError(
            f"{caller}: `{name}` must be a real floating-point array, got dtype {kind}. "
            f"Convert it first, e.g. `{name}.astype(jnp.float64)`."
        )
    return array


def check_model(model, caller: str):
    from ._models._protocol import SumOfTerms

    if not isinstance(model, SumOfTerms):
        raise TypeError(
            f"{caller}: expected an `infinite_descent.AION` (or another "
            f"`infinite_descent.SumOfTerms` model), got {type(model).__name__}."
        )
    dtypes = {a.dtype for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))}
    if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
        raise TypeError(
            f"{caller}: the model's parameters must share one real floating dtype, got "
            f"{sorted(str(d) for d in dtypes)}."
        )
    return model


def check_data(model: AION, x, y, caller: str):
    """Validate ``x`` of shape ``(N, dim)`` and ``y`` of shape ``(N,)``; cast to the model dtype.

    Raises ``TypeError`` for non-real or non-floating data and ``ValueError`` for wrong shapes,
    empty data, or (when concrete) NaN or Inf values.
    """
    check_model(model, caller)
    x = _as_real_array(x, "x", caller)
    y = _as_real_array(y, "y", caller)
    if x.ndim != 2 or x.shape[1] != model.dim:
        hint = " (for one-dimensional inputs use `x[:, None]`)" if x.ndim == 1 else ""
        raise ValueError(
            f"{caller}: `x` must have shape (N, {model.dim}) for a model with dim={model.dim}, "
            f"got {tuple(x.shape)}{hint}."
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{caller}: `y` must have shape (N,) = ({x.shape[0]},) to match `x` of shape "
            f"{tuple(x.shape)}, got {tuple(y.shape)}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{caller}: the data are empty (N = 0); at least one point is needed.")
    if is_concrete(x, y):
        for name, a in (("x", x), ("y", y)):
            a_np = np.asarray(a)
            bad = ~np.isfinite(a_np)
            if bad.any():
                where = np.argwhere(bad)[0].tolist()
                raise ValueError(
                    f"{caller}: `{name}` contains {int(bad.sum())} non-finite value(s) "
                    f"(NaN or Inf), first at index {where}; remove or impute them."
                )
    dtype = model.dtype
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def check_grid(model: AION, grid, y, caller: str):
    """Validate :class:`GridData` (``y`` must then be omitted); cast to the model dtype."""
    from ._grid import GridData

    check_model(model, caller)
    if y is not None:
        raise TypeError(
            f"{caller}: with GridData the targets live in the grid (`GridData(axes, y)`); "
            "do not pass `y` as well."
        )
    if len(grid.axes) != model.dim:
        raise ValueError(
            f"{caller}: the grid has {len(grid.axes)} axes but the model has dim={model.dim}."
        )
    axes = []
    for i, axis in enumerate(grid.axes):
        axis = _as_real_array(axis, f"axes[{i}]", caller)
        if axis.ndim != 1 or axis.shape[0] == 0:
            raise ValueError(
                f"{caller}: `axes[{i}]` must be a non-empty one-dimensional array, got shape "
                f"{tuple(axis.shape)}."
            )
        axes.append(axis)
    values = _as_real_array(grid.y, "y", caller)
    shape = tuple(int(a.shape[0]) for a in axes)
    if tuple(values.shape) != shape:
        raise ValueError(
            f"{caller}: the grid's `y` must have shape {shape} (one value per grid point), got "
            f"{tuple(values.shape)}."
        )
    if is_concrete(values, *axes):
        for name, a in [("y", values)] + [(f"axes[{i}]", a) for i, a in enumerate(axes)]:
            if not np.all(np.isfinite(np.asarray(a))):
                raise ValueError(f"{caller}: the grid's `{name}` contains NaN or Inf values.")
    dtype = model.dtype
    return GridData(tuple(jnp.asarray(a, dtype) for a in axes), jnp.asarray(values, dtype))


def check_params_finite(model, caller: str) -> None:
    params = eqx.filter(model, eqx.is_inexact_array)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if is_concrete(*(a for _, a in leaves)):
        for path, a in leaves:
            if not np.all(np.isfinite(np.asarray(a))):
                name = jax.tree_util.keystr(path).lstrip(".")
                raise ValueError(f"{caller}: the model's `{name}` contains NaN or Inf.")
