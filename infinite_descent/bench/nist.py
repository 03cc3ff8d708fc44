r"""NIST StRD nonlinear regression: the 27 certified problems, their models and the LRE.

Part of the benchmark harness `infinite_descent.bench`; needs only the core dependencies.
NIST's Statistical Reference Datasets (https://www.itl.nist.gov/div898/strd/) give, for each
problem, a model, two starting points ("Start 1" far from the solution, "Start 2" closer), and
the certified parameters, standard deviations and residual sum of squares, computed in 128-bit
arithmetic. The data files (``*.dat``, public) are read from a folder given by the caller:
``tests/data/nist-strd/`` in a checkout.

- `load` / `load_all`: a ``.dat`` file as a `Problem`.
- `MODELS`: the model of each problem as a JAX function ``model(beta, x)``, ``beta`` the 1-D
  parameter vector ``(b1, ..., bM)`` (0-based here) and ``x`` of shape ``(N,)`` (``(N, 2)``
  for Nelson).
- `data` and `residual`: ``idn.least_squares(residual, start, data(problem))``;
  ``residual(beta, args)`` returns ``model(beta, x) - response``, with ``response = log(y)``
  for Nelson (its header's model is ``log[y] = ...``) and ``y`` for the others.
- `lre`: the log relative error ``-log10(|estimate - certified| / |certified|)``, the number
  of correct significant digits, capped at the certified digits and 0 below one digit.

```python
from infinite_descent.bench import nist
problem = nist.load("tests/data/nist-strd/Misra1a.dat")
fit, info = idn.least_squares(nist.residual, problem.start1, nist.data(problem))
print(nist.lre(fit, problem.certified).min())       # 7.9 digits
```
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CERTIFIED_DIGITS",
    "MODELS",
    "NAMES",
    "Data",
    "Problem",
    "data",
    "load",
    "load_all",
    "lre",
    "residual",
    "rss",
]

# NIST certifies 11 significant digits (e.g. 2.3894212918E+02).
CERTIFIED_DIGITS = 11

# NIST's order: lower, average, higher level of difficulty.
NAMES = (
    "Misra1a", "Chwirut2", "Chwirut1", "Lanczos3", "Gauss1", "Gauss2", "DanWood", "Misra1b",
    "Kirby2", "Hahn1", "Nelson", "MGH17", "Lanczos1", "Lanczos2", "Gauss3", "Misra1c",
    "Misra1d", "Roszman1", "ENSO",
    "MGH09", "Thurber", "BoxBOD", "Rat42", "MGH10", "Eckerle4", "Rat43", "Bennett5",
)


class Problem(NamedTuple):
    """One NIST StRD nonlinear-regression problem as its ``.dat`` file gives it.

    ``x`` is ``(N,)`` for one predictor and ``(N, k)`` for ``k`` (Nelson: ``x1, x2``); ``y``
    is the data column as printed (Nelson's model is for ``log y``: see `response`). The
    parameter vectors are 1-D float64 arrays ``(b1, ..., bM)``; ``certified_sd`` are NIST's
    standard deviations of the parameters; ``dof`` the residual degrees of freedom
    ``N - M``.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    start1: np.ndarray
    start2: np.ndarray
    certified: np.ndarray
    certified_sd: np.ndarray
    certified_rss: float
    dof: int
    difficulty: str

    @property
    def response(self) -> np.ndarray:
        """What the model fits: ``log(y)`` for Nelson, ``y`` otherwise."""
        return np.log(self.y) if self.name == "Nelson" else self.y

    @property
    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        return self.start1, self.start2


_PARAMETER = re.compile(r"^\s*b(\d+)\s*=\s*(.*)$")


def _number_after(lines, label: str) -> str:
    for line in lines:
        if line.strip().startswith(label):
            return line.split(":", 1)[1].split()[0]
    raise ValueError(f"no line '{label}'")


def _degrees_of_freedom(lines, n: int, m: int) -> int:
    """``N - M``. Rat43's header says 9 (for 15 observations and 4 parameters); its residual
    standard deviation, 28.262414662 = sqrt(RSS / 11), and its certified standard deviations
    use 11, so the header's count is a misprint and ``N - M`` is what the certified values
    mean. Any other disagreement is an error."""
    header = int(_number_after(lines, "Degrees of Freedom:"))
    rsd = float(_number_after(lines, "Residual Standard Deviation:"))
    rss = float(_number_after(lines, "Residual Sum of Squares:"))
    if header != n - m and not math.isclose(rsd, math.sqrt(rss / (n - m)), rel_tol=1e-9):
        raise ValueError(f"degrees of freedom: the header says {header}, N - M = {n - m}")
    return n - m


def load(path: str | Path) -> Problem:
    """Read one NIST StRD ``.dat`` file (the format of the nonlinear-regression set)."""
    path = Path(path)
    lines = path.read_text().splitlines()
    rows = {}
    for line in lines[:60]:
        match = _PARAMETER.match(line)
        if match:
            rows[int(match.group(1))] = [float(v) for v in match.group(2).split()]
    if not rows or sorted(rows) != list(range(1, len(rows) + 1)):
        raise ValueError(f"{path.name}: parameters b1..bM not found")
    table = np.array([rows[k] for k in sorted(rows)], np.float64)
    if table.shape[1] != 4:
        raise ValueError(f"{path.name}: expected start 1, start 2, value, sd per parameter")
    # The data block starts after the last 'Data:' line (the one naming the columns).
    first = max(i for i, line in enumerate(lines) if line.strip().startswith("Data:")) + 1
    columns = len(lines[first - 1].split()) - 1
    values = np.array([[float(v) for v in line.split()] for line in lines[first:]
                       if line.strip()], np.float64)
    if values.ndim != 2 or values.shape[1] != columns:
        raise ValueError(f"{path.name}: data columns do not match the header")
    n = int(_number_after(lines, "Number of Observations:"))
    if values.shape[0] != n:
        raise ValueError(f"{path.name}: {values.shape[0]} rows, the header says {n}")
    difficulty = next((word for line in lines[:40] for word in ("Lower", "Average", "Higher")
                       if f"{word} Level of Difficulty" in line), "")
    x = values[:, 1] if columns == 2 else values[:, 1:]
    return Problem(
        name=path.stem, x=x, y=values[:, 0], start1=table[:, 0].copy(),
        start2=table[:, 1].copy(), certified=table[:, 2].copy(),
        certified_sd=table[:, 3].copy(),
        certified_rss=float(_number_after(lines, "Residual Sum of Squares:")),
        dof=_degrees_of_freedom(lines, n, table.shape[0]), difficulty=difficulty,
    )


def load_all(folder: str | Path) -> list[Problem]:
    """The 27 problems of `NAMES` (NIST's order) from ``folder/NAME.dat``."""
    folder = Path(folder)
    return [load(folder / f"{name}.dat") for name in NAMES]


# -- the models, from each file's header (b1..bM is b[0]..b[M-1]) ------------------------------

def _misra1a(b, x):  # also BoxBOD
    return b[0] * (1 - jnp.exp(-b[1] * x))


def _misra1b(b, x):
    return b[0] * (1 - (1 + b[1] * x / 2) ** (-2))


def _misra1c(b, x):
    return b[0] * (1 - (1 + 2 * b[1] * x) ** (-0.5))


def _misra1d(b, x):
    return b[0] * b[1] * x * ((1 + b[1] * x) ** (-1))


def _chwirut(b, x):
    return jnp.exp(-b[0] * x) / (b[1] + b[2] * x)


def _danwood(b, x):
    return b[0] * x ** b[1]


def _lanczos(b, x):
    return b[0] * jnp.exp(-b[1] * x) + b[2] * jnp.exp(-b[3] * x) + b[4] * jnp.exp(-b[5] * x)


def _gauss(b, x):
    return (b[0] * jnp.exp(-b[1] * x) + b[2] * jnp.exp(-((x - b[3]) ** 2) / b[4] ** 2)
            + b[5] * jnp.exp(-((x - b[6]) ** 2) / b[7] ** 2))


def _cubic_over_cubic(b, x):  # Hahn1, Thurber
    return ((b[0] + b[1] * x + b[2] * x**2 + b[3] * x**3)
            / (1 + b[4] * x + b[5] * x**2 + b[6] * x**3))


def _kirby2(b, x):
    return (b[0] + b[1] * x + b[2] * x**2) / (1 + b[3] * x + b[4] * x**2)


def _nelson(b, x):  # log[y] = b1 - b2*x1 * exp[-b3*x2]
    return b[0] - b[1] * x[:, 0] * jnp.exp(-b[2] * x[:, 1])


def _mgh17(b, x):
    return b[0] + b[1] * jnp.exp(-x * b[3]) + b[2] * jnp.exp(-x * b[4])


def _roszman1(b, x):
    return b[0] - b[1] * x - jnp.arctan(b[2] / (x - b[3])) / math.pi


def _enso(b, x):
    w = 2 * math.pi * x
    return (b[0] + b[1] * jnp.cos(w / 12) + b[2] * jnp.sin(w / 12)
            + b[4] * jnp.cos(w / b[3]) + b[5] * jnp.sin(w / b[3])
            + b[7] * jnp.cos(w / b[6]) + b[8] * jnp.sin(w / b[6]))


def _mgh09(b, x):
    return b[0] * (x**2 + x * b[1]) / (x**2 + x * b[2] + b[3])


def _rat42(b, x):
    return b[0] / (1 + jnp.exp(b[1] - b[2] * x))


def _mgh10(b, x):
    return b[0] * jnp.exp(b[1] / (x + b[2]))


def _eckerle4(b, x):
    return (b[0] / b[1]) * jnp.exp(-0.5 * ((x - b[2]) / b[1]) ** 2)


def _rat43(b, x):
    return b[0] / ((1 + jnp.exp(b[1] - b[2] * x)) ** (1 / b[3]))


def _bennett5(b, x):
    return b[0] * (b[1] + x) ** (-1 / b[2])


MODELS: dict[str, Callable] = {
    "Misra1a": _misra1a, "Chwirut2": _chwirut, "Chwirut1": _chwirut, "Lanczos3": _lanczos,
    "Gauss1": _gauss, "Gauss2": _gauss, "DanWood": _danwood, "Misra1b": _misra1b,
    "Kirby2": _kirby2, "Hahn1": _cubic_over_cubic, "Nelson": _nelson, "MGH17": _mgh17,
    "Lanczos1": _lanczos, "Lanczos2": _lanczos, "Gauss3": _gauss, "Misra1c": _misra1c,
    "Misra1d": _misra1d, "Roszman1": _roszman1, "ENSO": _enso, "MGH09": _mgh09,
    "Thurber": _cubic_over_cubic, "BoxBOD": _misra1a, "Rat42": _rat42, "MGH10": _mgh10,
    "Eckerle4": _eckerle4, "Rat43": _rat43, "Bennett5": _bennett5,
}


class Data(eqx.Module):
    """The ``args`` of `residual`: the model (static: problems with one model and equal
    shapes share a compiled solve), the predictors and the response."""

    model: Callable = eqx.field(static=True)
    x: jnp.ndarray
    response: jnp.ndarray


def data(problem: Problem) -> Data:
    """``args`` for `residual` on ``problem`` (float64 arrays)."""
    return Data(MODELS[problem.name], jnp.asarray(problem.x, jnp.float64),
                jnp.asarray(problem.response, jnp.float64))


def residual(beta, args: Data):
    """``model(beta, x) - response``: the residual function of ``idn.least_squares``."""
    return args.model(beta, args.x) - args.response


def rss(beta, problem: Problem) -> float:
    """The residual sum of squares at ``beta`` in float64 (as every method is scored)."""
    r = np.asarray(residual(jnp.asarray(beta, jnp.float64), data(problem)))
    return float(r @ r)


def lre(estimate, certified, digits: int = CERTIFIED_DIGITS) -> float | np.ndarray:
    """The log relative error, ``-log10(|estimate - certified| / |certified|)``, elementwise.

    The number of significant digits ``estimate`` shares with ``certified``: capped at
    ``digits`` (an exact match counts ``digits``), 0 where it is worse than one digit or not
    finite. A float for scalars, an array otherwise.
    """
    estimate = np.asarray(estimate, np.float64)
    certified = np.asarray(certified, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.abs(estimate - certified) / np.abs(certified)
        value = np.where(relative == 0, float(digits), -np.log10(relative))
    value = np.where(np.isfinite(value), np.minimum(value, digits), 0.0)
    value = np.where(value < 1, 0.0, value)
    return float(value) if value.ndim == 0 else value
