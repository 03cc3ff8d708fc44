"""infinite_descent: the Method of Infinite Descent for JAX.

Fit an AION model by solving the optimality condition ``grad Phi(Theta + Delta) = 0``
directly, through its exact resummation, with a stabilised Structured Newton-Raphson loop.

Public names:

- :class:`AION`: the model (an ``equinox.Module``).
- :class:`GridData`: tensor-grid data, accepted wherever ``x, y`` are.
- :class:`SumOfTerms`: the Infinity Class as an interface; :class:`GaussianAtoms` and
  :class:`ShallowNetwork` beside AION.
- :func:`resummed_residual`: ``F(delta) = grad Phi(model + delta)`` as a pure function.
- :func:`solve`: the SNR solve, ``(model_star, info)``.
- :func:`solve_once`: the solve as an optax ``GradientTransformationExtraArgs``.
- :func:`regularized_newton`: fixed-regularization Newton steps as an optax transformation
  (the method of the Newton-NTK analysis of shallow networks).
- :func:`multistart`: many starts at once under ``jax.vmap``, the best kept.
- :func:`expand`: grow a model a term at a time (iterative architecture expansion).
- :func:`matrix_pencil`: a non-iterative AION start for one-dimensional data on a uniform grid.
- :class:`SolveInfo`, :class:`SolveHistory`, :class:`SolveOnceState`, :class:`RESULTS`: what a
  solve reports.
- :mod:`problems`: the paper's toy and certified reference problems.
"""

from . import problems
from ._expand import ExpansionStep, expand
from ._grid import GridData
from ._models import AION, GaussianAtoms, ShallowNetwork, SumOfTerms
from ._multistart import MultistartInfo, multistart
from ._newton import NewtonState, regularized_newton
from ._pencil import matrix_pencil
from ._solution import RESULTS, SolveHistory, SolveInfo
from ._solve import resummed_residual, solve
from ._transform import SolveOnceState, solve_once

__version__ = "0.1.0"

__all__ = [
    "AION",
    "ExpansionStep",
    "GaussianAtoms",
    "GridData",
    "MultistartInfo",
    "NewtonState",
    "RESULTS",
    "ShallowNetwork",
    "SolveHistory",
    "SolveInfo",
    "SolveOnceState",
    "SumOfTerms",
    "expand",
    "matrix_pencil",
    "multistart",
    "problems",
    "regularized_newton",
    "resummed_residual",
    "solve",
    "solve_once",
]
