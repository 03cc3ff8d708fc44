r"""How the damped Newton system of one inner iteration is solved.

Each inner iteration of the SNR loop solves

.. math::

    (G + \mu\, \mathrm{diag}(D))\, s = -g, \qquad G = J^T J \;(+\; \mathrm{blockdiag}_j K_j),

where ``g = J^T r`` (half the gradient of ``Phi``), ``K_j = sum_n r_n Hess T_j(x_n)`` is the
residual-weighted part of the exact Hessian (block-diagonal over ranks; half of it, like ``G``)
and ``D`` is the Levenberg-Marquardt scaling. Strategies:

- ``"dense"``: the whole ``M x M`` system, one Cholesky factorisation: ``O(M^3)``. It keeps the
  cross-rank coupling of ``J^T J``, so it is the exact (damped) step.
- ``"block"``: the paper's step: only the ``r`` diagonal blocks of ``G``, each factored on its
  own: ``O(r m^3)``. It drops the coupling, so it is a block-Jacobi approximation.

Both go through lineax's Cholesky on an operator tagged positive semidefinite. If the system
is not positive definite (possible when the residual-weighted term is included) the
factorisation yields non-finite values; the SNR loop rejects such a step and raises the
damping, so no special case is needed here.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

LINEAR_SOLVERS = ("auto", "dense", "block")


def resolve_linear_solver(name: str, num_data: int, num_params: int) -> str:
    """The concrete strategy for ``name`` (``"auto"`` picks from the problem's size)."""
    if name not in LINEAR_SOLVERS:
        raise ValueError(
            f"linear_solver must be one of {LINEAR_SOLVERS}, got {name!r}."
        )
    if name == "auto":
        # Only the dense exact step exists so far; "auto" will pick among the
        # structured strategies once they exist.
        return "dense"
    return name


class _Cholesky(eqx.Module):
    """One symmetric positive definite matrix, factored once by lineax's Cholesky."""

    operator: lx.MatrixLinearOperator
    state: object

    def __init__(self, matrix: jax.Array):
        self.operator = lx.MatrixLinearOperator(matrix, lx.positive_semidefinite_tag)
        self.state = lx.Cholesky().init(self.operator, {})

    def solve(self, rhs: jax.Array) -> jax.Array:
        return lx.linear_solve(
            self.operator, rhs, lx.Cholesky(), state=self.state, throw=False
        ).value


class DampedSystem(eqx.Module):
    """``(G + mu diag(scale))`` factored once, solved for any number of right-hand sides.

    ``gram`` is ``J^T J`` (``M x M``), ``residual_blocks`` the per-rank ``K_j`` or ``None``
    (Gauss-Newton), ``block_size`` is ``m``, the parameters per rank. With ``"block"`` only the
    ``r`` diagonal blocks are factored (one batched Cholesky).
    """

    factor: _Cholesky
    strategy: str = eqx.field(static=True)
    block_size: int = eqx.field(static=True)

    def __init__(self, strategy, gram, scale, mu, block_size, residual_blocks=None):
        num_params = gram.shape[0]
        ranks = num_params // block_size
        damping = mu * scale
        if strategy == "dense":
            matrix = gram
            if residual_blocks is not None:
                idx = jnp.arange(ranks)
                blocks = jnp.zeros((ranks, block_size, ranks, block_size), gram.dtype)
                blocks = blocks.at[idx, :, idx, :].set(residual_blocks)
                matrix = matrix + blocks.reshape(num_params, num_params)
            self.factor = _Cholesky(matrix + jnp.diag(damping))
        elif strategy == "block":
            diag_blocks = gram.reshape(ranks, block_size, ranks, block_size)
            diag_blocks = diag_blocks[jnp.arange(ranks), :, jnp.arange(ranks), :]
            if residual_blocks is not None:
                diag_blocks = diag_blocks + residual_blocks
            diag_blocks = diag_blocks + jax.vmap(jnp.diag)(damping.reshape(ranks, block_size))
            self.factor = jax.vmap(_Cholesky)(diag_blocks)
        else:
            raise ValueError(f"unknown linear solver strategy {strategy!r}")
        self.strategy = strategy
        self.block_size = block_size

    def solve(self, rhs: jax.Array) -> jax.Array:
        """``(G + mu diag(scale))^{-1} rhs``; non-finite if the matrix was not definite."""
        if self.strategy == "dense":
            return self.factor.solve(rhs)
        blocks = rhs.reshape(-1, self.block_size)
        return jax.vmap(lambda f, b: f.solve(b))(self.factor, blocks).reshape(rhs.shape)
