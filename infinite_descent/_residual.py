"""``resummed_residual``: ``F(delta) = grad Phi(model + delta)`` as a pure function."""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import Array

from ._checks import check_data, check_finite, check_grid, check_model
from ._models._base import AbstractSumOfTerms
from ._problems._base import AbstractProblem
from ._problems._grid import GridData
from ._problems._select import make_problem


class ResummedResidual(eqx.Module):
    """``F(delta) = grad Phi(model + delta)``, a pure function of the shift ``delta``.

    Returned by `resummed_residual`. Call it with ``delta`` shaped like
    ``eqx.filter(model, eqx.is_inexact_array)`` (zeros = no shift); it returns the gradient in
    that same structure, as ``eqx.filter_grad`` would.

    Besides ``__call__`` it offers ``loss(delta)`` (``Phi`` at ``model + delta``),
    ``normal_equations(delta)`` (``Phi``, ``J^T r`` and ``J^T J`` from one pass) and
    ``rank_blocks(delta)`` (the per-rank diagonal blocks of the Jacobian of ``F``, which is the
    Hessian of ``Phi``; shape ``(rank, m, m)``, each rank's parameters ordered
    ``A, alpha, omega, phi`` and, within each, row-major over ``(dims, terms)``).
    """

    problem: AbstractProblem
    structure: object  # the filtered model: the template for inputs and outputs

    def _stack(self, delta) -> Array:
        if jax.tree.structure(delta) != jax.tree.structure(self.structure):
            raise TypeError(
                "resummed_residual: `delta` must have the structure of "
                "`eqx.filter(model, eqx.is_inexact_array)` (e.g. `jax.tree.map(jnp.zeros_like, "
                f"eqx.filter(model, eqx.is_inexact_array))`), got {type(delta).__name__}."
            )
        return self.problem.stack(delta)

    # Each method is compiled once per shape (eqx.filter_jit), so that calling F eagerly is
    # as fast as calling it inside the user's own jit.
    @eqx.filter_jit
    def __call__(self, delta):
        d = self._stack(delta)
        gradient = 2 * self.problem.normal_equations(d, gram=False).g
        model = self.problem.to_model(gradient.reshape(self.problem.theta.shape), self.structure)
        return eqx.filter(model, eqx.is_inexact_array)

    @eqx.filter_jit
    def loss(self, delta) -> Array:
        """``Phi = sum_n (f(x_n) - y_n)^2`` at ``model + delta``."""
        return self.problem.normal_equations(self._stack(delta), gram=False).loss

    @eqx.filter_jit
    def normal_equations(self, delta) -> tuple[Array, Array, Array]:
        """``(Phi, J^T r, J^T J)`` at ``model + delta`` from one pass over the data: the sums
        of a Gauss-Newton step, flat over the parameters in the problem's layout (for AION
        rank-major, ``A, alpha, omega, phi`` within a rank)."""
        eq = self.problem.normal_equations(self._stack(delta), gram=True)
        return eq.loss, eq.g, eq.gram

    @eqx.filter_jit
    def rank_blocks(self, delta) -> Array:
        """Per-rank Hessian blocks of ``Phi`` at ``model + delta``, shape ``(rank, m, m)``."""
        return self.problem.rank_blocks(self._stack(delta))


def resummed_residual(model: AbstractSumOfTerms, x, y=None) -> ResummedResidual:
    """The resummed residual ``F(delta) = grad Phi(model + delta)``.

    ``Phi(Theta) = sum_n (f(x_n; Theta) - y_n)^2`` (no 1/2, no mean). For AION the basis
    ``exp(z(x_n; Theta))`` is computed here, once; every call ``F(delta)`` then costs one pass
    over the data: ``r d P`` complex multiplications by the shift ``exp(<a, delta>)`` per
    point, leave-one-out products (prefix and suffix, no division) and a reduction. Other
    models get the same function by their own resummation or by autodiff.

    **Arguments:**

    - ``model``: the model at ``Theta`` (an `AION` or any `AbstractSumOfTerms`).
    - ``x``: inputs, shape ``(N, dim)``; ``y``: targets, shape ``(N,)``. Real floating arrays,
      cast to the model's dtype. Or ``x`` a `GridData` and no ``y``.

    **Returns** a pure function (an ``eqx.Module``) ``F``: ``F(delta)`` takes ``delta`` shaped
    like ``eqx.filter(model, eqx.is_inexact_array)`` and returns ``grad Phi`` at
    ``model + delta`` in that same structure. ``F.loss(delta)`` is ``Phi`` there and
    ``F.rank_blocks(delta)`` the per-rank diagonal blocks of the Hessian.

    ```python
    F = idn.resummed_residual(model, x, y)
    zero = jax.tree.map(jnp.zeros_like, eqx.filter(model, eqx.is_inexact_array))
    grad_at_start = F(zero)
    ```
    """
    caller = "resummed_residual"
    check_model(model, caller)
    if isinstance(x, GridData):
        grid = check_grid(model, x, y, caller)
        check_finite(caller, model, {"y": grid.y})
        problem = make_problem(model, grid, None)
    else:
        x_checked, y_checked = check_data(model, x, y, caller)
        check_finite(caller, model, {"x": x_checked, "y": y_checked}, {"x": x, "y": y})
        problem = make_problem(model, x_checked, y_checked)
    return ResummedResidual(problem=problem,
                            structure=eqx.filter(model, eqx.is_inexact_array))
