"""``regularized_newton``: its step against a dense solve with the autodiff Hessian, the
relative regularization, the push-through path, the optax contract and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import infinite_descent as idn


def _setup(width, num_points, dim=1, dtype=jnp.float64, key=0):
    k1, k2 = jax.random.split(jax.random.key(key))
    net = idn.ShallowNetwork(width, dim, key=k1, dtype=dtype, output_scale=0.7)
    x = jax.random.uniform(k2, (num_points, dim), dtype, -1.0, 1.0)
    y = jnp.sin(3 * x[:, 0]) + 0.5 * jnp.cos(7 * x[:, 0])
    return net, x, y


def _reference_step(net, x, y, lam_relative, hessian):
    """``-(H + lambda I)^{-1} grad(Phi / 2)`` from jax.hessian and numpy, independently of the
    package's linear algebra; ``lambda`` relative to ``trace(J^T J) / N``."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def residual(f):
        return jax.vmap(eqx.combine(unravel(f), static))(x) - y

    J = np.asarray(jax.jacfwd(residual)(flat))
    r = np.asarray(residual(flat))
    if hessian == "exact":
        H = np.asarray(jax.hessian(lambda f: 0.5 * residual(f) @ residual(f))(flat))
    else:
        H = J.T @ J
    lam = lam_relative * np.sum(J * J) / x.shape[0]
    step = np.linalg.solve(H + lam * np.eye(H.shape[0]), -J.T @ r)
    return step, lam, unravel


@pytest.mark.parametrize("hessian", ["exact", "gauss_newton"])
@pytest.mark.parametrize("linear_solver,width,num_points", [
    ("auto", 16, 20),       # 48 parameters > 20 points: the push-through identity
    ("woodbury", 16, 20),
    ("dense", 16, 20),
    ("auto", 4, 60),        # 12 parameters < 60 points: the dense system
])
def test_step_matches_a_dense_solve_with_the_autodiff_hessian(hessian, linear_solver, width,
                                                              num_points):
    net, x, y = _setup(width, num_points)
    reference, lam, _ = _reference_step(net, x, y, 1e-2, hessian)
    opt = idn.regularized_newton(1e-2, hessian=hessian, linear_solver=linear_solver)
    updates, state = opt.update(None, opt.init(net), net, x=x, y=y)
    step = jax.flatten_util.ravel_pytree(updates)[0]
    assert np.linalg.norm(step - reference) / np.linalg.norm(reference) < 1e-10
    np.testing.assert_allclose(float(state.regularization), lam, rtol=1e-12)
    np.testing.assert_allclose(float(state.loss),
                               float(jnp.sum((jax.vmap(net)(x) - y) ** 2)), rtol=1e-12)
    assert int(state.count) == 1


def test_absolute_regularization_and_step_size():
    net, x, y = _setup(6, 30)
    reference, lam, _ = _reference_step(net, x, y, 1.0, "gauss_newton")
    # An absolute lambda equal to the relative one above, and half a step.
    opt = idn.regularized_newton(lam, relative=False, step_size=0.5, hessian="gauss_newton")
    updates, state = opt.update(None, opt.init(net), net, x=x, y=y)
    step = jax.flatten_util.ravel_pytree(updates)[0]
    np.testing.assert_allclose(step, 0.5 * reference, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(state.regularization), lam, rtol=1e-12)


def test_gauss_newton_steps_decrease_the_loss_in_a_jitted_loop():
    net, x, y = _setup(32, 40)
    opt = idn.regularized_newton(1e-1, hessian="gauss_newton")

    @eqx.filter_jit
    def step(model, state):
        updates, state = opt.update(None, state, model, x=x, y=y)
        return eqx.apply_updates(model, updates), state

    state = opt.init(net)
    losses = []
    for _ in range(15):
        net, state = step(net, state)
        losses.append(float(state.loss))
        assert bool(state.descent)
    final = float(jnp.sum((jax.vmap(net)(x) - y) ** 2))
    assert final < 0.1 * losses[0]
    assert int(state.count) == 15


def test_it_composes_with_optax_and_works_in_float32():
    net, x, y = _setup(8, 50, dtype=jnp.float32)
    opt = optax.chain(idn.regularized_newton(1e-1, hessian="gauss_newton"))
    state = opt.init(net)
    updates, state = opt.update(None, state, net, x=x, y=y)
    new = optax.apply_updates(eqx.filter(net, eqx.is_inexact_array), updates)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(new))
    assert state[0].loss.dtype == jnp.float32
    before = float(jnp.sum((jax.vmap(net)(x) - y) ** 2))
    after = float(jnp.sum((jax.vmap(eqx.combine(new, net))(x) - y) ** 2))
    assert np.isfinite(after) and after < before


def test_bad_input_is_refused():
    net, x, y = _setup(4, 10)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="regularization"):
            idn.regularized_newton(bad)
    with pytest.raises(ValueError, match="step_size"):
        idn.regularized_newton(1e-3, step_size=0.0)
    with pytest.raises(ValueError, match="hessian"):
        idn.regularized_newton(1e-3, hessian="newton")
    with pytest.raises(ValueError, match="linear_solver"):
        idn.regularized_newton(1e-3, linear_solver="qr")
    opt = idn.regularized_newton(1e-3, linear_solver="cg")
    with pytest.raises(ValueError, match="positive definite"):
        opt.update(None, opt.init(net), net, x=x, y=y)
    opt = idn.regularized_newton(1e-3)
    with pytest.raises(TypeError, match="x=x, y=y"):
        opt.update(None, opt.init(net), net)
    with pytest.raises(ValueError, match="shape"):
        opt.update(None, opt.init(net), net, x=x[:, 0], y=y)
    with pytest.raises(TypeError, match="SumOfTerms"):
        opt.init({"w": jnp.ones(3)})


def test_shallow_network_output_scale():
    k = jax.random.key(3)
    plain = idn.ShallowNetwork(5, 2, key=k)
    scaled = idn.ShallowNetwork(5, 2, key=k, output_scale=0.25)
    point = jnp.array([0.3, -0.7])
    np.testing.assert_allclose(float(scaled(point)), 0.25 * float(plain(point)), rtol=1e-14)
    np.testing.assert_allclose(float(jnp.sum(scaled.term_values(point))), float(scaled(point)),
                               rtol=1e-14)
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="output_scale"):
            idn.ShallowNetwork(5, 2, key=k, output_scale=bad)
