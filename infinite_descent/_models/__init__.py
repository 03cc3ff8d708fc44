"""Models of the Infinity Class: sums of terms with disjoint parameters."""

from ._aion import AION
from ._gaussian import GaussianAtoms
from ._protocol import SumOfTerms
from ._shallow import ShallowNetwork

__all__ = ["AION", "GaussianAtoms", "ShallowNetwork", "SumOfTerms"]
