"""idn.solve_once: the optax contract."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import infinite_descent as idn


@pytest.fixture(scope="module")
def toy():
    return idn.problems.paper_toy()


def test_one_update_lands_on_the_solved_model(toy):
    x, y = toy
    model = idn.problems.paper_toy_start()
    opt = idn.solve_once()
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    state = opt.init(model)
    grads = eqx.filter_grad(lambda m: jnp.sum((jax.vmap(m)(x) - y) ** 2))(model)
    updates, state = opt.update(grads, state, model, x=x, y=y)
    new_model = optax.apply_updates(model, updates)
    solved, info = idn.solve(model, x, y)
    for a, b in zip(jax.tree.leaves(new_model), jax.tree.leaves(solved)):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
    new_loss = float(jnp.sum((jax.vmap(new_model)(x) - y) ** 2))
    assert new_loss < 1e-20
    assert int(state.count) == 1
    assert int(state.inner_steps) == int(info.inner_steps)
    assert int(state.data_passes) == int(info.data_passes)
    assert float(state.loss_after) < 1e-20 < float(state.loss_before)
    assert state.result == idn.RESULTS.successful
    # eqx.apply_updates lands on the same model.
    eqx_model = eqx.apply_updates(model, updates)
    for a, b in zip(jax.tree.leaves(eqx_model), jax.tree.leaves(new_model)):
        np.testing.assert_array_equal(a, b)


def test_accepts_filtered_params_and_ignores_unknown_extra_args(toy):
    x, y = toy
    model = idn.problems.paper_toy_start()
    params = eqx.filter(model, eqx.is_array)
    opt = idn.solve_once()
    state = opt.init(params)
    updates, state = opt.update(None, state, params, x=x, y=y, value=1.0, grad=None)
    assert float(state.loss_after) < 1e-20


def test_composes_with_optax_chain(toy):
    x, y = toy
    model = idn.problems.paper_toy_start()
    opt = optax.chain(idn.solve_once(), optax.scale(1.0))
    state = opt.init(model)
    updates, state = opt.update(model, state, model, x=x, y=y)
    new_model = optax.apply_updates(model, updates)
    assert float(jnp.sum((jax.vmap(new_model)(x) - y) ** 2)) < 1e-20


def _dtypes_and_shapes(tree):
    return jax.tree.map(lambda a: (jnp.asarray(a).dtype, jnp.shape(a)), tree)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_state_dtypes_never_change_and_it_runs_under_jit(toy, dtype):
    x, y = (a.astype(dtype) for a in toy)
    model = idn.problems.paper_toy_start(dtype=dtype)
    opt = idn.solve_once(max_steps=3)

    @jax.jit
    def step(model, state):
        updates, state = opt.update(None, state, model, x=x, y=y)
        return optax.apply_updates(model, updates), state

    state = opt.init(model)
    reference = _dtypes_and_shapes(state)
    for _ in range(3):
        model, state = step(model, state)
        assert _dtypes_and_shapes(state) == reference
        assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(model))
    assert int(state.count) == 3
    # Three bounded solves of 3 inner iterations each.
    assert int(state.inner_steps) == 3
    assert state.loss_before.dtype == dtype


def test_runs_under_filter_jit(toy):
    x, y = toy
    opt = idn.solve_once()

    @eqx.filter_jit
    def step(model, state):
        updates, state = opt.update(None, state, model, x=x, y=y)
        return eqx.apply_updates(model, updates), state

    model = idn.problems.paper_toy_start()
    model, state = step(model, opt.init(model))
    assert float(state.loss_after) < 1e-20


def test_missing_data_is_a_clear_error(toy):
    model = idn.problems.paper_toy_start()
    opt = idn.solve_once()
    state = opt.init(model)
    with pytest.raises(TypeError, match="x=x, y=y"):
        opt.update(None, state, model)
    with pytest.raises(TypeError, match="params"):
        opt.update(None, state, None, x=toy[0], y=toy[1])
    with pytest.raises(TypeError, match="passed to `update`"):
        idn.solve_once(x=toy[0])


def test_options_pass_through(toy):
    x, y = toy
    model = idn.problems.paper_toy_start()
    opt = idn.solve_once(max_steps=2)
    updates, state = opt.update(None, opt.init(model), model, x=x, y=y)
    assert int(state.inner_steps) == 2
    assert state.result == idn.RESULTS.max_steps_reached


def test_inject_hyperparams_schedules_damping_and_max_steps():
    """``optax.inject_hyperparams(idn.solve_once)``: the initial damping (scheduled) and
    ``max_steps`` become traced hyperparameters, read at run time: one compilation serves
    every value; tolerances given to it stay compile-time options."""
    x, y = idn.problems.paper_toy()
    start = idn.problems.paper_toy_start()
    params = eqx.filter(start, eqx.is_inexact_array)
    opt = optax.inject_hyperparams(idn.solve_once)(
        max_steps=3, initial_damping=optax.exponential_decay(1e-2, 1, 0.1), ftol=1e-12)
    traces = []

    @eqx.filter_jit
    def step(p, state):
        traces.append(None)
        updates, state = opt.update(None, state, p, x=x, y=y)
        return eqx.apply_updates(p, updates), state

    state = opt.init(params)
    _, state = step(params, state)
    assert int(state.inner_state.inner_steps) == 3  # the limit, read at run time
    assert float(state.hyperparams["initial_damping"]) == pytest.approx(1e-2)
    state = state._replace(hyperparams={**state.hyperparams, "max_steps": jnp.asarray(200)})
    _, state = step(params, state)
    assert float(state.hyperparams["initial_damping"]) == pytest.approx(1e-3)
    assert len(traces) == 1  # the new values did not recompile
    assert state.inner_state.result == idn.RESULTS.successful
    assert float(state.inner_state.loss_after) <= 1e-25


def test_solve_takes_traced_max_steps_and_damping():
    x, y = idn.problems.paper_toy()
    start = idn.problems.paper_toy_start()

    @jax.jit
    def steps(limit, damping):
        _, info = idn.solve(start, x, y, max_steps=limit, initial_damping=damping, throw=False)
        return info.inner_steps, info.result

    few, result = steps(jnp.int32(2), jnp.asarray(1e-3))
    assert int(few) == 2 and result == idn.RESULTS.max_steps_reached
    many, result = steps(jnp.int32(200), jnp.asarray(1e-3))
    assert 2 < int(many) < 200 and result == idn.RESULTS.successful
    with pytest.raises(ValueError, match="finite and > 0"):
        idn.solve(start, x, y, initial_damping=jnp.asarray(0.0))
    with pytest.raises(ValueError, match="record_history=True needs `max_steps` as a number"):
        idn.solve(start, x, y, max_steps=jnp.int32(5), record_history=True)
    with pytest.raises(TypeError, match="`ftol` configures the compiled loop"):
        jax.jit(lambda f: idn.solve(start, x, y, ftol=f)[1].loss)(1e-10)
