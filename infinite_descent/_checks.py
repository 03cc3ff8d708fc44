"""Checks of user input at the public boundary.

Shapes and dtypes are checked in Python, at trace time, always. Values (NaN, Inf) are checked
only when the arrays are concrete and addressable, i.e. outside ``jit``, by one fused
reduction over the data and the parameters (one small computation and one read back); only
when it fails are the arrays searched for the message. Inside ``jit`` the solver reports
non-finite data through its result code instead.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._models._aion import AION
from ._models._base import (
    SUPPORTED_DTYPES,
    AbstractSumOfTerms,
    ModelSum,
    default_float_dtype,
    parameter_arrays,
)
from ._models._gaussian import GaussianAtoms
from ._models._shallow import ShallowNetwork
from ._problems._collocation import Collocation, collocation_terms, pointwise
from ._problems._grid import GridData


def is_concrete(*arrays) -> bool:
    """True when every array can be read on the host (not a tracer, fully addressable)."""
    for a in arrays:
        if isinstance(a, jax.core.Tracer):
            return False
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return False
    return True


def _as_real_array(value, name: str, caller: str):
    if isinstance(value, (jax.core.Tracer, jax.Array, np.ndarray)):
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
    """A model of the package (an `AbstractSumOfTerms`) whose parameters share one real
    floating dtype."""
    if not isinstance(model, AbstractSumOfTerms):
        raise TypeError(
            f"{caller}: expected an `infinite_descent.AION` (or another "
            f"`infinite_descent.AbstractSumOfTerms` model), got {type(model).__name__}."
        )
    check_fields(model, caller)
    dtypes = {a.dtype for a in parameter_arrays(model)}
    if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
        raise TypeError(
            f"{caller}: the model's parameters must share one real floating dtype, got "
            f"{sorted(str(d) for d in dtypes)}."
        )
    dtype = next(iter(dtypes))
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{caller}: the model's parameters are {dtype}; float32 and float64 "
                        "are supported (convert with `jax.tree.map`, e.g. to float32).")
    if dtype == jnp.float64 and default_float_dtype() != jnp.float64:
        raise TypeError(f"{caller}: the model is float64 but `jax_enable_x64` is off (JAX would "
                        "compute in float32); turn it on, or convert the model to float32.")
    return model


# The parameter fields of the package's models and their number of axes: a model edited with
# `eqx.tree_at` to a number or a wrong-shaped array is refused at the call, not deep inside.
_FIELDS = {
    AION: ({"A": 3, "alpha": 3, "omega": 3, "phi": 3}),
    GaussianAtoms: ({"A": 3, "a": 3, "m": 3}),
    ShallowNetwork: ({"c": 1, "w": 2, "b": 1}),
}


def check_fields(model, caller: str) -> None:
    """Every parameter field of a model of the package is a real floating array of its
    shape; for any model, the parameter arrays share their leading (terms) axis."""
    if isinstance(model, ModelSum):
        for part in model.parts:
            check_model(part, caller)
        return
    for kind, fields in _FIELDS.items():
        if not isinstance(model, kind):
            continue
        shapes = {}
        for name, ndim in fields.items():
            value = getattr(model, name)
            if not (eqx.is_array(value) and jnp.issubdtype(value.dtype, jnp.floating)):
                raise TypeError(
                    f"{caller}: the {kind.__name__}'s `{name}` must be a real floating array, "
                    f"got {type(value).__name__}"
                    f"{' of dtype ' + str(value.dtype) if eqx.is_array(value) else ''}."
                )
            if value.ndim != ndim:
                raise ValueError(f"{caller}: the {kind.__name__}'s `{name}` must have {ndim} "
                                 f"axes, got shape {tuple(value.shape)}.")
            shapes[name] = tuple(value.shape)
        if kind is not ShallowNetwork and len(set(shapes.values())) != 1:
            raise ValueError(f"{caller}: the {kind.__name__}'s parameter arrays must share one "
                             f"shape, got {shapes}.")
        if kind is ShallowNetwork and not (
            shapes["c"][0] == shapes["w"][0] == shapes["b"][0] and shapes["w"][1] == model.dim
        ):
            raise ValueError(f"{caller}: the ShallowNetwork's c, w, b must be (width,), "
                             f"(width, {model.dim}), (width,); got {shapes}.")
        return
    leading = {a.shape[0] if a.ndim else None for a in parameter_arrays(model)}
    if len(leading) > 1 or None in leading:
        raise ValueError(f"{caller}: every parameter array of a sum-of-terms model carries the "
                         f"terms on its leading axis; got leading sizes {leading}.")


def check_data(model, x, y, caller: str, dtype=None):
    """``x`` of shape ``(N, dim)`` and ``y`` of shape ``(N,)``, cast to the model's dtype.

    Raises ``TypeError`` for non-real or non-floating data and ``ValueError`` for wrong
    shapes or empty data. Values are checked by `check_finite`.
    """
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
    dtype = model.dtype if dtype is None else dtype
    return as_dtype(x, dtype), as_dtype(y, dtype)


def as_dtype(a, dtype):
    """``a`` as a JAX array of ``dtype``; as it is when it already is one (``jnp.asarray``
    costs tens of microseconds even then, a direct call's largest Python cost)."""
    if isinstance(a, jax.Array) and a.dtype == dtype:
        return a
    return jnp.asarray(a, dtype)


def check_grid(model, grid: GridData, y, caller: str) -> GridData:
    """Validate `GridData` (``y`` must then be omitted); cast to the model's dtype."""
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
    dtype = model.dtype
    return GridData(tuple(jnp.asarray(a, dtype) for a in axes), jnp.asarray(values, dtype))


def as_collocation(x, caller: str) -> tuple[Collocation, ...] | None:
    """``x`` as a tuple of `Collocation` terms, ``None`` when it holds none (data); a list
    mixing terms with other things is a ``TypeError`` naming the caller."""
    try:
        return collocation_terms(x)
    except TypeError as error:
        raise TypeError(f"{caller}: {error}") from None


_RESIDUAL_SHAPES: dict = {}


def _residual_shape(residual, model, point):
    """What ``residual(u, x)`` returns for ``model`` at one point, traced abstractly; kept per
    residual function, model structure and point type, so a repeated call does not trace it
    again (tracing a residual with second derivatives took 50-150 ms a call)."""
    leaves, treedef = jax.tree.flatten(model)
    key = (residual, treedef, point.shape, str(point.dtype),
           tuple((getattr(a, "shape", None), str(getattr(a, "dtype", type(a)))) for a in leaves))
    try:
        return _RESIDUAL_SHAPES[key]
    except TypeError:  # something unhashable: trace every time
        key = None
    except KeyError:
        pass
    shape = jax.eval_shape(lambda m, x: residual(pointwise(m), x), model, point)
    if key is not None:
        if len(_RESIDUAL_SHAPES) > 1024:
            _RESIDUAL_SHAPES.clear()
        _RESIDUAL_SHAPES[key] = shape
    return shape


def check_collocation(model, terms: tuple, caller: str) -> tuple[Collocation, ...]:
    """Collocation terms for ``model``: points of its dimension, points and weights cast to
    its dtype and finite, and every ``residual(u, x)`` a real scalar (traced once, on the
    first point, without running it)."""
    out = []
    for i, term in enumerate(terms):
        if term.points.shape[1] != model.dim:
            raise ValueError(
                f"{caller}: the points of collocation term {i} have shape "
                f"{tuple(term.points.shape)}, but the model has dim={model.dim}."
            )
        points = jnp.asarray(term.points, model.dtype)
        weight = jnp.asarray(term.weight, model.dtype)
        check_finite(caller, model, {f"collocation term {i}'s points": points,
                                     f"collocation term {i}'s weight": weight})
        try:
            shape = _residual_shape(term.residual, model, points[0])
        except Exception as error:  # noqa: BLE001 - the user's function, reported as such
            raise type(error)(
                f"{caller}: calling `residual(u, x)` of collocation term {i} failed: {error}"
            ) from error
        if not isinstance(shape, jax.ShapeDtypeStruct) or shape.shape != ():
            got = getattr(shape, "shape", type(shape).__name__)
            raise ValueError(
                f"{caller}: `residual(u, x)` of collocation term {i} must return a scalar, got "
                f"{got}."
            )
        if not jnp.issubdtype(shape.dtype, jnp.floating):
            raise TypeError(
                f"{caller}: `residual(u, x)` of collocation term {i} must return a real "
                f"floating scalar, got dtype {shape.dtype}."
            )
        out.append(eqx.tree_at(lambda t: (t.points, t.weight), term, (points, weight)))
    return tuple(out)


@jax.jit
def _all_finite(arrays) -> jax.Array:
    ok = jnp.asarray(True)
    for a in arrays:
        ok = ok & jnp.all(jnp.isfinite(a))
    return ok


# Below this many values in host memory, numpy's check (about 10 us) is cheaper than one
# dispatch of the compiled reduction and its read back (about 40 us); above it the compiled
# reduction (multithreaded, no temporary mask) wins. Measured on the paper's toy, 2-core CPU.
_HOST_CHECK_SIZE = 1 << 16


def _on_host(a) -> bool:
    if isinstance(a, np.ndarray):
        return True
    return all(d.platform == "cpu" for d in a.devices())


def all_finite(arrays) -> bool:
    """Whether every (concrete) array is free of NaN and Inf: one fused reduction, or numpy
    for small arrays that already live in host memory."""
    if sum(a.size for a in arrays) <= _HOST_CHECK_SIZE and all(map(_on_host, arrays)):
        return all(bool(np.isfinite(np.asarray(a)).all()) for a in arrays)
    return bool(_all_finite(arrays))


def _first_bad(named: dict, originals: dict, dtype, caller: str) -> str:
    for label, a in named.items():
        bad = ~np.isfinite(np.asarray(a))
        if bad.any():
            where = np.argwhere(bad)[0].tolist() if bad.ndim else []
            original = originals.get(label)
            if original is not None and np.all(np.isfinite(np.asarray(original))):
                return (
                    f"{caller}: {label} has {int(bad.sum())} value(s) beyond the range of the "
                    f"model's dtype {jnp.dtype(dtype).name} (first at index {where}); rescale "
                    "the data, or use a model of a wider dtype."
                )
            return (
                f"{caller}: {label} contains {int(bad.sum())} non-finite value(s) (NaN or "
                f"Inf), first at index {where}; remove or impute them."
            )
    raise AssertionError("unreachable: a non-finite value was reported but not found")


def check_finite(caller: str, model, data: dict, originals: dict | None = None,
                 dtype=None) -> None:
    """Raise a ``ValueError`` naming the first non-finite datum or parameter, when every
    array is concrete; do nothing under ``jit``. ``data`` maps names to the arrays as cast
    to the model's dtype, ``originals`` to the arrays as given (to tell an overflowing cast
    from a NaN)."""
    arrays = list(data.values()) + parameter_arrays(model)
    if not is_concrete(*arrays) or all_finite(arrays):
        return
    named = {f"`{name}`": a for name, a in data.items()}
    leaves = jax.tree_util.tree_leaves_with_path(eqx.filter(model, eqx.is_inexact_array))
    for path, a in leaves:
        named[f"the model's `{jax.tree_util.keystr(path).lstrip('.')}`"] = a
    originals = {f"`{name}`": a for name, a in (originals or {}).items()}
    raise ValueError(_first_bad(named, originals, dtype or model.dtype, caller))
