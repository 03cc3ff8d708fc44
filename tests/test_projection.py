"""Variable projection: the projected residual and its Jacobian against autodiff, the rebuilt
model, solves with ``variable_projection=True`` and the input it refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn
from infinite_descent._problems._projection import ProjectedAION


def _data(rank, dim, terms, n, key, grid=False):
    k1, k2 = jax.random.split(jax.random.key(key))
    target = idn.AION(rank, dim, terms, key=k1)
    if grid:
        x = jnp.linspace(-1.0, 1.0, n)[:, None]
    else:
        x = jax.random.uniform(k2, (n, dim), minval=-1.0, maxval=1.0)
    return target, x, jax.vmap(target)(x)


@pytest.mark.parametrize("rank,dim,terms,tol", [(2, 3, 2, 1e-12), (3, 2, 1, 1e-12),
                                                (2, 5, 3, 1e-12), (4, 1, 1, 1e-8)])
def test_golub_pereyra_jacobian_matches_autodiff_through_the_qr(rank, dim, terms, tol):
    # The one-dimensional basis is ill-conditioned (a few oscillations on [-1, 1]): both ways
    # of computing the Jacobian lose digits there, hence its looser tolerance.
    _, x, y = _data(rank, dim, terms, 300, key=10 + rank)
    start = idn.AION(rank, dim, terms, key=jax.random.key(4))
    problem = ProjectedAION(start, x, y)
    delta = 0.05 * jax.random.normal(jax.random.key(5), (problem.num_params,))
    r, J = problem.residual_and_jacobian(delta)
    reference = jax.jacfwd(problem.residuals)(delta)
    assert float(jnp.linalg.norm(J - reference) / jnp.linalg.norm(reference)) < tol
    np.testing.assert_allclose(r, problem.residuals(delta), rtol=1e-12, atol=1e-13)
    # The projected residual is orthogonal to the basis (the coefficients are optimal).
    basis = problem.basis(problem.theta + delta.reshape(problem.theta.shape))
    assert float(jnp.max(jnp.abs(basis.T @ r))) < 1e-9 * float(jnp.linalg.norm(y))


def test_the_target_itself_has_a_zero_projected_residual_and_is_rebuilt():
    target, x, y = _data(3, 2, 2, 400, key=3)
    problem = ProjectedAION(target, x, y)
    assert float(jnp.linalg.norm(problem.residuals(jnp.zeros(problem.num_params)))) < 1e-12
    # Rebuilt from a model whose first-dimension amplitudes and phases are wrong: the
    # coefficients are recomputed, so the function is the target's.
    wrong = idn.AION(3, 2, 2, key=jax.random.key(1), alpha=target.alpha, omega=target.omega,
                     A=target.A.at[:, 0].set(1.0), phi=target.phi.at[:, 0].set(0.0))
    rebuilt = ProjectedAION(wrong, x, y).to_model(ProjectedAION(wrong, x, y).theta, wrong)
    np.testing.assert_allclose(jax.vmap(rebuilt)(x), y, atol=1e-11)


@pytest.mark.parametrize("rank,seed", [(4, 101), (5, 202)])
def test_projection_reaches_one_dimensional_sums_of_damped_cosines(rank, seed):
    # Targets and starts that the benchmark did not use.
    target, x, y = _data(rank, 1, 1, 200, key=seed, grid=True)
    scale = float(y @ y)
    hits = 0
    for s in range(3):
        start = idn.AION(rank, 1, 1, key=jax.random.key(1000 + seed + s))
        model, info = idn.solve(start, x, y, throw=False, max_steps=500,
                                variable_projection=True)
        assert isinstance(model, idn.AION)
        full = float(jnp.sum((jax.vmap(model)(x) - y) ** 2))
        np.testing.assert_allclose(full, float(info.loss), rtol=1e-6, atol=1e-24 * scale)
        assert int(info.inner_steps) + 1 <= int(info.data_passes) <= 2 * int(info.inner_steps) + 1
        hits += full < 1e-20 * scale
    assert hits >= 2


def test_projection_works_in_float32():
    target, x, y = _data(2, 2, 1, 300, key=8)
    x32, y32 = x.astype(jnp.float32), y.astype(jnp.float32)
    start = idn.AION(2, 2, 1, key=jax.random.key(2), dtype=jnp.float32)
    model, info = idn.solve(start, x32, y32, throw=False, variable_projection=True)
    assert model.A.dtype == jnp.float32
    assert np.isfinite(float(info.loss)) and float(info.loss) < float(info.initial_loss)


def test_projection_refuses_what_it_cannot_do():
    target, x, y = _data(2, 2, 1, 100, key=9)
    start = idn.AION(2, 2, 1, key=jax.random.key(0))
    cases = [
        (dict(hessian="exact"), "gauss_newton"),
        (dict(linear_solver="cg"), "dense"),
        (dict(trainable=True), "trainable"),
        (dict(fix_gauge=True), "fix_gauge"),
        (dict(chunk_size=16), "whole data"),
    ]
    for options, match in cases:
        with pytest.raises(ValueError, match=match):
            idn.solve(start, x, y, variable_projection=True, **options)
    # A flag of the wrong type is a TypeError (jaxtyping's checker, in the tests, says so
    # first; without it the solver's own check does).
    with pytest.raises(TypeError, match="variable_projection"):
        idn.solve(start, x, y, variable_projection="yes")
    shared = idn.AION(2, 2, 1, key=jax.random.key(0), shared_dims=True)
    with pytest.raises(ValueError, match="shared_dims"):
        idn.solve(shared, x, y, variable_projection=True)
    with pytest.raises(ValueError, match="AION"):
        idn.solve(idn.GaussianAtoms(2, 2, 1, key=jax.random.key(0)), x, y,
                  variable_projection=True)
    grid = idn.GridData(axes=(jnp.linspace(-1, 1, 5), jnp.linspace(-1, 1, 6)),
                        y=jnp.ones((5, 6)))
    with pytest.raises(ValueError, match="GridData"):
        idn.solve(start, grid, variable_projection=True)


def test_projection_through_solve_once_under_jit():
    target, x, y = _data(2, 2, 1, 200, key=12)
    start = jax.tree.map(lambda a: a * 1.05, target)
    opt = idn.solve_once(variable_projection=True)

    @jax.jit
    def update(model):
        updates, state = opt.update(None, opt.init(model), model, x=x, y=y)
        return jax.tree.map(lambda p, u: p + u, model, updates), state

    fitted, state = update(start)
    assert float(state.loss_after) < 1e-20 * float(y @ y)
    np.testing.assert_allclose(jax.vmap(fitted)(x), y, atol=1e-9)


def test_projected_solution_is_rebalanced_and_survives_an_optax_update():
    # Later dimensions' amplitudes are a gauge of the projected residual: the loop drifts along
    # it (in 8 dimensions to first amplitudes of 1e-15), and such a model loses its fit to
    # rounding when an optax update adds `solved - start` back to the start. The rebuilt
    # model shares each rank's scale evenly over its dimensions.
    target, x, y = _data(2, 6, 1, 1500, key=21)
    leaves, treedef = jax.tree.flatten(target)
    keys = jax.random.split(jax.random.key(22), len(leaves))
    start = jax.tree.unflatten(treedef, [
        a * (1 + 0.2 * jax.random.normal(k, a.shape)) for k, a in zip(keys, leaves)])
    scale = float(y @ y)
    solved, info = idn.solve(start, x, y, variable_projection=True, max_steps=500)
    assert float(info.loss) < 1e-20 * scale
    per_dim = jnp.max(jnp.abs(solved.A), axis=-1)  # (rank, dim)
    np.testing.assert_allclose(per_dim, jnp.broadcast_to(per_dim[:, :1], per_dim.shape),
                               rtol=1e-10)
    np.testing.assert_allclose(jax.vmap(solved)(x), y, atol=1e-12)
    opt = idn.solve_once(variable_projection=True, max_steps=500)
    updates, _ = opt.update(None, opt.init(start), start, x=x, y=y)
    applied = jax.tree.map(lambda p, u: p + u, start, updates)
    assert float(jnp.sum((jax.vmap(applied)(x) - y) ** 2)) < 1e-20 * scale
