r"""Collocation on tensor grids: an AION's linear-operator residuals through the grid's
Kronecker sums.

A term made by `Collocation.on_grid` whose residual is a linear operator with constant
coefficients, ``R = sqrt(w) (sum_k a_k D^k u - h)`` on the grid ``x_1 x ... x x_d``, is for
an AION a sum of outer products again: ``D^k`` of a rank's product of atoms is the product of
each atom's derivative of order ``k_i`` in its own variable,

$$
\sum_k a_k D^k u = \sum_j \sum_k a_k\, \psi^{(k_1)}_{j1} \otimes \dots \otimes
\psi^{(k_d)}_{jd} ,
$$

a model of ``r K`` "ranks" (``K`` the operator's derivative terms) whose factors on each axis
are the atoms' derivatives, all functions of the same ``(rank, 4, d', P)`` parameters. Its
Jacobian is that of the extended model, summed over ``k``; so ``Phi``, ``J^T r`` and ``J^T J``
are `kronecker_sums` of the extended factors (the per-axis inner products of `GridData`),
summed over ``k``: the exponentials on the axes only, ``J^T J`` in
``O(sum_i n_i (4 r K P)^2 + d (r K 4 P)^2)`` instead of ``O(N M^2)``. The factors are
evaluated at ``theta + delta`` directly (no stored basis: they live on the axes).

The other terms (boundaries, nonlinear residuals) keep `CollocationProblem`; every sum of the
interface is the two parts' sum. Products with ``J^T J`` use the Gram matrix (cheap here);
the geodesic term, the residual-weighted Hessian blocks and the Jacobian itself (for the
Woodbury solver and uncertainties) come from automatic differentiation of the grid tensor,
``O(N r K)`` per pass.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool

from .._models._aion import AION
from ._aion import stack_params, unstack_params
from ._base import AbstractProblem, NormalEquations
from ._collocation import (Collocation, CollocationProblem, atom_powers, check_local,
                           power_derivatives)
from ._grid import kronecker_sums, outer_sum


def axis_factors(params: tuple, axis: Array, column: int, highest: int):
    """``(values, derivatives)`` of every rank's atom on one axis and of its derivatives in
    ``x`` up to ``highest``: ``values[m, n, j] = psi_j^{(m)}(x_n)``, shape ``(m, n, r)``, and
    their derivatives in the atom's parameters ``(A, alpha, omega, phi)`` of ``column``,
    ``(m, n, r, 4, P)`` (the closed forms of `taylor_jacobian`)."""
    sub = tuple(p[:, column:column + 1, :] for p in params)
    a, b = atom_powers(sub, axis[:, None], highest)  # (m, n, r, 1, P)
    a, b = a[:, :, :, 0], b[:, :, :, 0]
    A = sub[0][None, :, 0]  # (1, r, P)
    xs = axis[:, None, None]
    values = jnp.sum(A[None] * a, axis=-1)
    return values, jnp.stack(power_derivatives(A, a, b, xs))


def _extended(factors: list, term: Collocation, dtype) -> tuple[list, list]:
    """The extended model's factors of ``term`` (see the module): per axis ``(n, r K)`` and
    ``(n, r K, 4, P)``, the operator's coefficients and ``sqrt(w)`` on the first axis."""
    orders = [k for k, _ in term.operator]
    scale = jnp.sqrt(term.weight).astype(dtype) * jnp.asarray(
        [a for _, a in term.operator], dtype)
    psis, derivs = [], []
    for s, (values, derivatives) in enumerate(factors):
        index = jnp.asarray([k[s] for k in orders])
        v = jnp.moveaxis(values[index], 0, -1)  # (n, r, K)
        d = jnp.moveaxis(derivatives[index], 0, 2)  # (n, r, K, 4, P)
        if s == 0:
            v = v * scale[None, None, :]
            d = d * scale[None, None, :, None, None]
        n, r, k = v.shape
        psis.append(v.reshape(n, r * k))
        derivs.append(d.reshape(n, r * k, *d.shape[3:]))
    return psis, derivs


# The start-of-solve check of a grid term's locality promise (`check_local`) looks at this many
# of its points, evenly spread through them: a residual that uses a derivative of a higher
# order than it declares differs at a generic point, and on a grid the check over every point
# had been most of a solve (124 of 198 ms, 2-D Poisson on 256 x 256, CPU).
CHECKED_GRID_POINTS = 1024


def _sampled(term: Collocation) -> Collocation:
    """``term`` on at most `CHECKED_GRID_POINTS` of its points, evenly spread."""
    n = term.points.shape[0]
    if n <= CHECKED_GRID_POINTS:
        return term
    index = np.unique(np.linspace(0, n - 1, CHECKED_GRID_POINTS).round().astype(int))
    return eqx.tree_at(lambda t: t.points, term, term.points[index])


class GridCollocationProblem(AbstractProblem):
    """Collocation terms on an AION where some are linear operators on tensor grids (see the
    module): those through the grid's sums, the rest through `CollocationProblem`.
    Layout: `stack_params`'s ``(rank, 4, d', P)``."""

    model: AION
    theta: Array
    grid_terms: tuple
    points: CollocationProblem | None
    # Where each term's residuals go in `residuals`: (True, i) the i-th grid term, (False, i)
    # the i-th term of `points`.
    order: tuple = eqx.field(static=True)
    num_data: int = eqx.field(static=True)

    def __init__(self, model: AION, terms: tuple):
        self.model = model
        theta = check_local(model, tuple(_sampled(t) if t.uses_grid_sums else t
                                         for t in terms), stack_params(model))
        self.theta = theta
        grid, others, order = [], [], []
        for term in terms:
            if term.uses_grid_sums:
                order.append((True, len(grid)))
                grid.append(term)
            else:
                order.append((False, len(others)))
                others.append(term)
        self.grid_terms = tuple(grid)
        self.order = tuple(order)
        # The point terms were checked above, with the grid terms: no second check.
        self.points = None if not others else eqx.tree_at(
            lambda p: p.theta, CollocationProblem(model, tuple(others), check=False), theta)
        self.num_data = sum(t.points.shape[0] for t in terms)

    @property
    def shared(self) -> bool:
        return self.theta.shape[2] == 1 and self.model.dim > 1

    def _params(self, delta: Array) -> tuple:
        theta = self.theta + delta.reshape(self.theta.shape)
        return theta[:, 0], theta[:, 1], theta[:, 2], theta[:, 3]

    def _factors(self, params: tuple, term: Collocation) -> list:
        highest = max(max(k) for k, _ in term.operator)
        dtype = self.theta.dtype
        return [axis_factors(params, axis.astype(dtype), 0 if self.shared else s, highest)
                for s, axis in enumerate(term.axes)]

    def _grid_parts(self, delta: Array, term: Collocation):
        """``(psis, derivs, R)``: the extended factors of ``term`` (`_extended`) and its
        residual tensor ``sqrt(w) (L u - h)`` on its grid."""
        factors = self._factors(self._params(delta), term)
        psis, derivs = _extended(factors, term, self.theta.dtype)
        root = jnp.sqrt(term.weight).astype(self.theta.dtype)
        return psis, derivs, outer_sum(psis) - root * term.source.astype(self.theta.dtype)

    def _grid_residual(self, delta: Array, term: Collocation) -> Array:
        """``sqrt(w) (L u - h)`` on ``term``'s grid, a tensor of the grid's shape."""
        return self._grid_parts(delta, term)[2]

    def _grid_sums(self, delta: Array, term: Collocation):
        """``(Phi, J^T r, J^T J)`` of one grid term, ``(M,)`` and ``(M, M)``."""
        psis, derivs, residual = self._grid_parts(delta, term)
        loss, g, full = kronecker_sums(psis, derivs, residual)
        r, k = self.theta.shape[0], len(term.operator)
        g = jnp.sum(g.reshape(r, k, *g.shape[1:]), axis=1)  # (r, 4, d, P)
        full = full.reshape(r, k, *full.shape[1:4], r, k, *full.shape[5:])
        full = jnp.sum(full, axis=(1, 6))  # (r, 4, d, P, r, 4, d, P)
        if self.shared:
            g = jnp.sum(g, axis=2, keepdims=True)
            full = jnp.sum(full, axis=(2, 6), keepdims=True)
        size = self.theta.size
        return loss, g.reshape(-1), full.reshape(size, size)

    def _flat_grid(self, delta: Array) -> Array:
        """Every grid term's residuals, raveled and concatenated."""
        return jnp.concatenate([self._grid_residual(delta, t).reshape(-1)
                                for t in self.grid_terms])

    # -- the interface ----------------------------------------------------------------------

    def data_finite(self) -> Bool[Array, ""]:
        ok = jnp.asarray(True) if self.points is None else self.points.data_finite()
        for t in self.grid_terms:
            ok = ok & jnp.all(jnp.isfinite(t.source)) & jnp.all(jnp.isfinite(t.weight))
            for axis in t.axes:
                ok = ok & jnp.all(jnp.isfinite(axis))
        return ok

    def data_norm(self) -> Array:
        return jnp.zeros((), self.theta.dtype)

    def normal_equations(
        self, delta: Array, *, gram: bool = True, rank_grams: bool = False, jac: bool = False
    ) -> NormalEquations:
        loss = jnp.zeros((), self.theta.dtype)
        g = jnp.zeros(self.num_params, self.theta.dtype)
        full = jnp.zeros((self.num_params,) * 2, self.theta.dtype)
        for term in self.grid_terms:
            term_loss, term_g, term_full = self._grid_sums(delta, term)
            loss, g, full = loss + term_loss, g + term_g, full + term_full
        if self.points is not None:
            eq = self.points.normal_equations(delta, gram=True)
            loss, g, full = loss + eq.loss, g + eq.g, full + eq.gram
        m = self.block_size
        blocks = self.theta.shape[0]
        shaped = full.reshape(blocks, m, blocks, m)
        return NormalEquations(
            loss=loss, g=g, diag=jnp.diagonal(full), gram=full if gram else None,
            rank_grams=shaped[jnp.arange(blocks), :, jnp.arange(blocks), :]
            if rank_grams else None,
            jac=self.residual_and_jacobian(delta)[1] if jac else None,
        )

    def gram_matvec(self, delta: Array, v: Array) -> Array:
        full = jnp.zeros((self.num_params,) * 2, self.theta.dtype)
        for term in self.grid_terms:
            full = full + self._grid_sums(delta, term)[2]
        out = full @ v.reshape(-1)
        if self.points is not None:
            out = out + self.points.gram_matvec(delta, v)
        return out

    def geodesic_rhs(self, delta: Array, v: Array) -> Array:
        flat = delta.reshape(-1)
        v = v.reshape(-1)

        def along(t):
            return jax.jvp(self._flat_grid, (flat + t * v,), (v,))[1]

        zero = jnp.zeros((), flat.dtype)
        r_vv = jax.jvp(along, (zero,), (jnp.ones_like(zero),))[1]
        _, pullback = jax.vjp(self._flat_grid, flat)
        (out,) = pullback(r_vv)
        if self.points is not None:
            out = out + self.points.geodesic_rhs(delta, v)
        return out

    def rank_blocks(self, delta: Array, *, residual_only: bool = False) -> Array:
        """The blocks of the exact Hessian of ``Phi`` (or its residual-weighted part): the
        grid terms' from ``jax.hessian`` of their residual tensors, the others' from
        `CollocationProblem`."""
        flat = delta.reshape(-1)
        r = jax.lax.stop_gradient(self._flat_grid(flat))

        def weighted(d):
            value = self._flat_grid(d)
            return r @ value if residual_only else 0.5 * value @ value

        hessian = 2 * jax.hessian(weighted)(flat)
        m = self.block_size
        blocks = self.theta.shape[0]
        shaped = hessian.reshape(blocks, m, blocks, m)
        out = jnp.moveaxis(jnp.diagonal(shaped, axis1=0, axis2=2), -1, 0)
        if self.points is not None:
            out = out + self.points.rank_blocks(delta, residual_only=residual_only)
        return out

    def residuals(self, delta: Array) -> Array:
        """Every term's weighted residuals, in the order of the terms (a grid term's in the
        order of its points)."""
        flat = delta.reshape(-1)
        rs = {}
        if self.points is not None:
            self._split(self.points.residuals(delta), None, rs, {})
        for i, term in enumerate(self.grid_terms):
            rs[(True, i)] = self._grid_residual(flat, term).reshape(-1)
        return jnp.concatenate([rs[key] for key in self.order])

    def _split(self, r: Array, J: Array | None, rs: dict, js: dict) -> None:
        """The point terms' rows of ``r`` (and ``J``) into ``rs`` (``js``), by term."""
        start = 0
        for i, term in enumerate(self.points.terms):
            n = term.points.shape[0]
            rs[(False, i)] = r[start:start + n]
            if J is not None:
                js[(False, i)] = J[start:start + n]
            start += n

    def residual_and_jacobian(self, delta: Array) -> tuple[Array, Array]:
        """``(r, J)``, the grid terms' rows by forward-mode automatic differentiation of
        their tensors (``M`` tangents), the others' from `CollocationProblem`."""
        flat = delta.reshape(-1)
        rs, js = {}, {}
        if self.points is not None:
            self._split(*self.points.residual_and_jacobian(delta), rs, js)
        for i, term in enumerate(self.grid_terms):
            def values(d, term=term):
                return self._grid_residual(d, term).reshape(-1)

            rs[(True, i)] = values(flat)
            js[(True, i)] = jax.jacfwd(values)(flat)
        return (jnp.concatenate([rs[key] for key in self.order]),
                jnp.concatenate([js[key] for key in self.order]))

    def stack(self, tree) -> Array:
        return stack_params(tree)

    def to_model(self, theta: Array, like):
        return unstack_params(theta, like)
