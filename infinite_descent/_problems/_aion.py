r"""The resummed residual ``F(Delta) = grad Phi(Theta + Delta)`` of an AION model.

Shifting an atom's parameters by ``Delta`` multiplies its complex term by a factor that does
not depend on ``Theta``:

$$
(A + \delta A)\, e^{z(x; \Theta)}\, e^{(\delta\alpha + i \delta\omega) x + i \delta\varphi}.
$$

So the basis ``B = exp(z(x_n; Theta))`` is computed once at ``Theta`` and every quantity at
``Theta + Delta`` (values, gradient, Jacobian) is an exact algebraic function of ``Delta``:
polynomial prefactors (``1, x, i x, i`` times the shifted amplitude) times ``B`` times the
diagonal shift ``D(Delta) = exp(<a, Delta>)``. Products over the other dimensions are
leave-one-out products built from prefix and suffix products (no division).

Internally the parameters are stacked rank-major as ``theta[j] = (A, alpha, omega, phi)[j]``,
an array of shape ``(rank, 4, d', P)``; rank ``j`` owns the contiguous slice
``[j m, (j + 1) m)`` of the flat vector, ``m = 4 d' P``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float, Shaped

from .._models._aion import AION, atom_exponentials, complex_exp, leave_one_out_products
from ._base import AbstractPointProblem, chunk_data, materialized


def stack_params(tree) -> Shaped[Array, "rank 4 dims terms"]:
    """``(A, alpha, omega, phi)`` of an AION-shaped pytree, stacked to ``(rank, 4, d', P)``."""
    return jnp.stack([tree.A, tree.alpha, tree.omega, tree.phi], axis=1)


def unstack_params(theta: Array, like):
    """Inverse of `stack_params`: write ``theta`` into the AION-shaped pytree ``like``."""
    return eqx.tree_at(
        lambda m: (m.A, m.alpha, m.omega, m.phi),
        like,
        (theta[:, 0], theta[:, 1], theta[:, 2], theta[:, 3]),
    )


def _shifted_terms(theta, delta, basis, x):
    """Real and imaginary parts of ``exp(z(x; Theta + Delta))`` and the atoms ``psi``.

    With ``basis = exp(z(x; Theta))`` given, the shift ``exp(<a, Delta>)`` carries it to
    ``Theta + Delta`` (the resummation). With ``basis=None`` the exponentials are evaluated at
    ``Theta + Delta`` directly, the same numbers without storing an ``N``-sized basis (used
    when the data are processed in chunks).
    """
    amplitude = (theta[:, 0] + delta[:, 0])[None]  # (1, r, d', P)
    xs = x[:, None, :, None]  # (N, 1, d, 1)

    def exponentials(delta):
        if basis is None:
            t = (theta + delta)[None]
            e = complex_exp(t[:, :, 1] * xs, t[:, :, 2] * xs + t[:, :, 3])
        else:
            d = delta[None]
            shift = complex_exp(d[:, :, 1] * xs, d[:, :, 2] * xs + d[:, :, 3])  # D(Delta)
            e = basis * shift  # exp(z(x; Theta + Delta)), (N, r, d, P)
        return jnp.real(e), jnp.imag(e)

    re, im = materialized(exponentials, delta)
    psi = jnp.sum(amplitude * re, axis=-1)  # atoms, (N, r, d)
    return amplitude, xs, re, im, psi


def aion_values(
    theta: Float[Array, "rank 4 dims terms"],
    delta: Float[Array, "rank 4 dims terms"],
    basis: Complex[Array, "N rank dim terms"] | None,
    x: Float[Array, "N dim"],
) -> Float[Array, "N rank"]:
    """Each rank's values ``T_j(x_n)`` at ``Theta + Delta`` (no derivatives)."""
    *_, psi = _shifted_terms(theta, delta, basis, x)
    return jnp.prod(psi, axis=-1)


def separable_terms(psi, atom_derivatives, shared: bool):
    """Values and gradients of separable terms ``T_j = prod_i psi_ji`` from their atoms.

    ``psi``: the atoms ``(N, r, d)``; ``atom_derivatives``: one ``(N, r, d, P)`` array per
    parameter kind, the derivative of atom ``psi_ji`` by that kind's parameter ``(j, i, p)``.
    The derivative of ``T_j`` is that times the leave-one-out product ``prod_{s != i} psi_js``
    (prefix and suffix products, no division). With ``shared`` (one atom for every
    dimension) the chain rule sums over the dimensions. Returns ``(N, r)`` and
    ``(N, r, kinds, d', P)``.
    """
    loo, total = leave_one_out_products(psi)
    loo = loo[..., None]
    columns = [c * loo for c in atom_derivatives]
    dim = psi.shape[-1]
    if shared and dim > 1:
        # Unrolled over the (small, static) dimension count: cheaper than a reduction here.
        columns = [sum(c[:, :, i : i + 1] for i in range(dim)) for c in columns]
    return total, jnp.stack(columns, axis=2)


def aion_terms(
    theta: Float[Array, "rank 4 dims terms"],
    delta: Float[Array, "rank 4 dims terms"],
    basis: Complex[Array, "N rank dim terms"] | None,
    x: Float[Array, "N dim"],
) -> tuple[Float[Array, "N rank"], Float[Array, "N rank 4 dims terms"]]:
    """Each rank at ``Theta + Delta``: its values ``T_j(x_n)`` and their gradient.

    ``basis = exp(z(x_n; Theta))`` was computed at ``Theta``; the shift
    ``D(Delta) = exp(<a, Delta>)`` carries it to ``Theta + Delta``. Cost per point: ``r d P``
    complex exponentials and ``O(r d P)`` real products.
    """
    amplitude, xs, re, im, psi = _shifted_terms(theta, delta, basis, x)
    re_c, im_c = amplitude * re, amplitude * im  # the complex term c = A e^z
    # d/dA, d/dalpha, d/domega, d/dphi of the atom: the polynomial prefactors 1, x, i x, i.
    derivatives = [re, xs * re_c, -xs * im_c, -im_c]
    return separable_terms(psi, derivatives, theta.shape[-2] == 1)


def amplitude_factors(theta: Array, c: Array, dims: int, mask: Array,
                      root: Array | None = None) -> tuple[Array, Array]:
    """Factors ``F`` (flat, one per parameter) such that a separable model at ``F * theta``
    outputs ``c`` times its output at ``theta``, and whether that is possible.

    ``theta`` is ``(rank, kinds, d', P)`` with the amplitudes in slot 0 of axis 1 (an AION's
    or Gaussian atoms' layout); each atom is linear in its amplitudes, so scaling one
    dimension's amplitudes by ``c`` scales every rank by ``c``. With all amplitudes free the
    factor is spread evenly, ``root = |c|^(1/d)`` per dimension (the sign on dimension 0),
    which keeps the ranks' gauge balanced; with a shared atom (``d' = 1``) it is
    ``c^(1/d)``, impossible for ``c < 0`` and even ``d``; with some amplitudes held
    (``trainable``, ``fix_gauge``) dimension 0 takes all of ``c``, if it is free. Every other
    parameter keeps the factor 1.
    """
    amps = theta[:, 0]
    free = mask.reshape(theta.shape)[:, 0]
    slots = amps.shape[1]
    root = jnp.abs(c) ** (1.0 / dims) if root is None else root
    signed = jnp.where(c < 0, -root, root)
    if slots == 1:
        per_slot = signed[None]
        possible = jnp.all(free) & ((c > 0) | (dims % 2 == 1))
    else:
        even = jnp.full((slots,), root).at[0].set(signed)
        alone = jnp.ones((slots,), amps.dtype).at[0].set(c)
        per_slot = jnp.where(jnp.all(free), even, alone)
        possible = jnp.all(free[:, 0])
    factors = jnp.ones_like(theta).at[:, 0].set(
        jnp.broadcast_to(per_slot[None, :, None], amps.shape)
    )
    return factors.reshape(-1), possible & jnp.isfinite(c) & (c != 0)


def weighted_max(y: Array, weight: Array | None) -> Array:
    """``max_n |sqrt(w_n) y_n|``."""
    return jnp.max(jnp.abs(y if weight is None else y * weight))


class AbstractSeparableResummation(AbstractPointProblem):
    """A separable model's resummation on points (AION, GaussianAtoms): its layout holds the
    amplitudes in slot 0, ``(rank, slots, d', P)``, so it can change the units of its data
    (the hooks of `AbstractProblem`, through `amplitude_factors`)."""

    def target_scale(self) -> Array:
        return weighted_max(self.y, self.weight)

    @property
    def amplitude_dims(self) -> int:
        return self.x.shape[-1]

    def output_factors(self, c, mask, root=None):
        """Through the amplitudes, see `amplitude_factors`."""
        return amplitude_factors(self.theta, c, self.amplitude_dims, mask, root)


class AIONResummation(AbstractSeparableResummation):
    """An AION problem over its data, evaluated through the resummation.

    With the data whole, the basis ``exp(z(x_n; Theta))`` is stored (``N r d P`` complex
    numbers) and each evaluation applies the shift ``exp(<a, Delta>)``. In chunks, the
    exponentials are evaluated per chunk at ``Theta + Delta`` (the same numbers, nothing
    ``N``-sized stored). The closed-form Jacobian makes a pass several times cheaper than
    autodiff of the model. Layout: ``(rank, 4, d', P)``, see the module docstring.
    """

    theta: Float[Array, "rank 4 dims terms"]
    x: Float[Array, "..."]
    y: Float[Array, "..."]
    weight: Float[Array, "chunks K"] | None
    basis: Complex[Array, "N rank dim terms"] | None
    num_data: int = eqx.field(static=True)

    def __init__(self, model: AION, x: Array, y: Array, chunk_size: int | None = None,
                 weights: Array | None = None):
        self.theta = stack_params(model)
        self.num_data = x.shape[0]
        self.x, self.y, self.weight = chunk_data(x, y, chunk_size, weights)
        self.basis = None
        if not self.chunked:
            self.basis = atom_exponentials(
                model.alpha[None], model.omega[None], model.phi[None], x[:, None, :]
            )

    def terms(self, delta, x, basis):
        values, grads = aion_terms(self.theta, delta, basis, x)
        return values, grads.reshape(*grads.shape[:2], -1)

    def term_values(self, delta, x, basis):
        return aion_values(self.theta, delta, basis, x)

    def one_term(self, theta_j, delta_j, x, basis_j):
        b = None if basis_j is None else basis_j[:, None]
        t, g = aion_terms(theta_j[None], delta_j[None], b, x)
        return t[:, 0], g.reshape(g.shape[0], -1)

    def rank_terms(self, delta: Array) -> tuple[Array, Array]:
        """Per-rank values ``(N, r)`` and gradients ``(N, r, 4, d', P)`` at ``Theta + delta``."""
        return aion_terms(self.theta, delta, self.basis, self.x)

    def stack(self, tree) -> Array:
        return stack_params(tree)

    def to_model(self, theta: Array, like):
        return unstack_params(theta, like)
