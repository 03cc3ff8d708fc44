"""Curve fitting against scipy: curve_fit and its covariance, robust losses, standard errors
of models, and the unidentifiable directions."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import infinite_descent as idn

T = np.linspace(0.0, 4.0, 60)


def _rng(seed=0):
    return np.random.default_rng(seed)


def decay(t, a, k, c):
    return a * jnp.exp(-k * t) + c


def decay_np(t, a, k, c):
    return a * np.exp(-k * t) + c


@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_curve_fit_equals_scipys(absolute_sigma):
    data = decay_np(T, 3.0, 1.3, 0.2) + 0.01 * _rng().normal(size=T.shape)
    sigma = 0.01 * (1 + T)
    popt, pcov = idn.curve_fit(decay, jnp.asarray(T), jnp.asarray(data), p0=[1.0, 1.0, 0.0],
                               sigma=sigma, absolute_sigma=absolute_sigma)
    sp, sc = so.curve_fit(decay_np, T, data, p0=[1.0, 1.0, 0.0], sigma=sigma,
                          absolute_sigma=absolute_sigma, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    np.testing.assert_allclose(popt, sp, rtol=1e-6)
    np.testing.assert_allclose(pcov, sc, rtol=1e-6)


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy", "arctan"])
def test_robust_losses_give_scipys_minimiser(loss):
    data = decay_np(T, 3.0, 1.3, 0.2) + 0.01 * _rng().normal(size=T.shape)
    data[::12] += 2.0  # 5 gross outliers in 60 points

    def residuals(p, t):
        return decay(t, *p) - jnp.asarray(data)

    fit, info = idn.least_squares(residuals, jnp.array([1.0, 1.0, 0.0]), jnp.asarray(T),
                                  loss=loss, f_scale=0.05)
    ref = so.least_squares(lambda p: decay_np(T, *p) - data, [1.0, 1.0, 0.0], loss=loss,
                           f_scale=0.05, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    np.testing.assert_allclose(fit, ref.x, rtol=1e-6)
    assert info.result == idn.RESULTS.successful


def test_robust_fit_recovers_the_lifetime_where_the_plain_fit_does_not():
    """5% gross outliers: over five noise draws the plain fit's rate is off by more than its
    standard error every time, the soft-L1 and Cauchy fits' within theirs on average (each
    fit's standard errors from its own objective, as scipy's curve_fit gives them)."""
    truth = np.array([3.0, 1.3, 0.2])
    start = jnp.array([1.0, 1.0, 0.0])
    z = {"linear": [], "soft_l1": [], "cauchy": []}
    for seed in range(5):
        data = decay_np(T, *truth) + 0.01 * _rng(seed).normal(size=T.shape)
        data[::20] += 1.0

        def residuals(p, t, data=data):
            return decay(t, *p) - jnp.asarray(data)

        for loss in z:
            fit, _ = idn.least_squares(residuals, start, jnp.asarray(T), loss=loss,
                                       f_scale=0.01)
            err = idn.standard_errors(residuals, fit, jnp.asarray(T), loss=loss, f_scale=0.01)
            z[loss].append(abs(float(fit[1]) - truth[1]) / float(err[1]))
    assert min(z["linear"]) > 1, z
    assert np.mean(z["soft_l1"]) < 1 and np.mean(z["cauchy"]) < 1, z


@pytest.mark.parametrize("loss", ["soft_l1", "cauchy"])
def test_curve_fit_with_a_robust_loss_equals_scipys(loss):
    data = decay_np(T, 3.0, 1.3, 0.2) + 0.01 * _rng().normal(size=T.shape)
    data[::20] += 1.0
    popt, pcov = idn.curve_fit(decay, jnp.asarray(T), jnp.asarray(data), p0=[1.0, 1.0, 0.0],
                               loss=loss, f_scale=0.02)
    sp, sc = so.curve_fit(decay_np, T, data, p0=[1.0, 1.0, 0.0], loss=loss, f_scale=0.02,
                          method="trf", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    np.testing.assert_allclose(popt, sp, rtol=1e-6)
    np.testing.assert_allclose(pcov, sc, rtol=1e-6)


def test_standard_errors_of_a_model_equal_curve_fits():
    x = np.linspace(0.0, 1.0, 80)[:, None]
    target = idn.AION(1, 1, 1, key=jax.random.key(4))  # a damped cosine: well conditioned
    y = np.asarray(jax.vmap(target)(jnp.asarray(x))) + 1e-3 * _rng().normal(size=80)
    model, _ = idn.solve(target, jnp.asarray(x), jnp.asarray(y))
    errors = idn.standard_errors(model, jnp.asarray(x), jnp.asarray(y))
    assert jax.tree.structure(errors) == jax.tree.structure(
        eqx.filter(model, eqx.is_inexact_array))
    # The same fit through scipy's curve_fit, parameters in ravel order (A, alpha, omega, phi).
    flat, unravel = jax.flatten_util.ravel_pytree(eqx.filter(model, eqx.is_inexact_array))
    static = eqx.filter(model, eqx.is_inexact_array, inverse=True)

    def f(xs, *p):
        m = eqx.combine(unravel(jnp.asarray(p)), static)
        return np.asarray(jax.vmap(m)(jnp.asarray(xs)[:, None]))

    jac = jax.jacfwd(lambda p: jax.vmap(eqx.combine(unravel(p), static))(jnp.asarray(x)))
    _, pcov = so.curve_fit(f, x[:, 0], y, p0=np.asarray(flat), xtol=1e-15, ftol=1e-15,
                           gtol=1e-15, jac=lambda xs, *p: np.asarray(jac(jnp.asarray(p))))
    want = np.sqrt(np.diag(pcov))
    got = np.asarray(jax.flatten_util.ravel_pytree(errors)[0])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_the_amplitude_gauge_and_frozen_parameters_are_not_given_numbers():
    x = jax.random.uniform(jax.random.key(1), (200, 2))
    target = idn.AION(2, 2, 1, key=jax.random.key(2))  # untied: A[j, 0] A[j, 1] is the gauge
    y = jax.vmap(target)(x) + 1e-3 * jnp.sin(30.0 * x[:, 0])
    model, _ = idn.solve(target, x, y, throw=False)
    with pytest.warns(UserWarning, match="cannot be identified"):
        errors = idn.standard_errors(model, x, y)
    assert np.all(np.isinf(np.asarray(errors.A)))
    assert np.all(np.isfinite(np.asarray(errors.omega)))
    frozen = jax.tree.map(lambda _: True, model)
    frozen = eqx.tree_at(lambda m: m.omega, frozen, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        errors = idn.standard_errors(model, x, y, trainable=frozen)
    assert np.all(np.isnan(np.asarray(errors.omega)))
    assert np.all(np.isfinite(np.asarray(errors.alpha)))


BOUND_CASES = [
    ([0.0, 0.0, 0.25], [10.0, 10.0, 1.0]),           # c held at its lower bound
    ([0.0, 1.4, -1.0], [2.9, 3.0, 1.0]),             # a at its upper bound, k at its lower
    ([-np.inf, 0.0, -np.inf], [np.inf, np.inf, np.inf]),  # inactive: the free minimum
]


@pytest.mark.parametrize("lower,upper", BOUND_CASES)
def test_bounded_fit_equals_scipys_trf_and_stays_feasible(lower, upper):
    data = decay_np(T, 3.0, 1.3, 0.2) + 0.01 * _rng().normal(size=T.shape)

    def residuals(p, t):
        return decay(t, *p) - jnp.asarray(data)

    lower, upper = jnp.asarray(lower), jnp.asarray(upper)
    start = jnp.array([1.0, 2.0, 0.5])
    fit, info = idn.least_squares(residuals, start, jnp.asarray(T), bounds=(lower, upper),
                                  record_history=True)
    ref = so.least_squares(lambda p: decay_np(T, *p) - data, np.asarray(start),
                           bounds=(np.asarray(lower), np.asarray(upper)), method="trf",
                           xtol=1e-15, ftol=1e-15, gtol=1e-15)
    np.testing.assert_allclose(fit, ref.x, rtol=1e-6)
    k = int(info.inner_steps)
    path = np.asarray(info.history.params)[: k + 1]
    assert np.all(path >= np.asarray(lower)) and np.all(path <= np.asarray(upper))
    # The first-order condition of the bounded problem: the projected gradient vanishes, in
    # the scale-free sense of MINPACK's gtol (the cosine between each column of J and r).
    columns = jnp.linalg.norm(jax.jacfwd(residuals)(fit, jnp.asarray(T)), axis=0)
    assert float(info.grad_norm) < 1e-6 * float(jnp.min(columns)) * float(info.loss) ** 0.5


def test_bounds_are_checked_and_a_start_on_a_bound_is_moved_inside():
    def residuals(p, _):
        return p - jnp.array([2.0, -1.0])

    with pytest.raises(ValueError, match="outside the bounds"):
        idn.least_squares(residuals, jnp.array([5.0, 0.0]), bounds=(0.0, 3.0))
    with pytest.raises(ValueError, match="below its upper bound"):
        idn.least_squares(residuals, jnp.array([1.0, 1.0]), bounds=(1.0, 1.0))
    fit, info = idn.least_squares(residuals, jnp.array([0.0, 0.0]), bounds=(0.0, 3.0))
    np.testing.assert_allclose(fit, [2.0, 0.0], atol=1e-12)  # -1 is cut at the bound 0
    model = idn.problems.paper_toy_start()
    x, y = idn.problems.paper_toy()
    bounded, info = idn.solve(model, x, y, bounds=(-np.inf, 3.0), throw=False)
    assert float(jnp.max(bounded.omega)) <= 3.0


def test_the_report_shows_the_fit_and_its_parameters():
    data = decay_np(T, 3.0, 1.3, 0.2) + 0.01 * _rng().normal(size=T.shape)

    def residuals(p, t):
        return decay(t, p["a"], p["k"], p["c"]) - jnp.asarray(data)

    fit, info = idn.least_squares(residuals, {"a": 1.0, "k": 1.0, "c": 0.0}, jnp.asarray(T))
    errors = idn.standard_errors(residuals, fit, jnp.asarray(T))
    text = idn.report(info, fit, errors)
    assert "converged" in text and f"{int(info.inner_steps)} (" in text
    for name in ("a", "k", "c"):
        line = next(line for line in text.splitlines() if f"['{name}']" in line)
        assert f"{float(fit[name]): .8g}" in line and f"{float(errors[name]):.3g}" in line
    assert "max_steps" in idn.report(idn.least_squares(residuals, {"a": 1.0, "k": 1.0,
                                                                   "c": 0.0},
                                                       jnp.asarray(T), max_steps=1,
                                                       throw=False)[1])
