r"""How the damped Newton system of one inner iteration is solved.

Each inner iteration of the SNR loop solves

.. math::

    (G + \mu\, \mathrm{diag}(D))\, s = -g, \qquad G = J^T J \;(+\; \mathrm{blockdiag}_j K_j),

where ``g = J^T r`` (half the gradient of ``Phi``), ``K_j = sum_n r_n Hess T_j(x_n)`` is the
residual-weighted part of the exact Hessian (block-diagonal over ranks; half of it, like
``G``) and ``D`` is the Levenberg-Marquardt scaling. Strategies (``linear_solver=``):

- ``"dense"``: the whole ``M x M`` system, one Cholesky factorisation. Memory ``O(M^2)``, cost
  ``O(N M^2 + M^3)``. It keeps the cross-rank coupling of ``J^T J``: the exact damped step.
- ``"woodbury"``: the push-through identity
  ``(B + J^T J)^{-1} = B^{-1} - B^{-1} J^T (I + J B^{-1} J^T)^{-1} J B^{-1}`` with ``B`` the
  damping (and the residual blocks): an ``N x N`` system, ``O(N^2 M + N^3)``. Exact; cheaper
  than dense when ``N < M``. Needs ``J`` (``N x M``) in memory.
- ``"cg"``: conjugate gradients (lineax) on the damped system, matrix-free: each product
  ``v -> J^T (J v)`` is a JVP and a VJP over the data (one pass), preconditioned by the
  inverse per-rank diagonal blocks. Memory ``O(M r m + K M)``; for large ``M``. Exact to the
  CG tolerance.
- ``"block"``: the paper's step: only the ``r`` diagonal blocks of ``G``, each factored on its
  own: ``O(r m^3)``. It drops the coupling, so it is a block-Jacobi approximation.

Factorisations go through lineax's Cholesky on operators tagged positive semidefinite. If a
system is not positive definite (possible with the residual-weighted term) the result is
non-finite; the SNR loop rejects such a step and raises the damping.
"""

from __future__ import annotations

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

LINEAR_SOLVERS = ("auto", "dense", "woodbury", "cg", "block")

# "auto" switches to matrix-free CG above this many parameters: a dense M x M factorisation
# costs M^3 / 3 flops per iteration and M^2 memory, which stop paying around here on a CPU.
DENSE_MAX_PARAMS = 2048


def memory_budget_bytes() -> int:
    """A budget for the ``N``-sized temporaries of one iteration: 1/8 of the device memory.

    Read from the accelerator's memory statistics where JAX reports them, else from the
    machine's physical memory.
    """
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) // 8
    except Exception:  # noqa: BLE001 - backends without memory statistics
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8
    except (ValueError, OSError, AttributeError):
        return 2**31


def resolve_linear_solver(
    name: str, num_data: int, num_params: int, itemsize: int = 8, chunked: bool = False
) -> str:
    """The concrete strategy for ``name``; ``"auto"`` picks from ``N``, ``M`` and memory.

    - ``M > 2048``: ``"cg"`` (a dense factorisation would dominate every iteration);
    - ``N < M`` and ``J`` fits in the memory budget: ``"woodbury"``;
    - otherwise ``"dense"``.
    """
    if name not in LINEAR_SOLVERS:
        raise ValueError(f"linear_solver must be one of {LINEAR_SOLVERS}, got {name!r}.")
    if name == "woodbury" and chunked:
        raise ValueError(
            "linear_solver='woodbury' needs the whole N x M Jacobian; it does not combine with "
            "chunk_size (use 'dense' or 'cg')."
        )
    if name != "auto":
        return name
    if num_params > DENSE_MAX_PARAMS:
        return "cg"
    fits = num_data * num_params * itemsize <= memory_budget_bytes()
    if num_data < num_params and fits and not chunked:
        return "woodbury"
    return "dense"


def default_chunk_size(num_data: int, num_params: int, itemsize: int = 8) -> int | None:
    """``None`` when the ``N x M`` Jacobian fits the memory budget, else the largest chunk
    (a multiple of 1024 points) whose ``K x M`` Jacobian does."""
    budget = memory_budget_bytes()
    if num_data * num_params * itemsize <= budget:
        return None
    return max(1024, (budget // (num_params * itemsize)) // 1024 * 1024)


class _Cholesky(eqx.Module):
    """One matrix factored once by lineax: Cholesky when it is symmetric positive definite
    (the damped Gauss-Newton systems), LU when it need not be (``definite=False``)."""

    operator: lx.MatrixLinearOperator
    state: object
    definite: bool = eqx.field(static=True)

    def __init__(self, matrix: jax.Array, definite: bool = True):
        tags = lx.positive_semidefinite_tag if definite else ()
        self.operator = lx.MatrixLinearOperator(matrix, tags)
        self.definite = definite
        self.state = self._solver().init(self.operator, {})

    def _solver(self):
        return lx.Cholesky() if self.definite else lx.LU()

    def solve(self, rhs: jax.Array) -> jax.Array:
        return lx.linear_solve(
            self.operator, rhs, self._solver(), state=self.state, throw=False
        ).value


def _block_diagonal(blocks: jax.Array) -> jax.Array:
    ranks, m, _ = blocks.shape
    idx = jnp.arange(ranks)
    full = jnp.zeros((ranks, m, ranks, m), blocks.dtype).at[idx, :, idx, :].set(blocks)
    return full.reshape(ranks * m, ranks * m)


def _blocks_times(blocks: jax.Array | None, v: jax.Array) -> jax.Array:
    if blocks is None:
        return jnp.zeros_like(v)
    ranks, m, _ = blocks.shape
    return jnp.einsum("jab,jb->ja", blocks, v.reshape(ranks, m)).reshape(-1)


class DampedSystem(eqx.Module):
    """``G + mu diag(scale)`` prepared once, solved for any number of right-hand sides.

    Built from the sums of one pass (:class:`NormalEquations`): ``gram`` for ``"dense"`` and
    ``"block"``, ``jac`` for ``"woodbury"``, ``rank_grams`` (the preconditioner) for ``"cg"``,
    whose products with ``J^T J`` go back to the data through ``problem`` at ``delta``.
    ``residual_blocks`` are the per-rank ``K_j`` or ``None`` (Gauss-Newton); ``mask`` zeroes
    frozen parameters. ``indefinite_ok`` factors the dense system by LU rather than Cholesky.
    """

    strategy: str = eqx.field(static=True)
    block_size: int = eqx.field(static=True)
    scale: jax.Array
    mu: jax.Array
    mask: jax.Array
    residual_blocks: jax.Array | None
    gram: jax.Array | None
    jac: jax.Array | None
    factor: _Cholesky | None
    capacitance: _Cholesky | None
    problem: object
    delta: jax.Array | None
    cg_tolerance: float = eqx.field(static=True)
    cg_max_steps: int = eqx.field(static=True)

    def __init__(self, strategy, eq, scale, mu, block_size, mask, residual_blocks=None,
                 problem=None, delta=None, cg_tolerance=1e-10, cg_max_steps=None,
                 indefinite_ok=False):
        self.strategy = strategy
        self.block_size = block_size
        self.scale = scale
        self.mu = mu
        self.mask = mask
        self.residual_blocks = residual_blocks
        self.gram = eq.gram
        self.jac = None
        self.capacitance = None
        self.problem = None
        self.delta = None
        self.cg_tolerance = cg_tolerance
        num_params = scale.shape[0]
        self.cg_max_steps = cg_max_steps or 4 * num_params
        ranks = num_params // block_size
        damping = mu * scale
        outer_mask = mask[:, None] * mask[None, :]
        if strategy == "dense":
            matrix = eq.gram * outer_mask
            if residual_blocks is not None:
                matrix = matrix + _block_diagonal(residual_blocks)
            # The SNR loop wants a non-finite step from a system that is not positive
            # definite (it rejects it and raises the damping); a caller that takes the step
            # whatever it is (fixed-regularization Newton) asks for LU instead.
            self.factor = _Cholesky(matrix + jnp.diag(damping), definite=not indefinite_ok)
        elif strategy in ("block", "cg"):
            if strategy == "block":
                grams = (eq.gram * outer_mask).reshape(ranks, block_size, ranks, block_size)
                grams = grams[jnp.arange(ranks), :, jnp.arange(ranks), :]
            else:
                m = mask.reshape(ranks, block_size)
                grams = eq.rank_grams * (m[:, :, None] * m[:, None, :])
                self.problem = problem
                self.delta = delta
            if residual_blocks is not None:
                grams = grams + residual_blocks
            grams = grams + jax.vmap(jnp.diag)(damping.reshape(ranks, block_size))
            self.factor = jax.vmap(_Cholesky)(grams)
        elif strategy == "woodbury":
            self.jac = eq.jac * mask[None, :]
            # B = blockdiag(K_j) + mu diag(scale); the capacitance I + J B^-1 J^T is factored
            # here and B^-1 (per-rank or diagonal) applied on the fly. With the residual
            # blocks B need not be definite even when the whole system is: LU then.
            definite = residual_blocks is None
            if residual_blocks is not None:
                base = residual_blocks + jax.vmap(jnp.diag)(damping.reshape(ranks, block_size))
                self.factor = jax.vmap(lambda b: _Cholesky(b, definite=False))(base)
            else:
                self.factor = None
            b_inv_jt = jax.vmap(self._base_solve, in_axes=1, out_axes=1)(self.jac.T)
            capacitance = jnp.eye(self.jac.shape[0], dtype=scale.dtype) + self.jac @ b_inv_jt
            self.gram = None
            self.capacitance = _Cholesky(capacitance, definite=definite)
        else:
            raise ValueError(f"unknown linear solver strategy {strategy!r}")

    def _base_solve(self, v):
        if self.residual_blocks is None:
            return v / (self.mu * self.scale)
        blocks = v.reshape(-1, self.block_size)
        return jax.vmap(lambda f, b: f.solve(b))(self.factor, blocks).reshape(v.shape)

    def _block_solve(self, rhs):
        blocks = rhs.reshape(-1, self.block_size)
        return jax.vmap(lambda f, b: f.solve(b))(self.factor, blocks).reshape(rhs.shape)

    def _matvec(self, v):
        v = v * self.mask
        gv = self.problem.gram_matvec(self.delta, v) * self.mask
        return gv + _blocks_times(self.residual_blocks, v) + self.mu * self.scale * v

    def solve(self, rhs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(G + mu diag(scale))^{-1} rhs`` and the passes over the data it took (CG's
        matrix-vector products; zero for the factored strategies)."""
        none = jnp.zeros((), jnp.int32)
        if self.strategy == "dense":
            return self.factor.solve(rhs), none
        if self.strategy == "block":
            return self._block_solve(rhs), none
        if self.strategy == "woodbury":
            b_inv_rhs = self._base_solve(rhs)
            inner = self.capacitance.solve(self.jac @ b_inv_rhs)
            return b_inv_rhs - self._base_solve(self.jac.T @ inner), none
        operator = lx.FunctionLinearOperator(
            self._matvec, jax.ShapeDtypeStruct(rhs.shape, rhs.dtype),
            lx.positive_semidefinite_tag,
        )
        preconditioner = lx.FunctionLinearOperator(
            self._block_solve, jax.ShapeDtypeStruct(rhs.shape, rhs.dtype),
            lx.positive_semidefinite_tag,
        )
        solution = lx.linear_solve(
            operator, rhs,
            lx.CG(rtol=self.cg_tolerance, atol=0.0, max_steps=self.cg_max_steps),
            options={"preconditioner": preconditioner}, throw=False,
        )
        return solution.value, solution.stats["num_steps"].astype(jnp.int32)

    def model_product(self, s: jax.Array, g: jax.Array) -> jax.Array:
        """``G s``, for the predicted decrease ``-(2 g.s + s^T G s)`` of the quadratic model.

        Dense and block use the Gram matrix, Woodbury ``J^T (J s)``; CG uses
        ``G s = -g - mu D s`` (``s`` solved ``(G + mu D) s = -g``), exact when CG has
        converged, which saves a pass over the data.
        """
        if self.gram is not None:
            gram = self.gram * (self.mask[:, None] * self.mask[None, :])
            return gram @ s + _blocks_times(self.residual_blocks, s)
        if self.jac is not None:
            return self.jac.T @ (self.jac @ s) + _blocks_times(self.residual_blocks, s)
        return -g - self.mu * self.scale * s
