r"""How the damped Newton system of one inner iteration is solved.

Each inner iteration of the SNR loop solves

$$
(G + \mu\, \mathrm{diag}(D))\, s = -g, \qquad G = J^T J \;(+\; \mathrm{blockdiag}_j K_j),
$$

where ``g = J^T r`` (half the gradient of ``Phi``), ``K_j = sum_n r_n Hess T_j(x_n)`` is the
residual-weighted part of the exact Hessian (block-diagonal over ranks; half of it, like
``G``) and ``D`` is the Levenberg-Marquardt scaling. One class per way of solving it, as lineax has one per
factorisation; each says which sums of the data it needs, factors the system once
(``init``) and solves it for any right-hand side (``solve``):

- `Cholesky` (``"dense"``): the whole ``M x M`` system, one Cholesky factorisation. Memory ``O(M^2)``, cost
  ``O(N M^2 + M^3)``. It keeps the cross-rank coupling of ``J^T J``: the exact damped step.
- `Woodbury` (``"woodbury"``): the push-through identity
  ``(B + J^T J)^{-1} = B^{-1} - B^{-1} J^T (I + J B^{-1} J^T)^{-1} J B^{-1}`` with ``B`` the
  damping (and the residual blocks): an ``N x N`` system, ``O(N^2 M + N^3)``. Exact; cheaper
  than dense when ``N < M``. Needs ``J`` (``N x M``) in memory.
- `CG` (``"cg"``): conjugate gradients (lineax) on the damped system, matrix-free: each product
  ``v -> J^T (J v)`` is a JVP and a VJP over the data (one pass), preconditioned by the
  inverse per-rank diagonal blocks. Memory ``O(M r m + K M)``; for large ``M``. Exact to the
  CG tolerance.
- `BlockJacobi` (``"block"``): the paper's step: only the ``r`` diagonal blocks of ``G``, each factored on its
  own: ``O(r m^3)``. It drops the coupling, so it is a block-Jacobi approximation.

`AutoLinearSolver` (``"auto"``) picks one from ``N``, ``M`` and the memory. Factorisations go
through lineax's Cholesky on operators tagged positive semidefinite. If a
system is not positive definite (possible with the residual-weighted term) the result is
non-finite; the SNR loop rejects such a step and raises the damping.
"""


from __future__ import annotations

import abc
import functools
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array

from .._problems._base import AbstractProblem, NormalEquations


@functools.lru_cache(maxsize=None)
def memory_budget_bytes() -> int:
    """A budget for the ``N``-sized temporaries of one iteration: 1/8 of the device memory.

    Read from the accelerator's memory statistics where JAX reports them, else from the
    machine's physical memory. Read once per process.
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


def default_chunk_size(num_data: int, num_params: int, itemsize: int = 8) -> int | None:
    """``None`` when the ``N x M`` Jacobian fits the memory budget, else the largest chunk
    (a multiple of 1024 points) whose ``K x M`` Jacobian does."""
    budget = memory_budget_bytes()
    if num_data * num_params * itemsize <= budget:
        return None
    return max(1024, (budget // (num_params * itemsize)) // 1024 * 1024)


class _Factor(eqx.Module):
    """One matrix factored once by lineax: Cholesky when it is symmetric positive definite
    (the damped Gauss-Newton systems), LU when it need not be (``definite=False``)."""

    operator: lx.MatrixLinearOperator
    state: object
    definite: bool = eqx.field(static=True)

    def __init__(self, matrix: Array, definite: bool = True):
        tags = lx.positive_semidefinite_tag if definite else ()
        self.operator = lx.MatrixLinearOperator(matrix, tags)
        self.definite = definite
        self.state = self._solver().init(self.operator, {})

    def _solver(self):
        return lx.Cholesky() if self.definite else lx.LU()

    def solve(self, rhs: Array) -> Array:
        return lx.linear_solve(
            self.operator, rhs, self._solver(), state=self.state, throw=False
        ).value


def _block_diagonal(blocks: Array) -> Array:
    ranks, m, _ = blocks.shape
    idx = jnp.arange(ranks)
    full = jnp.zeros((ranks, m, ranks, m), blocks.dtype).at[idx, :, idx, :].set(blocks)
    return full.reshape(ranks * m, ranks * m)


def _blocks_times(blocks: Array | None, v: Array) -> Array:
    if blocks is None:
        return jnp.zeros_like(v)
    ranks, m, _ = blocks.shape
    return jnp.einsum("jab,jb->ja", blocks, v.reshape(ranks, m)).reshape(-1)


def _block_solve(factors: _Factor, rhs: Array) -> Array:
    block_size = factors.operator.matrix.shape[-1]
    blocks = rhs.reshape(-1, block_size)
    return jax.vmap(lambda f, b: f.solve(b))(factors, blocks).reshape(rhs.shape)


def _masked_gram(eq: NormalEquations, mask: Array) -> Array:
    return eq.gram * (mask[:, None] * mask[None, :])


def _diagonal_blocks(matrix: Array, block_size: int) -> Array:
    ranks = matrix.shape[0] // block_size
    idx = jnp.arange(ranks)
    return matrix.reshape(ranks, block_size, ranks, block_size)[idx, :, idx, :]


def _damped_blocks(grams: Array, residual_blocks: Array | None, damping: Array) -> Array:
    ranks, m, _ = grams.shape
    if residual_blocks is not None:
        grams = grams + residual_blocks
    return grams + jax.vmap(jnp.diag)(damping.reshape(ranks, m))


class DampedSystem(eqx.Module):
    """What every linear solver is handed: the damped system of one iteration.

    ``G + mu diag(scale)`` with ``G = J^T J`` (from ``eq``, the sums of one pass) plus the
    per-block ``residual_blocks`` (the exact Hessian's second term, or ``None``); ``mask``
    zeroes frozen parameters; ``problem`` at ``delta`` gives products with ``J^T J`` for the
    matrix-free solver.
    """

    eq: NormalEquations
    scale: Array
    mu: Array
    mask: Array
    residual_blocks: Array | None
    problem: AbstractProblem
    delta: Array

    @property
    def damping(self) -> Array:
        return self.mu * self.scale


class AbstractLinearSolver(eqx.Module):
    """How the damped system of one inner iteration is solved (see the module docstring).

    ``sums()`` names what the pass over the data must produce (``gram``, ``rank_grams``,
    ``jac``: flags of `NormalEquations`); ``init`` factors the system once; ``solve`` solves
    it for one right-hand side and says how many passes over the data that took;
    ``model_product`` gives ``G s`` for the quadratic model's predicted decrease.

    A new way of solving the step is a subclass with these four methods (see
    ``docs/contributing.md``); pass an instance as ``SNR(linear_solver=...)``.

    ```python
    for linear_solver in (idn.Cholesky(), idn.CG(rtol=1e-12), idn.BlockJacobi()):
        assert isinstance(linear_solver, idn.AbstractLinearSolver)
        _, info = idn.solve(start, x, y, solver=idn.SNR(linear_solver), throw=False)
        print(info.linear_solver, int(info.inner_steps), float(info.loss))
    ```
    """

    @abc.abstractmethod
    def sums(self) -> dict[str, bool]:
        """Which optional sums of `NormalEquations` this solver needs."""

    @abc.abstractmethod
    def init(self, system: DampedSystem, definite: bool = True):
        """Factor ``system`` (LU rather than Cholesky where ``definite`` is ``False``)."""

    @abc.abstractmethod
    def solve(self, state, system: DampedSystem, rhs: Array) -> tuple[Array, Array]:
        """``(G + mu D)^{-1} rhs`` and the passes over the data it took."""

    @abc.abstractmethod
    def model_product(self, state, system: DampedSystem, s: Array) -> Array:
        """``G s``."""


_NO_PASSES = 0


class Cholesky(AbstractLinearSolver):
    """The whole ``M x M`` damped system, accumulated over the data and factored once by
    Cholesky: the exact damped step, cross-rank coupling included. Cost per iteration
    ``O(N M^2 + M^3)``, memory ``O(M^2)``. String shortcut ``"dense"``.

    ```python
    model, info = idn.solve(start, x, y, solver=idn.SNR(linear_solver=idn.Cholesky()))
    ```
    """

    def sums(self) -> dict[str, bool]:
        return {"gram": True, "rank_grams": False, "jac": False}

    def init(self, system: DampedSystem, definite: bool = True):
        matrix = _masked_gram(system.eq, system.mask)
        if system.residual_blocks is not None:
            matrix = matrix + _block_diagonal(system.residual_blocks)
        return _Factor(matrix + jnp.diag(system.damping), definite=definite)

    def solve(self, state, system, rhs):
        return state.solve(rhs), jnp.asarray(_NO_PASSES, jnp.int32)

    def model_product(self, state, system, s):
        gram = _masked_gram(system.eq, system.mask)
        return gram @ s + _blocks_times(system.residual_blocks, s)


class BlockJacobi(AbstractLinearSolver):
    """The paper's block-diagonal step: only the diagonal blocks of ``G`` (one per rank), each
    factored on its own, ``O(r m^3)``. It drops the cross-rank coupling of ``J^T J``, so it is
    a block-Jacobi approximation, kept to be measured as what it is. String shortcut
    ``"block"``. With the exact Hessian (``SNR(BlockJacobi(), hessian="exact")``) it is the
    paper's step.

    ```python
    _, info = idn.solve(start, x, y, solver=idn.SNR(idn.BlockJacobi()), throw=False)
    print(info.linear_solver, int(info.inner_steps))   # more iterations than the exact step
    ```
    """

    def sums(self) -> dict[str, bool]:
        return {"gram": True, "rank_grams": False, "jac": False}

    def init(self, system: DampedSystem, definite: bool = True):
        m = system.problem.block_size
        grams = _diagonal_blocks(_masked_gram(system.eq, system.mask), m)
        damped = _damped_blocks(grams, system.residual_blocks, system.damping)
        return jax.vmap(lambda b: _Factor(b, definite=definite))(damped)

    def solve(self, state, system, rhs):
        return _block_solve(state, rhs), jnp.asarray(_NO_PASSES, jnp.int32)

    def model_product(self, state, system, s):
        gram = _masked_gram(system.eq, system.mask)
        return gram @ s + _blocks_times(system.residual_blocks, s)


class _WoodburyState(eqx.Module):
    jac: Array
    base: _Factor | None
    capacitance: _Factor


class Woodbury(AbstractLinearSolver):
    """The push-through identity: with ``B`` the damping (plus the residual blocks),
    ``(B + J^T J)^{-1} = B^{-1} - B^{-1} J^T (I + J B^{-1} J^T)^{-1} J B^{-1}``, an ``N x N``
    system, ``O(N^2 M + N^3)``. Exact; cheaper than `Cholesky` when ``N < M``. Needs ``J``
    (``N x M``) in memory, so no chunks. String shortcut ``"woodbury"``.

    ```python
    net = idn.ShallowNetwork(width=64, dim=2, key=jax.random.key(0))   # 256 parameters
    xs, ys = x[::25], y[::25]                                          # 25 points: N < M
    net, info = idn.solve(net, xs, ys, solver=idn.SNR(idn.Woodbury()), max_steps=20,
                          throw=False)
    print(info.linear_solver, float(info.loss))
    ```
    """

    def sums(self) -> dict[str, bool]:
        return {"gram": False, "rank_grams": False, "jac": True}

    def _base_solve(self, base: _Factor | None, system: DampedSystem, v: Array) -> Array:
        if base is None:
            return v / system.damping
        return _block_solve(base, v)

    def init(self, system: DampedSystem, definite: bool = True):
        jac = system.eq.jac * system.mask[None, :]
        # B = blockdiag(K_j) + mu diag(scale); the capacitance I + J B^-1 J^T is factored
        # here and B^-1 (per-rank or diagonal) applied on the fly. With the residual
        # blocks B need not be definite even when the whole system is: LU then.
        base = None
        if system.residual_blocks is not None:
            zero = jnp.zeros_like(system.residual_blocks)
            damped = _damped_blocks(zero, system.residual_blocks, system.damping)
            base = jax.vmap(lambda b: _Factor(b, definite=False))(damped)
        b_inv_jt = jax.vmap(lambda v: self._base_solve(base, system, v), in_axes=1,
                            out_axes=1)(jac.T)
        capacitance = jnp.eye(jac.shape[0], dtype=jac.dtype) + jac @ b_inv_jt
        definite = definite and system.residual_blocks is None
        return _WoodburyState(jac, base, _Factor(capacitance, definite=definite))

    def solve(self, state, system, rhs):
        b_inv_rhs = self._base_solve(state.base, system, rhs)
        inner = state.capacitance.solve(state.jac @ b_inv_rhs)
        step = b_inv_rhs - self._base_solve(state.base, system, state.jac.T @ inner)
        return step, jnp.asarray(_NO_PASSES, jnp.int32)

    def model_product(self, state, system, s):
        return state.jac.T @ (state.jac @ s) + _blocks_times(system.residual_blocks, s)


class CG(AbstractLinearSolver):
    """Matrix-free conjugate gradients (lineax) on the damped system: each product
    ``v -> J^T (J v)`` is a JVP and a VJP over the data (one pass, counted), preconditioned by
    the inverse per-rank diagonal blocks. Memory ``O(M m + K M)``; for large ``M``. Exact to
    the CG tolerance. It needs a positive definite system, so not the exact Hessian. String
    shortcut ``"cg"``.

    **Arguments:** ``rtol`` (CG's relative residual tolerance, default ``1e-10``),
    ``max_steps`` (default ``None``: ``4 M``).

    ```python
    _, info = idn.solve(start, x, y, solver=idn.SNR(idn.CG(rtol=1e-12)))
    print(int(info.inner_steps), int(info.data_passes))   # each CG product is a pass
    ```
    """

    rtol: float = 1e-10
    max_steps: int | None = None

    def __check_init__(self):
        if not (isinstance(self.rtol, (int, float)) and 0 < self.rtol < 1):
            raise ValueError(f"CG: `rtol` must be a number in (0, 1), got {self.rtol!r}.")
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
            or self.max_steps < 1
        ):
            raise ValueError(f"CG: `max_steps` must be a positive integer or None, got "
                             f"{self.max_steps!r}.")

    def sums(self) -> dict[str, bool]:
        return {"gram": False, "rank_grams": True, "jac": False}

    def init(self, system: DampedSystem, definite: bool = True):
        m = system.problem.block_size
        blocks = system.mask.reshape(-1, m)
        grams = system.eq.rank_grams * (blocks[:, :, None] * blocks[:, None, :])
        damped = _damped_blocks(grams, system.residual_blocks, system.damping)
        return jax.vmap(lambda b: _Factor(b, definite=definite))(damped)

    def solve(self, state, system, rhs):
        def matvec(v):
            v = v * system.mask
            gv = system.problem.gram_matvec(system.delta, v) * system.mask
            return gv + _blocks_times(system.residual_blocks, v) + system.damping * v

        structure = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)
        operator = lx.FunctionLinearOperator(matvec, structure, lx.positive_semidefinite_tag)
        preconditioner = lx.FunctionLinearOperator(
            lambda v: _block_solve(state, v), structure, lx.positive_semidefinite_tag
        )
        max_steps = self.max_steps or 4 * rhs.shape[0]
        solution = lx.linear_solve(
            operator, rhs, lx.CG(rtol=self.rtol, atol=0.0, max_steps=max_steps),
            options={"preconditioner": preconditioner}, throw=False,
        )
        return solution.value, solution.stats["num_steps"].astype(jnp.int32)

    def model_product(self, state, system, s):
        # G s = -g - mu D s for s solved (G + mu D) s = -g: exact once CG has converged, and
        # it saves a pass over the data.
        return -system.eq.g - system.damping * s


# "auto" switches to matrix-free CG above this many parameters: a dense M x M factorisation
# costs M^3 / 3 flops per iteration and M^2 memory, which stop paying around here on a CPU.
DENSE_MAX_PARAMS = 2048


class AutoLinearSolver(eqx.Module):
    """Picks a linear solver from the problem's size, once, before the loop is compiled:

    - ``M > 2048``: `CG` (a dense factorisation would dominate every iteration);
    - ``N < M`` and the ``N x M`` Jacobian fits in an eighth of the memory (and the data are
      not chunked): `Woodbury`;
    - otherwise `Cholesky`.

    String shortcut ``"auto"``; the default. ``info.linear_solver`` names the one it chose.

    ```python
    choice = idn.AutoLinearSolver().resolve(num_data=625, num_params=8)
    print(type(choice).__name__)                      # Cholesky
    ```
    """

    dense_max_params: int = DENSE_MAX_PARAMS

    def resolve(self, num_data: int, num_params: int, itemsize: int = 8,
                chunked: bool = False) -> AbstractLinearSolver:
        if num_params > self.dense_max_params:
            return CG()
        fits = num_data * num_params * itemsize <= memory_budget_bytes()
        if num_data < num_params and fits and not chunked:
            return Woodbury()
        return Cholesky()


LINEAR_SOLVER_NAMES = {
    "auto": AutoLinearSolver,
    "dense": Cholesky,
    "woodbury": Woodbury,
    "cg": CG,
    "block": BlockJacobi,
}


def linear_solver_from(value, caller: str = "SNR") -> AbstractLinearSolver | AutoLinearSolver:
    """A linear solver object from itself or its string shortcut (the one place the strings
    are mapped)."""
    if isinstance(value, (AbstractLinearSolver, AutoLinearSolver)):
        return value
    if isinstance(value, str) and value in LINEAR_SOLVER_NAMES:
        return LINEAR_SOLVER_NAMES[value]()
    raise ValueError(
        f"{caller}: `linear_solver` must be one of {tuple(LINEAR_SOLVER_NAMES)} or a linear "
        f"solver object (idn.Cholesky(), idn.Woodbury(), idn.CG(...), idn.BlockJacobi(), "
        f"idn.AutoLinearSolver()), got {value!r}."
    )


def resolve_linear_solver(value, num_data: int, num_params: int, itemsize: int = 8,
                          chunked: bool = False) -> AbstractLinearSolver:
    """The concrete solver for ``value`` on a problem of this size."""
    solver = linear_solver_from(value)
    if isinstance(solver, Woodbury) and chunked:
        raise ValueError(
            "linear_solver='woodbury' needs the whole N x M Jacobian; it does not combine with "
            "chunk_size (use 'dense' or 'cg')."
        )
    if isinstance(solver, AutoLinearSolver):
        return solver.resolve(num_data, num_params, itemsize, chunked)
    return solver


def linear_solver_name(solver: AbstractLinearSolver) -> str:
    """The string shortcut of a concrete solver (what ``info.linear_solver`` reports)."""
    for name, cls in LINEAR_SOLVER_NAMES.items():
        if type(solver) is cls:
            return name
    return type(solver).__name__
