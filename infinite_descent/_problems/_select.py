"""Which problem a model and its data get."""

from __future__ import annotations

from .._models._aion import AION
from .._models._base import AbstractSumOfTerms
from .._models._gaussian import GaussianAtoms
from ._aion import AIONResummation
from ._autodiff import AutodiffProblem
from ._base import AbstractProblem
from ._gaussian import GaussianResummation
from ._grid import GridData, GridResummation
from ._projection import ProjectedAION


def make_problem(model: AbstractSumOfTerms, x, y, chunk_size: int | None = None, *,
                 projection: bool = False) -> AbstractProblem:
    """The fastest problem for ``model`` on ``(x, y)``: variable projection when asked; a
    resummation where the model has one (AION, GaussianAtoms; AION on a grid through its
    Kronecker structure); autodiff otherwise."""
    if projection:
        return ProjectedAION(model, x, y)
    if isinstance(x, GridData):
        if isinstance(model, AION):
            return GridResummation(model, x)
        x, y = x.points(), x.values()
    if isinstance(model, AION):
        return AIONResummation(model, x, y, chunk_size=chunk_size)
    if isinstance(model, GaussianAtoms):
        return GaussianResummation(model, x, y, chunk_size=chunk_size)
    return AutodiffProblem(model, x, y, chunk_size=chunk_size)
