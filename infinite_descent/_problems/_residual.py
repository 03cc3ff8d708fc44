"""Any residual function over any pytree of parameters, by automatic differentiation."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool

from ._base import AbstractResidualProblem, leafwise_residual_jacobian, residual_jacobian

# Forward mode one leaf at a time from two leaves up to this many (each re-runs the primal).
MAX_LEAFWISE_LEAVES = 16


class ResidualProblem(AbstractResidualProblem):
    """``Phi(theta) = |r(theta)|^2`` for a residual function ``r = fn(params, args)`` that
    returns a pytree of arrays of any shapes, over a pytree of parameters.

    Layout: the parameters raveled (``jax.flatten_util.ravel_pytree``) into one block of size
    ``M`` (a general residual has no term structure, so the structured Hessian is one dense
    block). The Jacobian ``N x M`` is formed by forward-mode autodiff when ``M <= N`` (``M``
    tangents) and by reverse mode otherwise (``N`` cotangents); in forward mode with 2 to
    `MAX_LEAFWISE_LEAVES` parameter leaves, one leaf at a time (`leafwise_residual_jacobian`:
    a leaf's tangents then skip what comes before it, a network's earlier layers). Products
    with ``J^T J`` and the geodesic right-hand side are JVPs and VJPs.
    """

    theta: Array
    fn: Callable = eqx.field(static=True)
    args: object
    unravel: Callable = eqx.field(static=True)
    num_data: int = eqx.field(static=True)

    def __init__(self, fn: Callable, params, args, num_data: int):
        flat, unravel = ravel_pytree(params)
        self.theta = flat[None]
        self.fn = fn
        self.args = args
        self.unravel = unravel
        self.num_data = num_data

    def residuals(self, delta: Array) -> Array:
        """The residuals at ``theta + delta``, raveled to ``(N,)``."""
        params = self.unravel(self.theta.reshape(-1) + delta.reshape(-1))
        return ravel_pytree(self.fn(params, self.args))[0]

    def residual_and_jacobian(self, delta: Array) -> tuple[Array, Array]:
        """``(r, J)`` at ``theta + delta``, forward or reverse mode by the shapes."""
        flat = self.theta.reshape(-1) + delta.reshape(-1)
        leaves, treedef = jax.tree.flatten(self.unravel(flat))
        sized = sum(1 for leaf in leaves if leaf.size)
        if flat.shape[0] > self.num_data or not 1 < sized <= MAX_LEAFWISE_LEAVES:
            return residual_jacobian(self.residuals, delta, self.num_data)

        def of_leaves(leaves):
            return ravel_pytree(self.fn(jax.tree.unflatten(treedef, leaves), self.args))[0]

        return leafwise_residual_jacobian(of_leaves, leaves, flat)

    def data_finite(self) -> Bool[Array, ""]:
        leaves = [a for a in jax.tree.leaves(self.args) if eqx.is_inexact_array(a)]
        ok = jnp.asarray(True)
        for a in leaves:
            ok = ok & jnp.all(jnp.isfinite(a))
        return ok

    def data_norm(self) -> Array:
        return jnp.zeros((), self.theta.dtype)

    def rebased(self, theta: Array) -> ResidualProblem:
        return eqx.tree_at(lambda p: p.theta, self, theta)

    def stack(self, tree) -> Array:
        return ravel_pytree(tree)[0][None]

    def to_model(self, theta: Array, like):
        del like
        return self.unravel(theta.reshape(-1))
