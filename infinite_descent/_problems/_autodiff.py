"""Any sum-of-terms model over its data, by automatic differentiation."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._models._base import AbstractSumOfTerms
from ._base import AbstractPointProblem, chunk_data


def stack_terms(tree) -> Array:
    """A pytree whose leaves share a leading term axis, as ``(terms, m)``: term ``j``'s
    parameters contiguous, its leaves flattened in tree order."""
    leaves = jax.tree.leaves(tree)
    terms = leaves[0].shape[0]
    return jnp.concatenate([jnp.reshape(leaf, (terms, -1)) for leaf in leaves], axis=1)


def unstack_terms(theta: Array, like):
    """Inverse of `stack_terms`: ``theta`` written into the parameter fields of
    ``like`` (a model or a filtered model)."""
    params, static = eqx.partition(like, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    out, start = [], 0
    for leaf in leaves:
        size = leaf[0].size
        out.append(theta[:, start:start + size].reshape(theta.shape[0], *leaf.shape[1:]))
        start += size
    return eqx.combine(jax.tree.unflatten(treedef, out), static)


class AutodiffProblem(AbstractPointProblem):
    """Any `AbstractSumOfTerms` model over its data, by autodiff: per-term Jacobians from
    ``jax.jacfwd`` of one term (``m`` tangents) vmapped over the terms. No resummation, so
    each pass evaluates the model afresh; the structure of the step is the same. Layout:
    ``(terms, m)``, see `stack_terms`."""

    model: AbstractSumOfTerms
    theta: Array
    x: Array
    y: Array
    weight: Array | None
    basis: None
    num_data: int = eqx.field(static=True)

    def __init__(self, model: AbstractSumOfTerms, x: Array, y: Array,
                 chunk_size: int | None = None, weights: Array | None = None):
        self.model = model
        self.theta = stack_terms(eqx.filter(model, eqx.is_inexact_array))
        self.num_data = x.shape[0]
        self.x, self.y, self.weight = chunk_data(x, y, chunk_size, weights)
        self.basis = None

    def _term_on_points(self, theta_j, x):
        """``g(x_k; theta_j)`` for every point of the chunk: ``(K,)``."""
        one = unstack_terms(theta_j[None], self.model)
        params, static = eqx.partition(one, eqx.is_inexact_array)
        module = eqx.combine(jax.tree.map(lambda a: a[0], params), static)
        return jax.vmap(module.term)(x)

    def terms(self, delta, x, basis):
        theta = self.theta + delta

        def one(t):
            values = self._term_on_points(t, x)
            grads = jax.jacfwd(self._term_on_points)(t, x)
            return values, grads.reshape(grads.shape[0], -1)

        values, grads = jax.vmap(one)(theta)  # (r, K), (r, K, m)
        return values.T, jnp.swapaxes(grads, 0, 1)

    def term_values(self, delta, x, basis):
        return jax.vmap(self._term_on_points, in_axes=(0, None))(self.theta + delta, x).T

    def one_term(self, theta_j, delta_j, x, basis_j):
        t = theta_j + delta_j
        grads = jax.jacfwd(self._term_on_points)(t, x)
        return self._term_on_points(t, x), grads.reshape(grads.shape[0], -1)

    def stack(self, tree) -> Array:
        return stack_terms(tree)

    def to_model(self, theta: Array, like):
        return unstack_terms(theta, like)
