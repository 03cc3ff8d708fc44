"""Models of the Infinity Class."""

from ._aion import AION

__all__ = ["AION"]
