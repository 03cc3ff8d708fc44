"""matrix_pencil: a non-iterative start for one-dimensional AIONs on a uniform grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn


@pytest.mark.parametrize("rank,terms", [(1, 1), (3, 1), (2, 2)])
def test_recovers_noiseless_targets(rank, terms):
    x = jnp.linspace(0.0, 1.0, 200)
    for seed in range(3):
        target = idn.AION(rank, 1, terms, key=jax.random.key(seed))
        y = jax.vmap(target)(x[:, None])
        start = idn.matrix_pencil(x, y, rank=rank, terms=terms)
        assert start.A.shape == (rank, 1, terms)
        relative = float(jnp.sum((jax.vmap(start)(x[:, None]) - y) ** 2) / jnp.sum(y * y))
        assert relative < 1e-16


def test_lanczos3_from_the_pencil_reaches_the_certified_minimum():
    p = idn.problems.lanczos3()
    start = idn.matrix_pencil(p.x[:, 0], p.y, rank=3, real=True)
    model, info = idn.solve(start, p.x, p.y, trainable=p.trainable)
    np.testing.assert_allclose(float(info.loss), p.certified_loss, rtol=1e-8)
    decays = np.sort(-np.asarray(model.alpha).ravel())
    np.testing.assert_allclose(decays, np.sort(-np.asarray(p.certified.alpha).ravel()), rtol=1e-6)


def test_rejects_what_it_cannot_do():
    x = jnp.linspace(0.0, 1.0, 20)
    with pytest.raises(ValueError, match="uniform"):
        idn.matrix_pencil(x ** 2, x, rank=1)
    with pytest.raises(ValueError, match="too few"):
        idn.matrix_pencil(x[:8], x[:8], rank=3, terms=2)
