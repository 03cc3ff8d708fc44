"""least_squares(batched=True): many independent fits in a pool of vmapped lanes, each fit
leaving the pool when it finishes (issue 15, item 5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn

T = jnp.linspace(0.0, 6.0, 64)


def _residuals(p, args):
    t, y = args
    return p["a1"] * jnp.exp(-t / p["t1"]) + p["a2"] * jnp.exp(-t / p["t2"]) + p["c"] - y


def _decays(num, key=0):
    """Noise-free decays with lifetimes far apart, and starts 10-30% off."""
    k = jax.random.split(jax.random.key(key), 4)
    truth = {"a1": jax.random.uniform(k[0], (num,), minval=1, maxval=3),
             "t1": jax.random.uniform(k[1], (num,), minval=0.3, maxval=0.8),
             "a2": jax.random.uniform(k[2], (num,), minval=1, maxval=3),
             "t2": jax.random.uniform(k[3], (num,), minval=2.0, maxval=4.0),
             "c": jnp.linspace(0.0, 0.5, num)}
    y = jax.vmap(lambda p: _residuals(p, (T, 0.0)))(truth)
    factors = 1 + 0.1 * (1 + jnp.arange(num) % 3).astype(float)
    start = {k: v * (factors if k != "c" else 0.0) for k, v in truth.items()}
    return truth, y, start


def test_batched_equals_a_loop_of_fits():
    """37 fits in a pool of 8 lanes, 4 iterations a segment (so fits join, resume and leave
    many times and the pool narrows at the end): each fit equals its own least_squares to
    1e-8 and reaches the truth."""
    truth, y, start = _decays(37)
    fit, info = idn.least_squares(_residuals, start, (T, y), batched=True,
                                  args_axes=(None, 0), batch_size=8, segment_steps=4)
    assert info.loss.shape == (37,) and bool(jnp.all(info.converged))
    assert int(jnp.max(info.inner_steps)) <= 256
    for i in range(37):
        one, one_info = idn.least_squares(_residuals, {k: v[i] for k, v in start.items()},
                                          (T, y[i]))
        for name in truth:
            np.testing.assert_allclose(fit[name][i], one[name], rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(fit[name][i], truth[name][i], rtol=1e-7, atol=1e-9)
        assert float(info.loss[i]) <= 1e-20 * float(y[i] @ y[i])
        assert abs(int(info.inner_steps[i]) - int(one_info.inner_steps)) <= 3 * (
            int(one_info.inner_steps) // 4 + 1)


def test_batched_budget_per_fit_and_throw():
    """``max_steps`` caps each fit's iterations over all its segments; ``throw`` raises when
    a fit did not finish and names how many."""
    _, y, start = _decays(10)
    fit, info = idn.least_squares(_residuals, start, (T, y), batched=True,
                                  args_axes=(None, 0), max_steps=6, segment_steps=4,
                                  batch_size=4, throw=False)
    steps = np.asarray(info.inner_steps)
    assert steps.max() <= 6
    unfinished = np.asarray(info.result._value) == int(idn.RESULTS.max_steps_reached._value)
    assert unfinished.any() and np.all(steps[unfinished] == 6)
    with pytest.raises(RuntimeError, match=r"of 10 fits were not successful"):
        idn.least_squares(_residuals, start, (T, y), batched=True, args_axes=(None, 0),
                          max_steps=6, segment_steps=4)


def test_batched_bounds_shared_and_per_fit():
    """Bounds shared by all fits, or with the fits' axis, as for single fits."""
    _, y, start = _decays(6)
    lower = {"a1": 0.0, "t1": 0.05, "a2": 0.0, "t2": 0.05, "c": 0.0}
    upper = {"a1": 10.0, "t1": 0.6, "a2": 10.0, "t2": 10.0, "c": 1.0}
    start = {**start, "t1": jnp.minimum(start["t1"], 0.55)}
    fit, info = idn.least_squares(_residuals, start, (T, y), batched=True,
                                  args_axes=(None, 0), bounds=(lower, upper), throw=False)
    per_fit = ({k: jnp.full(6, v) for k, v in lower.items()},
               {k: jnp.full(6, v) for k, v in upper.items()})
    fit2, _ = idn.least_squares(_residuals, start, (T, y), batched=True,
                                args_axes=(None, 0), bounds=per_fit, throw=False)
    assert float(jnp.max(fit["t1"])) <= 0.6
    for i in range(6):
        one, _ = idn.least_squares(_residuals, {k: v[i] for k, v in start.items()},
                                   (T, y[i]), bounds=(lower, upper), throw=False)
        for name in fit:
            np.testing.assert_allclose(fit[name][i], one[name], rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(fit2[name][i], one[name], rtol=1e-7, atol=1e-9)


def test_batched_refuses_clearly():
    _, y, start = _decays(4)
    args = (T, y)
    with pytest.raises(ValueError, match="leading axis over the fits"):
        idn.least_squares(_residuals, {**start, "c": 0.0}, args, batched=True,
                          args_axes=(None, 0))
    with pytest.raises(ValueError, match="no axis 0 of length 4"):
        idn.least_squares(_residuals, start, (T, y[:3]), batched=True, args_axes=(None, 0))
    with pytest.raises(ValueError, match="no axis 0 of length 4"):
        idn.least_squares(_residuals, start, args, batched=True)  # T is shared, not batched
    with pytest.raises(ValueError, match="segment_steps"):
        idn.least_squares(_residuals, start, args, batched=True, args_axes=(None, 0),
                          segment_steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        idn.least_squares(_residuals, start, args, batched=True, args_axes=(None, 0),
                          batch_size=0)
    with pytest.raises(ValueError, match="records no history"):
        idn.least_squares(_residuals, start, args, batched=True, args_axes=(None, 0),
                          record_history=True)
