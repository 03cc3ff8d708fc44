"""Every entry point held to solve's contract (issue 17, items 7-10): bad input refused at the
boundary with a message that names the argument; degenerate data give a finite answer."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn

T = jnp.linspace(0.0, 1.0, 64)[:, None]


def _finite(model) -> bool:
    return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(model)
               if eqx.is_inexact_array(a))


@pytest.mark.parametrize("y", [np.zeros(64), np.eye(64)[0]], ids=["zeros", "impulse"])
def test_matrix_pencil_on_degenerate_data_is_finite(y):
    """All-zero data and an impulse (poles at zero) gave NaN parameters; now the components
    the data do not support have zero amplitude, and the start fits as well as it can."""
    start = idn.matrix_pencil(T, y, rank=2)
    assert _finite(start)
    values = jax.vmap(start)(T)
    assert float(jnp.sum((values - y) ** 2)) <= float(np.sum(y ** 2)) + 1e-12


def test_matrix_pencil_refuses_bad_input_clearly():
    y = jnp.sin(3 * T[:, 0])
    for rank in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="`rank` must be a positive integer"):
            idn.matrix_pencil(T, y, rank)
    with pytest.raises(ValueError, match="must be finite"):
        idn.matrix_pencil(T, y.at[3].set(jnp.nan), 2)
    with pytest.raises(TypeError, match="outside `jax.jit`"):
        jax.jit(lambda v: idn.matrix_pencil(T, v, 2).A)(y)


def test_matrix_pencil_caps_long_records():
    """1e5 samples asked for an SVD of a 66,667 x 33,334 matrix (16.6 GiB); the pencil is now
    capped, with a warning, and the estimate is still exact on noiseless data."""
    x = jnp.linspace(0.0, 10.0, 100_000)[:, None]
    y = 2.0 * jnp.exp(-0.3 * x[:, 0]) * jnp.cos(5.0 * x[:, 0] + 0.4)
    with pytest.warns(UserWarning, match="capped pencil"):
        start = idn.matrix_pencil(x, y, rank=1)
    np.testing.assert_allclose(float(start.alpha.ravel()[0]), -0.3, rtol=1e-6)
    np.testing.assert_allclose(float(start.omega.ravel()[0]), 5.0, rtol=1e-6)
    np.testing.assert_allclose(float(start.A.ravel()[0]), 2.0, rtol=1e-6)


def test_regularized_newton_at_a_zero_network_is_finite():
    """Every weight zero: every Jacobian column is zero, so the kernel-relative lambda was
    0 and the step 0 / 0; now lambda is taken as given there and the step is zero."""
    x, y = idn.problems.paper_toy()
    net = idn.ShallowNetwork(4, 2, key=jax.random.key(0))
    zero = jax.tree.map(lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a, net)
    opt = idn.regularized_newton(1e-3)
    params = eqx.filter(zero, eqx.is_inexact_array)
    updates, _ = opt.update(None, opt.init(params), params, x=x, y=y)
    assert _finite(updates)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_models_are_refused_when_built_and_solved(dtype):
    x, y = idn.problems.paper_toy()
    for build in (lambda: idn.AION(1, 2, 1, key=jax.random.key(0), dtype=dtype),
                  lambda: idn.GaussianAtoms(1, 2, 1, key=jax.random.key(0), dtype=dtype),
                  lambda: idn.ShallowNetwork(3, 2, key=jax.random.key(0), dtype=dtype)):
        with pytest.raises(TypeError, match="float32 or float64"):
            build()
    cast = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a,
                        idn.problems.paper_toy_start())
    with pytest.raises(TypeError, match="float32 and float64 are supported"):
        idn.solve(cast, x, y)


@pytest.mark.parametrize("value, kind, message", [
    (3, TypeError, "must be a real floating array, got int"),
    (3.0, TypeError, "must be a real floating array, got float"),
    (jnp.ones((2, 2)), ValueError, "must have 3 axes"),
    (jnp.ones((2, 1, 1), jnp.int32), TypeError, "of dtype int32"),
])
def test_models_edited_into_bad_shapes_are_refused_at_the_call(value, kind, message):
    """An AION edited with eqx.tree_at to a number, an integer array or a wrong-shaped array
    failed deep inside (or, for the integer array, silently froze the field)."""
    x, y = idn.problems.paper_toy()
    bad = eqx.tree_at(lambda m: m.A, idn.problems.paper_toy_start(), value)
    with pytest.raises(kind, match=message):
        idn.solve(bad, x, y)
    with pytest.raises(kind, match=message):
        idn.multistart(bad, x, y, num_starts=2, key=jax.random.key(0))


def test_mismatched_network_fields_are_refused():
    x, y = idn.problems.paper_toy()
    net = idn.ShallowNetwork(3, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"\(width, 2\)"):
        idn.solve(eqx.tree_at(lambda n: n.w, net, jnp.ones((3, 3))), x, y)


def test_a_float64_model_after_x64_is_switched_off_is_refused():
    """Built with x64 on, solved with it off: JAX would have computed in float32 and failed
    inside; now the call says what to do. (And float64 is refused at construction then.)"""
    x, y = idn.problems.paper_toy()
    start = idn.problems.paper_toy_start()
    with jax.enable_x64(False):
        with pytest.raises(TypeError, match="`jax_enable_x64` is off"):
            idn.solve(start, np.asarray(x), np.asarray(y))
        with pytest.raises(TypeError, match="needs `jax.config.update"):
            idn.AION(1, 2, 1, key=jax.random.key(0), dtype=jnp.float64)


def _loss(model, x, y):
    r = jax.vmap(model)(x) - y
    return float(r @ r)


def _degenerate_projection_starts():
    x = jax.random.uniform(jax.random.key(0), (200, 2))
    y = jnp.sin(3 * x[:, 0]) * jnp.cos(2 * x[:, 1]) + x[:, 1]
    start = idn.AION(3, 2, 2, key=jax.random.key(1))
    lanczos = idn.problems.lanczos3()
    return {
        "equal points": (start, jnp.full_like(x, 0.5), y),
        "zero frequencies": (eqx.tree_at(lambda m: m.omega, start, jnp.zeros_like(start.omega)),
                             x, y),
        "pencil on Lanczos3": (idn.matrix_pencil(lanczos.x[:, 0], lanczos.y, rank=3, real=True),
                               lanczos.x, lanczos.y),
    }


@pytest.mark.parametrize("case", ["equal points", "zero frequencies", "pencil on Lanczos3"])
def test_variable_projection_from_a_singular_basis_is_never_worse(case):
    """The projected problem re-fits the eliminated coefficients, which a singular basis
    (coinciding points, zero frequencies: zero sine columns) makes huge or NaN: the solve
    returned a loss of 3e67 against the start's 969, or NaN. Now the start comes back with
    RESULTS.singular_projection, and the losses reported are the models' own."""
    start, x, y = _degenerate_projection_starts()[case]
    fit, info = idn.solve(start, x, y, variable_projection=True, throw=False)
    start_loss = _loss(start, x, y)
    assert _finite(fit)
    assert _loss(fit, x, y) <= start_loss
    np.testing.assert_allclose(float(info.initial_loss), start_loss, rtol=1e-12)
    np.testing.assert_allclose(float(info.loss), _loss(fit, x, y), rtol=1e-12)
    assert info.result == idn.RESULTS.singular_projection
    with pytest.raises(RuntimeError, match="Variable projection could not fit"):
        idn.solve(start, x, y, variable_projection=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_variable_projection_reports_the_returned_models_loss(dtype):
    """In float32 ``info.loss`` (the projected problem's) said 1.8e-7 where the returned
    model's loss was 11.2; now ``info.loss`` is the returned model's loss."""
    x = jax.random.uniform(jax.random.key(2), (300, 2), dtype, -1, 1)
    truth = idn.AION(2, 2, 1, key=jax.random.key(3), dtype=dtype)
    y = jax.vmap(truth)(x)
    start = idn.AION(2, 2, 1, key=jax.random.key(4), dtype=dtype)
    fit, info = idn.solve(start, x, y, variable_projection=True, throw=False)
    assert float(info.loss) <= _loss(start, x, y)
    np.testing.assert_allclose(float(info.loss), _loss(fit, x, y), rtol=1e-4 if dtype ==
                               jnp.float32 else 1e-10, atol=10 * float(jnp.finfo(dtype).eps))
