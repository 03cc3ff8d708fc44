"""GaussianAtoms: a separable model of Gaussian atoms, also closed under the resummation."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._base import AbstractSumOfTerms, check_sizes, model_dtype, separable_parameters


class GaussianAtoms(AbstractSumOfTerms):
    r"""A separable model with Gaussian atoms.

    $$
    f(x) = \sum_{j=1}^{r} \prod_{i=1}^{d} \psi_{ji}(x_i), \qquad
    \psi_{ji}(x) = \sum_{p=1}^{P} A_{jip}\, e^{-a_{jip} (x - m_{jip})^2}.
    $$

    Parameters ``A`` (amplitude), ``a`` (inverse squared width) and ``m`` (centre), each of
    shape ``(rank, dim, terms)`` (``(rank, 1, terms)`` with ``shared_dims=True``). Like AION's
    exponentials, the family is closed under differentiation (a derivative is the atom times a
    polynomial in ``x - m``) and multiplication (a shift of ``(a, m)`` multiplies the atom by
    ``exp(quadratic in x - m)``), so [`resummed_residual`][infinite_descent.resummed_residual]
    and [`solve`][infinite_descent.solve] use a resummation: the basis ``exp(-a (x - m)^2)``
    computed once at ``Theta``. Cost: ``r d P`` exponentials per point.

    **Default initialisation** (``key``): ``A ~ U(0.5, 1.5)``, ``a ~ U(1, 5)``,
    ``m ~ U(-1, 1)``, for inputs of order one. Any of ``A, a, m`` can be given explicitly.

    ```python
    model = idn.GaussianAtoms(rank=2, dim=3, terms=2, key=jax.random.key(0))
    print(model(jnp.zeros(3)), model.num_terms)     # a scalar, 2 ranks
    ```
    """

    A: Float[Array, "rank dims terms"]
    a: Float[Array, "rank dims terms"]
    m: Float[Array, "rank dims terms"]
    dim: int = eqx.field(static=True)
    shared_dims: bool = eqx.field(static=True)

    def __init__(self, rank: int, dim: int, terms: int, *, key: PRNGKeyArray | None = None,
                 shared_dims: bool = False, dtype=None, A: ArrayLike | None = None,
                 a: ArrayLike | None = None, m: ArrayLike | None = None):
        sizes = check_sizes("GaussianAtoms", rank=rank, dim=dim, terms=terms)
        rank, dim, terms = sizes["rank"], sizes["dim"], sizes["terms"]
        dtype = model_dtype("GaussianAtoms", dtype)
        shape = (rank, 1 if shared_dims else dim, terms)
        given = {"A": A, "a": a, "m": m}
        if any(v is None for v in given.values()) and key is None:
            raise ValueError("GaussianAtoms: pass `key` or all of A, a, m.")
        bounds = {"A": (0.5, 1.5), "a": (1.0, 5.0), "m": (-1.0, 1.0)}
        values = separable_parameters(
            "GaussianAtoms", shape, given, bounds, key, dtype,
            f"(rank, {'1' if shared_dims else 'dim'}, terms)",
        )
        self.A, self.a, self.m = values["A"], values["a"], values["m"]
        self.dim = dim
        self.shared_dims = bool(shared_dims)

    @property
    def rank(self) -> int:
        """The number of terms, read from the parameters' shape."""
        return self.A.shape[0]

    @property
    def terms(self) -> int:
        """The Gaussians per atom, read from the parameters' shape."""
        return self.A.shape[-1]

    def term(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        """One term ``prod_i psi_i(x_i)``, on a module holding that term only."""
        u = x[:, None] - self.m  # (d, P) against (d' or d, P)
        return jnp.prod(jnp.sum(self.A * jnp.exp(-self.a * u * u), axis=-1))
