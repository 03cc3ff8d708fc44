r"""Physics-informed residuals: a model fitted to equations in its own derivatives.

A collocation term is a set of points and a pointwise residual ``residual(u, x)``, written
with JAX's derivatives of ``u``, the model as a function of one point. The problem is the
weighted sum of the squared residuals of every term,

$$
\Phi(\Theta) = \sum_t w_t \sum_{n} \rho_t\bigl(u_\Theta, x_{tn}\bigr)^2 ,
$$

a least-squares problem whose residuals are nonlinear in the model's parameters but, for a
linear differential operator, linear in the model. For an AION, ``u`` is its closed form
(`derivative` in the model's module): every derivative in ``x`` is again an AION with each
term multiplied by a power of its exponent, so no derivative in ``x`` ever differentiates an
exponential. For any other sum-of-terms model ``u`` is the model itself (automatic
differentiation).

The parameters keep the layout of the model's own problem (an AION's ``(rank, 4, d', P)``,
a sum of terms' ``(terms, m)``), so ``trainable``, ``fix_gauge`` and ``bounds`` apply as they
do to data.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool

from .._models._aion import AION, derivative
from .._models._base import AbstractSumOfTerms, ModelSum
from ._aion import stack_params, unstack_params
from ._autodiff import stack_terms, unstack_terms
from ._base import (AbstractResidualProblem, NormalEquations, gram_sums, materialized,
                    residual_jacobian)


def _is_concrete(array) -> bool:
    return not isinstance(array, jax.core.Tracer)


class Collocation(eqx.Module):
    r"""One set of physics-informed residuals: ``residual(u, x)`` at every point ``x`` of
    ``points``, its square weighted by ``weight``.

    ``u`` is the model as a function of one point ``x`` of shape ``(dim,)`` returning a
    scalar; write the residual with JAX's own derivatives of it: ``jax.grad(u)(x)``,
    ``jax.hessian(u)(x)``, ``jnp.trace(jax.hessian(u)(x))`` (the Laplacian), a time derivative
    as the derivative in one input, and any pointwise nonlinearity of them. Boundary and
    initial conditions are terms like any other: a Dirichlet condition ``u(x) - g(x)``, a
    Neumann or Robin one ``jax.grad(u)(x) @ n - g(x)``.

    Give a list of terms to [`solve`][infinite_descent.solve] in place of the data (and no
    ``y``): it minimises

    $$
    \Phi = \sum_{\text{terms}} \sum_{n} w_n\, \mathrm{residual}(u, x_n)^2 .
    $$

    For an `AION` every derivative of ``u`` in ``x`` comes from the closed form (the
    derivative of an atom term in its variable multiplies it by ``alpha + i omega``), exact to
    rounding at any parameters; for any other model, from automatic differentiation.

    **Arguments:**

    - ``points``: the collocation points, shape ``(n, dim)``, real and finite. For a tensor
      grid, `on_grid` takes its axes instead, and keeps the grid's cheaper sums where the
      residual is a linear operator.
    - ``residual``: a function ``residual(u, x) -> scalar``.
    - ``weight``: ``w >= 0``, one number or one per point (shape ``(n,)``); default 1.
    - ``order``: optional, a promise that the residual is local: it uses ``u`` only through
      ``u`` and its derivatives of total order at most ``order``, all at ``x`` itself (a
      second-order differential equation: ``order=2``, a Dirichlet condition: ``0``, a
      Neumann one: ``1``). For an `AION` the residuals, their Jacobian and the geodesic
      term are then formed by the chain rule through those derivatives: ``u``'s Taylor
      coefficients at ``x`` and their derivatives in the parameters in closed form, the
      residual's derivatives in the coefficients by automatic differentiation of it on the
      Taylor polynomial. On the rank-12 Burgers benchmark an inner iteration costs 7.7 ms
      against 37.6 ms without (CPU, one core). The promise is checked at the start of every
      solve: there, at every point (a term on a grid, `on_grid`, whose sums come from the
      grid: at 1024 of them, evenly spread), the residuals and their derivative along one
      random direction of the parameters must equal those of automatic differentiation of
      the residual as written, or the solve raises (a residual that breaks it sees the Taylor
      polynomial, whose derivatives above ``order`` are zero). A model other than an
      `AION` ignores ``order``.
      ``None`` (the default): automatic differentiation of the residual as written.

    ```python
    import numpy as np
    t = jnp.linspace(0.0, 1.0, 12)[:, None]
    # u' = u with u(0) = 1: the solution is e^t, one atom term with alpha = 1.
    ode = idn.Collocation(t, lambda u, x: jax.grad(u)(x)[0] - u(x))
    start = idn.Collocation(jnp.zeros((1, 1)), lambda u, x: u(x) - 1.0, weight=10.0)
    fit, info = idn.solve(idn.AION(1, 1, 1, key=jax.random.key(0)), [ode, start])
    print(float(fit(jnp.ones(1))), np.e)                # 2.718281828... both
    ```
    """

    points: Array
    weight: Array
    residual: Callable = eqx.field(static=True)
    order: int | None = eqx.field(static=True)
    # A term made by `on_grid`: the grid's axes; and, when its residual is a linear operator
    # with constant coefficients, that operator (``((k, a_k), ...)`` over multi-indices ``k``,
    # see `linear_operator`) and its source ``h`` on the grid, ``residual = sum_k a_k D^k u -
    # h``. ``None`` otherwise.
    axes: tuple[Array, ...] | None
    operator: tuple | None = eqx.field(static=True)
    source: Array | None

    def __init__(self, points, residual, weight=1.0, order=None, *, _axes=None):
        if order is not None and (isinstance(order, (bool, np.bool_))
                                  or not isinstance(order, (int, np.integer)) or order < 0):
            raise ValueError(f"Collocation: `order` must be None or an integer >= 0, got "
                             f"{order!r}.")
        if not callable(residual):
            raise TypeError(
                "Collocation: `residual` must be a function `residual(u, x) -> scalar`, got "
                f"{type(residual).__name__}."
            )
        array = points if isinstance(points, (jax.Array, np.ndarray)) else np.asarray(points)
        if not (jnp.issubdtype(array.dtype, jnp.floating)
                or jnp.issubdtype(array.dtype, jnp.integer)):
            raise TypeError(f"Collocation: `points` must be real numbers, got dtype "
                            f"{array.dtype}.")
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
            hint = " (for one-dimensional inputs use `points[:, None]`)" if array.ndim == 1 else ""
            raise ValueError(
                "Collocation: `points` must have shape (n, dim) with n >= 1, got "
                f"{tuple(array.shape)}{hint}."
            )
        if not jnp.issubdtype(array.dtype, jnp.floating):
            array = array.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
        points = jnp.asarray(array)
        if _is_concrete(points) and not bool(jnp.all(jnp.isfinite(points))):
            raise ValueError("Collocation: `points` contains NaN or Inf.")
        w = weight if isinstance(weight, (jax.Array, np.ndarray)) else np.asarray(weight)
        if isinstance(weight, (bool, np.bool_)) or not (
            jnp.issubdtype(w.dtype, jnp.floating) or jnp.issubdtype(w.dtype, jnp.integer)
        ):
            raise TypeError(f"Collocation: `weight` must be a real number or array, got "
                            f"{weight!r}.")
        if w.shape not in ((), (points.shape[0],)):
            raise ValueError(
                "Collocation: `weight` must be one number or one per point, shape "
                f"({points.shape[0]},), got shape {tuple(w.shape)}."
            )
        w = jnp.asarray(w, points.dtype)
        if _is_concrete(w) and not bool(jnp.all(jnp.isfinite(w) & (w >= 0))):
            raise ValueError("Collocation: `weight` must be finite and >= 0.")
        self.points = points
        self.weight = w
        self.residual = residual
        self.order = None if order is None else int(order)
        self.axes = None if _axes is None else tuple(jnp.asarray(a, points.dtype)
                                                     for a in _axes)
        found = None
        # A grid with one axis of more than one point is a line of points: nothing to gain
        # from its axes, and its own Kronecker sums would compile for nothing.
        if (self.axes is not None and self.order is not None and w.ndim == 0
                and sum(a.shape[0] > 1 for a in self.axes) >= 2):
            found = linear_operator(residual, points, self.order)
        self.operator = None if found is None else found[0]
        self.source = None if found is None else found[1].reshape(
            tuple(a.shape[0] for a in self.axes))

    @classmethod
    def on_grid(cls, axes, residual, weight=1.0, order=None) -> Collocation:
        r"""A term on the tensor grid ``axes[0] x ... x axes[d-1]`` (every combination of
        the per-axis samples, as `GridData`'s points; first axis slowest).

        When ``order`` is given and the residual is a linear differential operator with
        constant coefficients, ``residual(u, x) = sum_k a_k D^k u(x) - h(x)`` (Poisson's
        ``-Lap u - h``, the heat equation's ``u_t - Lap u - h``, a Dirichlet condition
        ``u - g``), an `AION`'s solve keeps the grid's cheaper sums, as for `GridData`: the
        factors of every rank and derivative order on the axes only, ``J^T J`` from per-axis
        inner products (``O(sum_i n_i (4 r K P)^2)`` for ``K`` derivative terms, where the
        points cost ``O(N M^2)``), ``Phi`` and ``J^T r`` in ``O(N r K)``. The operator is
        recognised here, once, by evaluating the residual on Taylor polynomials at every grid
        point (its coefficients must agree at every point, to rounding, and its value be
        affine in them); ``uses_grid_sums`` says whether it was. Otherwise (a nonlinear or
        variable-coefficient residual, no ``order``, a weight per point, fewer than two axes
        with more than one point, or axes that are traced values) the term is an ordinary
        one on the grid's points, the same fit at the points' cost. A model other than an
        `AION` always uses the points.

        **Arguments:** ``axes``: a sequence of ``dim`` one-dimensional arrays; ``residual``,
        ``weight`` and ``order`` as for `Collocation` (``weight`` one number, or one per grid
        point in the order of the points).

        ```python
        h = lambda x: 2 * jnp.pi**2 * jnp.sin(jnp.pi * x[0]) * jnp.sin(jnp.pi * x[1])
        axis = jnp.linspace(0.0, 1.0, 64)
        pde = idn.Collocation.on_grid(
            (axis[1:-1], axis[1:-1]), lambda u, x: -jnp.trace(jax.hessian(u)(x)) - h(x),
            order=2)
        print(pde.uses_grid_sums, pde.operator)  # True (((0, 2), -1.0), ((2, 0), -1.0))
        ```
        """
        if isinstance(axes, (jax.Array, np.ndarray)) and axes.ndim != 1:
            axes = list(axes) if axes.ndim == 2 else axes
        if not isinstance(axes, (list, tuple)) or not axes:
            raise TypeError("Collocation.on_grid: `axes` must be a sequence of one-dimensional "
                            f"arrays, got {type(axes).__name__}.")
        arrays = []
        for i, axis in enumerate(axes):
            a = axis if isinstance(axis, (jax.Array, np.ndarray)) else np.asarray(axis)
            if a.ndim != 1 or a.shape[0] == 0:
                raise ValueError(f"Collocation.on_grid: axis {i} must be a non-empty "
                                 f"one-dimensional array, got shape {tuple(a.shape)}.")
            if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype,
                                                                            jnp.integer)):
                raise TypeError(f"Collocation.on_grid: axis {i} must be real numbers, got "
                                f"dtype {a.dtype}.")
            if not jnp.issubdtype(a.dtype, jnp.floating):
                a = a.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
            arrays.append(jnp.asarray(a))
        dtype = jnp.result_type(*arrays)
        arrays = [a.astype(dtype) for a in arrays]
        mesh = jnp.meshgrid(*arrays, indexing="ij")
        points = jnp.stack([m.reshape(-1) for m in mesh], axis=1)
        return cls(points, residual, weight, order, _axes=arrays)

    @property
    def num_points(self) -> int:
        return self.points.shape[0]

    @property
    def uses_grid_sums(self) -> bool:
        """Whether an `AION`'s solve forms this term's sums from its grid's axes (a term made
        by `on_grid` whose residual was recognised as a linear operator with constant
        coefficients)."""
        return self.operator is not None


def linear_operator(residual: Callable, points: Array, order: int):
    """``(operator, h)`` when ``residual(u, x) = sum_k a_k D^k u(x) - h(x)`` at every point,
    with the same ``a_k`` everywhere: ``operator = ((k, a_k), ...)`` over the multi-indices
    ``k`` with ``|k| <= order`` and ``a_k != 0``, ``h`` of shape ``(n,)``. ``None`` when it is
    not (a coefficient that differs between points, a value that is not affine in the Taylor
    coefficients ``c_k = D^k u(x)``, a residual that does not depend on ``u``), or when the
    values are not concrete (traced points, or a residual that closes over traced values).

    Evaluated on Taylor polynomials (`taylor_polynomial`), at ``c = 0`` (``-h``), its
    gradient in ``c`` there (the ``a_k``), and at one random ``c`` per point (affinity), to
    ``1000 eps`` of the values' scale: a nonlinearity of the size of the residual shows at a
    random ``c`` of order one; one that is not would be within rounding of it anyway."""
    indices = multi_indices(points.shape[1], order)
    if not _is_concrete(points):
        return None

    def value(c, x):
        return residual(taylor_polynomial(indices, c, x), x)

    @jax.jit  # compiled: evaluated op by op, the Hessians of a residual took seconds
    def evaluate(points):
        zero = jnp.zeros((points.shape[0], len(indices)), points.dtype)
        c = jax.random.normal(jax.random.key(0), zero.shape, points.dtype)
        return (jax.vmap(value)(zero, points), jax.vmap(jax.grad(value))(zero, points),
                jax.vmap(value)(c, points), c)

    with jax.ensure_compile_time_eval():  # run now, also when called under a trace
        at_zero, slopes, at_c, c = evaluate(points)
    if not all(_is_concrete(a) for a in (at_zero, slopes, at_c)):
        return None
    at_zero, slopes, at_c, c = (np.asarray(a) for a in (at_zero, slopes, at_c, c))
    if not (np.all(np.isfinite(at_zero)) and np.all(np.isfinite(slopes))
            and np.all(np.isfinite(at_c))):
        return None
    a = slopes[0]
    tol = 1000 * float(jnp.finfo(points.dtype).eps)
    scale = np.max(np.abs(a))
    if scale == 0 or np.max(np.abs(slopes - a)) > tol * scale:
        return None
    affine = c @ a + at_zero
    if np.max(np.abs(at_c - affine)) > tol * max(np.max(np.abs(affine)),
                                                 np.max(np.abs(at_c))):
        return None
    operator = tuple((k, float(a[n])) for n, k in enumerate(indices)
                     if abs(a[n]) > tol * scale)
    return operator, jnp.asarray(-at_zero, points.dtype)


def collocation_terms(x) -> tuple[Collocation, ...] | None:
    """``x`` as a tuple of `Collocation` terms when it is one or a list of them, ``None``
    when it holds none (data). A list that mixes terms with anything else is a
    ``TypeError``."""
    if isinstance(x, Collocation):
        return (x,)
    if isinstance(x, (list, tuple)) and any(isinstance(t, Collocation) for t in x):
        others = [type(t).__name__ for t in x if not isinstance(t, Collocation)]
        if others:
            raise TypeError(
                "the list of collocation terms must hold `Collocation` terms only, got "
                f"{others[0]} among them."
            )
        return tuple(x)
    return None


def pointwise(model: AbstractSumOfTerms) -> Callable:
    """``u``, the model as a function of one point ``(dim,) -> scalar``, as the residuals of
    a `Collocation` see it: for an `AION` its closed form, whose derivatives in ``x`` are
    closed forms too; for any other model the model itself."""
    if isinstance(model, AION):
        params = (model.A, model.alpha, model.omega, model.phi)
        zero = (0,) * model.dim

        def u(x):
            x = jnp.asarray(x, model.dtype)
            if x.shape != (model.dim,):
                raise ValueError(
                    f"Collocation: `u` takes one point of shape ({model.dim},), got {x.shape}."
                )
            return derivative(zero, params, x)

        return u
    if isinstance(model, ModelSum):
        parts = [pointwise(part) for part in model.parts]
        return lambda x: sum(u(x) for u in parts)
    return model


def stack_layout(tree, model) -> Array:
    """A pytree shaped like ``model``'s parameters in the layout of its problem: an AION's
    ``(rank, 4, d', P)``, a sum's parts one after another in one block, else by terms."""
    if isinstance(model, AION):
        return stack_params(tree)
    if isinstance(model, ModelSum):
        return jnp.concatenate([stack_layout(t, part).reshape(-1)
                                for t, part in zip(tree.parts, model.parts)])[None]
    return stack_terms(tree)


def unstack_layout(theta: Array, like, model):
    """Inverse of `stack_layout`: ``theta`` written into ``like``."""
    if isinstance(model, AION):
        return unstack_params(theta, like)
    if isinstance(model, ModelSum):
        flat, parts, start = theta.reshape(-1), [], 0
        for part_like, part in zip(like.parts, model.parts):
            shape = stack_layout(eqx.filter(part, eqx.is_inexact_array), part).shape
            size = math.prod(shape)
            parts.append(unstack_layout(flat[start:start + size].reshape(shape), part_like,
                                        part))
            start += size
        return eqx.tree_at(lambda m: m.parts, like, tuple(parts))
    return unstack_terms(theta, like)


def term_residuals(term: Collocation, u: Callable) -> Array:
    """``sqrt(w_n) residual(u, x_n)`` at every point of ``term``, shape ``(n,)``."""
    values = jax.vmap(lambda x: term.residual(u, x))(term.points)
    return jnp.sqrt(term.weight) * values


def multi_indices(dim: int, order: int) -> tuple[tuple[int, ...], ...]:
    """Every multi-index ``k`` of ``dim`` entries with ``|k| <= order``."""
    return tuple(k for k in itertools.product(range(order + 1), repeat=dim) if sum(k) <= order)


def real_exponentials(params: tuple, points: Array) -> tuple[Array, Array]:
    """``(a, b)``: the real and imaginary parts of ``e^{z x + i phi}`` (no amplitude), each
    ``(n, r, d, P)``: the exponentials, sines and cosines, the dominant cost of a pass over
    the points, in real arithmetic and stored once (the model's `atom_exponentials` gives
    complex values, which the closed forms here would split again). A `CollocationProblem` keeps them from its Jacobian pass (`NormalEquations`'
    ``kept``) for the geodesic term at the same point."""
    alpha, omega, phi = (p[None] for p in params[1:])  # (1, r, d', P)
    xs = points[:, None, :, None]  # (n, 1, d, 1)
    magnitude = jnp.exp(alpha * xs)
    angle = omega * xs + phi
    # Stored once (`materialized`): on the CPU, XLA otherwise fuses the sines and cosines
    # into every consumer and evaluates them there again (four times in the Jacobian).
    return materialized(lambda m, t: (m * jnp.cos(t), m * jnp.sin(t)), magnitude, angle)


def atom_powers(params: tuple, points: Array, highest: int, exponentials=None):
    """``(a, b)``: the real and imaginary parts of ``z^m e^{z x + i phi}`` (no amplitude) for
    ``m = 0..highest``, each ``(highest + 1, n, r, d, P)``, in real arithmetic; from
    ``exponentials`` (`real_exponentials` at the same parameters and points) when given."""
    alpha, omega = params[1][None], params[2][None]
    a, b = real_exponentials(params, points) if exponentials is None else exponentials
    a, b = [a], [b]
    for _ in range(highest):
        a, b = a + [alpha * a[-1] - omega * b[-1]], b + [alpha * b[-1] + omega * a[-1]]
    return jnp.stack(a), jnp.stack(b)


def taylor_coefficients(indices, params: tuple, points: Array, powers=None) -> Array:
    """``D^k f(x)`` of an AION at every point for every ``k`` of ``indices``, shape
    ``(n, len(indices))``: `derivative_closed_form` for each, the exponentials computed once
    and in real arithmetic."""
    A = params[0]
    highest = max(max(k) for k in indices)
    a, _ = atom_powers(params, points, highest) if powers is None else powers
    psi = jnp.sum(A[None, None] * a, axis=-1)  # (m, n, r, d)
    dim = points.shape[1]
    return jnp.stack([jnp.sum(functools.reduce(operator.mul, [psi[k[i], :, :, i]
                                                             for i in range(dim)]), axis=-1)
                      for k in indices], axis=1)


def _cmul(p, q):
    """The product of two complex numbers given as ``(real, imaginary)`` pairs."""
    return p[0] * q[0] - p[1] * q[1], p[0] * q[1] + p[1] * q[0]


def _dims_product(factors: list) -> Array:
    """``prod_i f_i`` over a list of per-dimension factors."""
    return functools.reduce(operator.mul, factors)


def power_derivatives(A: Array, a: Array, b: Array, xs: Array) -> list[Array]:
    """``d psi_m / d(A, alpha, omega, phi)`` for every ``m``, stacked on axis 2 of each, from
    the real and imaginary parts ``a, b`` of ``Q_m`` (`atom_powers`, ``m`` leading), the
    amplitudes ``A`` and the points ``xs``, shaped to broadcast against ``a[m]`` (see
    `taylor_jacobian` for the formulas)."""
    rows = []
    for m in range(a.shape[0]):
        shift_a = m * a[m - 1] + xs * a[m] if m else xs * a[m]
        shift_b = m * b[m - 1] + xs * b[m] if m else xs * b[m]
        rows.append(jnp.stack([a[m], A * shift_a, -A * shift_b, -A * b[m]], axis=2))
    return rows


def taylor_jacobian(indices, params: tuple, points: Array, cotangent: Array,
                    powers=None) -> Array:
    """``sum_k cotangent[n, k] dc_k(x_n)/dtheta``, shape ``(n, M)`` in the layout of
    `stack_params` (``(rank, 4, d', P)`` raveled): the rows of ``J`` of a local term from
    ``dr/dc`` at each point, in closed form.

    With ``Q_m = z^m e^{z x + i phi}`` (``z = alpha + i omega``) and the one-dimensional
    factor ``psi_m = sum_P Re(A Q_m)``: ``d/dA = Re Q_m``, ``d/dalpha = Re(A (m Q_{m-1} +
    x Q_m))``, ``d/domega = -Im(A (m Q_{m-1} + x Q_m))``, ``d/dphi = -Im(A Q_m)``, times
    the factors of the other dimensions. The exponentials are computed once, the rest is
    products: no per-point reverse pass."""
    A = params[0][None]  # (1, r, d', P)
    highest = max(max(k) for k in indices)
    a, b = atom_powers(params, points, highest) if powers is None else powers
    xs = points[:, None, :, None]
    psi = jnp.sum(A[None] * a, axis=-1)  # (m, n, r, d)
    dim = points.shape[1]
    rows = power_derivatives(A, a, b, xs)  # d psi_m / d(A, alpha, omega, phi): (n, r, 4, d, P)
    factors = [[psi[k[i], :, :, i] for i in range(dim)] for k in indices]  # (n, r) each
    blocks = []
    for i in range(dim):
        # The cotangent of psi_m in dimension i: sum over the k with k_i = m.
        weights = [0.0] * (highest + 1)
        for n, k in enumerate(indices):
            others = [f for j, f in enumerate(factors[n]) if j != i]
            weight = cotangent[:, n, None] * (_dims_product(others) if others else 1.0)
            weights[k[i]] = weights[k[i]] + weight
        blocks.append(sum(w[:, :, None, None] * rows[m][:, :, :, i, :]
                          for m, w in enumerate(weights) if not isinstance(w, float)))
    total = jnp.stack(blocks, axis=3)  # (n, r, 4, d, P)
    shared = params[1].shape[1] == 1 and dim > 1
    if shared:
        total = jnp.sum(total, axis=3, keepdims=True)
    return total.reshape(points.shape[0], -1)


def taylor_series(indices, params: tuple, direction: tuple, points: Array,
                  exponentials=None):
    """``(c, c_v, c_vv)``: the Taylor coefficients of `taylor_coefficients` and their first
    and second derivatives along the parameter direction ``direction`` (an AION-shaped
    ``(dA, dalpha, domega, dphi)``), each ``(n, len(indices))``, in closed form (Taylor
    mode by hand): along ``theta + t v``, ``Q_m' = m dz Q_{m-1} + s Q_m`` and ``Q_m'' =
    m (m-1) dz^2 Q_{m-2} + 2 m dz s Q_{m-1} + s^2 Q_m`` with ``dz = dalpha + i domega``,
    ``s = dz x + i dphi``; ``(A Q)' = dA Q + A Q'``, ``(A Q)'' = 2 dA Q' + A Q''``; the
    product over dimensions by Leibniz's rule. The exponentials once, as for the values;
    automatic differentiation (a JVP of a JVP) costs four times the values, measured.
    ``exponentials``: `real_exponentials` at ``params`` and ``points``, if at hand."""
    A = params[0][None]
    dA, dalpha, domega, dphi = (p[None] for p in direction)
    highest = max(max(k) for k in indices)
    a, b = atom_powers(params, points, highest, exponentials)
    xs = points[:, None, :, None]
    dz = (dalpha, domega)
    s = (dalpha * xs, domega * xs + dphi)
    dz2, dzs, s2 = _cmul(dz, dz), _cmul(dz, s), _cmul(s, s)
    q = [(a[m], b[m]) for m in range(highest + 1)]
    series = []  # per m: psi, psi', psi'' (n, r, d)
    for m in range(highest + 1):
        first = _cmul(s, q[m])
        second = _cmul(s2, q[m])
        if m >= 1:
            t = _cmul(dz, q[m - 1])
            first = (first[0] + m * t[0], first[1] + m * t[1])
            t = _cmul(dzs, q[m - 1])
            second = (second[0] + 2 * m * t[0], second[1] + 2 * m * t[1])
        if m >= 2:
            t = _cmul(dz2, q[m - 2])
            second = (second[0] + m * (m - 1) * t[0], second[1] + m * (m - 1) * t[1])
        series.append((jnp.sum(A * q[m][0], axis=-1),
                       jnp.sum(dA * q[m][0] + A * first[0], axis=-1),
                       jnp.sum(2 * dA * first[0] + A * second[0], axis=-1)))
    dim = points.shape[1]
    out = []
    for k in indices:
        f0, f1, f2 = (x[:, :, 0] for x in series[k[0]])
        for i in range(1, dim):
            g0, g1, g2 = (x[:, :, i] for x in series[k[i]])
            f0, f1, f2 = f0 * g0, f0 * g1 + f1 * g0, f0 * g2 + 2 * f1 * g1 + f2 * g0
        out.append((jnp.sum(f0, axis=-1), jnp.sum(f1, axis=-1), jnp.sum(f2, axis=-1)))
    return tuple(jnp.stack([o[j] for o in out], axis=1) for j in range(3))


def taylor_polynomial(indices, coefficients: Array, center: Array) -> Callable:
    """``u(x) = sum_k c_k (x - center)^k / k!``: at ``center`` its derivatives of the
    orders in ``indices`` are ``coefficients`` (exactly, by automatic differentiation)."""
    def u(x):
        h = jnp.asarray(x, coefficients.dtype) - center
        total = jnp.zeros((), coefficients.dtype)
        for n, k in enumerate(indices):
            term = coefficients[n]
            for i, ki in enumerate(k):
                if ki:
                    term = term * h[i] ** ki / math.factorial(ki)
            total = total + term
        return total

    return u


def _local_values(model: AION, term: Collocation, flat: Array, like) -> Array:
    """``residual(u, x)`` at every point of a local ``term`` (unweighted), through ``u``'s
    Taylor coefficients of orders up to ``term.order`` at the point."""
    indices = multi_indices(model.dim, term.order)
    at = unstack_layout(flat.reshape(like.shape), model, model)
    points = jnp.asarray(term.points, model.dtype)
    c = taylor_coefficients(indices, (at.A, at.alpha, at.omega, at.phi), points)
    return jax.vmap(lambda ck, x: term.residual(taylor_polynomial(indices, ck, x), x))(
        c, points)


def check_local(model: AION, terms: tuple, theta: Array) -> Array:
    """``theta``, with a check that every term declared local (`Collocation`'s ``order``)
    keeps its promise: at ``theta`` its residuals, and their derivative along one fixed
    random direction of the parameters, at every point, through the Taylor coefficients
    equal those of automatic differentiation of the residual as written (to ``10 sqrt(eps)``
    of the largest derivative, and for the values of the largest value plus that). A residual that uses a derivative of a higher order, or ``u`` anywhere
    but at ``x``, sees the Taylor polynomial's derivatives (zero) or values there instead
    and disagrees at a generic start; the solve then raises (through ``eqx.error_if``, so
    also under ``jit``). One evaluation of the residuals and of a JVP, both ways, per solve.
    """
    flat = theta.reshape(-1)
    direction = jax.random.normal(jax.random.key(0), flat.shape, flat.dtype)
    tol = 10 * math.sqrt(float(jnp.finfo(flat.dtype).eps))
    for n, term in enumerate(terms):
        if term.order is None:
            continue

        def plain(f, term=term):
            u = pointwise(unstack_layout(f.reshape(theta.shape), model, model))
            return jax.vmap(lambda x: term.residual(u, x))(
                jnp.asarray(term.points, model.dtype))

        r, dr = jax.jvp(plain, (flat,), (direction,))
        rl, drl = jax.jvp(lambda f, term=term: _local_values(model, term, f, theta),
                          (flat,), (direction,))
        # The values against their own scale and the derivative's: at a solution the
        # residuals are rounding (a second solve from a fit, a later segment of `multistart`),
        # and both ways differ there by their roundings, of the scale of the derivative.
        scale = jnp.max(jnp.abs(dr))
        broken = (jnp.max(jnp.abs(rl - r)) > tol * (jnp.max(jnp.abs(r)) + scale)) | (
            jnp.max(jnp.abs(drl - dr)) > tol * scale)
        theta = eqx.error_if(
            theta, broken,
            f"Collocation: term {n} is declared local (order={term.order}) but its "
            "residuals differ from automatic differentiation of the residual as written: it "
            "uses a derivative of u of a higher order, or u away from the point x. Declare "
            "the highest order it uses, or order=None.")
    return theta


# At most this many parameters, the Jacobian of collocation residuals is taken in forward mode
# over the whole residual vector; above, by reverse mode point by point (see
# `CollocationProblem.residual_and_jacobian`).
FORWARD_MODE_PARAMS = 8


class CollocationProblem(AbstractResidualProblem):
    """The residuals of collocation terms as a least-squares problem over the model's
    parameters (see the module docstring).

    Residuals: every term's ``sqrt(w) residual(u, x)`` over its points, concatenated
    (``N`` in all). The Jacobian comes from automatic differentiation in the parameters
    (reverse mode point by point; forward mode for the smallest models), applied to the
    closed form for an AION, or, for a local term on an AION (`Collocation`'s ``order``),
    from the closed forms of ``u``'s Taylor coefficients (`taylor_jacobian`). The loop keeps
    ``J`` from its pass (``keeps_jacobian``), so the geodesic right-hand side ``J^T r_vv``
    needs only ``r_vv``: forward mode (`taylor_series` for local terms). Products with
    ``J^T J`` are a JVP and a VJP. The blocks are the model's
    terms (an AION's ranks); with a nonlinear residual the Hessian's residual-weighted part
    also couples the terms, and its off-diagonal blocks are not used.
    """

    model: AbstractSumOfTerms
    theta: Array
    terms: tuple
    num_data: int = eqx.field(static=True)
    # The loop keeps J from its pass for the geodesic term (`geodesic_rhs`'s ``jac``).
    keeps_jacobian: ClassVar[bool] = True

    def __init__(self, model: AbstractSumOfTerms, terms: tuple, check: bool = True):
        """``check``: run `check_local` on an AION's local terms (off for a caller that has
        run it on them)."""
        self.model = model
        self.terms = tuple(terms)
        params = eqx.filter(model, eqx.is_inexact_array)
        theta = stack_layout(params, model)
        self.num_data = sum(t.points.shape[0] for t in self.terms)
        if check and isinstance(model, AION):
            theta = check_local(model, self.terms, theta)
        self.theta = theta

    def _local(self, term: Collocation) -> bool:
        """Whether ``term`` is formed by the chain rule through Taylor coefficients."""
        return term.order is not None and isinstance(self.model, AION)

    def _params(self, flat: Array) -> tuple:
        model = self.to_model(flat.reshape(self.theta.shape), self.model)
        return model.A, model.alpha, model.omega, model.phi

    def _local_residuals(self, flat: Array, term: Collocation, jacobian: bool):
        """``(r, J or None, exponentials)`` of a local term (`Collocation`'s ``order``) by
        the chain rule: ``dr/dtheta = sum_k dr/dc_k dc_k/dtheta`` with ``c_k = D^k u(x)``;
        ``exponentials`` (`real_exponentials`) for the geodesic term at the same point."""
        indices = multi_indices(self.model.dim, term.order)

        def through(c, x):
            return term.residual(taylor_polynomial(indices, c, x), x)

        params = self._params(flat)
        points = jnp.asarray(term.points, self.model.dtype)
        exponentials = real_exponentials(params, points)
        powers = atom_powers(params, points, max(max(k) for k in indices), exponentials)
        c = taylor_coefficients(indices, params, points, powers)
        root = jnp.sqrt(term.weight)
        if not jacobian:
            return root * jax.vmap(through)(c, points), None, exponentials
        r, g = jax.vmap(jax.value_and_grad(through))(c, points)
        jac = taylor_jacobian(indices, params, points, jnp.reshape(root, (-1, 1)) * g, powers)
        return root * r, jac, exponentials

    def residuals(self, delta: Array) -> Array:
        """Every term's weighted residuals at ``theta + delta``, concatenated: ``(N,)``."""
        theta = self.theta + delta.reshape(self.theta.shape)
        u = pointwise(self.to_model(theta, self.model))
        return jnp.concatenate([
            self._local_residuals(theta.reshape(-1), t, False)[0] if self._local(t)
            else term_residuals(t, u) for t in self.terms])

    def residual_and_jacobian(self, delta: Array) -> tuple[Array, Array]:
        """``(r, J)`` at ``theta + delta``, ``J`` of shape ``(N, M)``.

        A residual at one point is a scalar function of the ``M`` parameters, so each row of
        ``J`` is its gradient: reverse mode point by point (``vmap`` of ``value_and_grad``)
        costs a few evaluations of the residual per point, ``O(N M)`` in all, where forward
        mode over the whole vector pushes ``M`` tangents through every atom, ``O(N M^2)``.
        Forward mode is kept for the smallest models, where its ``M`` tangents cost less
        than one reverse pass. A local term (`Collocation`'s ``order``) on an AION goes
        through its Taylor coefficients instead: one reverse pass of the closed forms for the
        residual's gradient in those coefficients."""
        return self._residual_jacobian_kept(delta)[:2]

    def _residual_jacobian_kept(self, delta: Array) -> tuple[Array, Array, tuple | None]:
        """``(r, J, kept)``: `residual_and_jacobian` and, per term, the exponentials of a
        local term (`real_exponentials`, ``None`` for the others), or ``kept=None``."""
        if self.num_params <= FORWARD_MODE_PARAMS:
            return *residual_jacobian(self.residuals, delta, self.num_data), None
        flat = (self.theta + delta.reshape(self.theta.shape)).reshape(-1)
        rs, js, kept = [], [], []
        for term in self.terms:
            if self._local(term):
                r, jac, exponentials = self._local_residuals(flat, term, True)
                rs.append(r)
                # Stored before the concatenation (`materialized`): on the CPU, XLA otherwise
                # fuses the products that form the block into the concatenation, which then
                # costs about as much again as the rest of the pass (rank-12 Burgers: 5.5 ms
                # against 3.1 ms, measured). A NaN in the block's first entry makes it all
                # NaN, which the step it feeds is anyway.
                js.append(materialized(lambda j: j, jac))
                kept.append(exponentials)
                continue
            kept.append(None)
            def point(theta, x, term=term):
                model = self.to_model(theta.reshape(self.theta.shape), self.model)
                return term.residual(pointwise(model), x)

            r, jac = jax.vmap(jax.value_and_grad(point), in_axes=(None, 0))(flat, term.points)
            root = jnp.sqrt(term.weight)
            rs.append(root * r)
            js.append(jnp.reshape(root, (-1, 1)) * jac)
        return jnp.concatenate(rs), jnp.concatenate(js), tuple(kept)

    def normal_equations(
        self, delta: Array, *, gram: bool = True, rank_grams: bool = False, jac: bool = False
    ) -> NormalEquations:
        """As `AbstractResidualProblem`'s; with ``jac``, also ``kept``: the exponentials of
        the local terms at ``delta`` (`real_exponentials`), which `geodesic_rhs` at the same
        ``delta`` reuses instead of evaluating them again."""
        r, J, kept = self._residual_jacobian_kept(delta)
        return gram_sums(r, J, gram=gram, rank_grams=rank_grams,
                         block_size=self.block_size)._replace(
                             jac=J if jac else None, kept=kept if jac else None)

    def _local_curvature(self, flat: Array, v: Array, term: Collocation,
                         exponentials=None) -> Array:
        """``r_vv`` of a local term, unweighted, by the chain rule: ``c``, ``c_v``, ``c_vv``
        in closed form (`taylor_series`), ``r_vv`` the second derivative of the residual
        along the parabola ``c + t c_v + t^2 c_vv / 2`` (exact to second order).
        ``exponentials``: `real_exponentials` at ``flat``, if at hand."""
        indices = multi_indices(self.model.dim, term.order)
        points = jnp.asarray(term.points, self.model.dtype)
        c, c_v, c_vv = taylor_series(indices, self._params(flat), self._params(v), points,
                                     exponentials)

        def along(t):
            return jax.vmap(lambda ck, x: term.residual(taylor_polynomial(indices, ck, x), x))(
                c + t * c_v + 0.5 * t * t * c_vv, points)

        def first(t):
            return jax.jvp(along, (t,), (jnp.ones_like(t),))[1]

        zero = jnp.zeros((), flat.dtype)
        return jax.jvp(first, (zero,), (jnp.ones_like(zero),))[1]

    def residual_curvature(self, delta: Array, v: Array, kept: tuple | None = None) -> Array:
        """``r_vv``, weighted, ``(N,)``: local terms on an AION through their Taylor
        coefficients (forward mode only), the others by a JVP of a JVP of their residuals.
        ``kept``: the exponentials of the local terms at ``delta`` (`NormalEquations`'
        ``kept`` from `normal_equations` at the same ``delta``), if at hand."""
        flat = (self.theta + delta.reshape(self.theta.shape)).reshape(-1)
        v = v.reshape(-1)
        parts = []
        for n, term in enumerate(self.terms):
            if self._local(term):
                r_vv = self._local_curvature(flat, v, term,
                                             None if kept is None else kept[n])
            else:
                def values(f, term=term):
                    u = pointwise(self.to_model(f.reshape(self.theta.shape), self.model))
                    return jax.vmap(lambda x: term.residual(u, x))(term.points)

                def along(t, values=values):
                    return jax.jvp(values, (flat + t * v,), (v,))[1]

                zero = jnp.zeros((), flat.dtype)
                r_vv = jax.jvp(along, (zero,), (jnp.ones_like(zero),))[1]
            parts.append(jnp.sqrt(term.weight) * r_vv)
        return jnp.concatenate(parts)

    def geodesic_rhs(self, delta: Array, v: Array, jac: Array | None = None,
                     kept: tuple | None = None) -> Array:
        """``J^T r_vv``. With ``jac``, the Jacobian at ``delta`` that the loop holds from its
        pass there (`keeps_jacobian`): ``r_vv`` by forward mode (`residual_curvature`) and
        one product with ``J^T``, no reverse pass. Without, when every term is local
        (`Collocation`'s ``order``) on an AION, the same with ``J`` formed here (closed
        forms, `taylor_jacobian`); otherwise JVPs and a VJP of the residual vector.
        ``kept``: `NormalEquations`' ``kept`` from the same pass as ``jac`` (the local
        terms' exponentials there), which spares evaluating them again."""
        if jac is not None:
            r_vv = self.residual_curvature(delta, v, kept)
            return jnp.matmul(r_vv.astype(jac.dtype), jac,
                              precision=jax.lax.Precision.HIGHEST).astype(self.theta.dtype)
        if not all(self._local(t) for t in self.terms):
            return super().geodesic_rhs(delta, v)
        _, J, kept = self._residual_jacobian_kept(delta)
        return self.geodesic_rhs(delta, v, jac=J, kept=kept)

    def data_finite(self) -> Bool[Array, ""]:
        ok = jnp.asarray(True)
        for t in self.terms:
            ok = ok & jnp.all(jnp.isfinite(t.points)) & jnp.all(jnp.isfinite(t.weight))
        return ok

    def data_norm(self) -> Array:
        return jnp.zeros((), self.theta.dtype)

    def stack(self, tree) -> Array:
        return stack_layout(tree, self.model)

    def to_model(self, theta: Array, like):
        return unstack_layout(theta, like, self.model)
