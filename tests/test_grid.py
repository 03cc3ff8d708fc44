"""GridData: the Kronecker-structured normal equations equal the scattered ones, and every
entry point accepts a grid."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import infinite_descent as idn
from infinite_descent._problems._grid import GridResummation
from infinite_descent._problems._aion import AIONResummation

CASES = [  # rank, dim, terms, shared, grid shape
    (2, 2, 1, True, (25, 25)),
    (2, 3, 2, False, (7, 5, 6)),
    (3, 2, 2, False, (9, 11)),
    (2, 3, 1, True, (4, 5, 6)),
    (1, 1, 2, False, (13,)),
]


def _relative(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("case", CASES)
def test_normal_equations_equal_the_scattered_ones(case):
    rank, dim, terms, shared, shape = case
    k1, k2, k3 = jax.random.split(jax.random.key(sum(shape)), 3)
    model = idn.AION(rank, dim, terms, key=k1, shared_dims=shared)
    axes = [jnp.linspace(-1.0, 1.0, n) for n in shape]
    grid = idn.GridData(axes, jax.random.normal(k2, shape))
    on_grid = GridResummation(model, grid)
    scattered = AIONResummation(model, grid.points(), grid.values())
    delta = 0.1 * jax.random.normal(k3, on_grid.theta.shape)
    a = jax.jit(lambda p, d: p.normal_equations(d, rank_grams=True))(on_grid, delta)
    b = jax.jit(lambda p, d: p.normal_equations(d, rank_grams=True))(scattered, delta)
    for u, v in ((a.loss, b.loss), (a.g, b.g), (a.gram, b.gram), (a.rank_grams, b.rank_grams),
                 (a.diag, b.diag)):
        assert _relative(u, v) < 1e-12
    assert _relative(on_grid.residuals(delta), scattered.residuals(delta)) < 1e-13


def _toy_grid():
    axis = jnp.linspace(0.0, 1.0, 25)
    return idn.GridData((axis, axis), jnp.cos(jnp.pi * (axis[:, None] - axis[None, :])))


def test_grid_matches_the_scattered_toy():
    grid = _toy_grid()
    x, y = idn.problems.paper_toy()
    np.testing.assert_allclose(grid.points(), x)
    np.testing.assert_allclose(grid.values(), y, atol=1e-15)
    for start in (idn.problems.paper_toy_start(),
                  idn.problems.random_toy_start(jax.random.key(4), shared_dims=False)):
        on_grid, info_g = idn.solve(start, grid)
        scattered, info_s = idn.solve(start, x, y)
        assert int(info_g.inner_steps) == int(info_s.inner_steps)
        assert float(info_g.loss) < 1e-20 and float(info_s.loss) < 1e-20
        assert _relative(jax.vmap(on_grid)(x), jax.vmap(scattered)(x)) < 1e-10


def test_resummed_residual_and_solve_once_accept_a_grid():
    grid = _toy_grid()
    x, y = idn.problems.paper_toy()
    model = idn.problems.paper_toy_start()
    zero = jax.tree.map(jnp.zeros_like, eqx.filter(model, eqx.is_inexact_array))
    a = idn.resummed_residual(model, grid)
    b = idn.resummed_residual(model, x, y)
    for u, v in zip(jax.tree.leaves(a(zero)), jax.tree.leaves(b(zero))):
        np.testing.assert_allclose(u, v, rtol=1e-12)
    np.testing.assert_allclose(a.loss(zero), b.loss(zero), rtol=1e-13)
    opt = idn.solve_once()
    updates, state = opt.update(None, opt.init(model), model, x=grid)
    assert float(state.loss_after) < 1e-20
    assert float(jnp.sum((jax.vmap(optax.apply_updates(model, updates))(x) - y) ** 2)) < 1e-20


def test_other_strategies_on_a_grid():
    grid = _toy_grid()
    start = idn.problems.random_toy_start(jax.random.key(1), shared_dims=False)
    for linear_solver in ("cg", "woodbury"):
        _, info = idn.solve(start, grid, linear_solver=linear_solver)
        assert float(info.loss) < 1e-20


def test_bad_grids():
    model = idn.problems.paper_toy_start()
    axis = jnp.linspace(0.0, 1.0, 5)
    with pytest.raises(ValueError, match="2 axes"):
        idn.solve(idn.AION(1, 3, 1, key=jax.random.key(0)), idn.GridData((axis, axis), jnp.ones((5, 5))))
    with pytest.raises(ValueError, match=r"shape \(5, 5\)"):
        idn.solve(model, idn.GridData((axis, axis), jnp.ones((5, 4))))
    with pytest.raises(TypeError, match="do not pass `y`"):
        idn.solve(model, idn.GridData((axis, axis), jnp.ones((5, 5))), jnp.ones(25))
    with pytest.raises(ValueError, match="NaN or Inf"):
        idn.solve(model, idn.GridData((axis, axis), jnp.ones((5, 5)).at[1, 1].set(jnp.nan)))
    with pytest.raises(TypeError, match="real floating-point"):
        idn.solve(model, idn.GridData((np.arange(5), axis), jnp.ones((5, 5))))
    with pytest.raises(ValueError, match="does not apply"):
        idn.solve(model, idn.GridData((axis, axis), jnp.ones((5, 5))), chunk_size=4)
