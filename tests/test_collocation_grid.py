"""Collocation terms on tensor grids (`Collocation.on_grid`): the operator is recognised, and
an AION's sums from the grid's axes equal those of the same terms on the grid's points."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn
from infinite_descent._problems._collocation import CollocationProblem
from infinite_descent._problems._collocation_grid import GridCollocationProblem
from infinite_descent._problems._select import make_problem
from test_collocation import relative, shifted_aion

PI = jnp.pi


def laplacian(u, p):
    return jnp.trace(jax.hessian(u)(p))


def exact(p):
    """Not one product: an AION of rank two holds it (one atom term per dimension)."""
    return jnp.sin(PI * p[0]) * jnp.sin(2 * p[1]) + jnp.exp(p[0] / 2) * jnp.cos(PI * p[1])


def poisson(u, p):
    return -laplacian(u, p) + laplacian(exact, p)


def dirichlet(u, p):
    return u(p) - exact(p)


def operator_3d(u, p):
    """An operator of orders 0, 1 and 2 with a source: every kind of derivative term."""
    g, H = jax.grad(u)(p), jax.hessian(u)(p)
    return (g[2] - H[0, 0] - 0.5 * H[1, 1] + 0.3 * g[0] + 2.0 * u(p)
            - jnp.sin(p[0] + p[1] * p[2]))


def as_points(term):
    """The same term on the grid's points."""
    return idn.Collocation(term.points, term.residual, term.weight, order=term.order)


def test_linear_operators_are_recognised_with_their_coefficients():
    axes = (jnp.linspace(0.0, 1.0, 9), jnp.linspace(-1.0, 2.0, 7))
    term = idn.Collocation.on_grid(axes, poisson, order=2)
    assert term.uses_grid_sums
    assert dict(term.operator) == {(0, 2): -1.0, (2, 0): -1.0}
    # h: the residual at u = 0, on the grid, in the order of the points
    np.testing.assert_allclose(term.source.reshape(-1),
                               -jax.vmap(lambda p: poisson(lambda x: 0.0 * x[0], p))(
                                   term.points), rtol=1e-13, atol=1e-13)
    assert term.points.shape == (63, 2)
    np.testing.assert_array_equal(term.points[6], [0.0, axes[1][-1]])  # first axis slowest
    axes3 = (jnp.linspace(0, 1, 3), jnp.linspace(0, 1, 4), jnp.linspace(0, 1, 5))
    term3 = idn.Collocation.on_grid(axes3, operator_3d, order=2)
    assert dict(term3.operator) == {(0, 0, 0): 2.0, (0, 0, 1): 1.0, (0, 2, 0): -0.5,
                                    (1, 0, 0): 0.3, (2, 0, 0): -1.0}
    # a face of a 3-D box is a 2-D grid: Dirichlet data there, the operator u
    face = idn.Collocation.on_grid((jnp.zeros(1),) + axes3[1:], lambda u, p: u(p) - p[1],
                                   order=0)
    assert face.operator == (((0, 0, 0), 1.0),)
    np.testing.assert_allclose(face.source.reshape(-1), face.points[:, 1])
    # an edge of a square is a line of points: no axes to sum over
    edge = idn.Collocation.on_grid((jnp.zeros(1), axes[1]), dirichlet, order=0)
    assert not edge.uses_grid_sums and edge.points.shape == (7, 2)


@pytest.mark.parametrize("residual, order, weight", [
    (lambda u, p: -laplacian(u, p) + jnp.sinh(u(p)), 2, 1.0),  # nonlinear in u
    (lambda u, p: jax.grad(u)(p)[0] * u(p), 1, 1.0),  # nonlinear in u
    (lambda u, p: p[0] * laplacian(u, p) - 1.0, 2, 1.0),  # a coefficient varying in x
    (lambda u, p: jnp.sin(p[0]), 0, 1.0),  # no u at all
    (poisson, None, 1.0),  # no order: nothing to recognise through
    (poisson, 2, jnp.linspace(1.0, 2.0, 63)),  # a weight per point
])
def test_other_residuals_stay_on_the_points(residual, order, weight):
    axes = (jnp.linspace(0.0, 1.0, 9), jnp.linspace(0.0, 1.0, 7))
    term = idn.Collocation.on_grid(axes, residual, weight, order=order)
    assert not term.uses_grid_sums
    model = idn.AION(2, 2, 1, key=jax.random.key(0))
    assert type(make_problem(model, (term,), None)) is CollocationProblem


@eqx.filter_jit
def sums(model, terms, on_points, delta, v, everything):
    """The sums of the interface at ``delta`` (and along ``v``), the terms on their grids or
    (``on_points``) on their points; compiled, problem construction included (op by op, the
    Hessian blocks alone took a minute). ``everything``: also the geodesic term and the
    Hessian blocks (the generic paths, automatic differentiation of the grid tensor: checked
    on one problem, they take most of the compile time)."""
    if on_points:
        problem = CollocationProblem(model, tuple(as_points(t) if t.uses_grid_sums else t
                                                  for t in terms))
    else:
        problem = make_problem(model, terms, None)
        assert type(problem) is GridCollocationProblem
    eq = problem.normal_equations(delta, rank_grams=True, jac=True)
    out = (eq.loss, eq.g, eq.diag, eq.gram, eq.rank_grams, eq.jac, problem.residuals(delta),
           problem.residual_and_jacobian(delta)[1], problem.gram_matvec(delta, v))
    if everything:
        out += (problem.geodesic_rhs(delta, v), problem.rank_blocks(delta),
                problem.rank_blocks(delta, residual_only=True))
    return out


def compare(model, terms, key, everything=False):
    """Every sum of the interface, both ways, at a random point and direction."""
    k1, k2 = jax.random.split(key)
    shape = (model.rank, 4, model.alpha.shape[1], model.alpha.shape[2])
    delta = 0.05 * jax.random.normal(k1, shape)
    v = jax.random.normal(k2, shape)
    ours = sums(model, terms, False, delta, v, everything)
    reference = sums(model, terms, True, delta, v, everything)
    for n, (x, y) in enumerate(zip(ours, reference)):
        assert x.shape == y.shape, n
        assert relative(x, y) < 1e-12, (n, relative(x, y))


@pytest.mark.parametrize("shared_dims", [False, True])
def test_grid_sums_equal_the_points_sums_2d(shared_dims):
    axes = (jnp.linspace(0.0, 1.0, 11), jnp.linspace(0.0, 1.5, 8))
    interior = idn.Collocation.on_grid(axes, poisson, weight=3.0, order=2)
    edge = idn.Collocation.on_grid((axes[0], jnp.zeros(1)), dirichlet, order=0)
    # a point term between them (not on a grid): the order of the residuals is the terms'
    wall = idn.Collocation(jnp.stack([jnp.ones(5), jnp.linspace(0, 1.5, 5)], 1), dirichlet,
                           weight=jnp.linspace(1.0, 2.0, 5))
    model = shifted_aion(jax.random.key(1), 3, 2, 2, shared_dims)
    compare(model, (interior, wall, edge), jax.random.key(2), everything=not shared_dims)


def test_grid_sums_equal_the_points_sums_3d_with_every_order():
    axes = (jnp.linspace(0, 1, 5), jnp.linspace(-1, 1, 4), jnp.linspace(0, 2, 6))
    term = idn.Collocation.on_grid(axes, operator_3d, order=2)
    model = shifted_aion(jax.random.key(3), 2, 3, 2)
    compare(model, (term,), jax.random.key(4))


def test_poisson_on_grids_is_solved_to_rounding():
    """Grid terms only (interior and edges): to rounding (the sums are those of the points,
    checked above)."""
    axis = jnp.linspace(0.0, 1.0, 24)
    inner = axis[1:-1]
    terms = [idn.Collocation.on_grid((inner, inner), poisson, order=2)] + [
        idn.Collocation.on_grid(face, dirichlet, order=0)
        for face in [(jnp.zeros(1), axis), (jnp.ones(1), axis), (inner, jnp.zeros(1)),
                     (inner, jnp.ones(1))]]
    assert [t.uses_grid_sums for t in terms] == [True, False, False, False, False]
    test = jax.random.uniform(jax.random.key(9), (500, 2))
    truth = jax.vmap(exact)(test)
    model = idn.AION(2, 2, 1, key=jax.random.key(0))
    fit, info = idn.solve(model, terms)
    assert relative(jax.vmap(fit)(test), truth) < 1e-10
    assert info.result == idn.RESULTS.successful


def test_grid_terms_under_jit_and_on_other_models():
    axis = jnp.linspace(0.0, 1.0, 6)
    terms = [idn.Collocation.on_grid((axis, axis), poisson, order=2),
             idn.Collocation(jnp.stack([axis, 0 * axis], 1), dirichlet)]
    model = idn.AION(2, 2, 1, key=jax.random.key(0))
    plain, _ = idn.solve(model, terms, max_steps=5, throw=False)
    jitted, _ = jax.jit(lambda m, t: idn.solve(m, t, max_steps=5, throw=False))(model, terms)
    assert relative(jitted.A, plain.A) < 1e-10
    # any other model fits the grid's points through automatic differentiation
    net = idn.ShallowNetwork(4, 2, key=jax.random.key(1))
    assert type(make_problem(net, tuple(terms), None)) is CollocationProblem
    fit, info = idn.solve(net, terms, max_steps=3, throw=False)
    assert np.isfinite(float(info.loss))


def test_a_grid_term_that_breaks_its_order_raises():
    axis = jnp.linspace(0.0, 1.0, 6)
    # a Laplacian declared first order: on first-order Taylor polynomials it sees no u at
    # all, so it is not taken as an operator, and the start-of-solve check refuses it
    term = idn.Collocation.on_grid((axis, axis), poisson, order=1)
    with pytest.raises(Exception, match="declared local"):
        idn.solve(idn.AION(2, 2, 1, key=jax.random.key(0)), [term])


def test_bad_axes_are_refused():
    with pytest.raises(TypeError, match="sequence"):
        idn.Collocation.on_grid(jnp.linspace(0, 1, 4), poisson, order=2)
    with pytest.raises(ValueError, match="axis 1"):
        idn.Collocation.on_grid((jnp.linspace(0, 1, 4), jnp.zeros((2, 2))), poisson, order=2)
    with pytest.raises(ValueError, match="axis 0"):
        idn.Collocation.on_grid((jnp.zeros(0), jnp.zeros(3)), poisson, order=2)
    with pytest.raises(TypeError, match="real"):
        idn.Collocation.on_grid((jnp.zeros(3, jnp.complex64), jnp.zeros(3)), poisson, order=2)
    with pytest.raises(ValueError, match="NaN"):
        idn.Collocation.on_grid((jnp.array([0.0, jnp.nan]), jnp.zeros(3)), poisson, order=2)
