"""``matrix_pencil``: a non-iterative AION start for one-dimensional data on a uniform grid."""

from __future__ import annotations

import warnings

import jax
import numpy as np

from ._models._aion import AION
from ._models._base import check_sizes, default_float_dtype

# The largest pencil parameter L and the most Hankel rows used for the poles: the SVD then
# costs at most O(rows L^2) and its matrices ~0.3 GiB in float64, whatever N (all N samples
# still enter the amplitudes' least squares). Uncapped, L ~ N / 3 asked for O(N^3) time and
# 16 GiB at N = 1e5.
MAX_PENCIL = 512
MAX_ROWS = 65536


def matrix_pencil(x, y, rank: int, terms: int = 1, *, real: bool = False, dtype=None) -> AION:
    r"""Estimate an AION of ``dim=1`` from samples on a uniform grid, without iterating.

    A one-dimensional AION is a sum of ``K = rank * terms`` damped cosines
    ``A e^{alpha x} cos(omega x + phi)``, that is of complex exponentials ``b z^n`` in the
    sample index ``n`` (a conjugate pair per cosine). The matrix-pencil method (Hua & Sarkar)
    finds the ``z`` as the eigenvalues of a pencil of the Hankel matrix of the samples after a
    rank-``2K`` truncated SVD (``K`` with ``real=True``, for sums of real exponentials such as
    NIST's Lanczos problems), then the amplitudes by linear least squares. The ``K``
    components with the most energy become the atoms (``alpha = Re log z / h``,
    ``omega = |Im log z| / h``), dealt to the ranks in turn. Cost: one SVD of an
    ``(N - L) x (L + 1)`` matrix, ``L ~ N / 3``.

    Exact for noiseless data that a model of this size represents; otherwise an estimate to
    start [`solve`][infinite_descent.solve] from. For long records the pencil is capped
    (``L <= 512``, at most 65,536 Hankel rows: a warning says so), which bounds the SVD's
    time and memory. It runs on the host (numpy's SVD), outside ``jax.jit``. Components the
    data do not support (all-zero data, an impulse: poles at zero) come back with zero
    amplitude.

    ```python
    p = idn.problems.lanczos3()
    start = idn.matrix_pencil(p.x[:, 0], p.y, rank=3, real=True)
    model, info = idn.solve(start, p.x, p.y, trainable=p.trainable)
    print(float(info.loss))                          # 1.6117193594e-08, the certified value
    ```
    """
    if any(isinstance(a, jax.core.Tracer) for a in (x, y)):
        raise TypeError(
            "matrix_pencil runs on the host (numpy's SVD) and gives a start for `solve`: call "
            "it outside `jax.jit`/`jax.vmap`, on concrete data."
        )
    sizes = check_sizes("matrix_pencil", rank=rank, terms=terms)
    rank, terms = sizes["rank"], sizes["terms"]
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("matrix_pencil: x and y must be finite (no NaN or Inf).")
    n = x.shape[0]
    if y.shape[0] != n or n < 4:
        raise ValueError("matrix_pencil: x and y must be one-dimensional and of equal length >= 4.")
    h = x[1] - x[0]
    if h <= 0 or not np.allclose(np.diff(x), h, rtol=1e-6, atol=1e-12):
        raise ValueError("matrix_pencil: x must be a uniform, increasing grid.")
    count = rank * terms
    order = count if real else 2 * count
    pencil = max(order, min(n // 3, MAX_PENCIL))
    if n - pencil < order:
        raise ValueError(
            f"matrix_pencil: {n} samples are too few for {count} components "
            f"(need about {3 * order})."
        )
    hankel = np.lib.stride_tricks.sliding_window_view(y, pencil + 1)  # (n - L, L + 1)
    if pencil < n // 3 or hankel.shape[0] > MAX_ROWS:
        hankel = hankel[:MAX_ROWS]
        warnings.warn(
            f"matrix_pencil: {n} samples; the poles are estimated from a capped pencil (L = "
            f"{pencil}, {hankel.shape[0]} rows) to bound the SVD's time and memory; every "
            "sample enters the amplitudes.", UserWarning, stacklevel=2)
    if not np.any(y):
        hankel = None  # all-zero data: no component
    if hankel is None:
        return _zero_start(rank, terms, dtype)
    _, _, vt = np.linalg.svd(hankel, full_matrices=False)
    v = vt[:order].conj().T  # (L + 1, order)
    poles = np.linalg.eigvals(np.linalg.pinv(v[:-1]) @ v[1:])
    vandermonde = poles[None, :] ** np.arange(n)[:, None]
    amplitudes = np.linalg.lstsq(vandermonde, y.astype(complex), rcond=None)[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        rates = np.log(poles.astype(complex)) / h  # alpha + i omega
    components = []
    for rate, b in zip(rates, amplitudes):
        if not (np.isfinite(rate) and np.isfinite(b)) or b == 0:
            continue  # a pole at zero (an impulse) or one the data do not support
        if real:  # (energy, alpha, omega, the signed real amplitude)
            components.append((abs(b), rate.real, 0.0, float(np.real(b))))
            continue
        if rate.imag < -1e-9:
            continue  # its conjugate carries the same cosine
        weight = 1.0 if abs(rate.imag) <= 1e-9 else 2.0  # a real pole, or a conjugate pair
        # b z^n + conj = weight |b| e^{alpha (x - x0)} cos(omega (x - x0) + arg b)
        components.append((weight * abs(b), rate.real, abs(rate.imag), np.angle(b)))
    components.sort(key=lambda c: -c[0])
    components = components[:count]
    while len(components) < count:  # fewer distinct components than asked: pad with zeros
        components.append((0.0, 0.0, 1.0, 0.0))
    A = np.zeros((rank, 1, terms))
    alpha, omega, phi = np.zeros_like(A), np.zeros_like(A), np.zeros_like(A)
    for k, (magnitude, a, w, angle) in enumerate(components):
        j, p = k % rank, k // rank
        if real:
            A[j, 0, p] = angle * np.exp(-a * x[0])  # the signed real amplitude
        else:
            A[j, 0, p] = magnitude * np.exp(-a * x[0])
            phi[j, 0, p] = angle - w * x[0]
        alpha[j, 0, p], omega[j, 0, p] = a, w
    dtype = default_float_dtype() if dtype is None else dtype
    return AION(rank, 1, terms, dtype=dtype, A=A, alpha=alpha, omega=omega, phi=phi)


def _zero_start(rank: int, terms: int, dtype) -> AION:
    """The AION with every amplitude zero (unit frequencies, as the padding above)."""
    zeros = np.zeros((rank, 1, terms))
    dtype = default_float_dtype() if dtype is None else dtype
    return AION(rank, 1, terms, dtype=dtype, A=zeros, alpha=zeros, omega=zeros + 1.0,
                phi=zeros)
