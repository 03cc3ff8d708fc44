"""``curve_fit``: scipy's interface for the people who come from there."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._least_squares import least_squares
from ._uncertainty import covariance


def curve_fit(
    f: Callable,
    xdata,
    ydata,
    p0,
    *,
    sigma=None,
    absolute_sigma: bool = False,
    loss: str = "linear",
    f_scale: float = 1.0,
    max_steps: int = 256,
    **options,
):
    """Fit ``ydata ~ f(xdata, *params)``, with scipy's ``curve_fit`` meaning.

    Minimises ``sum_i ((f(xdata, *p)_i - ydata_i) / sigma_i)^2`` by `least_squares` from
    ``p0`` and returns ``(popt, pcov)``: the fitted parameters (a 1-D array like ``p0``) and
    their covariance, ``s^2 (J^T J)^{-1}`` with ``s^2 = Phi / (N - M)``, or ``(J^T J)^{-1}``
    with ``absolute_sigma=True`` (``sigma`` then the data's known standard deviations).
    Parameters the data cannot identify get ``inf`` variance (see `covariance`). ``f`` must
    be written with ``jax.numpy``.

    **Arguments:** as scipy's: ``f``, ``xdata`` (any array or pytree ``f`` takes),
    ``ydata``, ``p0`` (required: the start), ``sigma`` (per-point standard deviations, or
    ``None``), ``absolute_sigma``, ``loss`` and ``f_scale`` (scipy's robust losses); and any
    option of `least_squares` (``max_steps``, ``solver``, ``rtol``, ``throw``, ...).
    Unlike scipy, a fit that does not converge is reported by raising (``throw=True``, the
    default) rather than by a warning.

    ```python
    t = jnp.linspace(0.0, 4.0, 60)
    data = 3.0 * jnp.exp(-1.3 * t) + 0.2 + 0.002 * jnp.cos(17.0 * t)

    def decay(t, a, k, c):
        return a * jnp.exp(-k * t) + c

    popt, pcov = idn.curve_fit(decay, t, data, p0=[1.0, 1.0, 0.0])
    print(popt, jnp.sqrt(jnp.diag(pcov)))
    ```
    """
    p0 = np.asarray(p0, dtype=float) if not isinstance(p0, jax.Array) else p0
    if p0.ndim != 1 or p0.shape[0] == 0:
        raise ValueError(f"curve_fit: `p0` must be a non-empty 1-D sequence, got shape "
                         f"{tuple(p0.shape)}.")
    ydata = jnp.asarray(ydata)
    dtype = jnp.result_type(float)
    p0 = jnp.asarray(p0, dtype)
    if sigma is None:
        weights = jnp.ones_like(ydata, dtype=dtype)
    else:
        sigma = jnp.asarray(sigma, dtype)
        if sigma.shape != ydata.shape:
            raise ValueError(f"curve_fit: `sigma` must have the shape of `ydata` "
                             f"{tuple(ydata.shape)}, got {tuple(sigma.shape)}.")
        weights = 1 / sigma

    def residuals(p, args):
        x, y, w = args
        return (f(x, *p) - y) * w

    args = (xdata, ydata, weights)
    popt, _ = least_squares(residuals, p0, args, loss=loss, f_scale=f_scale,
                            max_steps=max_steps, **options)
    pcov = covariance(residuals, popt, args, absolute_sigma=absolute_sigma, loss=loss,
                      f_scale=f_scale)
    return popt, pcov
