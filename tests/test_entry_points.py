"""Every entry point takes the same solver object and honours each run option, or refuses it
at the call with a message that names it."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn

X, Y = idn.problems.paper_toy()
START = idn.problems.paper_toy_start()


def test_the_solver_object_is_validated_when_built():
    with pytest.raises(ValueError, match="initial_damping"):
        idn.SNR(initial_damping=0.0)
    with pytest.raises(ValueError, match="hessian"):
        idn.SNR(hessian="newton")
    with pytest.raises(ValueError, match="linear_solver"):
        idn.SNR(linear_solver="qr")
    with pytest.raises(ValueError, match="positive definite"):
        idn.SNR(idn.CG(), hessian="exact")
    with pytest.raises(ValueError, match="rtol"):
        idn.CG(rtol=2.0)
    # numpy and JAX scalars are numbers; the string shortcuts are the objects.
    assert idn.SNR(ftol=np.float64(1e-10), loss_atol=jnp.float64(0.0)).ftol == 1e-10
    assert idn.SNR("dense") == idn.SNR(idn.Cholesky())
    assert hash(idn.SNR()) == hash(idn.SNR())


def test_every_entry_point_takes_the_same_solver_and_its_keywords():
    solver = idn.SNR(idn.Cholesky(), geodesic=False)
    _, a = idn.solve(START, X, Y, solver=solver)
    _, b = idn.solve(START, X, Y, linear_solver="dense", geodesic=False)
    assert int(a.inner_steps) == int(b.inner_steps) and a.linear_solver == "dense"
    opt = idn.solve_once(solver)
    _, state = opt.update(None, opt.init(START), START, x=X, y=Y)
    assert int(state.inner_steps) == int(a.inner_steps)
    best, info = idn.multistart(START, X, Y, num_starts=2, key=jax.random.key(0),
                                solver=solver)
    assert float(info.loss[info.best]) < 1e-20
    grown, history = idn.expand(idn.AION(1, 2, 1, shared_dims=True, key=jax.random.key(1)),
                                X, Y, max_terms=2, target_loss=1e-20, key=jax.random.key(2),
                                solver=solver)
    assert len(history) >= 1
    with pytest.raises(TypeError, match="not both"):
        idn.solve(START, X, Y, solver=solver, geodesic=True)


@pytest.mark.parametrize("entry", ["solve", "solve_once", "multistart", "expand"])
def test_a_misspelt_option_fails_at_the_call(entry):
    with pytest.raises(TypeError, match="unknown option `max_step`. Did you mean `max_steps`"):
        if entry == "solve":
            idn.solve(START, X, Y, max_step=3)
        elif entry == "solve_once":
            idn.solve_once(max_step=3)
        elif entry == "multistart":
            idn.multistart(START, X, Y, key=jax.random.key(0), max_step=3)
        else:
            idn.expand(START, X, Y, max_terms=3, key=jax.random.key(0), max_step=3)


def test_multistart_honours_its_budget_and_refuses_what_it_cannot_do():
    _, info = idn.multistart(START, X, Y, num_starts=np.int64(3), key=jax.random.key(0),
                             max_steps=5, segment_steps=4)
    assert np.all(np.asarray(info.inner_steps) <= 5)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="max_steps"):
            idn.multistart(START, X, Y, key=jax.random.key(0), max_steps=bad)
    with pytest.raises(ValueError, match="spread"):
        idn.multistart(START, X, Y, key=jax.random.key(0), spread=float("nan"))
    with pytest.raises(ValueError, match="record_history"):
        idn.multistart(START, X, Y, key=jax.random.key(0), record_history=True)
    with pytest.raises(RuntimeError, match="max_steps"):
        idn.multistart(START, X, Y, num_starts=2, key=jax.random.key(0), max_steps=1,
                       throw=True)


def test_expand_keeps_new_terms_trainable_and_refuses_a_nan_target():
    start = idn.AION(1, 2, 1, shared_dims=True, key=jax.random.key(3))
    frozen_omega = eqx.tree_at(lambda m: m.omega, jax.tree.map(lambda _: True, start), False)
    grown, _ = idn.expand(start, X, Y, max_terms=2, target_loss=1e-20, key=jax.random.key(4),
                          trainable=frozen_omega, candidates=1, term_starts=1)
    assert grown.rank == 2
    np.testing.assert_array_equal(grown.omega[0], start.omega[0])  # the start's: frozen
    new_term = idn.AION(1, 2, 1, shared_dims=True, key=jax.random.key(4))
    assert not np.allclose(grown.A[1], new_term.A[0]) or not np.allclose(grown.phi[1],
                                                                          new_term.phi[0])
    with pytest.raises(ValueError, match="target_loss"):
        idn.expand(start, X, Y, max_terms=2, target_loss=float("nan"), key=jax.random.key(0))
    with pytest.raises(ValueError, match="record_history"):
        idn.expand(start, X, Y, max_terms=2, key=jax.random.key(0), record_history=True)


def test_max_steps_beyond_the_counters_is_refused():
    with pytest.raises(ValueError, match="int32"):
        idn.solve(START, X, Y, max_steps=2**31)
    with pytest.raises(ValueError, match="record_history"):
        idn.solve(START, X, Y, max_steps=2**31 - 2, record_history=True)


def test_throw_raises_a_clear_error_outside_jit_and_inside():
    with pytest.raises(RuntimeError, match="solve: The solve ran `max_steps`"):
        idn.solve(START, X, Y, max_steps=1)
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(jax.jit(lambda m: idn.solve(m, X, Y, max_steps=1))(START))
