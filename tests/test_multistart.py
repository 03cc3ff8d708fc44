"""multistart: a batch of starts under vmap, the best kept, every start accounted for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn


def loss_of(model, x, y):
    return float(jnp.sum((jax.vmap(model)(x) - y) ** 2))


def test_multistart_on_the_toy():
    x, y = idn.problems.paper_toy()
    start = idn.problems.paper_toy_start()
    best, info = idn.multistart(start, x, y, num_starts=6, key=jax.random.key(0),
                                segment_steps=8)
    assert info.loss.shape == (6,) and info.inner_steps.shape == (6,)
    np.testing.assert_allclose(float(info.initial_loss[0]), loss_of(start, x, y), rtol=1e-12)
    assert int(info.best) == int(np.argmin(np.asarray(info.loss)))
    np.testing.assert_allclose(loss_of(best, x, y), float(info.loss[info.best]), atol=1e-24)
    assert float(info.loss[info.best]) < 1e-20
    assert np.all(np.asarray(info.loss) <= np.asarray(info.initial_loss))
    assert np.all(np.asarray(info.result == idn.RESULTS.successful))
    assert info.messages == ("",) * len(info.messages)
    assert 0 < info.lane_utilisation <= 1 and info.segments >= 2
    # Each segment re-reads its start: passes = iterations + segments taken by that start.
    assert np.all(np.asarray(info.data_passes) > np.asarray(info.inner_steps))


def test_multistart_is_reproducible_and_respects_trainable():
    problem = idn.problems.lanczos3()
    kwargs = dict(num_starts=4, key=jax.random.key(3), spread=0.2, trainable=problem.trainable,
                  max_steps=300)
    best_a, info_a = idn.multistart(problem.starts[1], problem.x, problem.y, **kwargs)
    best_b, info_b = idn.multistart(problem.starts[1], problem.x, problem.y, **kwargs)
    for u, v in zip(jax.tree.leaves(best_a), jax.tree.leaves(best_b)):
        np.testing.assert_array_equal(u, v)
    # omega and phi are frozen at zero: never perturbed, never moved.
    assert float(jnp.max(jnp.abs(best_a.omega))) == 0.0
    np.testing.assert_allclose(float(info_a.loss[info_a.best]), problem.certified_loss, rtol=1e-8)


def test_budget_bounds_every_start():
    x, y = idn.problems.paper_toy()
    _, info = idn.multistart(idn.problems.paper_toy_start(), x, y, num_starts=3,
                             key=jax.random.key(1), segment_steps=2, max_steps=4)
    assert np.all(np.asarray(info.inner_steps) <= 4)


def test_bad_arguments():
    x, y = idn.problems.paper_toy()
    start = idn.problems.paper_toy_start()
    with pytest.raises(ValueError, match="key"):
        idn.multistart(start, x, y, num_starts=2)
    with pytest.raises(ValueError, match="num_starts"):
        idn.multistart(start, x, y, num_starts=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="non-finite"):
        idn.multistart(start, x, y.at[0].set(jnp.nan), num_starts=2, key=jax.random.key(0))
