r"""Variable projection for AION: the first dimension's amplitudes and phases eliminated.

In an AION rank ``T_j(x) = psi_j1(x_1) prod_{i>1} psi_ji(x_i)`` the first factor is linear in
the pairs ``(a, b) = (A cos phi, A sin phi)`` of its atoms,
``A e^{alpha x} cos(omega x + phi) = e^{alpha x} (a cos(omega x) - b sin(omega x))``, so for
fixed other ("nonlinear") parameters ``theta`` the best ``2 r P`` coefficients are a linear
least-squares solution. Variable projection (Golub & Pereyra) minimises the projected residual

$$
r(\theta) = B(\theta)\, c^*(\theta) - y, \qquad c^* = \arg\min_c \|B c - y\|,
$$

over ``theta`` alone: ``B`` is ``N x 2 r P``, ``c*`` comes from a QR factorisation, and the
Jacobian of ``r`` is the exact one (Golub and Pereyra's formula), not Kaufman's
approximation. `ProjectedAION` offers the sums the SNR loop needs, so
[`solve`][infinite_descent.solve] runs on it unchanged (``variable_projection=True``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._models._aion import AION
from ._base import (
    AbstractProblem,
    NormalEquations,
    residual_geodesic_rhs,
    residual_gram_matvec,
)


class ProjectedAION(AbstractProblem):
    """The projected least-squares problem of an AION over its data (no chunks).

    ``theta`` holds the nonlinear parameters by rank, shape ``(r, m)``: for rank ``j``,
    ``alpha`` and ``omega`` of its atoms in every dimension, then ``A`` and ``phi`` of its atoms
    in the dimensions after the first (``m = 2 d P + 2 (d - 1) P``). A rank's parameters move
    only that rank's ``2 P`` columns of the basis.
    """

    theta: Array
    model: AION
    x: Array
    y: Array
    num_data: int = eqx.field(static=True)

    def __init__(self, model: AION, x: Array, y: Array):
        self.model = model
        self.x = x
        self.y = y
        self.num_data = x.shape[0]
        rank = model.rank
        self.theta = jnp.concatenate([
            model.alpha.reshape(rank, -1), model.omega.reshape(rank, -1),
            model.A[:, 1:].reshape(rank, -1), model.phi[:, 1:].reshape(rank, -1),
        ], axis=1)

    def data_finite(self) -> Array:
        return jnp.all(jnp.isfinite(self.x)) & jnp.all(jnp.isfinite(self.y))

    def data_norm(self) -> Array:
        return jnp.sqrt(self.y @ self.y)

    def data_peak(self) -> Array:
        return jnp.max(jnp.abs(self.y))

    # -- the projection -----------------------------------------------------------------------

    def _split(self, theta_j: Array) -> dict:
        """One rank's nonlinear parameters by name, each ``(dim, P)`` or ``(dim - 1, P)``."""
        d, P = self.model.dim, self.model.terms
        full, rest = d * P, (d - 1) * P
        return {
            "alpha": theta_j[:full].reshape(d, P),
            "omega": theta_j[full:2 * full].reshape(d, P),
            "A": theta_j[2 * full:2 * full + rest].reshape(d - 1, P),
            "phi": theta_j[2 * full + rest:].reshape(d - 1, P),
        }

    def _rank_columns(self, theta_j: Array) -> Array:
        """Rank ``j``'s ``2 P`` basis columns, ``(N, 2 P)``: per term the cosine and the sine
        column of its first-dimension atom, times the rest of the rank."""
        return self._rank_columns_and_jacobian(theta_j)[0]

    def _rank_columns_and_jacobian(self, theta_j: Array) -> tuple[Array, Array]:
        """Rank ``j``'s columns ``(N, 2 P)`` and their Jacobian ``(N, 2 P, m)`` in closed form.

        A column is ``u(x_1) R(x)`` with ``u`` the first-dimension factor and
        ``R = prod_{i>1} psi_i`` the rest of the rank. ``u`` depends on ``(alpha, omega)`` of
        the first dimension only; a parameter of dimension ``i > 1`` moves every column by
        ``u R_{-i} dpsi_i``, with ``R_{-i}`` the product of the other atoms (prefix and suffix
        products, no division). Written out rather than left to ``jax.jacfwd``, which pushes
        all ``m`` tangents through every atom: with it, one residual-and-Jacobian evaluation
        took several times longer (measured; the figures are in the design notes). Tested
        against autodiff through the QR.
        """
        p = self._split(theta_j)
        num, dim, terms = self.x.shape[0], self.model.dim, self.model.terms
        x0 = self.x[:, :1]  # (N, 1)
        growth = jnp.exp(p["alpha"][:1] * x0)  # (N, P)
        u_cos = growth * jnp.cos(p["omega"][:1] * x0)
        u_sin = -growth * jnp.sin(p["omega"][:1] * x0)
        if dim > 1:
            xs = self.x[:, 1:, None]  # (N, d - 1, 1)
            scaled = p["A"][None] * jnp.exp(p["alpha"][None, 1:] * xs)  # (N, d - 1, P)
            angle = p["omega"][None, 1:] * xs + p["phi"][None]
            cos, sin = jnp.cos(angle), jnp.sin(angle)
            psi = jnp.sum(scaled * cos, axis=-1)  # (N, d - 1)
            ones = jnp.ones((num, 1), psi.dtype)
            before = jnp.cumprod(jnp.concatenate([ones, psi[:, :-1]], axis=1), axis=1)
            after = jnp.cumprod(jnp.concatenate([ones, psi[:, :0:-1]], axis=1), axis=1)[:, ::-1]
            others = (before * after)[..., None]  # R_{-i}, (N, d - 1, 1)
            rest = before[:, -1:] * psi[:, -1:]  # R, (N, 1)
            # dR for each parameter of dimensions 2..d, by name, each (N, (d - 1) P).
            d_rest = {
                "alpha": others * xs * scaled * cos,
                "omega": -others * xs * scaled * sin,
                "A": others * jnp.exp(p["alpha"][None, 1:] * xs) * cos,
                "phi": -others * scaled * sin,
            }
            d_rest = {k: v.reshape(num, 1, -1) for k, v in d_rest.items()}
        else:
            rest = jnp.ones((num, 1), x0.dtype)
            d_rest = {k: jnp.zeros((num, 1, 0), x0.dtype) for k in ("alpha", "omega", "A", "phi")}
        u = jnp.concatenate([u_cos, u_sin], axis=1)  # (N, 2 P)
        columns = u * rest
        c_cos, c_sin = u_cos * rest, u_sin * rest
        eye = jnp.eye(terms, dtype=x0.dtype)[None]
        # First-dimension (alpha, omega) of term p move only that term's two columns.
        d_alpha0 = jnp.concatenate([(x0 * c_cos)[:, :, None] * eye,
                                    (x0 * c_sin)[:, :, None] * eye], axis=1)  # (N, 2P, P)
        d_omega0 = jnp.concatenate([(x0 * c_sin)[:, :, None] * eye,
                                    (-x0 * c_cos)[:, :, None] * eye], axis=1)
        moved = {k: u[:, :, None] * v for k, v in d_rest.items()}  # (N, 2P, (d - 1) P)
        jacobian = jnp.concatenate([d_alpha0, moved["alpha"], d_omega0, moved["omega"],
                                    moved["A"], moved["phi"]], axis=2)
        return columns, jacobian

    def basis(self, theta: Array) -> Array:
        """``B(theta)``, shape ``(N, 2 r P)``, rank by rank."""
        columns = jax.vmap(self._rank_columns)(theta.reshape(self.theta.shape))  # (r, N, 2P)
        return jnp.moveaxis(columns, 0, 1).reshape(self.x.shape[0], -1)

    def coefficients(self, theta: Array) -> Array:
        """``c*(theta)``: least squares through a QR factorisation (differentiable; an SVD's
        derivative is undefined at repeated singular values)."""
        q, r = jnp.linalg.qr(self.basis(theta))
        return jax.scipy.linalg.solve_triangular(r, q.T @ self.y)

    def residuals(self, delta: Array) -> Array:
        theta = self.theta + delta.reshape(self.theta.shape)
        return self.basis(theta) @ self.coefficients(theta) - self.y

    def residual_and_jacobian(self, delta: Array) -> tuple[Array, Array]:
        """``r`` and its exact Jacobian ``(N, r m)`` by Golub and Pereyra's formula,
        ``dr_k = P (dB_k c*) - Q R^-T (dB_k^T r)`` with ``B = Q R`` and ``P = I - Q Q^T``, from
        one QR factorisation and each rank's derivatives of its own columns (in closed form,
        vmapped over ranks: the basis' Jacobian is block-sparse, a rank's parameters moving
        only its columns)."""
        theta = self.theta + delta.reshape(self.theta.shape)
        ranks, m = theta.shape
        columns, dcolumns = jax.vmap(self._rank_columns_and_jacobian)(theta)
        # (r, N, 2P), (r, N, 2P, m)
        B = jnp.moveaxis(columns, 0, 1).reshape(self.x.shape[0], -1)
        q, R = jnp.linalg.qr(B)
        c = jax.scipy.linalg.solve_triangular(R, q.T @ self.y)
        r = B @ c - self.y
        dBc = jnp.einsum("jnka,jk->nja", dcolumns, c.reshape(ranks, -1)).reshape(r.shape[0], -1)
        projected = dBc - q @ (q.T @ dBc)
        # dB^T r is block-diagonal: rank j's columns against rank j's parameters.
        w = jnp.einsum("jnka,n->jka", dcolumns, r)  # (r, 2P, m)
        idx = jnp.arange(ranks)
        w_full = jnp.zeros((ranks, w.shape[1], ranks, m), w.dtype).at[idx, :, idx, :].set(w)
        w_full = w_full.reshape(ranks * w.shape[1], ranks * m)
        J = projected - q @ jax.scipy.linalg.solve_triangular(R, w_full, trans="T")
        return r, J

    def normal_equations(self, delta: Array, *, gram: bool = True, rank_grams: bool = False,
                         jac: bool = False) -> NormalEquations:
        r, J = self.residual_and_jacobian(delta)
        G = J.T @ J if (gram or rank_grams) else None
        blocks = None
        if rank_grams:
            ranks, m = self.theta.shape
            blocks = G.reshape(ranks, m, ranks, m)[jnp.arange(ranks), :, jnp.arange(ranks), :]
        return NormalEquations(
            loss=r @ r, g=r @ J, diag=jnp.sum(J * J, axis=0), gram=G if gram else None,
            rank_grams=blocks, jac=J if jac else None,
        )

    def gram_matvec(self, delta: Array, v: Array) -> Array:
        return residual_gram_matvec(self.residuals, delta, v)

    def geodesic_rhs(self, delta: Array, v: Array) -> Array:
        return residual_geodesic_rhs(self.residuals, delta, v)

    def rank_blocks(self, delta: Array, *, residual_only: bool = False) -> Array:
        raise NotImplementedError("variable projection uses the Gauss-Newton Hessian only")

    def stack(self, tree) -> Array:
        raise NotImplementedError(
            "variable projection eliminates some parameters; it takes no per-parameter mask"
        )

    def to_model(self, theta: Array, like: AION) -> AION:
        """The full AION at nonlinear parameters ``theta``, with its optimal coefficients,
        each rank's amplitude scale shared out evenly over its dimensions.

        The projected residual does not change when a later dimension's amplitudes are
        scaled (the first dimension's coefficients absorb it), so the loop drifts along that
        gauge: in 8 dimensions, first-dimension amplitudes many orders of magnitude below the
        others (measured; the figures are in the design notes). Such a model is exact but
        fragile: ``start + (solved - start)``, what an optax update applies, lost its first
        amplitudes to rounding (``Phi / sum y^2`` rose by many orders of magnitude).
        Rebalancing changes no value of the model beyond rounding.
        """
        theta = theta.reshape(self.theta.shape)
        p = jax.vmap(self._split)(theta)  # each (r, d or d - 1, P)
        c = self.coefficients(theta).reshape(like.rank, 2, like.terms)
        a, b = c[:, 0], c[:, 1]
        A = like.A.at[:, 1:].set(p["A"]).at[:, 0].set(jnp.hypot(a, b))
        scale = jnp.max(jnp.abs(A), axis=-1)  # (r, d)
        alive = jnp.all(scale > 0, axis=-1, keepdims=True)  # a zero rank is left alone
        log_scale = jnp.log(jnp.where(alive, scale, 1.0))
        factor = jnp.exp(jnp.mean(log_scale, axis=-1, keepdims=True) - log_scale)
        A = A * jnp.where(alive, factor, 1.0)[..., None]
        phi = like.phi.at[:, 1:].set(p["phi"]).at[:, 0].set(jnp.arctan2(b, a))
        return eqx.tree_at(lambda m: (m.A, m.alpha, m.omega, m.phi), like,
                           (A, p["alpha"], p["omega"], phi))
