"""The resummed residual F(delta) against autodiff, and its per-rank blocks against the Hessian."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn
from infinite_descent._problems._aion import AIONResummation

# (rank, dim, terms, shared): every rank 1-4, dim 1-5 and terms 1-3 appears, shared and untied.
CASES = [
    (1, 1, 1, False), (1, 3, 2, True), (2, 2, 1, True), (2, 2, 1, False), (2, 5, 3, False),
    (3, 1, 3, False), (3, 4, 2, True), (4, 2, 2, False), (4, 5, 1, True), (2, 3, 3, True),
    (1, 4, 3, False), (4, 3, 1, False),
]


@jax.jit
def reference_loss(theta, x, y):
    """Phi from the real formula A e^{alpha x} cos(omega x + phi), independent of the package.

    ``theta`` is stacked (rank, 4, d', P) as (A, alpha, omega, phi).
    """
    A, al, om, ph = (theta[:, k][None] for k in range(4))  # (1, r, d', P)
    xs = x[:, None, :, None]  # (N, 1, d, 1)
    atoms = jnp.sum(A * jnp.exp(al * xs) * jnp.cos(om * xs + ph), axis=-1)  # (N, r, d)
    f = jnp.sum(jnp.prod(atoms, axis=-1), axis=-1)
    return jnp.sum((f - y) ** 2)


def stacked(tree):
    return jnp.stack([tree.A, tree.alpha, tree.omega, tree.phi], axis=1)


def random_problem(case, seed):
    rank, dim, terms, shared = case
    k_model, k_x, k_y, k_delta = jax.random.split(jax.random.key(seed), 4)
    model = idn.AION(rank, dim, terms, key=k_model, shared_dims=shared)
    x = jax.random.uniform(k_x, (30, dim), minval=-1.0, maxval=1.0)
    y = jax.random.normal(k_y, (30,))
    params = eqx.filter(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(k_delta, len(leaves))
    # Shifts of size up to 1 in every entry, not only small ones.
    delta = jax.tree.unflatten(
        treedef, [jax.random.uniform(k, l.shape, l.dtype, -1.0, 1.0) for k, l in zip(keys, leaves)]
    )
    return model, x, y, delta


def relative_error(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_F_equals_autodiff_gradient(case, seed):
    model, x, y, delta = random_problem(case, seed)
    F = idn.resummed_residual(model, x, y)
    got = F(delta)
    # Same structure as eqx.filter_grad would give.
    assert jax.tree.structure(got) == jax.tree.structure(eqx.filter(model, eqx.is_inexact_array))
    theta = stacked(model) + stacked(delta)
    want = jax.jit(jax.grad(reference_loss))(theta, x, y)
    assert relative_error(stacked(got), want) < 1e-10
    # And against eqx.filter_grad of the package's own model at the shifted point.
    shifted = eqx.apply_updates(model, delta)
    want_eqx = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum((jax.vmap(m)(x) - y) ** 2)))(
        shifted
    )
    assert relative_error(stacked(got), stacked(want_eqx)) < 1e-10
    np.testing.assert_allclose(F.loss(delta), reference_loss(theta, x, y), rtol=1e-12)


def test_F_at_zero_is_the_gradient_at_the_model():
    model, x, y, _ = random_problem((2, 3, 2, False), 5)
    F = idn.resummed_residual(model, x, y)
    zero = jax.tree.map(jnp.zeros_like, eqx.filter(model, eqx.is_inexact_array))
    want = jax.grad(reference_loss)(stacked(model), x, y)
    assert relative_error(stacked(F(zero)), want) < 1e-12


def test_F_is_pure_and_jittable():
    model, x, y, delta = random_problem((2, 2, 1, True), 3)
    F = idn.resummed_residual(model, x, y)
    a = F(delta)
    b = jax.jit(lambda f, d: f(d))(F, delta)
    c = eqx.filter_jit(F)(delta)
    for u, v in ((a, b), (a, c)):
        assert relative_error(stacked(u), stacked(v)) < 1e-14


@pytest.mark.parametrize("case", CASES[:8])
def test_rank_blocks_match_hessian(case):
    model, x, y, delta = random_problem(case, 11)
    F = idn.resummed_residual(model, x, y)
    blocks = F.rank_blocks(delta)
    rank = case[0]
    m = 4 * model.A[0].size
    assert blocks.shape == (rank, m, m)
    theta = stacked(model) + stacked(delta)
    hess = jax.jit(jax.hessian(lambda t: reference_loss(t.reshape(theta.shape), x, y)))(
        theta.reshape(-1)
    )
    for j in range(rank):
        want = hess[j * m : (j + 1) * m, j * m : (j + 1) * m]
        assert relative_error(blocks[j], want) < 1e-10
    if rank > 1:
        # The off-diagonal (cross-rank) blocks are not zero: the Hessian is not
        # block-diagonal across ranks (the correction to the paper, docs/design.md section 4).
        assert float(jnp.max(jnp.abs(hess[:m, m : 2 * m]))) > 1e-6


def test_rank_blocks_residual_part_plus_gauss_newton_is_the_block():
    model, x, y, delta = random_problem((3, 2, 2, False), 2)
    F = idn.resummed_residual(model, x, y)
    res = F.problem
    d = res.stack(delta)
    full = jax.jit(lambda r, d: r.rank_blocks(d))(res, d)
    residual_part = jax.jit(lambda r, d: r.rank_blocks(d, residual_only=True))(res, d)
    _, jac = jax.jit(lambda r, d: r.residual_and_jacobian(d))(res, d)
    m = full.shape[1]
    for j in range(3):
        jj = jac[:, j * m : (j + 1) * m]
        assert relative_error(residual_part[j] + 2 * jj.T @ jj, full[j]) < 1e-12


def reference_residuals(theta, x, y):
    A, al, om, ph = (theta[:, k][None] for k in range(4))
    xs = x[:, None, :, None]
    atoms = jnp.sum(A * jnp.exp(al * xs) * jnp.cos(om * xs + ph), axis=-1)
    return jnp.sum(jnp.prod(atoms, axis=-1), axis=-1) - y


@pytest.mark.parametrize("case", CASES[::3])
def test_geodesic_rhs_is_jacobian_transpose_times_second_directional_derivative(case):
    model, x, y, delta = random_problem(case, 0)
    problem = AIONResummation(model, x, y)
    d = 0.3 * stacked(delta)
    v = jax.random.normal(jax.random.key(7), d.shape)
    theta = stacked(model) + d

    def along(t):
        return reference_residuals(theta + t * v, x, y)

    r_vv = jax.jvp(lambda t: jax.jvp(along, (t,), (1.0,))[1], (0.0,), (1.0,))[1]
    jac = jax.jacfwd(lambda th: reference_residuals(th, x, y))(theta).reshape(x.shape[0], -1)
    want = jac.T @ r_vv
    got = problem.geodesic_rhs(d, v.reshape(-1))
    assert relative_error(got.reshape(-1), want) < 1e-10
