"""ModelSum: models of different families added and fitted as one (issue 15, item 4)."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import infinite_descent as idn
from infinite_descent._problems._select import make_problem
from infinite_descent._problems._sum import SumProblem
from infinite_descent.bench import nist

DATA = Path(__file__).resolve().parent / "data" / "nist-strd"


def _gauss_model(b):
    """NIST's ``b1 exp(-b2 x) + b3 exp(-(x - b4)^2 / b5^2) + b6 exp(-(x - b7)^2 / b8^2)`` as
    an AION decay (frequency and phase held at zero) plus two Gaussian atoms."""
    decay = idn.AION(1, 1, 1, A=b[0], alpha=-b[1], omega=0.0, phi=0.0)
    peaks = idn.GaussianAtoms(
        2, 1, 1, A=np.array([b[2], b[5]]).reshape(2, 1, 1),
        a=1 / np.array([b[4], b[7]]).reshape(2, 1, 1) ** 2,
        m=np.array([b[3], b[6]]).reshape(2, 1, 1),
    )
    model = decay + peaks
    trainable = jax.tree.map(lambda _: True, model)
    trainable = eqx.tree_at(lambda t: (t.parts[0].omega, t.parts[0].phi), trainable,
                            (False, False))
    return model, trainable


def _gauss_parameters(fit):
    decay, peaks = fit.parts
    A, a, m = (np.asarray(v).ravel() for v in (peaks.A, peaks.a, peaks.m))
    return np.array([float(decay.A.ravel()[0]), -float(decay.alpha.ravel()[0]), A[0], m[0],
                     1 / np.sqrt(a[0]), A[1], m[1], 1 / np.sqrt(a[1])])


@pytest.mark.parametrize("name", ["Gauss1", "Gauss2", "Gauss3"])
@pytest.mark.parametrize("start", [0, 1])
def test_nist_gauss_as_a_sum_of_an_aion_and_gaussians(name, start):
    """Each part through its own resummation, the parameters coupled in one system: NIST's
    certified values to at least 8 digits from both starts (the sign of b5, b8 is free)."""
    problem = nist.load(DATA / f"{name}.dat")
    x = np.asarray(problem.x).reshape(-1, 1)
    y = np.asarray(problem.response)
    model, trainable = _gauss_model(np.asarray(problem.starts[start]))
    fit, info = idn.solve(model, x, y, trainable=trainable, max_steps=200)
    assert isinstance(fit, idn.ModelSum)
    assert isinstance(fit.parts[0], idn.AION) and isinstance(fit.parts[1], idn.GaussianAtoms)
    certified = np.asarray(problem.certified)
    digits = -np.log10(np.abs(_gauss_parameters(fit) - certified) / np.abs(certified))
    assert digits.min() >= 8, digits
    assert np.isclose(float(info.loss), problem.certified_rss, rtol=1e-9)
    # Standard errors of the parameters the sum shares with NIST's form (b1, b2, b3, b4, b6,
    # b7: amplitudes, rate, centres) against the certified standard deviations.
    errors = idn.standard_errors(fit, x, y, trainable=trainable)
    decay, peaks = errors.parts
    ours = np.array([decay.A.ravel()[0], decay.alpha.ravel()[0], *np.ravel(peaks.A)[:1],
                     *np.ravel(peaks.m)[:1], *np.ravel(peaks.A)[1:], *np.ravel(peaks.m)[1:]])
    reference = np.asarray(problem.certified_sd)[[0, 1, 2, 3, 5, 6]]
    assert (-np.log10(np.abs(ours - reference) / reference)).min() >= 4


def _random_sum(key, dim=2):
    k1, k2, k3 = jax.random.split(key, 3)
    return (idn.AION(2, dim, 2, key=k1) + idn.GaussianAtoms(2, dim, 1, key=k2)
            + idn.ShallowNetwork(3, dim, key=k3))


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_sum_problem_matches_autodiff_of_the_summed_model(chunk_size):
    """Residuals, gradient, J^T J and the geodesic right-hand side of the sum at a shifted
    point equal plain autodiff of ``sum_k f_k(x) - y`` (weighted), chunked or not."""
    model = _random_sum(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (30, 2), minval=-1, maxval=1)
    y = jax.random.normal(jax.random.key(2), (30,))
    w = jax.random.uniform(jax.random.key(3), (30,), minval=0.5, maxval=2.0)
    problem = make_problem(model, x, y, chunk_size, weights=w)
    assert isinstance(problem, SumProblem)
    delta = 0.1 * jax.random.normal(jax.random.key(4), problem.theta.shape)
    v = jax.random.normal(jax.random.key(5), (problem.num_params,))

    def residuals(flat):
        shifted = problem.to_model(problem.theta + flat.reshape(problem.theta.shape), model)
        return jnp.sqrt(w) * (jax.vmap(shifted)(x) - y)

    # The references (plain autodiff) are compiled, each one program: run op by op they were
    # most of this test's time. The problem's own methods below run as they are (eagerly).
    flat = delta.reshape(-1)
    r = jax.jit(residuals)(flat)
    J = jax.jit(jax.jacfwd(residuals))(flat)
    eq = problem.normal_equations(delta)
    np.testing.assert_allclose(eq.loss, r @ r, rtol=1e-12)
    np.testing.assert_allclose(eq.g, J.T @ r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(eq.gram, J.T @ J, rtol=1e-10, atol=1e-12)
    r_vv = jax.jit(lambda v: jax.jvp(lambda t: jax.jvp(residuals, (flat + t * v,), (v,))[1],
                                     (0.0,), (1.0,))[1])(v)
    np.testing.assert_allclose(problem.geodesic_rhs(delta, v), J.T @ r_vv, rtol=1e-9,
                               atol=1e-10)
    hessian = jax.jit(jax.hessian(lambda d: residuals(d) @ residuals(d)))(flat)
    np.testing.assert_allclose(problem.rank_blocks(delta)[0], hessian, rtol=1e-9, atol=1e-10)


def test_sum_fits_a_sum_and_keeps_every_entry_point():
    """A sum of an AION and Gaussians fitted to data from another such sum reaches the
    rounding floor through solve, solve_once and multistart; the returned models are sums."""
    truth = idn.AION(1, 1, 2, key=jax.random.key(10)) + idn.GaussianAtoms(
        1, 1, 1, A=1.0, a=4.0, m=0.3)
    x = jnp.linspace(-1, 1, 80)[:, None]
    y = jax.vmap(truth)(x)
    start = eqx.tree_at(lambda m: m.parts, truth, tuple(
        jax.tree.map(lambda a: a * 1.05, p) for p in truth.parts))
    fit, info = idn.solve(start, x, y)
    assert float(info.loss) <= 1e-20 * float(y @ y)

    opt = idn.solve_once(max_steps=256)
    params = eqx.filter(start, eqx.is_inexact_array)
    updates, _ = opt.update(None, opt.init(params), params, x=x, y=y)
    once = eqx.apply_updates(start, updates)
    assert float(jnp.sum((jax.vmap(once)(x) - y) ** 2)) <= 1e-20 * float(y @ y)

    best, minfo = idn.multistart(start, x, y, num_starts=2, key=jax.random.key(0))
    assert isinstance(best, idn.ModelSum)
    assert float(jnp.sum((jax.vmap(best)(x) - y) ** 2)) <= 1e-20 * float(y @ y)
    assert float(jnp.min(minfo.loss)) <= 1e-20 * float(y @ y)


def test_fix_gauge_holds_the_aion_part_of_a_sum():
    """``fix_gauge`` holds one amplitude per rank and dimension > 0 of every AION part."""
    aion = idn.AION(2, 2, 2, key=jax.random.key(0))
    model = aion + idn.GaussianAtoms(1, 2, 1, key=jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (40, 2))
    y = jnp.sin(x[:, 0]) + x[:, 1]
    fit, _ = idn.solve(model, x, y, fix_gauge=True, throw=False, max_steps=5)
    A0, A1 = np.asarray(aion.A), np.asarray(fit.parts[0].A)
    for j in range(2):
        held = np.argmax(np.abs(A0[j, 1]))
        assert A1[j, 1, held] == A0[j, 1, held]
    assert not np.allclose(A1[:, 0], A0[:, 0])


def test_model_sum_builds_and_refuses_clearly():
    a = idn.AION(1, 2, 1, key=jax.random.key(0))
    g = idn.GaussianAtoms(1, 2, 1, key=jax.random.key(1))
    s = idn.ModelSum(a, g + a)
    assert len(s.parts) == 3 and s.num_terms == 3 and s.dim == 2
    point = jnp.array([0.3, -0.2])
    np.testing.assert_allclose(s(point), a(point) + g(point) + a(point), rtol=1e-14)
    np.testing.assert_allclose(jnp.sum(s.term_values(point)), s(point), rtol=1e-14)
    with pytest.raises(ValueError, match="share `dim`"):
        idn.ModelSum(a, idn.GaussianAtoms(1, 3, 1, key=jax.random.key(1)))
    with pytest.raises(TypeError, match="one dtype"):
        idn.ModelSum(a, idn.GaussianAtoms(1, 2, 1, key=jax.random.key(1), dtype=jnp.float32))
    with pytest.raises(TypeError, match="AbstractSumOfTerms"):
        idn.ModelSum(a, lambda x: x)
    with pytest.raises(ValueError, match="at least two"):
        idn.ModelSum(a)
    with pytest.raises(TypeError, match="no single term"):
        s.term(point)
    with pytest.raises(TypeError):
        a + 1.0
