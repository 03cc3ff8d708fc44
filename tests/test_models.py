"""The Infinity-Class interface: GaussianAtoms' resummation against autodiff, the generic
autodiff path against AION's resummation, and solves for every model."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn
from infinite_descent._problems._aion import AIONResummation
from infinite_descent._problems._autodiff import AutodiffProblem


def _relative(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _flat(tree):
    return jnp.concatenate([a.ravel() for a in jax.tree.leaves(tree)])


def _random_delta(model, key, size):
    params = eqx.filter(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [
        jax.random.uniform(k, a.shape, a.dtype, -size, size) for k, a in zip(keys, leaves)
    ])


def _reference_gradient(model, x, y, delta):
    shifted = eqx.apply_updates(model, delta)
    loss = lambda m: jnp.sum((jax.vmap(m)(x) - y) ** 2)  # noqa: E731
    return eqx.filter_jit(eqx.filter_grad(loss))(shifted)


@pytest.mark.parametrize("rank,dim,terms,shared", [(1, 1, 1, False), (2, 3, 2, False),
                                                    (3, 2, 1, True), (4, 5, 3, False)])
@pytest.mark.parametrize("size", [1e-3, 0.5])
def test_gaussian_resummation_equals_autodiff(rank, dim, terms, shared, size):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(rank * 10 + dim), 4)
    model = idn.GaussianAtoms(rank, dim, terms, key=k1, shared_dims=shared)
    x = jax.random.uniform(k2, (40, dim), minval=-1.0, maxval=1.0)
    y = jax.random.normal(k3, (40,))
    delta = _random_delta(model, k4, size)
    F = idn.resummed_residual(model, x, y)
    assert type(F.problem).__name__ == "GaussianResummation"
    got, want = F(delta), _reference_gradient(model, x, y, delta)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert _relative(_flat(got), _flat(want)) < 1e-10
    # Per-rank blocks against the Hessian's diagonal blocks.
    shifted = eqx.apply_updates(model, delta)
    params, static = eqx.partition(shifted, eqx.is_inexact_array)
    problem = F.problem
    theta = problem.stack(params)

    def phi(t):
        m = eqx.combine(eqx.filter(problem.to_model(t.reshape(theta.shape), model),
                                   eqx.is_inexact_array), static)
        return jnp.sum((jax.vmap(m)(x) - y) ** 2)

    hess = jax.jit(jax.hessian(phi))(theta.reshape(-1))
    blocks = F.rank_blocks(delta)
    block = blocks.shape[1]
    for j in range(rank):
        want_block = hess[j * block:(j + 1) * block, j * block:(j + 1) * block]
        assert _relative(blocks[j], want_block) < 1e-9


def test_the_autodiff_path_equals_aions_resummation():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    model = idn.AION(3, 2, 2, key=k1)
    x = jax.random.uniform(k2, (50, 2), minval=-1.0, maxval=1.0)
    y = jax.random.normal(k3, (50,))
    fast, generic = AIONResummation(model, x, y), AutodiffProblem(model, x, y)
    np.testing.assert_array_equal(fast.theta.reshape(-1), generic.theta.reshape(-1))
    delta = 0.1 * jax.random.normal(k1, fast.theta.shape)
    a = fast.normal_equations(delta, rank_grams=True)
    b = generic.normal_equations(delta.reshape(generic.theta.shape), rank_grams=True)
    for u, v in ((a.loss, b.loss), (a.g, b.g), (a.gram, b.gram), (a.rank_grams, b.rank_grams)):
        assert _relative(u, v) < 1e-12
    assert _relative(fast.rank_blocks(delta).reshape(-1),
                     generic.rank_blocks(delta.reshape(generic.theta.shape)).reshape(-1)) < 1e-11


def test_shallow_network_solve_and_F():
    k1, k2 = jax.random.split(jax.random.key(1))
    net = idn.ShallowNetwork(12, 2, key=k1)
    x = jax.random.uniform(k2, (300, 2), minval=-1.0, maxval=1.0)
    y = jnp.sin(2 * x[:, 0]) * jnp.cos(x[:, 1])
    delta = _random_delta(net, k1, 0.3)
    F = idn.resummed_residual(net, x, y)
    assert _relative(_flat(F(delta)), _flat(_reference_gradient(net, x, y, delta))) < 1e-10
    fitted, info = idn.solve(net, x, y, throw=False, max_steps=200)
    assert isinstance(fitted, idn.ShallowNetwork)
    assert float(info.loss) < 1e-3 * float(info.initial_loss)
    np.testing.assert_allclose(float(jnp.sum((jax.vmap(fitted)(x) - y) ** 2)),
                               float(info.loss), rtol=1e-8)


def test_a_user_defined_sum_of_terms():
    class Ridges(idn.SumOfTerms):
        w: jax.Array
        c: jax.Array
        dim: int = eqx.field(static=True)

        def term(self, x):
            return self.c * jnp.tanh(self.w @ x)

    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    target = Ridges(w=jax.random.normal(k1, (3, 2)), c=jnp.array([1.0, -0.5, 0.25]), dim=2)
    x = jax.random.uniform(k2, (200, 2), minval=-2.0, maxval=2.0)
    y = jax.vmap(target)(x)
    start = eqx.tree_at(lambda r: r.w, target, target.w + 0.05 * jax.random.normal(k3, (3, 2)))
    trainable = eqx.tree_at(lambda r: r.c, jax.tree.map(lambda _: True, start), False)
    fitted, info = idn.solve(start, x, y, trainable=trainable, throw=False)
    np.testing.assert_array_equal(fitted.c, start.c)
    assert float(info.loss) < 1e-16 * float(info.initial_loss)


def test_gaussian_atoms_fit_a_gaussian_target():
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    target = idn.GaussianAtoms(2, 2, 1, key=k1)
    x = jax.random.uniform(k2, (400, 2), minval=-1.0, maxval=1.0)
    y = jax.vmap(target)(x)
    start = jax.tree.map(lambda a: a * (1 + 0.05 * jax.random.normal(k3, a.shape)), target)
    fitted, info = idn.solve(start, x, y)
    assert float(info.loss) < 1e-20
    assert isinstance(fitted, idn.GaussianAtoms)


def test_models_reject_bad_sizes():
    with pytest.raises(ValueError, match="width"):
        idn.ShallowNetwork(0, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="rank"):
        idn.GaussianAtoms(0, 2, 1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="SumOfTerms"):
        idn.solve(eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0)), jnp.ones((3, 2)), jnp.ones(3))
