"""idn.solve: the toy, random starts, the NIST Lanczos3 certified problem, options and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn


@pytest.fixture(scope="module")
def toy():
    return idn.problems.paper_toy()


def loss_of(model, x, y):
    return float(jnp.sum((jax.vmap(model)(x) - y) ** 2))


def test_toy_from_the_documented_start(toy):
    x, y = toy
    start = idn.problems.paper_toy_start()
    model, info = idn.solve(start, x, y)
    assert bool(info.converged)
    assert info.result == idn.RESULTS.successful
    assert float(info.loss) < 1e-20
    # The loss the solver reports is the loss of the model it returns.
    np.testing.assert_allclose(loss_of(model, x, y), float(info.loss), rtol=0, atol=1e-24)
    np.testing.assert_allclose(float(info.initial_loss), loss_of(start, x, y), rtol=1e-12)
    # Honest counting: one pass (values only) for step zero, which scales the start's output
    # to the data, one for the start, one per inner iteration.
    assert 1 <= int(info.inner_steps) <= 60
    assert int(info.data_passes) == int(info.inner_steps) + 2
    assert int(info.accepted_steps) <= int(info.inner_steps)
    assert info.linear_solver == "dense" and info.hessian == "gauss_newton"
    # It found the cosine: omega = pi in both ranks, |A| = 1 after the phases settle.
    np.testing.assert_allclose(np.asarray(model.omega).ravel(), np.pi, rtol=1e-10)


@pytest.mark.parametrize("shared", [True, False])
def test_toy_random_starts(toy, shared):
    """At least 29 of 30 random starts reach Phi < 1e-20 (docs/design.md's random starts)."""
    x, y = toy
    solve = jax.jit(lambda m: idn.solve(m, x, y, throw=False))
    losses = []
    for i in range(30):
        start = idn.problems.random_toy_start(jax.random.key(1000 + i), shared_dims=shared)
        model, info = solve(start)
        assert float(info.loss) <= float(info.initial_loss)
        losses.append(float(info.loss))
    assert sum(loss < 1e-20 for loss in losses) >= 29, sorted(losses)[-3:]


@pytest.mark.parametrize("start_index", [0, 1])
def test_nist_lanczos3(start_index):
    """NIST StRD Lanczos3 from both certified starts: RSS and 6 significant digits."""
    problem = idn.problems.lanczos3()
    model, info = idn.solve(
        problem.starts[start_index], problem.x, problem.y, trainable=problem.trainable
    )
    assert bool(info.converged)
    np.testing.assert_allclose(float(info.loss), problem.certified_loss, rtol=1e-8)

    def sorted_pairs(m):  # ranks are interchangeable: match them by decay rate
        pairs = np.stack([np.asarray(m.A).ravel(), -np.asarray(m.alpha).ravel()], axis=1)
        return pairs[np.argsort(pairs[:, 1])]

    np.testing.assert_allclose(
        sorted_pairs(model), sorted_pairs(problem.certified), rtol=1e-6, atol=0
    )
    # omega and phi were held at zero.
    assert float(jnp.max(jnp.abs(model.omega))) == 0.0
    assert float(jnp.max(jnp.abs(model.phi))) == 0.0


def test_trainable_leaves_never_move(toy):
    x, y = toy
    start = idn.problems.paper_toy_start()
    trainable = eqx.tree_at(
        lambda m: (m.A, m.alpha, m.omega, m.phi),
        jax.tree.map(lambda _: True, start),
        (True, False, True, np.array([[[True]], [[False]]])),
    )
    model, info = idn.solve(start, x, y, trainable=trainable, throw=False)
    np.testing.assert_array_equal(model.alpha, start.alpha)
    np.testing.assert_array_equal(model.phi[1], start.phi[1])
    assert float(jnp.max(jnp.abs(model.A - start.A))) > 0
    assert float(jnp.max(jnp.abs(model.phi[0] - start.phi[0]))) > 0
    assert float(info.loss) < float(info.initial_loss)


def test_nothing_trainable_returns_the_start(toy):
    x, y = toy
    start = idn.problems.paper_toy_start()
    model, info = idn.solve(start, x, y, trainable=False)
    assert int(info.inner_steps) == 0
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(start)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("max_steps", [0, 1, 2, 5])
def test_never_worse_than_the_start_and_max_steps_reported(toy, max_steps):
    x, y = toy
    start = idn.problems.paper_toy_start()
    model, info = idn.solve(start, x, y, max_steps=max_steps, throw=False)
    assert int(info.inner_steps) == max_steps
    assert info.result == idn.RESULTS.max_steps_reached
    assert not bool(info.converged)
    assert loss_of(model, x, y) <= loss_of(start, x, y)


def test_throw_raises_with_a_readable_message(toy):
    x, y = toy
    with pytest.raises(Exception, match="max_steps"):
        model, _ = idn.solve(idn.problems.paper_toy_start(), x, y, max_steps=2)
        jax.block_until_ready(model)


@pytest.mark.parametrize("linear_solver", ["block"])
@pytest.mark.parametrize("hessian", ["gauss_newton", "exact"])
def test_block_diagonal_step_runs_and_is_what_it_is(toy, linear_solver, hessian):
    """The paper's block-diagonal step is kept as an option; it never worsens the loss."""
    x, y = toy
    start = idn.problems.paper_toy_start()
    model, info = idn.solve(
        start, x, y, linear_solver=linear_solver, hessian=hessian, max_steps=50, throw=False
    )
    assert info.linear_solver == "block"
    assert np.isfinite(float(info.loss))
    assert float(info.loss) < float(info.initial_loss)
    if hessian == "exact":
        assert int(info.data_passes) == 2 * (int(info.inner_steps) + 1) + 1  # + step zero


def test_exact_hessian_option_solves_the_toy(toy):
    x, y = toy
    model, info = idn.solve(idn.problems.paper_toy_start(), x, y, hessian="exact")
    assert float(info.loss) < 1e-20
    assert info.hessian == "exact"


def test_loss_and_gradient_tolerances_stop_early(toy):
    x, y = toy
    start = idn.problems.paper_toy_start()
    _, full = idn.solve(start, x, y)
    _, early = idn.solve(start, x, y, loss_rtol=1e-4)
    assert bool(early.converged)
    assert float(early.loss) <= 1e-4 * float(early.initial_loss)
    assert int(early.inner_steps) < int(full.inner_steps)
    _, by_grad = idn.solve(start, x, y, grad_atol=1e-2)
    assert float(by_grad.grad_norm) <= 1e-2
    assert int(by_grad.inner_steps) < int(full.inner_steps)


def test_solve_under_jit_and_filter_jit(toy):
    x, y = toy
    start = idn.problems.paper_toy_start()
    eager, info = idn.solve(start, x, y)
    jitted, info_j = jax.jit(lambda m, x, y: idn.solve(m, x, y))(start, x, y)
    filtered, info_f = eqx.filter_jit(lambda m: idn.solve(m, x, y))(start)
    for other, other_info in ((jitted, info_j), (filtered, info_f)):
        assert int(other_info.inner_steps) == int(info.inner_steps)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(other)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_nonfinite_data_inside_jit_returns_the_start(toy):
    x, y = toy
    start = idn.problems.paper_toy_start()
    y_bad = y.at[3].set(jnp.nan)
    model, info = jax.jit(lambda m, x, y: idn.solve(m, x, y, throw=False))(start, x, y_bad)
    assert info.result == idn.RESULTS.nonfinite_data
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(start)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(Exception, match="NaN or Inf"):
        out = jax.jit(lambda m, x, y: idn.solve(m, x, y, throw=True))(start, x, y_bad)
        jax.block_until_ready(out)


def test_differentiating_through_solve_raises_clearly(toy):
    x, y = toy
    start = idn.problems.paper_toy_start()

    def final_loss(y):
        _, info = idn.solve(start, x, y, throw=False)
        return info.loss

    with pytest.raises(NotImplementedError, match="not supported"):
        jax.grad(final_loss)(y)


class TestBadInput:
    def setup_method(self):
        self.model = idn.problems.paper_toy_start()
        self.x, self.y = idn.problems.paper_toy()

    def test_mismatched_lengths(self):
        with pytest.raises(ValueError, match=r"`y` must have shape \(N,\)"):
            idn.solve(self.model, self.x, self.y[:-1])

    def test_wrong_dimension(self):
        with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
            idn.solve(self.model, jnp.ones((625, 3)), self.y)

    def test_one_dimensional_x_gets_a_hint(self):
        model = idn.AION(1, 1, 1, key=jax.random.key(0))
        with pytest.raises(ValueError, match=r"x\[:, None\]"):
            idn.solve(model, jnp.ones(5), jnp.ones(5))

    def test_empty(self):
        with pytest.raises(ValueError, match="empty"):
            idn.solve(self.model, jnp.ones((0, 2)), jnp.ones((0,)))

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    @pytest.mark.parametrize("which", ["x", "y"])
    def test_nonfinite_values(self, bad, which):
        x, y = np.array(self.x), np.array(self.y)
        if which == "x":
            x[5, 1] = bad
        else:
            y[5] = bad
        with pytest.raises(ValueError, match=f"`{which}` contains 1 non-finite"):
            idn.solve(self.model, x, y)

    @pytest.mark.parametrize("dtype", [np.int32, np.complex128, bool])
    def test_non_real_float_data(self, dtype):
        with pytest.raises(TypeError, match="real floating-point"):
            idn.solve(self.model, np.ones((4, 2), dtype), np.ones(4))

    def test_not_a_model(self):
        with pytest.raises(TypeError, match="AION"):
            idn.solve({"A": 1.0}, self.x, self.y)

    @pytest.mark.parametrize(
        "kwargs",
        [dict(linear_solver="qr"), dict(hessian="bfgs"), dict(max_steps=-1), dict(xtol=-1.0),
         dict(loss_atol=float("nan")), dict(geodesic="sometimes")],
    )
    def test_bad_options(self, kwargs):
        with pytest.raises(ValueError):
            idn.solve(self.model, self.x, self.y, **kwargs)

    def test_bad_trainable(self):
        with pytest.raises(TypeError, match="trainable"):
            idn.solve(self.model, self.x, self.y, trainable={"A": True})


def test_float32_end_to_end_with_x64_enabled():
    x, y = idn.problems.paper_toy(dtype=jnp.float32)
    start = idn.problems.paper_toy_start(dtype=jnp.float32)
    model, info = idn.solve(start, x, y, throw=False)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(model))
    assert info.loss.dtype == jnp.float32
    assert float(info.loss) <= 1e-6 * float(info.initial_loss)


def test_record_history_traces_the_inner_iterates(toy):
    x, y = toy
    start = idn.problems.paper_toy_start()
    model, info = idn.solve(start, x, y, record_history=True, max_steps=40)
    plain, plain_info = idn.solve(start, x, y, max_steps=40)
    assert plain_info.history is None
    # Recording changes nothing about the solve.
    assert int(plain_info.inner_steps) == int(info.inner_steps)
    np.testing.assert_array_equal(plain.phi, model.phi)
    k = int(info.inner_steps)
    hist = info.history
    assert hist.loss.shape == (41,)
    np.testing.assert_allclose(hist.loss[0], info.initial_loss, rtol=1e-14)
    np.testing.assert_allclose(hist.loss[k], info.loss, rtol=1e-14)
    assert np.all(np.isnan(np.asarray(hist.loss[k + 1 :])))
    # Monotone: never a step up.
    assert np.all(np.diff(np.asarray(hist.loss[: k + 1])) <= 0)
    np.testing.assert_array_equal(hist.params.phi[0], start.phi)
    np.testing.assert_array_equal(hist.params.phi[k], model.phi)
    # Each recorded iterate's loss is the loss of its parameters.
    point = jax.tree.map(lambda a: a[k // 2], hist.params)
    point = eqx.combine(point, eqx.filter(start, eqx.is_inexact_array, inverse=True))
    np.testing.assert_allclose(loss_of(point, x, y), float(hist.loss[k // 2]), rtol=1e-10)


def test_verbose_prints_each_inner_iteration_and_is_free_when_off(toy, capsys):
    x, y = toy
    start = idn.problems.paper_toy_start()
    idn.solve(start, x, y, verbose=True, max_steps=3, throw=False)
    jax.effects_barrier()
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("SNR")]
    assert len(lines) == 3
    assert all("Phi" in l and "damping" in l and "accepted" in l for l in lines)
    quiet = str(jax.make_jaxpr(lambda m: idn.solve(m, x, y, throw=False))(start))
    loud = str(jax.make_jaxpr(lambda m: idn.solve(m, x, y, throw=False, verbose=True))(start))
    # jax.debug.print is a debug_print (older JAX: debug_callback) primitive in the jaxpr.
    assert not any(p in quiet for p in ("debug_print", "debug_callback"))
    assert any(p in loud for p in ("debug_print", "debug_callback"))


def test_fix_gauge_holds_one_amplitude_per_rank_and_later_dimension(toy):
    x, y = toy
    start = idn.problems.random_toy_start(jax.random.key(1), shared_dims=False)
    model, info = idn.solve(start, x, y, fix_gauge=True)
    assert float(info.loss) < 1e-20
    # Dimension 1's (single) amplitude is held in both ranks; dimension 0's carries the scale.
    np.testing.assert_array_equal(model.A[:, 1], start.A[:, 1])
    assert float(jnp.max(jnp.abs(model.A[:, 0] - start.A[:, 0]))) > 0
    # Shared dimensions have no gauge freedom: nothing is held.
    shared, info_shared = idn.solve(idn.problems.paper_toy_start(), x, y, fix_gauge=True)
    assert float(info_shared.loss) < 1e-20


@pytest.mark.parametrize("geodesic", [False, True, "auto"])
def test_geodesic_modes_solve_the_toy_and_count_their_passes(toy, geodesic):
    x, y = toy
    start = idn.problems.random_toy_start(jax.random.key(3), shared_dims=False)
    model, info = idn.solve(start, x, y, geodesic=geodesic, linear_solver="dense")
    assert float(info.loss) < 1e-20
    inner, passes = int(info.inner_steps), int(info.data_passes)
    # One pass for step zero (values only), one to start, one per iteration, and one more
    # per accelerated iteration.
    if geodesic is True:
        assert passes == 2 + 2 * inner
    elif geodesic is False:
        assert passes == 2 + inner
    else:
        assert 2 + inner <= passes <= 2 + 2 * inner


def test_geodesic_acceleration_gets_through_a_valley_plain_lm_creeps_along():
    # A two-term target (rank 3, dim 3, 72 parameters) from a start 1% off: near-coincident
    # terms make a narrow valley where plain LM creeps with its damping stalled.
    k1, k2, k3 = jax.random.split(jax.random.key(501), 3)
    target = idn.AION(3, 3, 2, key=k1)
    x = jax.random.uniform(k2, (2000, 3), minval=-1.0, maxval=1.0)
    y = jax.vmap(target)(x)
    leaves, treedef = jax.tree.flatten(target)
    keys = jax.random.split(k3, len(leaves))
    start = jax.tree.unflatten(treedef, [
        a * (1 + 0.01 * jax.random.normal(k, a.shape)) for k, a in zip(keys, leaves)])
    _, plain = idn.solve(start, x, y, geodesic=False, throw=False)
    _, default = idn.solve(start, x, y, throw=False)
    assert float(default.loss) < 1e-20
    assert int(default.inner_steps) < int(plain.inner_steps)
