"""The solver: the SNR configuration and its pieces (`_snr`), the linear solvers of the damped
system (`_linear`), and the one bounded loop every entry point runs (`_iterate`)."""

from ._iterate import IterateHistory, IterateResult, iterate
from ._linear import (
    CG,
    AbstractLinearSolver,
    AutoLinearSolver,
    BlockJacobi,
    Cholesky,
    DampedSystem,
    Woodbury,
    default_chunk_size,
    linear_solver_from,
    linear_solver_name,
    memory_budget_bytes,
    resolve_linear_solver,
)
from ._snr import SNR, SNRState

__all__ = [
    "CG",
    "SNR",
    "AbstractLinearSolver",
    "AutoLinearSolver",
    "BlockJacobi",
    "Cholesky",
    "DampedSystem",
    "IterateHistory",
    "IterateResult",
    "SNRState",
    "Woodbury",
    "default_chunk_size",
    "iterate",
    "linear_solver_from",
    "linear_solver_name",
    "memory_budget_bytes",
    "resolve_linear_solver",
]
