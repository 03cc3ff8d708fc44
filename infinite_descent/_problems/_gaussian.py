r"""The resummation of [`GaussianAtoms`][infinite_descent.GaussianAtoms].

Shifting an atom's width and centre, ``(a, m) -> (a + da, m + dm)``, multiplies it by a factor
that depends on the data only through ``u = x - m``:

$$
e^{-(a + \delta a)(u - \delta m)^2} = e^{-a u^2}\,
e^{-\delta a (u - \delta m)^2 + a\, \delta m\, (2 u - \delta m)}.
$$

So the basis ``B = exp(-a u^2)`` and ``u`` are computed once at ``Theta``, and values,
gradient and Jacobian at ``Theta + Delta`` are exact algebraic functions of ``Delta``:
``dA: E``, ``da: -A (u - dm)^2 E``, ``dm: 2 A (a + da)(u - dm) E`` with ``E = B * shift``.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._models._gaussian import GaussianAtoms
from ._aion import AbstractSeparableResummation, separable_terms
from ._base import chunk_data, materialized


def stack_gaussian(tree) -> Array:
    return jnp.stack([tree.A, tree.a, tree.m], axis=1)


def unstack_gaussian(theta: Array, like):
    return eqx.tree_at(lambda g: (g.A, g.a, g.m), like, (theta[:, 0], theta[:, 1], theta[:, 2]))


def _gaussian_terms(theta, delta, basis, x, with_gradient=True):
    amplitude = (theta[:, 0] + delta[:, 0])[None]  # (1, r, d', P)
    width = (theta[:, 1] + delta[:, 1])[None]
    d = delta[None]
    xs = x[:, None, :, None]  # (N, 1, d, 1)

    def exponentials(delta):
        if basis is None:  # evaluated directly at Theta + Delta
            t = (theta + delta)[None]
            u = xs - t[:, :, 2]
            return jnp.exp(-t[:, :, 1] * u * u), u
        b, u0 = basis
        u = u0 - d[:, :, 2]
        shift = jnp.exp(-d[:, :, 1] * u * u + theta[None, :, 1] * d[:, :, 2] * (2 * u0 - d[:, :, 2]))
        return b * shift, u

    e, u = materialized(exponentials, delta)
    c = amplitude * e
    psi = jnp.sum(c, axis=-1)
    if not with_gradient:
        return jnp.prod(psi, axis=-1)
    derivatives = [e, -c * u * u, 2 * c * width * u]
    return separable_terms(psi, derivatives, theta.shape[-2] == 1)


class GaussianResummation(AbstractSeparableResummation):
    """A `GaussianAtoms` problem over its data, through its resummation; layout
    ``(rank, 3, d', P)`` (``A, a, m``)."""

    theta: Array
    x: Array
    y: Array
    weight: Array | None
    basis: tuple[Array, Array] | None
    num_data: int = eqx.field(static=True)

    def __init__(self, model: GaussianAtoms, x: Array, y: Array, chunk_size: int | None = None,
                 weights: Array | None = None):
        self.theta = stack_gaussian(model)
        self.num_data = x.shape[0]
        self.x, self.y, self.weight = chunk_data(x, y, chunk_size, weights)
        self.basis = None
        if not self.chunked:
            u = x[:, None, :, None] - model.m[None]  # (N, r, d, P)
            self.basis = (jnp.exp(-model.a[None] * u * u), u)

    def terms(self, delta, x, basis):
        values, grads = _gaussian_terms(self.theta, delta, basis, x)
        return values, grads.reshape(*grads.shape[:2], -1)

    def term_values(self, delta, x, basis):
        return _gaussian_terms(self.theta, delta, basis, x, with_gradient=False)

    def one_term(self, theta_j, delta_j, x, basis_j):
        t, g = _gaussian_terms(theta_j[None], delta_j[None], None, x)
        return t[:, 0], g.reshape(g.shape[0], -1)

    def stack(self, tree) -> Array:
        return stack_gaussian(tree)

    def to_model(self, theta: Array, like):
        return unstack_gaussian(theta, like)
