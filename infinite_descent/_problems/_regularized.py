"""An L2 regulariser on the parameters, as extra residuals ``sqrt(lambda) theta``."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool

from ._base import AbstractProblem, NormalEquations


class RegularizedProblem(AbstractProblem):
    """``Phi(theta) + lambda |theta|^2`` for any problem: the residuals gain ``sqrt(lambda)
    theta`` (linear, so no second derivative), ``J^T J`` gains ``lambda I``. Every sum of the
    interface is the inner problem's plus that term, in closed form; ``J`` gains ``M`` rows.
    """

    inner: AbstractProblem
    regularization: Array
    theta: Array
    num_data: int = eqx.field(static=True)

    def __init__(self, inner: AbstractProblem, regularization: Array):
        self.inner = inner
        self.regularization = regularization
        self.theta = inner.theta
        self.num_data = inner.num_data + inner.num_params

    def _point(self, delta: Array) -> Array:
        return (self.inner.theta + delta.reshape(self.inner.theta.shape)).reshape(-1)

    def data_finite(self) -> Bool[Array, ""]:
        return self.inner.data_finite()

    def data_norm(self) -> Array:
        return self.inner.data_norm()

    def data_peak(self) -> Array:
        return self.inner.data_peak()

    def normal_equations(
        self, delta: Array, *, gram: bool = True, rank_grams: bool = False, jac: bool = False
    ) -> NormalEquations:
        eq = self.inner.normal_equations(delta, gram=gram, rank_grams=rank_grams, jac=jac)
        lam = self.regularization
        point = self._point(delta)
        m = self.inner.block_size
        return NormalEquations(
            loss=eq.loss + lam * (point @ point),
            g=eq.g + lam * point,
            diag=eq.diag + lam,
            gram=None if eq.gram is None else eq.gram + lam * jnp.eye(point.shape[0],
                                                                      dtype=point.dtype),
            rank_grams=None if eq.rank_grams is None else (
                eq.rank_grams + lam * jnp.eye(m, dtype=point.dtype)[None]
            ),
            jac=None if eq.jac is None else jnp.concatenate(
                [eq.jac, jnp.sqrt(lam) * jnp.eye(point.shape[0], dtype=point.dtype)]
            ),
        )

    def gram_matvec(self, delta: Array, v: Array) -> Array:
        return self.inner.gram_matvec(delta, v) + self.regularization * v.reshape(-1)

    def geodesic_rhs(self, delta: Array, v: Array) -> Array:
        return self.inner.geodesic_rhs(delta, v)  # the added residuals are linear

    def rank_blocks(self, delta: Array, *, residual_only: bool = False) -> Array:
        blocks = self.inner.rank_blocks(delta, residual_only=residual_only)
        if residual_only:
            return blocks
        return blocks + 2 * self.regularization * jnp.eye(blocks.shape[-1],
                                                          dtype=blocks.dtype)[None]

    def rebased(self, theta: Array) -> AbstractProblem | None:
        inner = self.inner.rebased(theta)
        if inner is None:
            return None
        return eqx.tree_at(lambda p: (p.inner, p.theta), self, (inner, theta))

    def stack(self, tree) -> Array:
        return self.inner.stack(tree)

    def to_model(self, theta: Array, like):
        return self.inner.to_model(theta, like)


def regularized(problem: AbstractProblem, regularization) -> AbstractProblem:
    """``problem`` with ``lambda |theta|^2`` added, or as it is when ``regularization`` is
    ``None``."""
    if regularization is None:
        return problem
    return RegularizedProblem(problem, jnp.asarray(regularization, problem.theta.dtype))

