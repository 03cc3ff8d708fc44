r"""Parameter uncertainties of a least-squares fit: ``covariance`` and ``standard_errors``.

As ``scipy.optimize.curve_fit`` computes them: at the fitted parameters, with the Jacobian
``J`` of the residuals (``N x M``),

$$
\mathrm{cov} = s^2 (J^T J)^{-1}, \qquad s^2 = \frac{\Phi}{N - M}
$$

(``absolute_sigma=True``: ``s^2 = 1``, for residuals already divided by known standard
deviations). ``(J^T J)^{-1}`` is taken from the singular values of ``J``: directions whose
singular value is at rounding level (below ``eps max(N, M) sigma_max``) cannot be identified
by the data (an AION's amplitude gauge, the joint phase shift of the paper's toy), and every
parameter with a component along them gets an infinite variance (``inf`` on the diagonal,
``nan`` off it) instead of a finite number that means nothing; outside ``jit`` a warning
names them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._checks import check_data, check_model, is_concrete
from ._least_squares import is_parameter, split_parameters
from ._models._base import AbstractSumOfTerms
from ._options import DEFAULT_SOLVER, check_loss, trainable_leaves
from ._problems._residual import ResidualProblem
from ._problems._robust import rescale_for_loss


def _covariance_from_jacobian(r, J, absolute_sigma: bool, free, loss="linear", f_scale=1.0):
    """``(cov, unidentified)`` over the raveled parameters; ``free`` marks the parameters
    that were fitted (the others get ``nan``). Under a robust loss, as scipy's ``curve_fit``:
    the rescaled Jacobian and ``s^2`` from the robust ``Phi``."""
    phi = r @ r
    if loss != "linear":
        phi, _, J = rescale_for_loss(r, J, loss, jnp.asarray(f_scale, r.dtype))
    n, m = J.shape
    Jf = jnp.where(free[None, :], J, 0.0)
    # All M right singular vectors: with fewer residuals than parameters the null space
    # is at least M - N wide (U is then only N x N).
    _, s, vt = jnp.linalg.svd(Jf, full_matrices=n < m)
    s = jnp.concatenate([s, jnp.zeros(m - s.shape[0], s.dtype)])
    tol = jnp.finfo(J.dtype).eps * max(n, m) * s[0]
    kept = s > tol
    inv = jnp.where(kept, 1 / jnp.where(kept, s, 1.0) ** 2, 0.0)
    cov = (vt.T * inv[None, :]) @ vt
    # A parameter moves along an unidentified direction if the null space of the fitted
    # columns has a component on it.
    null = jnp.where(kept[None, :], 0.0, vt.T)
    dof = n - int(jnp.sum(free))
    scale = 1.0 if absolute_sigma else phi / jnp.maximum(dof, 1)
    if not absolute_sigma and dof <= 0:
        scale = jnp.inf
    unidentified = free & (jnp.linalg.norm(null, axis=1) > jnp.sqrt(jnp.finfo(J.dtype).eps))
    cov = scale * cov
    bad = unidentified | ~free
    cov = jnp.where(bad[:, None] | bad[None, :], jnp.nan, cov)
    diagonal = jnp.where(unidentified, jnp.inf, jnp.where(free, jnp.diagonal(cov), jnp.nan))
    cov = cov.at[jnp.diag_indices(m)].set(diagonal)
    return cov, unidentified


def _warn(unidentified, names, caller: str) -> None:
    if not is_concrete(unidentified):
        return
    which = [names[i] for i in np.flatnonzero(np.asarray(unidentified))]
    if which:
        shown = ", ".join(which[:8]) + (" ..." if len(which) > 8 else "")
        warnings.warn(
            f"{caller}: {len(which)} parameter(s) cannot be identified by the data (the "
            f"Jacobian is singular along them: a gauge or a redundant parameter): {shown}. "
            "Their variance is reported as inf.", stacklevel=3,
        )


def _names(params) -> list[str]:
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path) or "params"
        size = int(np.prod(np.shape(leaf)))
        out += [name] if size == 1 else [f"{name}[{i}]" for i in range(size)]
    return out


def _residual_jacobian(fn, params, args):
    dynamic, static, _ = split_parameters(params, "covariance")
    num_data = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(
        jax.eval_shape(lambda p, a: fn(eqx.combine(p, static), a), dynamic, args)))
    problem = ResidualProblem(lambda p, a: fn(eqx.combine(p, static), a), dynamic, args,
                              num_data)
    r, J = problem.residual_and_jacobian(jnp.zeros_like(problem.theta))
    return dynamic, static, r, J


def _model_residual(model, x, y):
    def fn(m, args):
        x, y = args
        return jax.vmap(m)(x) - y

    return fn, model, (x, y)


def _prepare(first, params, args, caller):
    """``(fn, params, args, free leaves)`` for the two ways of calling."""
    if isinstance(first, AbstractSumOfTerms):
        model = check_model(first, caller)
        x, y = check_data(model, params, args, caller)
        fn, params, args = _model_residual(model, x, y)
        return fn, params, args
    if not callable(first):
        raise TypeError(f"{caller}: the first argument must be a residual function "
                        f"`fn(params, args)` or a model, got {type(first).__name__}.")
    return first, params, args


def covariance(fn: Callable | AbstractSumOfTerms, params, args=None, *,
               absolute_sigma: bool = False, trainable=None, loss: str = "linear",
               f_scale: float = 1.0):
    r"""The covariance of fitted parameters, ``s^2 (J^T J)^{-1}``, as ``curve_fit`` gives it.

    Two ways to call it:

    - ``covariance(fn, params, args)``: ``fn(params, args)`` the residuals (as for
      `least_squares`), at the fitted ``params``;
    - ``covariance(model, x, y)``: a fitted model of the package and its data (the residuals
      ``f(x_n) - y_n``); ``trainable`` (as for `solve`) marks what was fitted, and the
      parameters held fixed get ``nan``.

    **Returns** an ``M x M`` array over the floating leaves of ``params`` raveled in
    ``jax.flatten_util.ravel_pytree`` order. ``s^2 = Phi / (N - M)`` (``M`` the fitted
    parameters), or 1 with ``absolute_sigma=True``. Parameters the data cannot identify get
    ``inf`` variance (see the module notes) and a warning outside ``jit``. For a fit under a
    robust ``loss`` (with its ``f_scale``), as scipy's ``curve_fit`` does: the Jacobian
    rescaled by the loss at the fit, and ``s^2`` from the robust ``Phi``.

    Cost: one Jacobian and an SVD of it, ``O(N M^2)``.

    ```python
    t = jnp.linspace(0.0, 1.0, 50)
    data = 2.0 * jnp.exp(-3.0 * t) + 0.01 * jnp.sin(37.0 * t)

    def residuals(p, t):
        return p["a"] * jnp.exp(-p["k"] * t) - data

    fit, _ = idn.least_squares(residuals, {"a": 1.0, "k": 1.0}, t)
    print(idn.covariance(residuals, fit, t))       # 2 x 2, order of ravel_pytree: a, k
    ```
    """
    caller = "covariance"
    model_form = isinstance(fn, AbstractSumOfTerms)
    fn, params, args = _prepare(fn, params, args, caller)
    dynamic, _, r, J = _residual_jacobian(fn, params, args)
    free = jnp.ones(J.shape[1], bool)
    if model_form and trainable is not None:
        spec = trainable_leaves(params, trainable, caller)
        if spec is not None:
            free = ravel_pytree(jax.tree.map(jnp.asarray, spec))[0].astype(bool)
    loss, f_scale, _ = check_loss(loss, f_scale, DEFAULT_SOLVER, caller)
    cov, unidentified = _covariance_from_jacobian(r, J, bool(absolute_sigma), free, loss,
                                                  f_scale)
    _warn(unidentified, _names(dynamic), caller)
    return cov


def standard_errors(fn: Callable | AbstractSumOfTerms, params, args=None, *,
                    absolute_sigma: bool = False, trainable=None, loss: str = "linear",
                    f_scale: float = 1.0):
    """The standard errors of fitted parameters, ``sqrt(diag(covariance))``, shaped like the
    parameters (a pytree like ``params``, or like the model's parameters).

    Called as `covariance` is: ``standard_errors(fn, params, args)`` or
    ``standard_errors(model, x, y)``. Equal to ``sqrt(diag(pcov))`` of
    ``scipy.optimize.curve_fit``; ``inf`` for a parameter the data cannot identify, ``nan``
    for one held fixed.

    ```python
    xs = jnp.linspace(0.0, 1.0, 80)[:, None]
    target = idn.AION(1, 1, 1, key=jax.random.key(4))            # a damped cosine
    ys = jax.vmap(target)(xs) + 1e-3 * jnp.sin(40.0 * xs[:, 0])
    fitted, _ = idn.solve(target, xs, ys)
    errors = idn.standard_errors(fitted, xs, ys)     # shaped like the model's parameters
    print(errors.A, errors.alpha, errors.omega, errors.phi)
    ```
    """
    cov = covariance(fn, params, args, absolute_sigma=absolute_sigma, trainable=trainable,
                     loss=loss, f_scale=f_scale)
    if isinstance(fn, AbstractSumOfTerms):
        dynamic = eqx.filter(fn, eqx.is_inexact_array)
    else:
        dynamic = eqx.filter(params, is_parameter)
    flat, unravel = ravel_pytree(dynamic)
    errors = jnp.sqrt(jnp.diagonal(cov)).astype(flat.dtype)
    return unravel(errors)
