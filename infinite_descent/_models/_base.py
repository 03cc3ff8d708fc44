"""The Infinity Class as an interface: models that are sums of terms with disjoint parameters,
and `ModelSum`, models of different families added."""

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

    def __add__(self, other):
        """``a + b``: the `ModelSum` of two models (of any families)."""
        if not isinstance(other, AbstractSumOfTerms):
            return NotImplemented
        return ModelSum(self, other)


SumOfTerms = AbstractSumOfTerms
"""The name the first releases used for `AbstractSumOfTerms`; kept for user code."""


class ModelSum(AbstractSumOfTerms):
    r"""``f(x) = sum_k f_k(x)``: models of any families added into one model.

    NIST's Gauss problems, for instance, are an exponential decay plus two Gaussian peaks:
    an `AION` with one rank plus `GaussianAtoms` with two. `solve` (and every entry point
    that takes a model) fits the parts together, each part's residuals and Jacobian coming
    from its own fast path (AION's and GaussianAtoms' resummations; autodiff for other
    models); the damped system couples all parameters. Build it as ``ModelSum(a, b, ...)``
    or with ``a + b``; nested sums are flattened. The parts must share ``dim`` and dtype.

    ```python
    t = jnp.linspace(0.0, 4.0, 200)[:, None]
    data = 2 * jnp.exp(-0.7 * t[:, 0]) + jnp.exp(-4 * (t[:, 0] - 2) ** 2)
    decay = idn.AION(1, 1, 1, A=1.0, alpha=-1.0, omega=0.0, phi=0.0)
    peaks = idn.GaussianAtoms(1, 1, 1, A=0.5, a=2.0, m=1.8)
    fitted, info = idn.solve(decay + peaks, t, data)   # decay + peaks is a ModelSum
    print(fitted.parts[0].alpha.ravel(), fitted.parts[1].m.ravel(), info.loss)
    # [-0.7] [2.] 2.4e-30 (13 inner iterations)
    ```

    The parameters of every part are trained unless ``trainable`` (a pytree shaped like the
    sum, e.g. built with ``eqx.tree_at`` on ``jax.tree.map(lambda _: True, model)``) says
    otherwise: to hold a decay's frequency at zero, set ``trainable.parts[0].omega`` (and
    ``.phi``) to ``False``.
    """

    parts: tuple[AbstractSumOfTerms, ...]
    dim: int = eqx.field(static=True)

    def __init__(self, *parts: AbstractSumOfTerms):
        flat = []
        for part in parts:
            if isinstance(part, ModelSum):
                flat.extend(part.parts)
            elif isinstance(part, AbstractSumOfTerms):
                flat.append(part)
            else:
                raise TypeError(
                    "ModelSum: every part must be a model of the package (an "
                    f"`AbstractSumOfTerms` such as AION or GaussianAtoms), got "
                    f"{type(part).__name__}."
                )
        if len(flat) < 2:
            raise ValueError(f"ModelSum: give at least two models to add, got {len(flat)}.")
        dims = {part.dim for part in flat}
        if len(dims) != 1:
            raise ValueError(f"ModelSum: the parts must share `dim`, got {sorted(dims)}.")
        dtypes = {a.dtype for part in flat for a in parameter_arrays(part)}
        if len(dtypes) != 1:
            raise TypeError(
                "ModelSum: the parts' parameters must share one dtype, got "
                f"{sorted(str(d) for d in dtypes)}."
            )
        self.parts = tuple(flat)
        self.dim = dims.pop()

    def term(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        raise TypeError(
            "ModelSum has no single term of its own: its parts do (`model.parts[k]`)."
        )

    @property
    def num_terms(self) -> int:
        """The terms of all parts."""
        return sum(part.num_terms for part in self.parts)

    def term_values(self, x: Float[Array, " dim"]) -> Float[Array, " terms"]:
        """Every part's term values at ``x``, concatenated in the order of the parts."""
        return jnp.concatenate([part.term_values(x) for part in self.parts])


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


SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))


def model_dtype(owner: str, dtype) -> jnp.dtype:
    """The parameters' dtype: float64 when x64 is on and none is given, else float32; a
    given one must be float32 or float64 (half precision has too few digits for the
    solver's tests, and complex exponentials have no half-precision type), and float64 needs
    x64 on (JAX would silently make it float32)."""
    if dtype is None:
        return default_float_dtype()
    dtype = jnp.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{owner}: `dtype` must be float32 or float64, got {dtype}.")
    if dtype == jnp.float64 and default_float_dtype() != jnp.float64:
        raise TypeError(f"{owner}: dtype float64 needs `jax.config.update('jax_enable_x64', "
                        "True)` first (without it JAX makes every array float32).")
    return dtype


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
