"""infinite_descent: the Method of Infinite Descent for JAX.

Fit a model by solving its optimality condition ``grad Phi(Theta + Delta) = 0`` directly,
through the exact resummation of AION, with a stabilised Structured Newton-Raphson loop.

Public names:

- Models: `AION`; `GaussianAtoms` and `ShallowNetwork` beside it; `ModelSum` (models of
  different families added, ``a + b``); `AbstractSumOfTerms` (the Infinity Class as an
  interface; `SumOfTerms` is its earlier name).
- Data: `GridData`, tensor-grid data, accepted wherever ``x, y`` are; `Collocation`,
  physics-informed residuals in the model's derivatives, accepted in place of the data.
- The solver: `SNR` (its configuration), and the linear solvers of its damped system:
  `Cholesky`, `Woodbury`, `CG`, `BlockJacobi`, `AutoLinearSolver` (`AbstractLinearSolver`).
- Entry points: `solve`, `least_squares` (any residual function), `solve_once` (an optax transformation), `multistart`, `expand`,
  `resummed_residual`, `regularized_newton`, `matrix_pencil`.
- Fits to publish: `curve_fit` (scipy's interface), `covariance`, `standard_errors`,
  `report`.
- What they report: `SolveInfo`, `SolveHistory`, `SolveOnceState`, `MultistartInfo`,
  `ExpansionStep`, `NewtonState`, `RESULTS`.
- `problems`: the paper's toy and certified reference problems.
"""

from . import problems
from ._curve_fit import curve_fit
from ._expand import ExpansionStep, expand
from ._least_squares import least_squares
from ._models._aion import AION
from ._models._base import AbstractSumOfTerms, ModelSum, SumOfTerms
from ._models._gaussian import GaussianAtoms
from ._models._shallow import ShallowNetwork
from ._multistart import MultistartInfo, multistart
from ._newton import NewtonState, regularized_newton
from ._pencil import matrix_pencil
from ._problems._collocation import Collocation
from ._problems._grid import GridData
from ._report import report
from ._residual import resummed_residual
from ._solution import RESULTS, SolveHistory, SolveInfo
from ._solve import solve
from ._solver._linear import (
    CG,
    AbstractLinearSolver,
    AutoLinearSolver,
    BlockJacobi,
    Cholesky,
    Woodbury,
)
from ._solver._snr import SNR
from ._transform import SolveOnceState, solve_once
from ._uncertainty import covariance, standard_errors

__version__ = "0.2.0.dev0"

__all__ = [
    "AION",
    "CG",
    "Collocation",
    "RESULTS",
    "SNR",
    "AbstractLinearSolver",
    "AbstractSumOfTerms",
    "AutoLinearSolver",
    "BlockJacobi",
    "Cholesky",
    "ExpansionStep",
    "GaussianAtoms",
    "GridData",
    "ModelSum",
    "MultistartInfo",
    "NewtonState",
    "ShallowNetwork",
    "SolveHistory",
    "SolveInfo",
    "SolveOnceState",
    "SumOfTerms",
    "Woodbury",
    "covariance",
    "curve_fit",
    "expand",
    "least_squares",
    "matrix_pencil",
    "multistart",
    "problems",
    "regularized_newton",
    "report",
    "resummed_residual",
    "solve",
    "solve_once",
    "standard_errors",
]
