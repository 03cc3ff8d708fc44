"""``report``: a fit's summary a person can read (as lmfit prints one)."""

from __future__ import annotations

import jax
import numpy as np

from ._solution import RESULTS, SolveInfo


def _rows(params, errors):
    rows = []
    leaves = jax.tree_util.tree_leaves_with_path(params)
    error_leaves = [None] * len(leaves) if errors is None else jax.tree.leaves(errors)
    for (path, value), error in zip(leaves, error_leaves):
        name = jax.tree_util.keystr(path) or "params"
        values = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
        errs = None if error is None else np.atleast_1d(np.asarray(error, dtype=float)).ravel()
        for i, v in enumerate(values):
            label = name if values.size == 1 else f"{name}[{i}]"
            rows.append((label, v, None if errs is None else errs[i]))
    return rows


def report(info: SolveInfo, params=None, errors=None) -> str:
    """A fit's summary as text: the loss before and after, the inner iterations, the passes
    over the data, the result's message, and, given the fitted ``params`` (any pytree, or a
    model) and their ``errors`` (from `standard_errors`, shaped like them), a table of each
    parameter with its standard error and relative error.

    ```python
    t = jnp.linspace(0.0, 1.0, 50)
    data = 2.0 * jnp.exp(-3.0 * t) + 0.01 * jnp.sin(37.0 * t)

    def residuals(p, t):
        return p["a"] * jnp.exp(-p["k"] * t) - data

    fit, info = idn.least_squares(residuals, {"a": 1.0, "k": 1.0}, t)
    print(idn.report(info, fit, idn.standard_errors(residuals, fit, t)))
    ```
    """
    message = RESULTS[info.result] or "converged (a convergence test was met)"
    lines = [
        "[[Fit]]",
        f"    result          {message}",
        f"    loss            {float(info.initial_loss):.6g} -> {float(info.loss):.6g}",
        f"    inner steps     {int(info.inner_steps)} ({int(info.accepted_steps)} accepted)",
        f"    data passes     {int(info.data_passes)}",
        f"    linear solver   {info.linear_solver}, {info.hessian} Hessian",
    ]
    if params is not None:
        lines.append("[[Parameters]]")
        rows = _rows(params, errors)
        width = max(len(r[0]) for r in rows)
        for label, value, error in rows:
            if error is None:
                lines.append(f"    {label:<{width}}  {value: .8g}")
            else:
                relative = abs(error / value) if value != 0 else float("inf")
                lines.append(f"    {label:<{width}}  {value: .8g} +/- {error:.3g} "
                             f"({100 * relative:.2f}%)")
    return "\n".join(lines)
