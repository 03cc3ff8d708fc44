"""Property-based tests (hypothesis): over random ranks, dimensions, terms, sizes, data scales
and starts, a solve never raises the loss, stays finite and reports the loss of what it returns,
and F agrees with autodiff.

Every new shape recompiles, so shapes come from a small bucket and the examples are spent on
values; ``derandomize=True`` and ``deadline=None`` keep CI fast and repeatable.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import infinite_descent as idn

# (rank, dim, terms, shared, N): includes fewer points than parameters (M = 48 > N = 8) and
# a single point.
SHAPES = [
    (1, 1, 1, False, 5),
    (2, 2, 1, True, 40),
    (2, 3, 2, False, 8),
    (3, 2, 2, False, 60),
    (1, 4, 1, False, 1),
]
SCALES = [1e-3, 1e-1, 1.0, 1e1, 1e3]


@functools.cache
def _solver(max_steps):
    return jax.jit(functools.partial(idn.solve, max_steps=max_steps, throw=False))


def _loss(model, x, y):
    return jnp.sum((jax.vmap(model)(x) - y) ** 2)


def _problem(shape, seed, y_scale, x_scale, noise):
    rank, dim, terms, shared, n = shape
    k_target, k_start, k_x, k_noise = jax.random.split(jax.random.key(seed), 4)
    target = idn.AION(rank, dim, terms, key=k_target, shared_dims=shared)
    start = idn.AION(rank, dim, terms, key=k_start, shared_dims=shared)
    x = x_scale * jax.random.uniform(k_x, (n, dim), minval=-1.0, maxval=1.0)
    y = y_scale * (jax.vmap(target)(x) + noise * jax.random.normal(k_noise, (n,)))
    return start, x, y


problem_args = dict(
    shape=st.sampled_from(SHAPES),
    seed=st.integers(0, 2**31 - 1),
    y_scale=st.sampled_from(SCALES),
    x_scale=st.sampled_from([0.1, 1.0, 2.0]),
    noise=st.sampled_from([0.0, 0.1]),
)


@settings(max_examples=250, deadline=None, derandomize=True)
@given(**problem_args, max_steps=st.sampled_from([3, 40]))
def test_solve_never_worse_and_always_finite(shape, seed, y_scale, x_scale, noise, max_steps):
    start, x, y = _problem(shape, seed, y_scale, x_scale, noise)
    model, info = _solver(max_steps)(start, x, y)
    initial = float(_loss(start, x, y))
    final = float(_loss(model, x, y))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(model))
    assert np.isfinite(float(info.loss)) and np.isfinite(float(info.grad_norm))
    assert final <= initial * (1 + 1e-12) + 1e-300
    # The reported losses are those of the start and of the returned model.
    np.testing.assert_allclose(float(info.initial_loss), initial, rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(float(info.loss), final, rtol=1e-7, atol=1e-12 * initial + 1e-300)
    assert int(info.inner_steps) <= max_steps
    # One pass (values only) for step zero, which scales the start's output to the data, one
    # to start, one per iteration, one more per geodesically accelerated iteration.
    inner = int(info.inner_steps)
    assert inner + 2 <= int(info.data_passes) <= 2 * inner + 2
    assert info.result in (idn.RESULTS.successful, idn.RESULTS.max_steps_reached)


@functools.cache
def _residual_and_reference():
    @jax.jit
    def both(model, x, y, delta):
        F = idn.resummed_residual(model, x, y)
        shifted = eqx.apply_updates(model, delta)
        return F(delta), eqx.filter_grad(_loss)(shifted, x, y)

    return both


@settings(max_examples=100, deadline=None, derandomize=True)
@given(**problem_args, delta_size=st.sampled_from([1e-6, 0.1, 1.0]))
def test_F_agrees_with_autodiff(shape, seed, y_scale, x_scale, noise, delta_size):
    start, x, y = _problem(shape, seed, y_scale, x_scale, noise)
    params = eqx.filter(start, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    delta = jax.tree.unflatten(treedef, [
        delta_size * jax.random.uniform(k, leaf.shape, leaf.dtype, -1.0, 1.0)
        for k, leaf in zip(keys, leaves)
    ])
    got, want = _residual_and_reference()(start, x, y, delta)
    got, want = (jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)]) for t in (got, want))
    scale = float(jnp.linalg.norm(want))
    assert float(jnp.linalg.norm(got - want)) <= 1e-10 * scale + 1e-290


# The widened property (issue 17): the algorithm's choices, the data's scale over the dtype's
# range, the initial damping over many orders, float32; and "successful" must mean the loss
# stopped falling: a fresh solve from the returned model finds no real decrease.
CHOICES = [  # (linear_solver, hessian, variable_projection)
    ("dense", "gauss_newton", False),
    ("cg", "gauss_newton", False),
    ("woodbury", "gauss_newton", False),
    ("block", "gauss_newton", False),
    ("dense", "exact", False),
    ("dense", "gauss_newton", True),
]
WIDE_SHAPES = [(1, 1, 2, False, 30), (2, 2, 1, False, 40)]


@functools.cache
def _chosen_solver(linear_solver, hessian, projection):
    return jax.jit(functools.partial(
        idn.solve, max_steps=200, throw=False, linear_solver=linear_solver, hessian=hessian,
        variable_projection=projection))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(shape=st.sampled_from(WIDE_SHAPES), seed=st.integers(0, 2**31 - 1),
       choice=st.sampled_from(CHOICES), float32=st.booleans(),
       exponent=st.floats(-1.0, 1.0), damping_exponent=st.integers(-8, 8))
def test_successful_means_converged_over_choices_scales_and_dampings(
        shape, seed, choice, float32, exponent, damping_exponent):
    dtype = jnp.float32 if float32 else jnp.float64
    # Targets scaled by 10^k, k over most of the dtype's exponent range (squares finite).
    largest = 15 if float32 else 140
    y_scale = 10.0 ** round(exponent * largest)
    start, x, y = _problem(shape, seed, 1.0, 1.0, 0.0)
    cast = functools.partial(jax.tree.map, lambda a: a.astype(dtype) if eqx.is_inexact_array(a)
                             else a)
    start, x, y = cast(start), x.astype(dtype), (y * y_scale).astype(dtype)
    solve = _chosen_solver(*choice)
    damping = jnp.asarray(10.0 ** damping_exponent, dtype)
    model, info = solve(start, x, y, initial_damping=damping)
    initial, final = float(_loss(start, x, y)), float(_loss(model, x, y))
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(model)
               if eqx.is_inexact_array(a))
    assert final <= initial * (1 + 1e-5) or not np.isfinite(initial)
    if info.result != idn.RESULTS.successful:
        assert info.result in (idn.RESULTS.max_steps_reached, idn.RESULTS.stalled,
                               idn.RESULTS.singular_projection)
        return
    # Successful: at the rounding floor of the data, or a fresh solve from the returned model
    # (damping reset) cannot lower Phi by more than a small fraction.
    eps = float(jnp.finfo(dtype).eps)
    floor = 1e4 * x.shape[0] * eps**2 * float(jnp.sum(y.astype(jnp.float64) ** 2))
    if final <= floor:
        return
    again, _ = solve(model, x, y, initial_damping=jnp.asarray(1e-3, dtype))
    assert float(_loss(again, x, y)) >= (1 - 1e-2) * final, (
        "reported successful, but a restart lowered Phi by more than 1%")
