"""NIST StRD nonlinear regression: all 27 certified problems from both starts (54 runs).

``idn.least_squares`` with its default tolerances from each of NIST's two starting points,
scored as NIST scores: the log relative error (correct significant digits) of every parameter
and of the residual sum of squares at least 6, of ``idn.standard_errors`` against the
certified standard deviations at least 4, and the solve reporting success. The data files are
NIST's (public), copied into ``tests/data/nist-strd/``.

The runs that do not certify are marked ``xfail(strict=True)`` with what was measured and why:
the requirement stays as it is, and a run that starts to certify fails the suite until its mark
is removed. ``benchmarks/nist.py`` runs the same 54 runs beside optimistix and scipy.
"""

import functools
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn
from infinite_descent.bench import nist

DATA = Path(__file__).resolve().parent / "data" / "nist-strd"
MAX_STEPS = 2500  # MGH10 from start 1 takes 1809 inner iterations, no other run over 201
PARAMETER_DIGITS, RSS_DIGITS, SE_DIGITS = 6, 6, 4

# The runs that do not certify, measured with the default tolerances, MAX_STEPS = 2500,
# float64 (2-core x86_64, jax 0.10.2). The nine runs the relative-decrease test (ftol) used
# to stop 4-6 digits short certify since the default stop is the settling test; BoxBOD from
# start 1 since a step may be at most twice as long as the longest before it (`step_factor`),
# and MGH10 from start 1 since the loop re-bases residual problems on the current point (its
# b1 passes through 2e-53, far below the rounding unit of its start, 2) and floors the scaling only
# where it is zero (its b1 column grows to 1e19 against b2's 1).
XFAIL = {
    ("Lanczos1", 1): (
        "RSS LRE 2.9 and standard errors 3.2 (parameters 10.6, 65 iterations): limited by "
        "float64 rounding, not by the fit. The certified RSS is 1.4e-25 (residuals of about "
        "8e-14 against y up to 2.5, whose rounding unit is 4.4e-16), so about three digits of "
        "every residual evaluated in float64 are rounding. Evaluated in 60-digit decimal "
        "arithmetic the RSS of this fit has LRE 3.1 (standard errors scaled by it 3.4): its "
        "fitted values lie about 5 rounding units of y from the certified ones, about the "
        "rounding of a float64 evaluation of the model. The standard errors take "
        "s^2 = RSS / dof from the same float64 residuals. Every peer misses it too"),
    ("Lanczos1", 2): (
        "RSS LRE 3.1 and standard errors 3.4 (parameters 10.6, 56 iterations): limited by "
        "float64 rounding, as from start 1; in 60-digit decimal arithmetic the RSS of this fit "
        "has LRE 3.1 and the standard errors scaled by it 3.4"),
}


@functools.cache
def _fits(name):
    """Both starts of one problem. ``least_squares`` compiles once per residual function,
    model and shapes (its ``args`` carry the model as a static field), so the second start,
    and problems sharing a model and a size (Gauss1-3, Lanczos1-3), reuse the compiled solve."""
    problem = nist.load(DATA / f"{name}.dat")
    args = nist.data(problem)
    out = {}
    for index, start in enumerate(problem.starts, 1):
        fit, info = idn.least_squares(nist.residual, jnp.asarray(start), args,
                                      max_steps=MAX_STEPS, throw=False)
        with warnings.catch_warnings():
            # A fit far from the minimum leaves parameters unidentifiable: inf, and a warning.
            warnings.simplefilter("ignore", UserWarning)
            errors = idn.standard_errors(nist.residual, fit, args)
        out[index] = (np.asarray(fit), info, np.asarray(errors))
    return problem, out


CASES = [
    pytest.param(name, index, id=f"{name}-start{index}", marks=(
        [pytest.mark.xfail(strict=True, reason=XFAIL[name, index])]
        if (name, index) in XFAIL else []))
    for name in nist.NAMES for index in (1, 2)
]


def test_the_data_files_parse_as_nist_describes_them():
    problems = nist.load_all(DATA)
    assert [p.name for p in problems] == list(nist.NAMES) and len(problems) == 27
    assert sorted(p.stem for p in DATA.glob("*.dat")) == sorted(nist.NAMES)
    for p in problems:
        m = p.certified.shape[0]
        assert p.start1.shape == p.start2.shape == p.certified_sd.shape == (m,)
        assert p.dof == p.y.shape[0] - m and p.x.shape[0] == p.y.shape[0]
        assert p.difficulty in ("Lower", "Average", "Higher")
        assert np.all(p.certified_sd > 0) and p.certified_rss > 0
    misra = problems[0]
    assert misra.name == "Misra1a" and misra.x.shape == (14,) and misra.dof == 12
    np.testing.assert_array_equal(misra.start1, [500.0, 1e-4])
    np.testing.assert_array_equal(misra.certified, [2.3894212918e02, 5.5015643181e-04])
    assert misra.certified_rss == 1.2455138894e-01
    # Rat43's header misprints its degrees of freedom (9); the certified values use N - M.
    assert nist.load(DATA / "Rat43.dat").dof == 15 - 4
    nelson = nist.load(DATA / "Nelson.dat")
    assert nelson.x.shape == (128, 2)
    np.testing.assert_allclose(nelson.response, np.log(nelson.y))


def test_the_models_reproduce_the_certified_residual_sum_of_squares():
    # At the certified parameters (11 digits) every model's float64 RSS matches NIST's to 10
    # digits or more, except Lanczos1, whose RSS (1e-25) is below the certified parameters'
    # own rounding.
    for p in nist.load_all(DATA):
        if p.name != "Lanczos1":
            assert nist.lre(nist.rss(p.certified, p), p.certified_rss) >= 10, p.name


def test_lre():
    assert nist.lre(1.0, 1.0) == 11 and nist.lre(1.0 + 1e-6, 1.0) == pytest.approx(6.0)
    assert nist.lre(2.0, 1.0) == 0 and nist.lre(np.nan, 1.0) == 0 and nist.lre(-1.0, 1.0) == 0
    np.testing.assert_allclose(nist.lre([1.001, 1 + 1e-13], [1.0, 1.0]), [3.0, 11.0])


def test_standard_errors_under_strict_promotion():
    problem = nist.load(DATA / "Misra1a.dat")
    errors = idn.standard_errors(nist.residual, jnp.asarray(problem.certified),
                                 nist.data(problem))
    assert nist.lre(errors, problem.certified_sd).min() >= SE_DIGITS


@pytest.mark.parametrize(("name", "start"), CASES)
def test_certified(name, start):
    problem, fits = _fits(name)
    fit, info, errors = fits[start]
    parameters = nist.lre(fit, problem.certified)
    rss = nist.lre(nist.rss(fit, problem), problem.certified_rss)
    standard_errors = nist.lre(errors, problem.certified_sd)
    measured = (f"{name} start {start}: parameter LRE {np.round(parameters, 2)}, RSS LRE "
                f"{rss:.2f}, standard-error LRE {np.round(standard_errors, 2)}, "
                f"{int(info.inner_steps)} iterations, {idn.RESULTS[info.result] or 'successful'}")
    assert float(info.loss) <= float(info.initial_loss)
    assert parameters.min() >= PARAMETER_DIGITS, measured
    assert rss >= RSS_DIGITS, measured
    assert standard_errors.min() >= SE_DIGITS, measured
    assert info.result == idn.RESULTS.successful, measured
