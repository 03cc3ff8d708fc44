"""Problems shared by the tests, the benchmarks and the notebooks.

- [`paper_toy`][infinite_descent.problems.paper_toy] /
  [`paper_toy_start`][infinite_descent.problems.paper_toy_start]: the toy of the paper's
  Table 1; [`paper_toy_grid`][infinite_descent.problems.paper_toy_grid]: its points as
  `GridData`.
- [`random_toy_start`][infinite_descent.problems.random_toy_start]: random starts for the
  toy, from a documented distribution.
- [`lanczos3`][infinite_descent.problems.lanczos3]: the NIST StRD ``Lanczos3`` certified
  problem.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._models._aion import AION
from ._models._base import default_float_dtype
from ._problems._grid import GridData


def paper_toy(dtype=None) -> tuple[jax.Array, jax.Array]:
    """The paper's toy data: ``g(x, y) = cos(pi (x - y))`` on a 25 x 25 grid over ``[0, 1]^2``.

    Returns ``(x, y)`` with ``x`` of shape ``(625, 2)`` (``linspace(0, 1, 25)`` in each
    dimension, first coordinate varying slowest) and ``y`` of shape ``(625,)``.

    ```python
    x, y = idn.problems.paper_toy()
    print(x.shape, y.shape)                           # (625, 2) (625,)
    ```
    """
    dtype = default_float_dtype() if dtype is None else dtype
    axis = np.linspace(0.0, 1.0, 25)
    u, v = np.meshgrid(axis, axis, indexing="ij")
    x = np.stack([u.ravel(), v.ravel()], axis=1)
    y = np.cos(np.pi * (x[:, 0] - x[:, 1]))
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def paper_toy_grid(dtype=None) -> GridData:
    """The paper's toy as `GridData`: the same 625 points and targets as `paper_toy` (the
    25 values of each axis, ``y`` of shape ``(25, 25)``), for the grid path of `solve`.

    ```python
    grid = idn.problems.paper_toy_grid()
    model, info = idn.solve(idn.problems.paper_toy_start(), grid)
    print(grid.y.shape, float(info.loss))             # (25, 25) ~1e-29
    ```
    """
    x, y = paper_toy(dtype)
    axis = x[::25, 0]
    return GridData((axis, axis), y.reshape(25, 25))


def paper_toy_start(dtype=None) -> AION:
    """The 8-parameter start used throughout (the paper gives none, so this is ours).

    ``AION(rank=2, dim=2, terms=1, shared_dims=True)`` with ``A = 0.8, alpha = 0.1,
    omega = 2.5`` for both ranks and ``phi = 0.3`` and ``-1.2``. The target is exact at
    ``A = 1, alpha = 0, omega = pi, phi = (0, -pi/2)`` (and along the curves of minima
    through it).

    ```python
    start = idn.problems.paper_toy_start()
    model, info = idn.solve(start, *idn.problems.paper_toy())
    print(float(info.initial_loss), float(info.loss))  # ~47.6 ~1e-29
    ```
    """
    return AION(
        2, 2, 1, shared_dims=True, dtype=dtype,
        A=0.8, alpha=0.1, omega=2.5, phi=np.array([0.3, -1.2])[:, None, None],
    )


def random_toy_start(key, *, shared_dims: bool = True, dtype=None) -> AION:
    """A random start for the toy: rank 2, one term, entries drawn independently.

    ``A ~ U(0.5, 1.5)``, ``alpha ~ U(-0.5, 0.5)``, ``omega ~ U(1, 5)``, ``phi ~ U(-pi, pi)``
    (the distribution of the design notes; the same as [`AION`][infinite_descent.AION]'s
    default initialisation).
    ``shared_dims=True`` gives the 8-parameter model, ``False`` the 16-parameter untied one.

    ```python
    starts = [idn.problems.random_toy_start(jax.random.key(i)) for i in range(3)]
    ```
    """
    return AION(2, 2, 1, key=key, shared_dims=shared_dims, dtype=dtype)


class CertifiedProblem(NamedTuple):
    """A certified nonlinear least-squares problem mapped onto an AION model."""

    x: jax.Array
    y: jax.Array
    starts: tuple[AION, ...]
    certified: AION
    certified_loss: float
    trainable: AION


# NIST StRD, Lanczos3 (higher difficulty): 24 observations of
# y = b1 exp(-b2 x) + b3 exp(-b4 x) + b5 exp(-b6 x), data rounded to 5 significant digits.
_LANCZOS3_Y = (
    2.5134, 2.0443, 1.6684, 1.3664, 1.1232, 0.9269, 0.7679, 0.6389, 0.5338, 0.4479, 0.3776,
    0.3197, 0.2720, 0.2325, 0.1997, 0.1723, 0.1493, 0.1301, 0.1138, 0.1000, 0.0883, 0.0783,
    0.0698, 0.0624,
)
_LANCZOS3_STARTS = ((1.2, 0.3, 5.6, 5.5, 6.5, 7.6), (0.5, 0.7, 3.6, 4.2, 4.0, 6.3))
_LANCZOS3_CERTIFIED = (
    8.6816414977e-02, 9.5498101505e-01, 8.4400777463e-01,
    2.9515951832e00, 1.5825685901e00, 4.9863565084e00,
)
_LANCZOS3_RSS = 1.6117193594e-08


def _lanczos_model(b, dtype) -> AION:
    b = np.asarray(b, np.float64)
    # Rank j holds b_{2j-1} exp(-b_{2j} x): A = b_{2j-1}, alpha = -b_{2j}, omega = phi = 0.
    return AION(
        3, 1, 1, dtype=dtype,
        A=b[0::2][:, None, None], alpha=-b[1::2][:, None, None], omega=0.0, phi=0.0,
    )


def lanczos3(dtype=None) -> CertifiedProblem:
    """NIST StRD ``Lanczos3``: a sum of three exponentials, 24 points, two official starts.

    As an AION: ``dim=1``, ``rank=3``, ``terms=1``, with ``omega`` and ``phi`` held at zero
    through ``trainable`` (so each rank is ``A exp(alpha x)``, ``A = b_odd``,
    ``alpha = -b_even``). The certified residual sum of squares is ``1.6117193594e-08``.

    ```python
    p = idn.problems.lanczos3()
    model, info = idn.solve(p.starts[0], p.x, p.y, trainable=p.trainable)
    print(float(info.loss), p.certified_loss)         # both 1.6117193594e-08
    ```
    """
    dtype = default_float_dtype() if dtype is None else dtype
    x = (0.05 * np.arange(24))[:, None]
    y = np.asarray(_LANCZOS3_Y)
    certified = _lanczos_model(_LANCZOS3_CERTIFIED, dtype)
    return CertifiedProblem(
        x=jnp.asarray(x, dtype),
        y=jnp.asarray(y, dtype),
        starts=tuple(_lanczos_model(b, dtype) for b in _LANCZOS3_STARTS),
        certified=certified,
        certified_loss=_LANCZOS3_RSS,
        trainable=_mask_like(certified, A=True, alpha=True, omega=False, phi=False),
    )


def _mask_like(model: AION, **flags: bool) -> AION:
    """A ``trainable`` filter spec for ``model``: one bool per parameter array."""
    return eqx.tree_at(
        lambda m: (m.A, m.alpha, m.omega, m.phi),
        model,
        (flags["A"], flags["alpha"], flags["omega"], flags["phi"]),
    )


def toy_exact_solution(dtype=None) -> AION:
    """A point where the toy's loss is exactly zero (up to rounding).

    ``A = 1, alpha = 0, omega = pi`` for both ranks and phases ``0`` and ``-pi/2``, from
    ``cos(pi (x - y)) = cos(pi x) cos(pi y) + sin(pi x) sin(pi y)``. Shifting both phases
    together gives the same function: the minima form a curve.

    ```python
    x, y = idn.problems.paper_toy()
    print(jnp.max(jnp.abs(jax.vmap(idn.problems.toy_exact_solution())(x) - y)))  # ~1e-15
    ```
    """
    return AION(
        2, 2, 1, shared_dims=True, dtype=dtype,
        A=1.0, alpha=0.0, omega=math.pi, phi=np.array([0.0, -math.pi / 2])[:, None, None],
    )
