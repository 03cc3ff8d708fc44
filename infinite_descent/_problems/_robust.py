r"""Robust losses: ``Phi = sum_i C^2 rho(r_i^2 / C^2)`` instead of ``sum_i r_i^2``.

The losses and their meaning are scipy's (``scipy.optimize.least_squares(loss=...)``), so the
minimiser is the same: with ``z = r^2 / C^2``

- ``"linear"``: ``rho(z) = z`` (ordinary least squares);
- ``"soft_l1"``: ``rho(z) = 2 (sqrt(1 + z) - 1)``;
- ``"huber"``: ``rho(z) = z`` for ``z <= 1``, else ``2 sqrt(z) - 1``;
- ``"cauchy"``: ``rho(z) = log(1 + z)``;
- ``"arctan"``: ``rho(z) = arctan(z)``.

Each iteration rescales the residuals and the Jacobian at the current point (Triggs et al.'s
correction, as scipy does): with ``s = sqrt(rho'(z) + 2 z rho''(z))`` (floored at a small
positive value), ``r~ = rho'(z) r / s`` and ``J~ = s J``. Then ``J~^T r~ = rho'(z) J^T r`` is
half the gradient of ``Phi``, and ``J~^T J~`` its Gauss-Newton matrix; the loop runs
unchanged on those sums, with ``Phi`` itself for acceptance.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool

from ._base import AbstractProblem, NormalEquations

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")


def rho(loss: str, z: Array) -> tuple[Array, Array, Array]:
    """``(rho(z), rho'(z), rho''(z))`` of a named loss."""
    if loss == "linear":
        return z, jnp.ones_like(z), jnp.zeros_like(z)
    if loss == "soft_l1":
        t = 1 + z
        return 2 * (jnp.sqrt(t) - 1), t**-0.5, -0.5 * t**-1.5
    if loss == "huber":
        inside = z <= 1
        root = jnp.sqrt(jnp.where(inside, 1.0, z))
        return (jnp.where(inside, z, 2 * root - 1), jnp.where(inside, 1.0, 1 / root),
                jnp.where(inside, 0.0, -0.5 / (root * root * root)))
    if loss == "cauchy":
        t = 1 + z
        return jnp.log1p(z), 1 / t, -1 / (t * t)
    if loss == "arctan":
        t = 1 + z * z
        return jnp.arctan(z), 1 / t, -2 * z / (t * t)
    raise ValueError(f"unknown loss {loss!r}")


def rescale_for_loss(r: Array, J: Array, loss: str, f_scale: Array):
    """``(Phi, r~, J~)``: the robust ``Phi`` and the rescaled residuals and Jacobian (see the
    module notes)."""
    c2 = f_scale * f_scale
    value, first, second = rho(loss, r * r / c2)
    scale = first + 2 * (r * r / c2) * second
    scale = jnp.sqrt(jnp.maximum(scale, jnp.finfo(r.dtype).eps))
    return c2 * jnp.sum(value), first * r / scale, J * scale[:, None]


class RobustProblem(AbstractProblem):
    """``inner`` (unchunked: it must give its residuals and Jacobian) under a robust loss.

    The rescaled sums need the residuals point by point, so the Jacobian is formed at every
    evaluation (also for products with ``J^T J``); the second-order paths (geodesic
    acceleration, the exact Hessian) are not offered.
    """

    inner: AbstractProblem
    loss: str = eqx.field(static=True)
    f_scale: Array
    theta: Array
    num_data: int = eqx.field(static=True)

    def __init__(self, inner: AbstractProblem, loss: str, f_scale: Array):
        self.inner = inner
        self.loss = loss
        self.f_scale = f_scale
        self.theta = inner.theta
        self.num_data = inner.num_data

    def _rescaled(self, delta: Array):
        r, J = self.inner.residual_and_jacobian(delta)
        return (*rescale_for_loss(r, J, self.loss, self.f_scale), J)

    def data_finite(self) -> Bool[Array, ""]:
        return self.inner.data_finite()

    def data_norm(self) -> Array:
        return self.inner.data_norm()

    def data_peak(self) -> Array:
        return self.inner.data_peak()

    def normal_equations(
        self, delta: Array, *, gram: bool = True, rank_grams: bool = False, jac: bool = False
    ) -> NormalEquations:
        loss, r, J, unscaled = self._rescaled(delta)
        G = J.T @ J if (gram or rank_grams) else None
        blocks = None
        if rank_grams:
            m = self.inner.block_size
            idx = jnp.arange(G.shape[0] // m)
            blocks = G.reshape(-1, m, G.shape[0] // m, m)[idx, :, idx, :]
        # The damping's scaling comes from the Jacobian before rescaling: where the loss
        # flattens (outliers, far starts) the rescaled columns can be near zero, and a damping
        # relative to them would not hold the step back.
        return NormalEquations(loss=loss, g=r @ J, diag=jnp.sum(unscaled * unscaled, axis=0),
                               gram=G if gram else None, rank_grams=blocks,
                               jac=J if jac else None)

    def gram_matvec(self, delta: Array, v: Array) -> Array:
        J = self._rescaled(delta)[2]
        return J.T @ (J @ v.reshape(-1))

    def geodesic_rhs(self, delta: Array, v: Array) -> Array:
        raise NotImplementedError("geodesic acceleration is not offered with a robust loss")

    def rank_blocks(self, delta: Array, *, residual_only: bool = False) -> Array:
        raise NotImplementedError("the exact Hessian is not offered with a robust loss")

    def residual_and_jacobian(self, delta: Array) -> tuple[Array, Array]:
        return self.inner.residual_and_jacobian(delta)

    def rebased(self, theta: Array) -> AbstractProblem | None:
        inner = self.inner.rebased(theta)
        if inner is None:
            return None
        return eqx.tree_at(lambda p: (p.inner, p.theta), self, (inner, theta))

    def stack(self, tree) -> Array:
        return self.inner.stack(tree)

    def to_model(self, theta: Array, like):
        return self.inner.to_model(theta, like)


def robust(problem: AbstractProblem, loss: str, f_scale) -> AbstractProblem:
    """``problem`` under ``loss`` (as it is for ``"linear"``)."""
    if loss == "linear":
        return problem
    return RobustProblem(problem, loss, jnp.asarray(f_scale, problem.theta.dtype))

