"""ShallowNetwork: one hidden layer, a sum over hidden units with disjoint parameters."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._base import AbstractSumOfTerms, check_sizes, model_dtype


class ShallowNetwork(AbstractSumOfTerms):
    r"""A one-hidden-layer network, ``f(x) = s sum_j c_j sigma(w_j . x + b_j)``.

    Each hidden unit is a term with its own parameters ``(c_j, w_j, b_j)``, so the Hessian of
    the squared loss is block-diagonal over the units plus the low-rank coupling ``2 J^T J``:
    [`solve`][infinite_descent.solve] takes the exact structured step by autodiff (no closure,
    so no resummation). Fields: ``c`` ``(width,)``, ``w`` ``(width, dim)``, ``b`` ``(width,)``.
    Cost of a pass: ``O(N width dim)`` per tangent.

    **Default initialisation** (``key``): ``w ~ N(0, 1 / dim)``, ``b ~ N(0, 1)``,
    ``c ~ N(0, 1 / width)``; ``activation`` defaults to ``tanh`` (any smooth
    ``jnp -> jnp`` function). ``output_scale`` ``s`` (static, default 1) is a fixed
    normalisation: the parametrization of the overparameterized analyses,
    ``f = width^-beta sum_j c_j sigma(...)`` with ``c, w, b ~ N(0, 1)``, is
    ``output_scale=width ** -beta`` with ``c``, ``w`` and ``b`` passed in.

    ```python
    net = idn.ShallowNetwork(width=16, dim=1, key=jax.random.key(0))
    xs = jnp.linspace(-1, 1, 200)[:, None]
    net, info = idn.solve(net, xs, jnp.sin(3 * xs[:, 0]), throw=False)
    print(float(info.loss), int(info.inner_steps))
    ```
    """

    c: Float[Array, " width"]
    w: Float[Array, "width dim"]
    b: Float[Array, " width"]
    dim: int = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)
    output_scale: float = eqx.field(static=True)

    def __init__(self, width: int, dim: int, *, key: PRNGKeyArray | None = None,
                 activation: Callable = jnp.tanh, dtype=None, c: ArrayLike | None = None,
                 w: ArrayLike | None = None, b: ArrayLike | None = None,
                 output_scale: float = 1.0):
        sizes = check_sizes("ShallowNetwork", width=width, dim=dim)
        width, dim = sizes["width"], sizes["dim"]
        if isinstance(output_scale, bool) or not isinstance(output_scale, (int, float)) or not (
            0 < output_scale < float("inf")
        ):
            raise ValueError(
                f"ShallowNetwork: `output_scale` must be a finite number > 0, got "
                f"{output_scale!r}."
            )
        dtype = model_dtype("ShallowNetwork", dtype)
        if (c is None or w is None or b is None) and key is None:
            raise ValueError("ShallowNetwork: pass `key` or all of c, w, b.")
        kc, kw, kb = jax.random.split(key, 3) if key is not None else (None,) * 3
        self.c = (jnp.broadcast_to(jnp.asarray(c, dtype), (width,)) if c is not None
                  else jax.random.normal(kc, (width,), dtype) / jnp.sqrt(width))
        self.w = (jnp.broadcast_to(jnp.asarray(w, dtype), (width, dim)) if w is not None
                  else jax.random.normal(kw, (width, dim), dtype) / jnp.sqrt(dim))
        self.b = (jnp.broadcast_to(jnp.asarray(b, dtype), (width,)) if b is not None
                  else jax.random.normal(kb, (width,), dtype))
        self.dim = dim
        self.activation = activation
        self.output_scale = float(output_scale)

    @property
    def width(self) -> int:
        return self.c.shape[0]

    def term(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        """One hidden unit ``s c sigma(w . x + b)``, on a module holding that unit only."""
        return self.output_scale * self.c * self.activation(self.w @ x + self.b)
