r"""Data on a tensor grid, and the Kronecker structure it gives the normal equations.

When the points are every combination ``x_1 x ... x x_d`` of per-axis samples, each rank of
AION is an outer product of its atoms, ``T_j = psi_j1 (x) ... (x) psi_jd``, and each column
of the Jacobian is one too (one factor differentiated). Then:

- the atoms and their derivatives are evaluated on the axes only: ``r P sum_i n_i`` complex
  exponentials instead of ``r d P prod_i n_i``;
- ``J^T J`` is assembled from per-axis inner products, ``<a (x) b, c (x) d> = <a, c><b, d>``:
  ``O(sum_i n_i (r 4 P)^2 + M^2 d)`` instead of ``O(N M^2)``;
- the residual tensor ``R`` is full, so ``Phi`` and ``J^T r`` (contractions of ``R`` with the
  other axes' atoms) cost ``O(N r d)``: linear in ``N``, with no factor ``M``.

Paths that need more than these sums (CG products, geodesic acceleration, the residual-weighted
Hessian blocks, the Woodbury capacitance) expand the grid into points and use the
general resummation.
"""

from __future__ import annotations

import string

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._models._aion import AION, complex_exp
from ._aion import AIONResummation, amplitude_factors, stack_params, unstack_params
from ._base import AbstractProblem, NormalEquations


class GridData(eqx.Module):
    """Data on a tensor grid: targets ``y[i_1, ..., i_d]`` at ``(axes[0][i_1], ...,
    axes[d-1][i_d])``.

    Pass it wherever ``x, y`` go: ``idn.solve(model, idn.GridData(axes, y))``,
    ``idn.resummed_residual(model, grid)``, ``opt.update(..., x=grid)``. The cost of the model
    evaluation and of ``J^T J`` then grows with the sum of the grid sizes, not their product.

    **Arguments:** ``axes``: a sequence of ``d`` one-dimensional arrays (the samples along each
    dimension); ``y``: an array of shape ``(len(axes[0]), ..., len(axes[d-1]))``.

    ``points()`` and ``values()`` give the same data as scattered ``(N, d)`` and ``(N,)``
    arrays (first axis varying slowest, as ``jnp.meshgrid(..., indexing="ij")``).

    Cost of one solver iteration: ``r P sum_i n_i`` complex exponentials, ``J^T J`` in
    ``O(sum_i n_i (4 r P)^2 + d M^2)``, and ``O(N r d)`` for the residuals and ``J^T r``.

    ```python
    axis = jnp.linspace(0.0, 1.0, 25)
    grid = idn.GridData((axis, axis), jnp.cos(jnp.pi * (axis[:, None] - axis[None, :])))
    model, info = idn.solve(idn.problems.paper_toy_start(), grid)
    print(grid.num_points, float(info.loss))          # 625 ~1e-29
    ```
    """

    axes: tuple[Float[Array, " n"], ...]
    y: Float[Array, "..."]

    def __init__(self, axes, y):
        self.axes = tuple(axes)
        self.y = y

    @property
    def dim(self) -> int:
        return len(self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(a.shape[0]) for a in self.axes)

    @property
    def num_points(self) -> int:
        return int(np.prod(self.shape))

    def points(self) -> Array:
        """The grid as ``(N, d)`` points, first axis varying slowest."""
        mesh = jnp.meshgrid(*self.axes, indexing="ij")
        return jnp.stack([m.reshape(-1) for m in mesh], axis=1)

    def values(self) -> Array:
        """The targets as ``(N,)``, in the order of [`points`][infinite_descent.GridData.points]."""
        return self.y.reshape(-1)


def _axis_terms(theta, delta, basis, axis, column):
    """Atoms of every rank on one axis and their derivatives: ``(n, r)`` and ``(n, r, 4, P)``.

    ``column`` is the parameter column of this dimension (0 when shared).
    """
    th, dl = theta[:, :, column, :], delta[:, :, column, :]  # (r, 4, P)
    amplitude = (th[:, 0] + dl[:, 0])[None]  # (1, r, P)
    xs = axis[:, None, None]  # (n, 1, 1)
    d = dl[None]
    e = basis * complex_exp(d[:, :, 1] * xs, d[:, :, 2] * xs + d[:, :, 3])  # (n, r, P)
    re, im = jnp.real(e), jnp.imag(e)
    psi = jnp.sum(amplitude * re, axis=-1)
    derivatives = jnp.stack(
        [re, xs * amplitude * re, -xs * amplitude * im, -amplitude * im], axis=2
    )
    return psi, derivatives


def outer_sum(psis: list[Array]) -> Array:
    """``sum_j psi_1j (x) ... (x) psi_dj``, the grid tensor of ``f``."""
    letters = string.ascii_lowercase[: len(psis)]
    spec = ",".join(f"{a}z" for a in letters) + "->" + letters
    return jnp.einsum(spec, *psis)


def _contract_all_but(tensor: Array, psis: list[Array], keep: int) -> Array:
    """``C[n_keep, j] = sum over the other axes of tensor * prod_{s != keep} psi_s[:, j]``."""
    if len(psis) == 1:  # nothing to contract: the same residual for every rank
        return jnp.broadcast_to(tensor[:, None], psis[0].shape)
    letters = string.ascii_lowercase[: len(psis)]
    operands, specs = [tensor], [letters]
    for s, psi in enumerate(psis):
        if s != keep:
            operands.append(psi)
            specs.append(f"{letters[s]}z")
    return jnp.einsum(",".join(specs) + f"->{letters[keep]}z", *operands)


def kronecker_sums(psis: list[Array], derivs: list[Array], residual: Array):
    """``(Phi, J^T r, J^T J)`` of ``f = sum_j psi_1j (x) ... (x) psi_dj`` on a tensor grid,
    from per-axis inner products (see the module).

    ``psis[s]``: the factors on axis ``s``, ``(n_s, R)``; ``derivs[s]``: their derivatives in
    that factor's own parameters, ``(n_s, R, 4, P)``; ``residual``: the grid tensor ``r``.
    ``J^T r`` comes back as ``(R, 4, d, P)`` and ``J^T J`` as ``(R, 4, d, P, R, 4, d, P)``,
    one parameter column per axis (a caller whose axes share parameters sums them).
    """
    dims = len(psis)
    loss = jnp.sum(residual * residual)
    # J^T r: contract r with every other axis's factors, then with this axis's derivatives.
    g = jnp.stack(
        [jnp.einsum("nj,njkp->jkp", _contract_all_but(residual, psis, i), derivs[i])
         for i in range(dims)],
        axis=2,
    )
    # J^T J from per-axis inner products.
    g_pp = jnp.stack([p.T @ p for p in psis])  # (d, R, R)
    g_dp = jnp.stack([jnp.einsum("njkp,nl->jkpl", d, p) for d, p in zip(derivs, psis)])
    g_dd = jnp.stack([jnp.einsum("njkp,nlqt->jkplqt", d, d) for d in derivs])
    ones = jnp.ones_like(g_pp[0])
    leave_one = jnp.stack(
        [_product([g_pp[s] for s in range(dims) if s != i], ones) for i in range(dims)]
    )  # (d, R, R)
    leave_two = jnp.stack([
        jnp.stack([_product([g_pp[s] for s in range(dims) if s not in (i, m)], ones)
                   for m in range(dims)])
        for i in range(dims)
    ])  # (d, d, R, R)
    eye = jnp.eye(dims, dtype=loss.dtype)
    same = jnp.einsum("ijkplqt,ijl,im->jkiplqmt", g_dd, leave_one, eye)
    cross = jnp.einsum("ijkpl,mlqtj,imjl->jkiplqmt", g_dp, g_dp, leave_two)
    cross = cross * (1 - eye)[None, None, :, None, None, None, :, None]
    return loss, g, same + cross


class GridResummation(AbstractProblem):
    """An AION problem on grid data; the layout of `AIONResummation`."""

    model: AION
    theta: Array
    axes: tuple[Array, ...]
    y: Array
    bases: tuple[Array, ...]
    num_data: int = eqx.field(static=True)

    def __init__(self, model: AION, grid: GridData):
        self.model = model
        self.theta = stack_params(model)
        self.axes = grid.axes
        self.y = grid.y
        self.num_data = grid.num_points
        shared = self.theta.shape[2] == 1 and len(grid.axes) > 1
        bases = []
        for s, axis in enumerate(grid.axes):
            col = 0 if shared else s
            xs = axis[:, None, None]  # (n, 1, 1) against (1, r, P)
            bases.append(complex_exp(
                model.alpha[None, :, col] * xs, model.omega[None, :, col] * xs
                + model.phi[None, :, col]
            ))  # exp(z(axis; Theta)), (n, r, P)
        self.bases = tuple(bases)

    @property
    def shared(self) -> bool:
        return self.theta.shape[2] == 1 and len(self.axes) > 1

    def data_finite(self) -> Array:
        finite = jnp.all(jnp.isfinite(self.y))
        for axis in self.axes:
            finite = finite & jnp.all(jnp.isfinite(axis))
        return finite

    def data_norm(self) -> Array:
        return jnp.sqrt(jnp.sum(self.y * self.y))

    def data_peak(self) -> Array:
        return jnp.max(jnp.abs(self.y))

    def _terms(self, delta):
        out = [
            _axis_terms(self.theta, delta, basis, axis, 0 if self.shared else s)
            for s, (basis, axis) in enumerate(zip(self.bases, self.axes))
        ]
        return [o[0] for o in out], [o[1] for o in out]

    def normal_equations(self, delta, *, gram=True, rank_grams=False, jac=False):
        """``Phi``, ``J^T r`` and ``J^T J`` from the Kronecker structure (see the module)."""
        del gram  # the Gram matrix is cheap here: always formed (diag and blocks come from it)
        psis, derivs = self._terms(delta)
        residual = outer_sum(psis) - self.y
        loss, g, full = kronecker_sums(psis, derivs, residual)
        if self.shared:
            g = jnp.sum(g, axis=2, keepdims=True)
            full = jnp.sum(full, axis=(2, 6), keepdims=True)
        size = self.theta.size
        full = full.reshape(size, size)
        m = self.block_size
        ranks = size // m
        blocks = full.reshape(ranks, m, ranks, m)[jnp.arange(ranks), :, jnp.arange(ranks), :]
        return NormalEquations(
            loss=loss, g=g.reshape(-1), diag=jnp.diagonal(full), gram=full,
            rank_grams=blocks if rank_grams else None,
            jac=self._expanded().residual_and_jacobian(delta)[1] if jac else None,
        )

    # -- paths that expand the grid into points -------------------------------------------------

    def _expanded(self) -> AIONResummation:
        grid = GridData(self.axes, self.y)
        expanded = AIONResummation(self.model, grid.points(), grid.values())
        # theta, not the model's: a rescaled copy (`rescaled`) differs in its amplitudes only,
        # which the basis does not depend on.
        return eqx.tree_at(lambda p: p.theta, expanded, self.theta)

    def gram_matvec(self, delta, v):
        return self._expanded().gram_matvec(delta, v)

    def geodesic_rhs(self, delta, v):
        return self._expanded().geodesic_rhs(delta, v)

    def rank_blocks(self, delta, *, residual_only=False):
        return self._expanded().rank_blocks(delta, residual_only=residual_only)

    def residuals(self, delta):
        psis, _ = self._terms(delta)
        return (outer_sum(psis) - self.y).reshape(-1)

    def residual_and_jacobian(self, delta):
        return self._expanded().residual_and_jacobian(delta)

    def stack(self, tree) -> Array:
        return stack_params(tree)

    def to_model(self, theta: Array, like):
        return unstack_params(theta, like)

    # -- units ----------------------------------------------------------------------------------

    def target_scale(self) -> Array:
        return jnp.max(jnp.abs(self.y))

    @property
    def amplitude_dims(self) -> int:
        return len(self.axes)

    def output_factors(self, c, mask, root=None):
        """Through the amplitudes, see `amplitude_factors`."""
        return amplitude_factors(self.theta, c, self.amplitude_dims, mask, root)

    def output_moments(self, delta, unit):
        psis, _ = self._terms(delta)
        f = outer_sum(psis)
        r = f - unit * self.y
        return jnp.sum(f * f), jnp.sum(f * self.y), jnp.sum(self.y * self.y), jnp.sum(r * r)

    def rescaled(self, unit, factors):
        theta = self.theta * factors.reshape(self.theta.shape)
        return eqx.tree_at(lambda p: (p.theta, p.y), self, (theta, self.y / unit))


def _product(factors, ones):
    out = ones
    for f in factors:
        out = out * f
    return out
