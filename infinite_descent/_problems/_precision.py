"""Mixed precision: a float32 problem whose sums over the data and whose loop run in float64.

A float32 model's residuals and Jacobian are evaluated in float32, the cheap part. The
products over the data (``J^T J``, ``J^T r``, ``r.r``) are formed from them in the wide dtype:
the product of two float32 numbers is exact in float64, so the Gram matrix is that of the
float32 Jacobian itself, not a rounding of it. The damped system is then solved, and the
loop's state carried, in the wide dtype too.

What it buys, measured at ``M = 128`` (``benchmarks/precision.py``, five targets): a lower
loss than plain float32 on every target (within 10 ``eps^2`` on one of five at ``N = 1e4``
and at ``1e5``; plain float32 on one and on none), in fewer inner iterations (at ``N = 1e5`` a median of 55 against
112), at about twice the time per iteration (a float64 matrix product costs about 2.4 times
a float32 one on a CPU): less time per solve at ``N = 1e5``, more at ``1e4``. Two of the
five targets stay hundreds of ``eps^2`` and more above their floor either way: curved
valleys that float64 needs 160 to 190 iterations for. Off by default (`SNR`'s
``sum_dtype``).

`widened` decides; `MixedPrecision` wraps any problem. Where the inner problem gives its
residuals and Jacobian per chunk (`AbstractPointProblem`) or whole
(`AbstractResidualProblem`), the products are formed wide; any other problem has its sums
cast, which still gives the wide linear solve.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._base import (
    AbstractPointProblem,
    AbstractProblem,
    AbstractResidualProblem,
    NormalEquations,
    gram_sums,
)

def sum_dtype_for(option, model_dtype):
    """The dtype the sums and the loop run in for ``option`` (`SNR`'s ``sum_dtype``):
    ``None`` where that is the model's own dtype (nothing to do)."""
    model_dtype = jnp.dtype(model_dtype)
    if option is None or model_dtype != jnp.float32:
        return None
    if not jax.config.jax_enable_x64:
        if option == "float64":
            raise ValueError(
                "SNR(sum_dtype='float64') needs float64, which JAX gives only with "
                "jax.config.update('jax_enable_x64', True)."
            )
        return None
    if option == "auto" and jax.default_backend() != "cpu":
        # On accelerators float64 products are slow (or emulated); the float32 products run
        # at full float32 precision instead (`gram_sums` asks for it).
        return None
    return jnp.float64


def _wide(tree, dtype):
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.inexact) else a, tree
    )


class MixedPrecision(AbstractProblem):
    """``inner`` (evaluated in its own dtype) with its sums, its parameters and the loop in
    ``theta``'s wider dtype. Every method takes and returns wide arrays."""

    inner: AbstractProblem
    theta: Array
    num_data: int = eqx.field(static=True)

    def __init__(self, inner: AbstractProblem, dtype):
        self.inner = inner
        self.theta = inner.theta.astype(dtype)
        self.num_data = inner.num_data

    @property
    def eval_dtype(self):
        return self.inner.eval_dtype

    def _narrow(self, a: Array) -> Array:
        return a.astype(self.inner.theta.dtype)

    def _wrap(self, inner: AbstractProblem | None) -> MixedPrecision | None:
        return None if inner is None else MixedPrecision(inner, self.theta.dtype)

    def data_finite(self):
        return self.inner.data_finite()

    def data_norm(self) -> Array:
        return self.inner.data_norm().astype(self.theta.dtype)

    def data_peak(self) -> Array:
        return self.inner.data_peak().astype(self.theta.dtype)

    def normal_equations(self, delta, *, gram=True, rank_grams=False, jac=False):
        inner, wide = self.inner, self.theta.dtype
        narrow = self._narrow(delta)
        options = dict(gram=gram, rank_grams=rank_grams, block_size=inner.block_size,
                       dtype=wide)
        if isinstance(inner, AbstractPointProblem) and jac and inner.chunked:
            raise ValueError("the full Jacobian is not formed when the data are chunked")
        if isinstance(inner, AbstractPointProblem) and not jac:
            def fn(x, y, w, basis):
                _, r, J = inner._chunk_terms(narrow, x, y, w, basis)
                sums = gram_sums(r, J, **options)
                return {k: v for k, v in sums._asdict().items() if v is not None}

            eq = NormalEquations(**inner._sum_over_data(fn))
        elif isinstance(inner, (AbstractPointProblem, AbstractResidualProblem)):
            # One pass gives the sums and, for the solvers that need it, J itself.
            r, J = inner.residual_and_jacobian(narrow)
            eq = gram_sums(r, J, **options)._replace(jac=J if jac else None)
        else:
            eq = inner.normal_equations(narrow, gram=gram, rank_grams=rank_grams, jac=jac)
        return _wide(eq, wide)

    def gram_matvec(self, delta, v):
        out = self.inner.gram_matvec(self._narrow(delta), self._narrow(v))
        return out.astype(self.theta.dtype)

    def geodesic_rhs(self, delta, v):
        out = self.inner.geodesic_rhs(self._narrow(delta), self._narrow(v))
        return out.astype(self.theta.dtype)

    def rank_blocks(self, delta, *, residual_only=False):
        out = self.inner.rank_blocks(self._narrow(delta), residual_only=residual_only)
        return out.astype(self.theta.dtype)

    def rebased(self, theta):
        return self._wrap(self.inner.rebased(self._narrow(theta)))

    def stack(self, tree):
        return _wide(self.inner.stack(tree), self.theta.dtype)

    def to_model(self, theta, like):
        return self.inner.to_model(self._narrow(theta), like)

    def target_scale(self):
        scale = self.inner.target_scale()
        return None if scale is None else scale.astype(self.theta.dtype)

    @property
    def amplitude_dims(self) -> int:
        return self.inner.amplitude_dims

    def output_factors(self, c, mask, root=None):
        root = None if root is None else self._narrow(root)
        factors, possible = self.inner.output_factors(self._narrow(c), mask, root)
        return factors.astype(self.theta.dtype), possible

    def output_moments(self, delta, unit):
        return _wide(self.inner.output_moments(self._narrow(delta), self._narrow(unit)),
                     self.theta.dtype)

    def rescaled(self, unit, factors):
        return self._wrap(self.inner.rescaled(self._narrow(unit), self._narrow(factors)))


def widened(problem: AbstractProblem, option) -> AbstractProblem:
    """``problem`` in mixed precision where ``option`` (`SNR`'s ``sum_dtype``) asks for it."""
    dtype = sum_dtype_for(option, problem.theta.dtype)
    return problem if dtype is None else MixedPrecision(problem, dtype)
