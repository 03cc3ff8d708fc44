"""The generic sum-of-terms problem (autodiff) and how any model's parameters are laid out."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._gaussian import GaussianResummation, stack_gaussian, unstack_gaussian
from ._grid import GridData, GridResummation
from ._models._aion import AION
from ._models._gaussian import GaussianAtoms
from ._models._protocol import SumOfTerms
from ._resummation import AIONResummation, DataProblem, chunk_data, stack_params, unstack_params


def stack_tree(model: SumOfTerms, tree) -> Array:
    """A pytree shaped like ``eqx.filter(model, eqx.is_inexact_array)`` in the solver's layout:
    ``(terms, ...)`` with term ``j``'s parameters contiguous. AION keeps its
    ``(rank, 4, d', P)`` layout; any other model concatenates its flattened leaves per term."""
    if isinstance(model, AION):
        return stack_params(tree)
    if isinstance(model, GaussianAtoms):
        return stack_gaussian(tree)
    leaves = jax.tree.leaves(tree)
    terms = leaves[0].shape[0]
    return jnp.concatenate([jnp.reshape(leaf, (terms, -1)) for leaf in leaves], axis=1)


def unstack_tree(model: SumOfTerms, theta: Array):
    """Inverse of :func:`stack_tree`: ``theta`` written into the model's parameter fields."""
    if isinstance(model, AION):
        return unstack_params(theta, model)
    if isinstance(model, GaussianAtoms):
        return unstack_gaussian(theta, model)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    out, start = [], 0
    for leaf in leaves:
        size = leaf[0].size
        out.append(theta[:, start:start + size].reshape(theta.shape[0], *leaf.shape[1:]))
        start += size
    return eqx.combine(jax.tree.unflatten(treedef, out), static)


class TermsProblem(DataProblem):
    """Any :class:`SumOfTerms` over its data, by autodiff: per-term Jacobians from
    ``jax.jacfwd`` of one term (``m`` tangents) vmapped over the terms. No resummation, so
    each pass evaluates the model afresh; the structure of the step is the same."""

    model: SumOfTerms

    def __init__(self, model: SumOfTerms, x: Array, y: Array, chunk_size: int | None = None):
        self.model = model
        self.theta = stack_tree(model, eqx.filter(model, eqx.is_inexact_array))
        self.num_data = x.shape[0]
        self.x, self.y, self.weight = chunk_data(x, y, chunk_size)

    def _term_on_points(self, theta_j, x):
        """``g(x_k; theta_j)`` for every point of the chunk: ``(K,)``."""
        one = unstack_tree(self.model, theta_j[None])
        params, static = eqx.partition(one, eqx.is_inexact_array)
        module = eqx.combine(jax.tree.map(lambda a: a[0], params), static)
        return jax.vmap(module.term)(x)

    def _terms(self, delta, x, basis):
        theta = self.theta + delta

        def one(t):
            values = self._term_on_points(t, x)
            grads = jax.jacfwd(self._term_on_points)(t, x)
            return values, grads.reshape(grads.shape[0], -1)

        values, grads = jax.vmap(one)(theta)  # (r, K), (r, K, m)
        return values.T, jnp.swapaxes(grads, 0, 1)

    def _term_values(self, delta, x, basis):
        return jax.vmap(self._term_on_points, in_axes=(0, None))(self.theta + delta, x).T

    def _one_term(self, theta_j, delta_j, x, basis_j):
        t = theta_j + delta_j
        grads = jax.jacfwd(self._term_on_points)(t, x)
        return self._term_on_points(t, x), grads.reshape(grads.shape[0], -1)

    def to_model(self, theta: Array, like):
        return unstack_tree(like, theta)


def make_problem(model: SumOfTerms, x, y, chunk_size: int | None = None) -> DataProblem:
    """The fastest problem class for ``model``: a resummation where the model has one (AION,
    GaussianAtoms; AION on a grid uses its Kronecker structure), autodiff otherwise."""
    if isinstance(x, GridData):
        if isinstance(model, AION):
            return GridResummation(model, x)
        x, y = x.points(), x.values()
    if isinstance(model, AION):
        return AIONResummation(model, x, y, chunk_size=chunk_size)
    if isinstance(model, GaussianAtoms):
        return GaussianResummation(model, x, y, chunk_size=chunk_size)
    return TermsProblem(model, x, y, chunk_size=chunk_size)
