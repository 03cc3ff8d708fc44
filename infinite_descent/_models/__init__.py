"""Models of the Infinity Class: sums of terms with disjoint parameters (one family per module;
the public names are re-exported by the package's ``__init__``)."""
