"""Which problem a model and its data get."""

from __future__ import annotations

import jax.numpy as jnp

from .._models._aion import AION
from .._models._base import AbstractSumOfTerms, ModelSum
from .._models._gaussian import GaussianAtoms
from ._aion import AIONResummation
from ._autodiff import AutodiffProblem
from ._base import AbstractProblem
from ._collocation import Collocation, CollocationProblem
from ._collocation_grid import GridCollocationProblem
from ._gaussian import GaussianResummation
from ._grid import GridData, GridResummation
from ._projection import ProjectedAION
from ._sum import SumProblem


def make_problem(model: AbstractSumOfTerms, x, y, chunk_size: int | None = None, *,
                 projection: bool = False, weights=None) -> AbstractProblem:
    """The fastest problem for ``model`` on ``(x, y)``: variable projection when asked; a
    resummation where the model has one (AION, GaussianAtoms; AION on a grid through its
    Kronecker structure, unweighted); a sum of models part by part; autodiff otherwise.
    ``weights`` (per point, ``w_n >= 0``) make ``Phi = sum_n w_n (f(x_n) - y_n)^2``; grid data
    with weights are used as points. ``x`` a tuple of `Collocation` terms (and no ``y``):
    their physics-informed residuals (linear operators on tensor grids through the grids' sums,
    `GridCollocationProblem`)."""
    if isinstance(x, tuple) and x and isinstance(x[0], Collocation):
        if isinstance(model, AION) and any(t.uses_grid_sums for t in x):
            return GridCollocationProblem(model, x)
        return CollocationProblem(model, x)
    if projection:
        return ProjectedAION(model, x, y)
    if isinstance(x, GridData):
        if isinstance(model, AION) and weights is None:
            return GridResummation(model, x)
        x, y = x.points(), x.values()
        weights = None if weights is None else weights.reshape(-1)
    if isinstance(model, ModelSum):
        zeros = jnp.zeros_like(y)
        parts = tuple(make_problem(part, x, zeros, chunk_size) for part in model.parts)
        return SumProblem(parts, x, y, chunk_size=chunk_size, weights=weights)
    if isinstance(model, AION):
        return AIONResummation(model, x, y, chunk_size=chunk_size, weights=weights)
    if isinstance(model, GaussianAtoms):
        return GaussianResummation(model, x, y, chunk_size=chunk_size, weights=weights)
    return AutodiffProblem(model, x, y, chunk_size=chunk_size, weights=weights)
