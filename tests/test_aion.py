"""AION: shapes, initialisation, and the value against the formula of docs/design.md section 1."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn


def formula(model, x):
    """f(x) = sum_j prod_i sum_p A e^{alpha x_i} cos(omega x_i + phi), in NumPy."""
    A, al, om, ph = (np.asarray(a) for a in (model.A, model.alpha, model.omega, model.phi))
    r, dp, P = A.shape
    total = 0.0
    for j in range(r):
        prod = 1.0
        for i in range(model.dim):
            k = 0 if dp == 1 else i
            prod *= sum(
                A[j, k, p] * math.exp(al[j, k, p] * x[i]) * math.cos(om[j, k, p] * x[i] + ph[j, k, p])
                for p in range(P)
            )
        total += prod
    return total


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("rank,dim,terms", [(1, 1, 1), (2, 3, 2), (4, 5, 3), (3, 2, 1)])
def test_value_matches_formula(rank, dim, terms, shared):
    key = jax.random.key(rank * 100 + dim * 10 + terms)
    model = idn.AION(rank, dim, terms, key=key, shared_dims=shared)
    expected_shape = (rank, 1 if shared else dim, terms)
    for leaf in (model.A, model.alpha, model.omega, model.phi):
        assert leaf.shape == expected_shape
        assert leaf.dtype == jnp.float64
    xs = np.asarray(jax.random.uniform(jax.random.key(7), (20, dim), minval=-1.0, maxval=1.0))
    got = np.asarray(jax.vmap(model)(jnp.asarray(xs)))
    want = np.array([formula(model, xi) for xi in xs])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_array_fields_are_exactly_the_four_parameters():
    model = idn.AION(2, 3, 2, key=jax.random.key(0))
    array_fields = [
        f.name for f in dataclasses.fields(model) if isinstance(getattr(model, f.name), jax.Array)
    ]
    assert array_fields == ["A", "alpha", "omega", "phi"]
    assert len(jax.tree.leaves(model)) == 4
    assert model.num_params == 4 * 2 * 3 * 2


def test_default_initialisation_ranges():
    model = idn.AION(50, 3, 2, key=jax.random.key(1))
    assert 0.5 <= float(model.A.min()) and float(model.A.max()) <= 1.5
    assert -0.5 <= float(model.alpha.min()) and float(model.alpha.max()) <= 0.5
    assert 1.0 <= float(model.omega.min()) and float(model.omega.max()) <= 5.0
    assert -math.pi <= float(model.phi.min()) and float(model.phi.max()) <= math.pi


def test_explicit_parameters_and_tree_at():
    model = idn.problems.toy_exact_solution()
    x, y = idn.problems.paper_toy()
    np.testing.assert_allclose(jax.vmap(model)(x), y, atol=1e-14)
    moved = eqx.tree_at(lambda m: m.omega, model, model.omega * 2)
    assert float(jnp.max(jnp.abs(jax.vmap(moved)(x) - y))) > 0.1


def test_paper_toy_start_is_the_documented_point():
    model = idn.problems.paper_toy_start()
    assert (model.rank, model.dim, model.terms, model.shared_dims) == (2, 2, 1, True)
    np.testing.assert_array_equal(np.asarray(model.A).ravel(), [0.8, 0.8])
    np.testing.assert_array_equal(np.asarray(model.alpha).ravel(), [0.1, 0.1])
    np.testing.assert_array_equal(np.asarray(model.omega).ravel(), [2.5, 2.5])
    np.testing.assert_array_equal(np.asarray(model.phi).ravel(), [0.3, -1.2])
    x, y = idn.problems.paper_toy()
    assert x.shape == (625, 2) and y.shape == (625,)
    np.testing.assert_allclose(np.unique(np.asarray(x[:, 0])), np.linspace(0, 1, 25))
    np.testing.assert_allclose(y, np.cos(np.pi * (x[:, 0] - x[:, 1])))


def test_float32_model():
    model = idn.AION(2, 2, 1, key=jax.random.key(0), dtype=jnp.float32)
    assert model.dtype == jnp.float32
    out = model(jnp.zeros(2, jnp.float32))
    assert out.dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(rank=0, dim=1, terms=1), ValueError),
        (dict(rank=1, dim=1.5, terms=1), ValueError),
        (dict(rank=1, dim=1, terms=1, dtype=jnp.int32), TypeError),
        (dict(rank=2, dim=2, terms=1, A=jnp.ones(3)), ValueError),
    ],
)
def test_bad_construction(kwargs, error):
    with pytest.raises(error):
        idn.AION(key=jax.random.key(0), **kwargs)


def test_key_required_for_default_initialisation():
    with pytest.raises(ValueError, match="key"):
        idn.AION(1, 1, 1)


def test_wrong_point_shape():
    model = idn.AION(1, 3, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="jax.vmap"):
        model(jnp.zeros((5, 3)))
