"""Models of the Infinity Class: sums of terms with disjoint parameters."""

from ._aion import AION
from ._base import AbstractSumOfTerms, SumOfTerms, default_float_dtype
from ._gaussian import GaussianAtoms
from ._shallow import ShallowNetwork

__all__ = [
    "AION",
    "AbstractSumOfTerms",
    "GaussianAtoms",
    "ShallowNetwork",
    "SumOfTerms",
    "default_float_dtype",
]
