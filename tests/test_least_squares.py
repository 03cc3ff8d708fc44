"""least_squares for any model and residual, solve_once's residual_fn, weights and the
regulariser: each against optimistix's Levenberg-Marquardt from the same start, or against
an independent statement of the same objective."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
import pytest

import infinite_descent as idn

KEY = jax.random.key(0)
X = jax.random.uniform(KEY, (120, 2), minval=-1.0, maxval=1.0)
Y = jnp.sin(2.0 * X[:, 0]) * jnp.cos(X[:, 1]) + 0.3


class AIONPlusOffset(eqx.Module):
    aion: idn.AION
    offset: jax.Array

    def __call__(self, x):
        return self.aion(x) + self.offset


class AIONInTanh(eqx.Module):
    aion: idn.AION
    scale: jax.Array

    def __call__(self, x):
        return self.scale * jnp.tanh(self.aion(x))


def _dict_model(params, x):
    return params["w"] @ jnp.tanh(params["v"] @ x + params["b"]) + params["c"]


def _starts():
    k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)
    return {
        "AION plus offset": AIONPlusOffset(idn.AION(2, 2, 1, key=k1), jnp.asarray(0.0)),
        "AION in tanh": AIONInTanh(idn.AION(2, 2, 1, key=k2), jnp.asarray(1.5)),
        "MLP": eqx.nn.MLP(2, "scalar", 8, 2, key=k3),
        "dict": {"v": jax.random.normal(k4, (6, 2)), "b": jnp.zeros(6),
                 "w": jnp.ones(6) / 6, "c": 0.0},
    }


def _predict(model, x):
    if isinstance(model, dict):
        return jax.vmap(lambda p: _dict_model(model, p))(x)
    return jax.vmap(model)(x)


def _residuals(model, args):
    x, y = args
    return _predict(model, x) - y


def _loss(model):
    r = _residuals(model, (X, Y))
    return float(r @ r)


def _optimistix(start, max_steps):
    params, static = eqx.partition(start, eqx.is_inexact_array)

    def fn(p, args):
        return _residuals(eqx.combine(p, static), args)

    solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-12)
    sol = optx.least_squares(fn, solver, params, (X, Y), max_steps=max_steps, throw=False)
    return eqx.combine(sol.value, static)


@pytest.mark.parametrize("name", list(_starts()))
def test_any_model_reaches_what_optimistix_reaches(name):
    start = _starts()[name]
    max_steps = 60
    fit, info = idn.least_squares(_residuals, start, (X, Y), max_steps=max_steps, throw=False)
    assert type(fit) is type(start) and jax.tree.structure(fit) == jax.tree.structure(
        jax.tree.map(lambda a: a, start))
    ours, theirs = _loss(fit), _loss(_optimistix(start, max_steps))
    np.testing.assert_allclose(float(info.loss), ours, rtol=1e-8, atol=1e-28)
    assert ours <= 1.01 * theirs + 1e-20, (ours, theirs)
    assert ours < _loss(start)
    assert int(info.inner_steps) <= max_steps


def test_static_leaves_stay_and_python_floats_are_fitted():
    mlp = eqx.nn.MLP(2, "scalar", 4, 1, activation=jnp.sin, key=KEY)
    fit, _ = idn.least_squares(_residuals, mlp, (X, Y), max_steps=5, throw=False)
    assert fit.activation is jnp.sin and fit.depth == 1
    params = {"a": 1.0, "k": np.float64(1.0), "n": 3}
    t = jnp.linspace(0.0, 1.0, 30)
    fit, info = idn.least_squares(
        lambda p, t: p["a"] * jnp.exp(-p["k"] * t) - 2.0 * jnp.exp(-p["n"] * t), params, t)
    assert fit["n"] == 3
    np.testing.assert_allclose([float(fit["a"]), float(fit["k"])], [2.0, 3.0], rtol=1e-10)
    assert float(info.loss) < 1e-25


def test_exact_target_reaches_the_rounding_floor_with_default_tolerances():
    t = jnp.linspace(0.0, 2.0, 64)
    truth = {"a": jnp.array([1.5, -0.7]), "k": jnp.array([0.8, 3.0])}

    def model(p, t):
        return jnp.sum(p["a"][:, None] * jnp.exp(-p["k"][:, None] * t[None, :]), axis=0)

    data = model(truth, t)
    fit, info = idn.least_squares(lambda p, t: model(p, t) - data,
                                  {"a": jnp.array([1.0, -1.0]), "k": jnp.array([0.5, 2.0])}, t)
    assert info.result == idn.RESULTS.successful
    assert float(info.loss) < 64 * jnp.finfo(jnp.float64).eps ** 2 * float(data @ data)
    np.testing.assert_allclose(fit["k"], truth["k"], rtol=1e-9)


def test_residual_pytrees_of_any_shape():
    def fn(p, _):
        return {"first": p[:2] - jnp.array([1.0, 2.0]), "second": (p[2:] - 3.0).reshape(2, 1)}

    fit, info = idn.least_squares(fn, jnp.zeros(4))
    np.testing.assert_allclose(fit, [1.0, 2.0, 3.0, 3.0], atol=1e-12)
    assert float(info.loss) < 1e-24


@pytest.mark.parametrize("num_data", [40, 6])
def test_residual_jacobian_is_autodiffs_in_both_modes(num_data):
    """The Jacobian with the linearisation stored (forward mode for M <= N, reverse mode
    for M > N) is ``jax.jacfwd``'s, under ``jit`` and ``vmap``; NaN residuals stay NaN."""
    from infinite_descent._problems._base import residual_jacobian

    t = jnp.linspace(-1.0, 1.0, num_data)

    def residuals(p):
        return p[0] * jnp.exp(p[1] * t) * jnp.cos(p[2:, None] * t[None, :]).sum(0) - jnp.sin(t)

    for size in (4, 12):  # M <= N for both with 40 data; M > N for 12 with 6
        p = jnp.linspace(0.5, 1.5, size)
        r, J = jax.jit(residual_jacobian, static_argnums=(0, 2))(residuals, p, num_data)
        np.testing.assert_allclose(r, residuals(p), rtol=1e-14)
        np.testing.assert_allclose(J, jax.jacfwd(residuals)(p), rtol=1e-13, atol=1e-13)
        ps = jnp.stack([p, 2 * p])
        rs, Js = jax.vmap(lambda q: residual_jacobian(residuals, q, num_data))(ps)
        np.testing.assert_allclose(Js[1], jax.jacfwd(residuals)(2 * p), rtol=1e-13, atol=1e-13)
        r, J = residual_jacobian(residuals, p.at[0].set(jnp.nan), num_data)
        assert bool(jnp.all(jnp.isnan(r)))


@pytest.mark.parametrize("name", ["MLP", "dict"])
def test_leafwise_jacobian_is_jacfwd_of_the_raveled_residual(name, monkeypatch):
    """Forward mode one parameter leaf at a time (leaves of different shapes, a scalar one)
    gives ``jax.jacfwd`` of the raveled residual, columns in ``ravel_pytree``'s order; a
    solve gives the same fit as with the Jacobian in one piece."""
    from infinite_descent._problems import _residual
    from infinite_descent._problems._residual import ResidualProblem

    start = _starts()[name]
    if name == "dict":  # the scalar leaf an array, so that it is among the fitted leaves
        start = {k: jnp.asarray(v, jnp.float64) for k, v in start.items()}
    params, static = eqx.partition(start, eqx.is_inexact_array)
    assert len(jax.tree.leaves(params)) > 1

    def fn(p, args):
        return _residuals(eqx.combine(p, static), args)

    problem = ResidualProblem(fn, params, (X, Y), X.shape[0])
    delta = 0.01 * jnp.sin(jnp.arange(problem.theta.size, dtype=jnp.float64))
    r, J = jax.jit(lambda d: problem.residual_and_jacobian(d))(delta)
    np.testing.assert_allclose(r, problem.residuals(delta), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(J, jax.jacfwd(problem.residuals)(delta), rtol=1e-13, atol=1e-13)
    assert J.dtype == problem.theta.dtype

    fits = []
    for most in (_residual.MAX_LEAFWISE_LEAVES, 1):  # leafwise, then in one piece
        monkeypatch.setattr(_residual, "MAX_LEAFWISE_LEAVES", most)
        fit, _ = idn.least_squares(lambda m, a: _residuals(m, a), start, (X, Y), max_steps=30,
                                    throw=False)
        fits.append(fit)
    leaves = [jax.tree.leaves(eqx.filter(f, eqx.is_inexact_array)) for f in fits]
    assert len(leaves[0]) == len(jax.tree.leaves(params))
    for a, b in zip(*leaves):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_vmap_over_fits_equals_a_loop():
    t = jnp.linspace(0.0, 1.0, 40)
    rates = jnp.array([0.5, 2.0, 4.0])
    data = jnp.exp(-rates[:, None] * t[None, :])

    def fit(d):
        return idn.least_squares(lambda p, d: p["a"] * jnp.exp(-p["k"] * t) - d,
                                 {"a": 1.0, "k": 1.0}, d, throw=False)

    batched, infos = jax.vmap(fit)(data)
    for i in range(3):
        single, info = fit(data[i])
        np.testing.assert_allclose(batched["k"][i], single["k"], rtol=1e-12)
        assert bool(np.asarray(infos.result == info.result)[i])
        assert int(infos.inner_steps[i]) == int(info.inner_steps)
        np.testing.assert_allclose(batched["k"][i], rates[i], rtol=1e-10)


def test_solve_once_takes_a_residual_function_in_a_filter_jit_loop_and_a_chain():
    model = AIONPlusOffset(idn.AION(2, 2, 1, key=jax.random.key(3)), jnp.asarray(0.0))
    opt = optax.chain(optax.identity(), idn.solve_once(max_steps=30))
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state):
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def rf(p):
            return jax.vmap(eqx.combine(p, static))(X) - Y

        updates, state = opt.update(None, state, params, residual_fn=rf)
        return eqx.apply_updates(model, updates), state

    losses = [_loss(model)]
    for _ in range(2):
        model, state = step(model, state)
        losses.append(_loss(model))
    assert losses[2] <= losses[1] < losses[0]
    np.testing.assert_allclose(float(state[1].loss_after), losses[2], rtol=1e-8)


def test_solve_once_residual_fn_is_checked():
    opt = idn.solve_once()
    state = opt.init({"a": jnp.ones(2)})
    with pytest.raises(TypeError, match="not both"):
        opt.update(None, state, {"a": jnp.ones(2)}, x=X, y=Y, residual_fn=lambda p: p["a"])
    with pytest.raises(TypeError, match="unknown option `max_step`. Did you mean `max_steps`"):
        idn.solve_once(max_step=10)


def test_integer_weights_equal_repeated_points():
    x, y = idn.problems.paper_toy()
    y = y + 0.01 * jnp.sin(40.0 * x[:, 0])  # not exactly representable: a weighted fit
    start = idn.problems.paper_toy_start()
    weights = jnp.ones(625).at[:7].set(3.0).at[100:104].set(0.0)
    keep = jnp.asarray(weights > 0)
    repeated = jnp.concatenate([jnp.arange(625)[np.asarray(keep)],
                                jnp.arange(7), jnp.arange(7)])
    _, weighted = idn.solve(start, x, y, weights=weights, throw=False)
    _, plain = idn.solve(start, x[repeated], y[repeated], throw=False)
    np.testing.assert_allclose(float(weighted.loss), float(plain.loss), rtol=1e-9)
    # The same in chunks (the padding weights multiply the user's).
    _, chunked = idn.solve(start, x, y, weights=weights, chunk_size=100, throw=False)
    np.testing.assert_allclose(float(chunked.loss), float(weighted.loss), rtol=1e-9)


def test_weights_are_checked():
    x, y = idn.problems.paper_toy()
    start = idn.problems.paper_toy_start()
    with pytest.raises(ValueError, match="shape"):
        idn.solve(start, x, y, weights=jnp.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        idn.solve(start, x, y, weights=-jnp.ones(625))


def test_regularization_is_the_ridge_objective():
    x, y = idn.problems.paper_toy()
    start = idn.problems.paper_toy_start()
    lam = 1e-2
    model, info = idn.solve(start, x, y, regularization=lam, throw=False)
    params = eqx.filter(model, eqx.is_inexact_array)

    def objective(p):
        m = eqx.combine(p, eqx.filter(model, eqx.is_inexact_array, inverse=True))
        flat = jnp.concatenate([a.reshape(-1) for a in jax.tree.leaves(p)])
        return jnp.sum((jax.vmap(m)(x) - y) ** 2) + lam * flat @ flat

    np.testing.assert_allclose(float(info.loss), float(objective(params)), rtol=1e-10)
    grad = jax.grad(objective)(params)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) < 1e-6
    # least_squares with the same regulariser lands on the same stationary point.
    fit, info_ls = idn.least_squares(
        lambda p, _: jax.vmap(eqx.combine(p, eqx.filter(model, eqx.is_inexact_array,
                                                          inverse=True)))(x) - y,
        eqx.filter(start, eqx.is_inexact_array), regularization=lam, throw=False)
    np.testing.assert_allclose(float(info_ls.loss), float(info.loss), rtol=1e-8)


def test_a_flax_nnx_model_is_fitted_through_its_state():
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(2, 8, rngs=rngs, param_dtype=jnp.float64)
            self.out = nnx.Linear(8, 1, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, x):
            return self.out(jnp.tanh(self.hidden(x)))[..., 0]

    net = Net(nnx.Rngs(0))
    graphdef, state = nnx.split(net)

    def residuals(state, args):
        x, y = args
        return nnx.merge(graphdef, state)(x) - y

    fit, info = idn.least_squares(residuals, state, (X, Y), max_steps=40, throw=False)
    assert type(fit) is type(state)
    params, static = eqx.partition(state, eqx.is_inexact_array)
    solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-12)
    sol = optx.least_squares(lambda p, a: residuals(eqx.combine(p, static), a), solver, params,
                             (X, Y), max_steps=40, throw=False)
    theirs = residuals(eqx.combine(sol.value, static), (X, Y))
    assert float(info.loss) <= 1.01 * float(theirs @ theirs) + 1e-20
    nnx.update(net, fit)
    np.testing.assert_allclose(float(jnp.sum((net(X) - Y) ** 2)), float(info.loss), rtol=1e-8)


def test_parameters_far_below_their_start_and_columns_of_very_different_scale():
    # The fitted point moves from a = 1 to 3e-20: measured from a fixed start, 1 + delta lies
    # on the grid of 1's rounding unit (2.2e-16), and a floor of the scaling relative to its
    # largest entry (eps * 1e40 against c's 7) froze c. Before the loop re-based on the current
    # point and floored the scaling only where it is zero, this ended at max_steps with a = 0,
    # c = -2.7e-5 and Phi = 117.
    t = jnp.linspace(0.0, 1.0, 20)

    def residuals(p, t):
        return 1e20 * p["a"] * jnp.exp(-t) + p["c"] * t - (3.0 * jnp.exp(-t) + t)

    fit, info = idn.least_squares(residuals, {"a": 1.0, "c": 0.0}, t)
    assert info.result == idn.RESULTS.successful
    np.testing.assert_allclose(float(fit["a"]), 3e-20, rtol=1e-12)
    np.testing.assert_allclose(float(fit["c"]), 1.0, rtol=1e-12)
