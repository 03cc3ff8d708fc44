"""Problems: a model over its data, as the SNR loop iterates on it (one kind per module).

- `_base`: the interface (`AbstractProblem`) and the chunked sums of a sum-of-terms model on
  scattered points (`AbstractPointProblem`);
- `_aion`: AION through its resummation; `_gaussian`: `GaussianAtoms` through theirs;
- `_autodiff`: any `AbstractSumOfTerms` model by automatic differentiation;
- `_grid`: AION on tensor-grid data (`GridData`), through the Kronecker structure;
- `_projection`: AION with the first dimension's linear parameters projected out;
- `_collocation`: physics-informed residuals (`Collocation`) of any sum-of-terms model, in
  closed form for AION.
- `_precision`: a float32 problem with its sums and loop in float64 (`MixedPrecision`).

`_select.make_problem` picks the fastest one for a model and its data.
"""

