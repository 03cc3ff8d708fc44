"""A sum of models over its data: every part through its own problem."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._base import AbstractPointProblem, chunk_data


class SumProblem(AbstractPointProblem):
    """``r = sum_k f_k(x) - y`` for a `ModelSum`: each part's values and Jacobian columns
    from that part's own problem (``parts``, built on the same points: a resummation where
    the part has one), concatenated.

    Layout: one block, ``(1, M)``, the parts' flat layouts one after another. The parts have
    blocks of different sizes, so the step couples everything through one dense system (the
    models this is for have tens of parameters, where that is the cheap choice).
    """

    parts: tuple[AbstractPointProblem, ...]
    theta: Array
    x: Array
    y: Array
    weight: Array | None
    basis: tuple | None
    num_data: int = eqx.field(static=True)

    def __init__(self, parts: tuple[AbstractPointProblem, ...], x: Array, y: Array,
                 chunk_size: int | None = None, weights: Array | None = None):
        """``parts``: each part's problem on the same points (targets zero, unweighted)."""
        self.parts = tuple(parts)
        self.theta = jnp.concatenate([p.theta.reshape(-1) for p in self.parts])[None]
        self.num_data = x.shape[0]
        self.x, self.y, self.weight = chunk_data(x, y, chunk_size, weights)
        self.basis = None if self.chunked else tuple(p.basis for p in self.parts)

    def _split(self, flat: Array) -> list[Array]:
        """A flat vector of this layout as the parts' shifts, each in its part's shape."""
        out, start = [], 0
        for part in self.parts:
            size = math.prod(part.theta.shape)
            out.append(flat[start:start + size].reshape(part.theta.shape))
            start += size
        return out

    def _bases(self, basis):
        return (None,) * len(self.parts) if basis is None else basis

    def terms(self, delta, x, basis):
        values, columns = 0.0, []
        for part, d, b in zip(self.parts, self._split(delta.reshape(-1)), self._bases(basis)):
            v, g = part.terms(d, x, b)
            values = values + jnp.sum(v, axis=1)
            columns.append(g.reshape(g.shape[0], -1))
        return values[:, None], jnp.concatenate(columns, axis=1)[:, None, :]

    def term_values(self, delta, x, basis):
        values = 0.0
        for part, d, b in zip(self.parts, self._split(delta.reshape(-1)), self._bases(basis)):
            values = values + jnp.sum(part.term_values(d, x, b), axis=1)
        return values[:, None]

    def one_term(self, theta_j, delta_j, x, basis_j):
        values, grads = self.terms(delta_j[None], x, basis_j)
        return values[:, 0], grads[:, 0]

    def rank_blocks(self, delta: Array, *, residual_only: bool = False) -> Array:
        """The one block: the Hessian of ``Phi`` (or its residual-weighted part) by
        ``jax.hessian`` of each chunk's residuals, summed over the data."""
        flat = delta.reshape(-1)

        def fn(x, y, w, basis):
            def residuals(d):
                return self._chunk_residuals(d.reshape(self.theta.shape), x, y, w, basis)

            r = jax.lax.stop_gradient(residuals(flat))

            def weighted(d):
                value = residuals(d)
                return r @ value if residual_only else 0.5 * value @ value

            return 2 * jax.hessian(weighted)(flat)

        return self._sum_over_data(fn)[None]

    def stack(self, tree) -> Array:
        return jnp.concatenate(
            [p.stack(t).reshape(-1) for p, t in zip(self.parts, tree.parts)])[None]

    def to_model(self, theta: Array, like):
        parts = tuple(p.to_model(t, part) for p, t, part in
                      zip(self.parts, self._split(theta.reshape(-1)), like.parts))
        return eqx.tree_at(lambda m: m.parts, like, parts)
