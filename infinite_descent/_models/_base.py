"""The Infinity Class as an interface: models that are sums of terms with disjoint parameters."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def parameter_arrays(model) -> list:
    """The model's floating-point array leaves, in tree order (what ``eqx.filter(model,
    eqx.is_inexact_array)`` keeps, without building the filtered tree)."""
    return [leaf for leaf in jax.tree.leaves(model) if eqx.is_inexact_array(leaf)]


class AbstractSumOfTerms(eqx.Module):
    r"""Abstract base of models ``f(x) = sum_j g(x; theta_j)`` whose terms share no parameter.

    Every inexact-array field holds the parameters of all terms stacked along a leading axis
    of length ``num_terms``; ``term(x)``, called on a module holding *one* term's parameters
    (that axis removed), returns ``g(x; theta_j)``. ``dim`` is the input dimension.

    Any such model has a Hessian ``H = 2 J^T J + 2 sum_n r_n Hess f_n`` whose second part is
    block-diagonal over the terms and whose first part couples them only through ``J``: the
    structure [`solve`][infinite_descent.solve] exploits. A subclass gets the exact structured
    step from autodiff alone (per-term Jacobians by ``jax.jacfwd`` vmapped over terms); a model
    whose terms are closed under differentiation and multiplication (AION,
    [`GaussianAtoms`][infinite_descent.GaussianAtoms]) can also provide a resummation, which
    ``solve`` uses as a faster path.

    **Sufficient conditions for Infinity-Class membership**, in plain words: (1) the model is a
    sum of terms with disjoint parameters (so the coupling between terms goes through the data
    only); (2) each term is built from atoms whose family is closed under differentiation with
    respect to their parameters (a derivative is the atom times a polynomial prefactor); (3)
    the family is closed under multiplication, so that shifting the parameters multiplies an
    atom by a factor that does not depend on where you start (``exp(<a, Delta>)`` for AION's
    complex exponentials, ``exp(quadratic)`` for Gaussians). Then ``grad Phi(Theta + Delta)``
    is an exact algebraic function of ``Delta`` computed from a basis evaluated once.

    A subclass defines its array fields, ``dim`` and ``term``:

    ```python
    class Ridges(idn.AbstractSumOfTerms):
        w: jax.Array   # (terms, dim)
        c: jax.Array   # (terms,)
        dim: int = eqx.field(static=True)

        def term(self, x):
            return self.c * jnp.tanh(self.w @ x)

    model = Ridges(w=jnp.ones((3, 2)), c=jnp.ones(3), dim=2)
    print(model(jnp.zeros(2)), model.num_terms)    # 0.0 3
    ```
    """

    dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def term(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        """One term ``g(x; theta_j)``, on a module holding that term's parameters only."""

    @property
    def dtype(self):
        """The real dtype of the parameters."""
        return parameter_arrays(self)[0].dtype

    @property
    def num_params(self) -> int:
        """Number of real parameters."""
        return sum(a.size for a in parameter_arrays(self))

    @property
    def num_terms(self) -> int:
        """Number of terms (the leading axis of every parameter array)."""
        return int(parameter_arrays(self)[0].shape[0])

    def term_values(self, x: Float[Array, " dim"]) -> Float[Array, " terms"]:
        """Every term's value at ``x``, shape ``(num_terms,)``."""
        params, static = eqx.partition(self, eqx.is_inexact_array)
        return jax.vmap(lambda p: eqx.combine(p, static).term(x))(params)

    def __call__(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        """``f(x) = sum_j g(x; theta_j)`` for one point ``x`` of shape ``(dim,)``; evaluate a
        batch with ``jax.vmap(model)(xs)``."""
        x = jnp.asarray(x, self.dtype)
        if x.shape != (self.dim,):
            raise ValueError(
                f"{type(self).__name__}: expected one point of shape ({self.dim},), got "
                f"{x.shape}; evaluate batches with jax.vmap(model)(xs)."
            )
        return jnp.sum(self.term_values(x))


SumOfTerms = AbstractSumOfTerms
"""The name the first releases used for `AbstractSumOfTerms`; kept for user code."""


def check_sizes(owner: str, **sizes) -> dict[str, int]:
    """Each size as a Python ``int``; a clear ``ValueError`` unless every size is a positive
    integer (Python or numpy; not a bool)."""
    out = {}
    for name, value in sizes.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or (
            value < 1
        ):
            raise ValueError(f"{owner}: `{name}` must be a positive integer, got {value!r}.")
        out[name] = int(value)
    return out


def default_float_dtype():
    """float64 when ``jax_enable_x64`` is on, float32 otherwise."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def separable_parameters(owner: str, shape: tuple, given: dict, bounds: dict, key, dtype,
                         shape_label: str) -> dict:
    """The parameter arrays of a separable model, all of ``shape``.

    Each entry of ``given`` (name -> value or ``None``) is broadcast to ``shape`` when given,
    else drawn ``U(bounds[name])`` from its own split of ``key`` (the split is by position in
    ``given``, so a model's defaults do not depend on which others were given).
    """
    keys = jax.random.split(key, len(given)) if key is not None else [None] * len(given)
    values = {}
    for k, (name, value) in zip(keys, given.items()):
        if value is None:
            low, high = bounds[name]
            values[name] = jax.random.uniform(k, shape, dtype, low, high)
            continue
        value = jnp.asarray(value)
        if not (jnp.issubdtype(value.dtype, jnp.floating)
                or jnp.issubdtype(value.dtype, jnp.integer)):
            raise TypeError(f"{owner}: `{name}` must be real, got dtype {value.dtype}.")
        try:
            values[name] = jnp.broadcast_to(value.astype(dtype), shape)
        except ValueError:
            raise ValueError(
                f"{owner}: `{name}` of shape {value.shape} does not broadcast to the "
                f"parameter shape {shape} {shape_label}."
            ) from None
    return values
