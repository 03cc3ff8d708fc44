"""AION: a sum over ranks of products of univariate exponential-trigonometric atoms."""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._base import AbstractSumOfTerms, check_sizes, model_dtype, separable_parameters

_FIELDS = ("A", "alpha", "omega", "phi")


def complex_dtype_of(dtype) -> jnp.dtype:
    """The complex dtype with the same precision as the real ``dtype``."""
    return jnp.complex128 if jnp.dtype(dtype) == jnp.float64 else jnp.complex64


def complex_exp(re: Array, im: Array) -> Array:
    """``exp(re + i im)`` as ``e^re (cos im + i sin im)``.

    The same value as ``jnp.exp`` of the complex number, computed from real parts: XLA's
    complex ``exp`` adds special-case selects that cost more on the CPU (measured; the figure
    is in the design notes).
    """
    magnitude = jnp.exp(re)
    return jax.lax.complex(magnitude * jnp.cos(im), magnitude * jnp.sin(im))


def atom_exponentials(
    alpha: Array, omega: Array, phi: Array, x: Array
) -> Array:
    """``exp(z)`` with ``z = (alpha + i omega) x + i phi``, the complex exponential of an atom.

    ``alpha, omega, phi`` have shape ``(..., d', P)`` and ``x`` has shape ``(..., d)``; the
    result has shape ``(..., d, P)`` (``d' = 1`` broadcasts over the dimensions).
    """
    xs = x[..., :, None]
    return complex_exp(alpha * xs, omega * xs + phi)


def leave_one_out_products(psi: Array) -> tuple[Array, Array]:
    """Products over the last axis with one factor left out, and the full product.

    Returns ``(L, T)`` with ``L[..., i] = prod_{s != i} psi[..., s]`` and
    ``T = prod_s psi[..., s]``. Built from exclusive prefix and suffix products, so no
    division by ``psi`` (which may be zero) ever happens. Cost ``O(3 d)`` multiplications.
    """
    d = psi.shape[-1]
    ones = jnp.ones_like(psi[..., :1])
    prefix = [ones[..., 0]]
    for i in range(d - 1):
        prefix.append(prefix[-1] * psi[..., i])
    suffix = [ones[..., 0]]
    for i in range(d - 1, 0, -1):
        suffix.append(suffix[-1] * psi[..., i])
    suffix = suffix[::-1]
    # The dimension count is small and static: an unrolled product beats a scan here.
    loo = jnp.stack([p * s for p, s in zip(prefix, suffix)], axis=-1)
    total = prefix[-1] * psi[..., d - 1]
    return loo, total


class AION(AbstractSumOfTerms):
    r"""Analytic, Infinitely-Optimisable Network.

    $$
    f(x) = \sum_{j=1}^{r} \prod_{i=1}^{d} \psi_{ji}(x_i), \qquad
    \psi_{ji}(x_i) = \operatorname{Re} \sum_{p=1}^{P} A_{jip}
        e^{(\alpha_{jip} + i \omega_{jip}) x_i + i \varphi_{jip}}
        = \sum_p A e^{\alpha x_i} \cos(\omega x_i + \varphi).
    $$

    The four parameter arrays ``A, alpha, omega, phi`` have shape ``(rank, dim, terms)``,
    or ``(rank, 1, terms)`` with ``shared_dims=True``, in which case one atom per rank is
    used in every dimension (the paper's 8-parameter toy is
    ``AION(rank=2, dim=2, terms=1, shared_dims=True)``).

    ``model(x)`` takes one point ``x`` of shape ``(dim,)`` and returns a scalar; evaluate a
    batch with ``jax.vmap(model)(xs)``. Cost: ``O(r d P)`` complex exponentials per point.

    **Default initialisation** (used for any array not given explicitly), drawn independently
    per entry from ``key``:

    - ``A ~ U(0.5, 1.5)``, ``alpha ~ U(-0.5, 0.5)``, ``omega ~ U(1, 5)``,
      ``phi ~ U(-pi, pi)``.

    A rank is then a product of ``d`` bounded, mildly growing or decaying oscillations, so the
    model is ``O(r)`` on inputs of order one. Scale your inputs to about ``[-1, 1]`` or
    ``[0, 1]``: the growth rates multiply ``x`` inside ``exp``.

    **Setting parameters explicitly**: pass any of ``A, alpha, omega, phi`` (anything that
    broadcasts to the parameter shape), e.g.
    ``AION(2, 2, 1, shared_dims=True, A=1.0, alpha=0.0, omega=jnp.pi, phi=jnp.array([0.0,
    -jnp.pi / 2])[:, None, None])``, or replace fields of an existing model with
    ``eqx.tree_at(lambda m: m.omega, model, new_omega)``. ``key`` may be omitted when all four
    arrays are given.

    **Arguments:**

    - ``rank``, ``dim``, ``terms``: ``r``, ``d`` and ``P``, positive integers.
    - ``key``: a JAX PRNG key for the default initialisation.
    - ``shared_dims``: one atom per rank shared by all dimensions.
    - ``dtype``: the real dtype of the parameters; float64 when x64 is enabled, else float32.
    - ``A, alpha, omega, phi``: explicit parameter values (optional).

    ```python
    model = idn.AION(rank=3, dim=2, terms=2, key=jax.random.key(0))
    xs = jax.random.uniform(jax.random.key(1), (100, 2))
    values = jax.vmap(model)(xs)                      # shape (100,)
    print(model.num_params, values.shape)             # 48 (100,)
    ```
    """

    A: Float[Array, "rank dims terms"]
    alpha: Float[Array, "rank dims terms"]
    omega: Float[Array, "rank dims terms"]
    phi: Float[Array, "rank dims terms"]
    dim: int = eqx.field(static=True)
    shared_dims: bool = eqx.field(static=True)

    def __init__(
        self,
        rank: int,
        dim: int,
        terms: int,
        *,
        key: PRNGKeyArray | None = None,
        shared_dims: bool = False,
        dtype=None,
        A: ArrayLike | None = None,
        alpha: ArrayLike | None = None,
        omega: ArrayLike | None = None,
        phi: ArrayLike | None = None,
    ):
        sizes = check_sizes("AION", rank=rank, dim=dim, terms=terms)
        rank, dim, terms = sizes["rank"], sizes["dim"], sizes["terms"]
        dtype = model_dtype("AION", dtype)
        shape = (rank, 1 if shared_dims else dim, terms)
        given = {"A": A, "alpha": alpha, "omega": omega, "phi": phi}
        if any(v is None for v in given.values()) and key is None:
            raise ValueError(
                "AION: pass `key=jax.random.key(...)` for the default initialisation, or give "
                "all four of A, alpha, omega, phi explicitly."
            )
        bounds = {"A": (0.5, 1.5), "alpha": (-0.5, 0.5), "omega": (1.0, 5.0),
                  "phi": (-math.pi, math.pi)}
        values = separable_parameters(
            "AION", shape, given, bounds, key, dtype,
            f"(rank, {'1' if shared_dims else 'dim'}, terms)",
        )
        self.A = values["A"]
        self.alpha = values["alpha"]
        self.omega = values["omega"]
        self.phi = values["phi"]
        self.dim = dim
        self.shared_dims = bool(shared_dims)

    @property
    def rank(self) -> int:
        """``r``, read from the parameters' shape (the number of terms)."""
        return self.A.shape[0]

    @property
    def terms(self) -> int:
        """``P``, the terms per atom, read from the parameters' shape."""
        return self.A.shape[-1]

    def atoms(self, x: Float[Array, " dim"]) -> Float[Array, "rank dim"]:
        """The atom values ``psi_ji(x_i)``, shape ``(rank, dim)``."""
        x = jnp.asarray(x, self.dtype)
        if x.shape != (self.dim,):
            raise ValueError(
                f"AION: expected one point of shape ({self.dim},), got {x.shape}; "
                "evaluate batches with jax.vmap(model)(xs)."
            )
        e = atom_exponentials(self.alpha, self.omega, self.phi, x[None, :])
        # A is real, so Re(A e^z) = A Re(e^z): no complex-real promotion needed.
        return jnp.sum(self.A * jnp.real(e), axis=-1)

    def term(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        """One rank ``T_j(x) = prod_i psi_ji(x_i)``, on a module holding that rank only."""
        e = atom_exponentials(self.alpha, self.omega, self.phi, x)  # (d, P)
        return jnp.prod(jnp.sum(self.A * jnp.real(e), axis=-1))


def derivative_closed_form(order: tuple, params: tuple, x: Array) -> Array:
    r"""The mixed partial derivative ``D^k f(x)`` of an AION at one point, in closed form.

    Differentiating an atom term ``A e^{(alpha + i omega) t + i phi}`` in its own variable
    multiplies it by ``z = alpha + i omega``, so ``D^k f`` is the AION whose terms in dimension
    ``i`` are multiplied by ``z^{k_i}``:

    $$
    D^k f(x) = \sum_j \prod_i \operatorname{Re} \sum_p A_{jip}\, z_{jip}^{k_i}\,
        e^{z_{jip} x_i + i \varphi_{jip}} .
    $$

    ``order`` is the multi-index ``k`` (one non-negative integer per dimension, static),
    ``params`` the arrays ``(A, alpha, omega, phi)`` of shape ``(r, d', P)``, ``x`` one point
    ``(d,)``. Cost: ``r d P`` complex exponentials, the same for every order.
    """
    A, alpha, omega, phi = params
    xs = x[None, :, None]
    e = complex_exp(alpha * xs, omega * xs + phi)  # (r, d, P)
    re, im = A * jnp.real(e), A * jnp.imag(e)
    if any(order):
        z = jax.lax.complex(alpha, omega)
        shared = alpha.shape[1] == 1
        powers = [
            jnp.ones_like(z[:, :1]) if k == 0 else z[:, (0 if shared else i):][:, :1] ** k
            for i, k in enumerate(order)
        ]
        c = jax.lax.complex(re, im) * jnp.concatenate(powers, axis=1)
        re = jnp.real(c)
    psi = jnp.sum(re, axis=-1)  # (r, d)
    return jnp.sum(jnp.prod(psi, axis=-1))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def derivative(order: tuple, params: tuple, x: Array) -> Array:
    """``D^k f(x)`` of an AION (see `derivative_closed_form`), differentiable in ``x`` in
    closed form to any order.

    Its derivative in ``x_i`` is ``derivative(k + e_i, ...)``, itself this function, so
    ``jax.grad``, ``jax.hessian`` and higher derivatives in ``x`` never differentiate the
    exponentials: each is the closed form of its order. Derivatives in the parameters are
    those of the closed form.
    """
    return derivative_closed_form(order, params, x)


def _derivative_jvp(order, primals, tangents):
    params, x = primals
    d_params, d_x = tangents
    value = derivative(order, params, x)
    tangent = jnp.zeros_like(value)
    # Symbolic zeros: a derivative in x alone skips the parameters' part, and back.
    moved = [not isinstance(t, jax.custom_derivatives.SymbolicZero) for t in d_params]
    if any(moved):
        d_params = tuple(t if m else jnp.zeros(t.shape, t.dtype)
                         for t, m in zip(d_params, moved))
        tangent = jax.jvp(lambda p: derivative_closed_form(order, p, x), (params,),
                          (d_params,))[1]
    if not isinstance(d_x, jax.custom_derivatives.SymbolicZero):
        for i in range(x.shape[0]):
            raised = tuple(k + (j == i) for j, k in enumerate(order))
            tangent = tangent + d_x[i] * derivative(raised, params, x)
    return value, tangent


derivative.defjvp(_derivative_jvp, symbolic_zeros=True)
