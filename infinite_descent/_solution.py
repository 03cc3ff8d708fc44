"""Result codes and the information a solve returns."""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import Array, Bool, Float, Int


class RESULTS(eqx.Enumeration):
    """How a solve ended. ``RESULTS[code]`` is the readable message.

    - ``successful``: a convergence test was met (see [`solve`][infinite_descent.solve]).
    - ``max_steps_reached``: ``max_steps`` inner iterations ran before any test was met; the
      model returned is still the best point found and never worse than the start.
    - ``nonfinite_data``: ``x`` or ``y`` holds NaN or Inf; the start is returned unchanged.
    - ``stalled``: the damping had to grow until its steps could no longer change the loss,
      and still no step lowered it, far from any convergence test: not a minimum found.
    - ``nonfinite_start``: the model's loss at the start is not finite (for example an
      exponential overflowed); the start is returned unchanged.
    - ``singular_projection``: variable projection could not fit from this start (its
      linear basis is singular there); the start is returned unchanged.

    ```python
    model, info = idn.solve(start, x, y, max_steps=2, throw=False)
    if info.result != idn.RESULTS.successful:
        print(idn.RESULTS[info.result])               # the readable message
    ```
    """

    successful = ""
    max_steps_reached = (
        "The solve ran `max_steps` inner iterations without meeting a convergence test. The "
        "returned model is the best point found (never worse than the start); raise "
        "`max_steps` or loosen the tolerances, or pass `throw=False` to accept it as is."
    )
    nonfinite_data = (
        "The data `x` or `y` contain NaN or Inf values; the model was returned unchanged."
    )
    stalled = (
        "The solve stalled: no step lowered the loss even once the damping had shrunk it "
        "below the loss's rounding, so the loss reached (`info.loss`, never above the start's) "
        "is not a converged minimum: the model's gradient disagrees with its loss there (a "
        "non-smooth point, a start far from the data's scale, or exponentials at the edge of "
        "overflow). Try another start (`idn.multistart`), inputs rescaled to about [-1, 1], "
        "smaller growth rates `alpha`, or pass `throw=False` to accept the returned model as "
        "is."
    )
    nonfinite_start = (
        "The loss at the starting model is not finite (NaN or Inf: an exponential overflowed "
        "or the parameters are not finite); the model was returned unchanged. Rescale the "
        "inputs to about [-1, 1] or reduce the growth rates `alpha`."
    )
    singular_projection = (
        "Variable projection could not fit from this start: the basis it eliminates (the "
        "first dimension's cosine and sine columns) is singular or nearly so there (points "
        "that coincide, zero frequencies, atoms that coincide), and the projected solve ended "
        "above the start's loss or at a non-finite one. The start was returned unchanged; "
        "solve without `variable_projection`, or from another start."
    )


def result_messages(results: RESULTS) -> tuple[str, ...]:
    """The readable message of each entry of a batch of `RESULTS` codes (e.g. one per start
    of `multistart`)."""
    leaf = jax.tree.leaves(results)[0]
    return tuple(
        RESULTS[jax.tree.map(lambda c, k=k: c[k], results)] for k in range(leaf.shape[0])
    )


class SolveInfo(eqx.Module):
    """What [`solve`][infinite_descent.solve] did, for honest reporting.

    **Fields:**

    - ``loss``: ``Phi = sum_n (f(x_n) - y_n)^2`` at the returned model.
    - ``initial_loss``: ``Phi`` at the start.
    - ``grad_norm``: ``max |grad Phi|`` at the returned model.
    - ``inner_steps``: inner iterations (each solves one linear system and evaluates one
      candidate point). The paper's "one step" hides these; report them.
    - ``accepted_steps``: inner iterations whose candidate lowered ``Phi`` and was taken.
    - ``data_passes``: sweeps over the ``N`` data points, whatever each computes (values and
      Jacobian together count once; the per-rank second-derivative blocks count once more).
    - ``damping``: the final Levenberg-Marquardt damping ``lambda`` (relative to the scaling).
    - ``converged``: ``result == RESULTS.successful``.
    - ``result``: a [`RESULTS`][infinite_descent.RESULTS] code; ``RESULTS[info.result]`` is its
      message.
    - ``linear_solver``, ``hessian``: the strategies used (static strings).

    ```python
    model, info = idn.solve(start, x, y)
    print(f"Phi {float(info.initial_loss):.3g} -> {float(info.loss):.3g} in "
          f"{int(info.inner_steps)} inner iterations, {int(info.data_passes)} passes")
    ```

    - ``history``: with ``solve(..., record_history=True)``, a
      [`SolveHistory`][infinite_descent.SolveHistory] of every inner iterate; otherwise
      ``None``.
    """

    loss: Float[Array, ""]
    initial_loss: Float[Array, ""]
    grad_norm: Float[Array, ""]
    inner_steps: Int[Array, ""]
    accepted_steps: Int[Array, ""]
    data_passes: Int[Array, ""]
    damping: Float[Array, ""]
    converged: Bool[Array, ""]
    result: RESULTS
    linear_solver: str = eqx.field(static=True)
    hessian: str = eqx.field(static=True)
    history: "SolveHistory | None" = None


class SolveHistory(eqx.Module):
    """The inner iterates of one solve (``solve(..., record_history=True)``).

    Index 0 is the start and index ``k`` the point after inner iteration ``k`` (the same point
    again when the candidate was rejected); entries past ``info.inner_steps`` are NaN.
    Recording costs ``O(max_steps * M)`` memory; it is off by default.

    - ``loss``: ``Phi`` at each iterate, shape ``(max_steps + 1,)``.
    - ``params``: the parameters, shaped like the model's arrays with a leading
      ``max_steps + 1`` axis.
    - ``damping``: the damping ``lambda`` after each iteration.
    - ``accepted``: whether iteration ``k`` took its step.

    ```python
    model, info = idn.solve(start, x, y, record_history=True)
    k = int(info.inner_steps)
    print(info.history.loss[: k + 1])                 # Phi after each inner iteration
    ```
    """

    loss: Float[Array, " steps"]
    params: object
    damping: Float[Array, " steps"]
    accepted: Bool[Array, " steps"]
