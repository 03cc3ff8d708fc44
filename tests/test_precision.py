"""Mixed precision: a float32 model's sums over the data and its loop in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn
from infinite_descent._problems._precision import MixedPrecision, sum_dtype_for, widened
from infinite_descent._problems._select import make_problem
from infinite_descent._solver._snr import loss_resolution
from infinite_descent.bench import timing

EPS32 = float(jnp.finfo(jnp.float32).eps)


def _problem(n=600, rank=2, dim=3, terms=2, key=0):
    return timing.random_problem(n, rank, dim, terms, dtype=jnp.float32, key=key)


def test_sums_are_the_float64_products_of_the_float32_jacobian():
    _, start, x, y = _problem()
    inner = make_problem(start, x, y, None)
    wide = MixedPrecision(inner, jnp.float64)
    delta = 0.01 * jax.random.normal(jax.random.key(3), inner.theta.shape, jnp.float32)
    r, J = inner.residual_and_jacobian(delta)
    assert r.dtype == J.dtype == jnp.float32
    r64, J64 = np.asarray(r, np.float64), np.asarray(J, np.float64)
    eq = wide.normal_equations(delta.astype(jnp.float64))
    assert eq.gram.dtype == eq.g.dtype == eq.loss.dtype == jnp.float64
    # Products of float32 numbers are exact in float64: only the sums round (in float64).
    np.testing.assert_allclose(eq.gram, J64.T @ J64, rtol=1e-13, atol=1e-13 * np.abs(J64).max() ** 2)
    np.testing.assert_allclose(eq.g, J64.T @ r64, rtol=1e-12, atol=1e-12 * np.abs(J64).max())
    np.testing.assert_allclose(eq.loss, r64 @ r64, rtol=1e-13)
    np.testing.assert_allclose(eq.diag, np.sum(J64 * J64, axis=0), rtol=1e-13)
    # The float32 Gram differs from them by float32 rounding, far more than float64's.
    narrow = inner.normal_equations(delta)
    error32 = np.abs(np.asarray(narrow.gram, np.float64) - J64.T @ J64).max()
    assert error32 > 1e3 * np.abs(np.asarray(eq.gram) - J64.T @ J64).max()


def test_float32_with_float64_sums_solves_to_near_its_floor():
    """An exactly representable target, ``M = 128``: the float32 solve with float64 sums
    converges near float32's floor (``eps^2 = 1.4e-14`` relative). How near varies from target
    to target and machine to machine (a slow tail, a curved valley; ``benchmarks/precision.py``
    measures several), so the bound here is loose."""
    _, start, x, y = _problem(n=4000, rank=4, dim=4, terms=2, key=0)
    model, info = idn.solve(start, x, y, throw=False, sum_dtype="float64")
    assert bool(info.converged), idn.RESULTS[info.result]
    assert model.A.dtype == jnp.float32 and info.loss.dtype == jnp.float32
    y64 = np.asarray(y, np.float64)
    residual = np.asarray(jax.vmap(model)(x), np.float64) - y64
    assert residual @ residual <= 1e3 * EPS32**2 * (y64 @ y64)
    assert float(info.loss) <= 1e3 * EPS32**2 * float(y64 @ y64)


def test_loss_resolution_bounds_independent_roundings_of_the_residuals():
    """``Phi``'s change when every residual of a float32 solve near its floor is rounded again
    (each by up to one ulp of its datum, independently) stays below `loss_resolution`, which
    bounds it by ``max_n |y_n|``. It is not loose by ``sqrt(N)`` as the bound by ``|y|``
    (roundings that all agree) is: that one stopped float32 solves far above their floor."""
    _, start, x, y = _problem(n=10_000, rank=4, dim=4, terms=2, key=0)
    y = np.asarray(y, np.float64)
    rng = np.random.default_rng(0)
    r = 30 * EPS32 * np.sqrt(np.mean(y * y)) * rng.standard_normal(y.size)  # Phi ~ 1e3 eps^2
    loss = r @ r
    ulp = np.spacing(np.abs(y).astype(np.float32)).astype(np.float64)
    changes = [abs((r + d) @ (r + d) - loss)
               for d in ulp * rng.uniform(-1, 1, (200, y.size))]
    resolution = float(loss_resolution(loss, np.abs(y).max(), EPS32))
    assert max(changes) <= resolution <= 100 * max(changes)
    assert float(loss_resolution(loss, np.linalg.norm(y), EPS32)) >= 10 * resolution


def test_the_option():
    assert idn.SNR().sum_dtype is None
    assert idn.SNR(sum_dtype="auto").sum_dtype == "auto"
    assert idn.SNR(sum_dtype=jnp.float64).sum_dtype == "float64"
    assert idn.SNR(sum_dtype=np.float64).sum_dtype == "float64"
    for bad in ("float16", jnp.float32, 3, "fast"):
        with pytest.raises(ValueError, match="sum_dtype"):
            idn.SNR(sum_dtype=bad)
    # Where it applies: float32 models; float64 models are left alone.
    assert sum_dtype_for("float64", jnp.float32) == jnp.float64
    assert sum_dtype_for(None, jnp.float32) is None
    assert sum_dtype_for("float64", jnp.float64) is None
    with jax.enable_x64(False):
        assert sum_dtype_for("auto", jnp.float32) is None
        with pytest.raises(ValueError, match="jax_enable_x64"):
            sum_dtype_for("float64", jnp.float32)
    _, start, x, y = _problem(n=50)
    problem = make_problem(start, x, y, None)
    assert widened(problem, None) is problem
    assert isinstance(widened(problem, "float64"), MixedPrecision)


@pytest.mark.parametrize("options", [
    {"linear_solver": "cg"}, {"hessian": "exact"}, {"geodesic": True},
    {"linear_solver": "woodbury"},
])
def test_every_linear_solver_and_hessian_in_mixed_precision(options):
    """The wrapper gives every sum the loop may ask for (products for CG, the geodesic
    right-hand side, the residual blocks, the Jacobian) in float64; the solve matches the
    plain float32 solve's answer to float32's accuracy."""
    _, start, x, y = _problem(n=300, rank=2, dim=2, terms=1)
    mixed, info = idn.solve(start, x, y, throw=False, sum_dtype="float64", max_steps=60,
                            **options)
    assert info.loss.dtype == jnp.float32
    y64 = np.asarray(y, np.float64)
    assert float(info.loss) <= 1e-9 * float(y64 @ y64), idn.RESULTS[info.result]
    np.testing.assert_allclose(jax.vmap(mixed)(x), y, atol=1e-4 * float(np.abs(y64).max()))


def test_bounds_least_squares_and_batched_in_mixed_precision():
    """Every entry point runs its float32 problems in mixed precision when asked: bounds, a
    residual function (`least_squares`), a batch of fits."""
    _, start, x, y = _problem(n=200, rank=1, dim=2, terms=1)
    lower = jax.tree.map(lambda a: jnp.full_like(a, -10.0), start)
    upper = jax.tree.map(lambda a: jnp.full_like(a, 10.0), start)
    _, info = idn.solve(start, x, y, throw=False, bounds=(lower, upper), sum_dtype="auto")
    assert float(info.loss) <= 1e-9 * float(jnp.sum(y.astype(jnp.float64) ** 2))

    t = jnp.linspace(0.0, 1.0, 64, dtype=jnp.float32)
    data = 2.0 * jnp.exp(-1.5 * t)

    def residual(p, args):
        return p["a"] * jnp.exp(-p["k"] * args[0]) - args[1]

    p0 = {"a": jnp.float32(1.0), "k": jnp.float32(1.0)}
    params, info = idn.least_squares(residual, p0, (t, data), sum_dtype="float64")
    assert params["a"].dtype == jnp.float32
    np.testing.assert_allclose([params["a"], params["k"]], [2.0, 1.5], rtol=1e-5)

    datas = jnp.stack([data, 3.0 * jnp.exp(-0.5 * t)])
    ts = jnp.stack([t, t])
    p0s = jax.tree.map(lambda a: jnp.stack([a, a]), p0)
    params, info = idn.least_squares(residual, p0s, (ts, datas), batched=True,
                                     args_axes=(0, 0), sum_dtype="float64")
    np.testing.assert_allclose(params["a"], [2.0, 3.0], rtol=1e-5)
    np.testing.assert_allclose(params["k"], [1.5, 0.5], rtol=1e-5)
