"""expand: grow a model a term at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn
from infinite_descent._expand import append_term


def test_expand_grows_the_toy_to_its_rank():
    x, y = idn.problems.paper_toy()
    model, history = idn.expand(idn.AION(1, 2, 1, key=jax.random.key(0)), x, y, max_terms=4,
                                target_loss=1e-20, key=jax.random.key(1))
    assert [h.terms for h in history] == list(range(1, len(history) + 1))
    assert history[-1].loss < 1e-20 and model.rank == history[-1].terms <= 4
    assert history[0].loss > 1.0  # one rank cannot represent cos(pi (x - y))
    np.testing.assert_allclose(float(jnp.sum((jax.vmap(model)(x) - y) ** 2)), history[-1].loss,
                               atol=1e-24)


def test_expand_stops_at_max_terms_and_keeps_the_loss_monotone():
    k1, k2 = jax.random.split(jax.random.key(3))
    target = idn.AION(4, 3, 1, key=k1)
    x = jax.random.uniform(k2, (600, 3), minval=-1.0, maxval=1.0)
    y = jax.vmap(target)(x)
    model, history = idn.expand(idn.AION(1, 3, 1, key=jax.random.key(5)), x, y, max_terms=2,
                                key=jax.random.key(6), max_steps=100)
    assert model.rank == 2 and len(history) == 2
    assert history[1].loss <= history[0].loss


def test_append_term_for_every_model():
    for model in (idn.AION(2, 2, 1, key=jax.random.key(0)),
                  idn.GaussianAtoms(2, 2, 1, key=jax.random.key(0)),
                  idn.ShallowNetwork(2, 2, key=jax.random.key(0))):
        one = type(model)(1, 2, 1, key=jax.random.key(1)) if not isinstance(
            model, idn.ShallowNetwork) else idn.ShallowNetwork(1, 2, key=jax.random.key(1))
        grown = append_term(model, one)
        assert grown.num_terms == 3
        x = jnp.array([0.2, -0.3])
        np.testing.assert_allclose(grown(x), model(x) + one(x), rtol=1e-12)


def test_expand_needs_a_key_and_a_sane_budget():
    x, y = idn.problems.paper_toy()
    start = idn.AION(2, 2, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        idn.expand(start, x, y, max_terms=3)
    with pytest.raises(ValueError, match="max_terms"):
        idn.expand(start, x, y, max_terms=1, key=jax.random.key(0))
