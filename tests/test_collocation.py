"""Physics-informed residuals (`Collocation`): AION's closed-form derivatives, the residual
problem, and solves of small boundary-value problems to rounding."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import infinite_descent as idn
from infinite_descent._checks import check_collocation
from infinite_descent._models._aion import derivative
from infinite_descent._problems._collocation import CollocationProblem, pointwise

PI = jnp.pi


def relative(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def shifted_aion(key, rank=3, dim=3, terms=2, shared_dims=False):
    """A default AION with every parameter moved by an O(1) random amount."""
    model = idn.AION(rank, dim, terms, key=key, shared_dims=shared_dims)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    moved = [a + jax.random.uniform(k, a.shape, a.dtype, -1.0, 1.0)
             for a, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(treedef, moved), static)


# -- the closed form ---------------------------------------------------------------------------


@pytest.mark.parametrize("shared_dims", [False, True])
def test_closed_form_derivatives_match_autodiff_of_the_model(shared_dims):
    model = shifted_aion(jax.random.key(3), shared_dims=shared_dims)
    params = (model.A, model.alpha, model.omega, model.phi)

    @jax.jit
    def closed_form_and_autodiff(model, x):
        u = pointwise(model)
        ours = (u(x), jax.grad(u)(x), jax.hessian(u)(x), jnp.trace(jax.hessian(u)(x)),
                jax.jacfwd(jax.hessian(u))(x), jax.jacrev(jax.jacrev(u))(x),
                derivative((1, 1, 1), params, x))
        plain = (model(x), jax.grad(model)(x), jax.hessian(model)(x),
                 jnp.trace(jax.hessian(model)(x)), jax.jacfwd(jax.hessian(model))(x),
                 jax.hessian(model)(x), jax.jacfwd(jax.hessian(model))(x)[0, 1, 2])
        return ours, plain

    for x in jax.random.uniform(jax.random.key(4), (3, 3), jnp.float64, -1.0, 1.0):
        ours, plain = closed_form_and_autodiff(model, x)
        # value, gradient, Hessian, Laplacian, third derivatives (forward over the Hessian),
        # reverse over reverse, and one mixed third derivative on its own
        for a, b in zip(ours, plain):
            assert relative(a, b) < 1e-12


def test_derivatives_in_x_compute_no_new_exponential():
    model = shifted_aion(jax.random.key(5))
    u = pointwise(model)
    x = jnp.array([0.2, -0.4, 0.9])

    def exponentials(fn):
        return jax.jit(fn).lower(x).compile().as_text().count("exponential(")

    count = exponentials(u)
    assert count >= 1
    assert exponentials(jax.hessian(u)) == count
    assert exponentials(jax.jacfwd(jax.hessian(u))) == count


def test_closed_form_under_jit_vmap_and_float32():
    model = shifted_aion(jax.random.key(6), rank=2, dim=2, terms=2)
    xs = jax.random.uniform(jax.random.key(7), (5, 2))
    exact = jax.vmap(jax.hessian(model))(xs)
    hessians = jax.jit(jax.vmap(jax.hessian(pointwise(model))))(xs)
    assert relative(hessians, exact) < 1e-12
    single = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a,
                          model)
    single = idn.AION(2, 2, 2, dtype=jnp.float32, A=single.A, alpha=single.alpha,
                      omega=single.omega, phi=single.phi)
    low = jax.jit(jax.vmap(jax.hessian(pointwise(single))))(xs.astype(jnp.float32))
    assert low.dtype == jnp.float32
    assert relative(low.astype(jnp.float64), exact) < 1e-4


def laplacian_residual(u, x):
    return -jnp.trace(jax.hessian(u)(x)) - jnp.sin(x[0]) * x[1]


def test_parameter_jacobian_of_a_laplacian_residual_matches_autodiff():
    model = shifted_aion(jax.random.key(8), rank=2, dim=2, terms=2)
    points = jax.random.uniform(jax.random.key(9), (20, 2))
    terms = check_collocation(model, (idn.Collocation(points, laplacian_residual, 2.0),),
                              "test")
    problem = CollocationProblem(model, terms)
    delta = 0.3 * jax.random.normal(jax.random.key(10), problem.theta.shape)
    r, jac = jax.jit(CollocationProblem.residual_and_jacobian)(problem, delta)

    def plain(theta):
        shifted = problem.to_model(theta, model)
        values = jax.vmap(lambda x: laplacian_residual(shifted, x))(points)
        return jnp.sqrt(2.0) * values

    theta = problem.theta + delta
    assert relative(r, jax.jit(plain)(theta)) < 1e-12
    expected = jax.jit(jax.jacfwd(plain))(theta).reshape(points.shape[0], -1)
    assert relative(jac, expected) < 1e-12


# -- solves ------------------------------------------------------------------------------------

# u = sin(pi x) sin(pi y) + e^x cos(y) on [0, 1]^2: a sum of two separable products.


def exact(x):
    return jnp.sin(PI * x[0]) * jnp.sin(PI * x[1]) + jnp.exp(x[0]) * jnp.cos(x[1])


def source(x):
    return 2 * PI**2 * jnp.sin(PI * x[0]) * jnp.sin(PI * x[1])  # -Lap of exact


def poisson(u, x):
    return -jnp.trace(jax.hessian(u)(x)) - source(x)


def dirichlet(u, x):
    return u(x) - exact(x)


def nonlinear(u, x):
    return -jnp.trace(jax.hessian(u)(x)) + jnp.sinh(u(x)) - source(x) - jnp.sinh(exact(x))


def neumann_right(u, x):  # outward normal (1, 0) on the edge x = 1
    return jax.grad(u)(x)[0] - jax.grad(exact)(x)[0]


def square_points(n=8):
    g = (jnp.arange(n, dtype=jnp.float64) + 0.5) / n
    X, Y = jnp.meshgrid(g, g, indexing="ij")
    interior = jnp.stack([X.ravel(), Y.ravel()], axis=1)
    s = jnp.linspace(0.0, 1.0, n + 1)[:-1]
    zero, one = jnp.zeros_like(s), jnp.ones_like(s)
    edges = {"bottom": (s, zero), "right": (one, s + 0.5 / n), "top": (1 - s, one),
             "left": (zero, 1 - s)}
    return interior, {k: jnp.stack(v, axis=1) for k, v in edges.items()}


def relative_l2_error(model):
    test = jax.random.uniform(jax.random.key(99), (400, 2))
    truth = jax.vmap(exact)(test)
    return float(jnp.linalg.norm(jax.vmap(model)(test) - truth) / jnp.linalg.norm(truth))


def dirichlet_terms():
    interior, edges = square_points()
    boundary = jnp.concatenate(list(edges.values()))
    return [idn.Collocation(interior, poisson), idn.Collocation(boundary, dirichlet)]


def test_poisson_with_dirichlet_boundary_is_solved_to_rounding():
    start = idn.AION(2, 2, 1, key=jax.random.key(0))
    model, info = idn.solve(start, dirichlet_terms())
    assert bool(info.converged)
    assert float(info.loss) < 1e-20
    assert relative_l2_error(model) < 1e-10
    assert isinstance(model, idn.AION) and model.rank == 2


def test_nonlinear_equation_is_solved_to_rounding():
    interior, edges = square_points()
    boundary = jnp.concatenate(list(edges.values()))
    terms = [idn.Collocation(interior, nonlinear), idn.Collocation(boundary, dirichlet)]
    model, info = idn.solve(idn.AION(2, 2, 1, key=jax.random.key(1)), terms)
    assert relative_l2_error(model) < 1e-10


def test_neumann_boundary_and_per_point_weights():
    interior, edges = square_points()
    dirichlet_part = jnp.concatenate([edges["bottom"], edges["top"], edges["left"]])
    weights = jnp.full(dirichlet_part.shape[0], 4.0)
    terms = [idn.Collocation(interior, poisson),
             idn.Collocation(dirichlet_part, dirichlet, weights),
             idn.Collocation(edges["right"], neumann_right, weight=0.5)]
    model, info = idn.solve(idn.AION(2, 2, 1, key=jax.random.key(0)), terms)
    assert relative_l2_error(model) < 1e-10


def test_trainable_and_fix_gauge_apply_to_collocation():
    start = idn.AION(2, 2, 1, key=jax.random.key(0))
    frozen = eqx.tree_at(lambda m: m.omega, jax.tree.map(lambda _: True, start),
                         jnp.zeros(start.omega.shape, bool))
    model, info = idn.solve(start, dirichlet_terms(), trainable=frozen, throw=False)
    assert bool(jnp.all(model.omega == start.omega))
    assert float(info.loss) < 0.5 * float(info.initial_loss)
    model, info = idn.solve(start, dirichlet_terms(), fix_gauge=True)
    assert relative_l2_error(model) < 1e-10


def test_solve_once_and_expand_take_collocation_terms():
    terms = dirichlet_terms()
    start = idn.AION(2, 2, 1, key=jax.random.key(0))
    opt = idn.solve_once()
    updates, state = opt.update(None, opt.init(start), start, x=terms)
    model = eqx.apply_updates(start, updates)
    assert float(state.loss_after) < 1e-20
    assert relative_l2_error(model) < 1e-10

    grown, history = idn.expand(idn.AION(1, 2, 1, key=jax.random.key(0)), terms, max_terms=3,
                                target_loss=1e-20, key=jax.random.key(1))
    assert [h.terms for h in history][0] == 1
    assert history[-1].loss <= 1e-20
    assert grown.rank == 2  # the exact solution's rank
    assert relative_l2_error(grown) < 1e-10


def ode(u, x):
    return -jax.hessian(u)(x)[0, 0] - PI**2 * jnp.sin(PI * x[0])


def ends(u, x):
    return u(x)


def test_other_models_through_autodiff():
    t = jnp.linspace(0.0, 1.0, 24)[:, None]
    terms = [idn.Collocation(t, ode), idn.Collocation(jnp.array([[0.0], [1.0]]), ends, 10.0)]
    start = idn.ShallowNetwork(6, 1, key=jax.random.key(2))
    model, info = idn.solve(start, terms, throw=False, max_steps=400)
    assert float(info.loss) < 1e-6 * float(info.initial_loss)
    grid = jnp.linspace(0.0, 1.0, 50)[:, None]
    error = jnp.max(jnp.abs(jax.vmap(model)(grid) - jnp.sin(PI * grid[:, 0])))
    assert float(error) < 1e-3
    # the same residuals as automatic differentiation of the model itself
    problem = CollocationProblem(start, check_collocation(start, tuple(terms), "test"))
    r = problem.residuals(jnp.zeros(problem.num_params))
    assert relative(r[:24], jax.vmap(lambda x: ode(start, x))(t)) < 1e-14


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_refused_with_clear_errors():
    model = idn.AION(1, 2, 1, key=jax.random.key(0))
    points = jnp.zeros((3, 2))
    term = idn.Collocation(points, dirichlet)
    with pytest.raises(TypeError, match="no `y`"):
        idn.solve(model, [term], jnp.zeros(3))
    with pytest.raises(TypeError, match="weights"):
        idn.solve(model, [term], weights=jnp.ones(3))
    with pytest.raises(TypeError, match="Collocation` terms only"):
        idn.solve(model, [term, points])
    with pytest.raises(ValueError, match="dim=2"):
        idn.solve(model, idn.Collocation(jnp.zeros((3, 1)), dirichlet))
    with pytest.raises(ValueError, match="must return a scalar"):
        idn.solve(model, idn.Collocation(points, lambda u, x: jax.grad(u)(x)))
    with pytest.raises(ValueError, match="`points` must have shape"):
        idn.Collocation(jnp.zeros(3), dirichlet)
    with pytest.raises(ValueError, match="NaN"):
        idn.Collocation(jnp.array([[0.0, np.nan]]), dirichlet)
    with pytest.raises(TypeError, match="`points` must be real"):
        idn.Collocation(jnp.zeros((2, 2), jnp.complex128), dirichlet)
    with pytest.raises(ValueError, match="`weight` must be finite and >= 0"):
        idn.Collocation(points, dirichlet, weight=-1.0)
    with pytest.raises(ValueError, match="one per point"):
        idn.Collocation(points, dirichlet, weight=jnp.ones(4))
    with pytest.raises(TypeError, match="`residual` must be a function"):
        idn.Collocation(points, "u(x)")
    with pytest.raises(ValueError, match="chunk_size"):
        idn.solve(model, term, chunk_size=2)
    with pytest.raises(TypeError, match="no `y`"):
        idn.expand(model, term, jnp.zeros(3), max_terms=2, key=jax.random.key(0))


def test_a_sum_of_models_on_collocation_terms():
    """A `ModelSum` (an AION decay plus a Gaussian bump) on an ODE and its two boundary
    values: the AION part by its closed form, the Gaussian by autodiff, fitted together."""
    def exact(p):
        return jnp.exp(-p[0]) + 0.5 * jnp.exp(-4.0 * (p[0] - 0.5) ** 2)

    def ode(u, p):
        return jax.hessian(u)(p)[0, 0] - jax.hessian(exact)(p)[0, 0]

    inside = jnp.linspace(0.0, 1.0, 40)[:, None]
    ends = jnp.array([[0.0], [1.0]])
    terms = [idn.Collocation(inside, ode),
             idn.Collocation(ends, lambda u, p: u(p) - exact(p), weight=10.0)]
    start = (idn.AION(1, 1, 1, A=1.2, alpha=-0.8, omega=0.0, phi=0.0)
             + idn.GaussianAtoms(1, 1, 1, A=0.4, a=3.0, m=0.45))
    fit, info = idn.solve(start, terms, max_steps=200)
    assert isinstance(fit, idn.ModelSum)
    test = jnp.linspace(0.0, 1.0, 101)[:, None]
    truth = jax.vmap(exact)(test)
    error = jnp.linalg.norm(jax.vmap(fit)(test) - truth) / jnp.linalg.norm(truth)
    assert float(error) < 1e-9, (float(error), int(info.inner_steps))


@pytest.mark.parametrize("shared_dims", [False, True])
def test_local_order_matches_autodiff(shared_dims):
    """``Collocation(..., order=k)``: residuals, Jacobian and ``J^T r_vv`` by the chain rule
    through the Taylor coefficients equal those of automatic differentiation (float64)."""
    from infinite_descent._problems._collocation import CollocationProblem

    def pde(u, p):
        g, H = jax.grad(u)(p), jax.hessian(u)(p)
        return g[1] + u(p) * g[0] - 0.1 * H[0, 0] + jnp.sin(u(p)) * H[0, 1]

    def wall(u, x):
        return u(x) - 1.0

    pts = jax.random.uniform(jax.random.key(3), (7, 2), dtype=jnp.float64)
    model = idn.AION(3, 2, 2, key=jax.random.key(1), shared_dims=shared_dims,
                     dtype=jnp.float64)
    plain = CollocationProblem(model, (idn.Collocation(pts, pde),
                                       idn.Collocation(pts[:3], wall, 2.0)))
    local = CollocationProblem(model, (idn.Collocation(pts, pde, order=2),
                                       idn.Collocation(pts[:3], wall, 2.0, order=0)))
    assert local.num_params > 8  # past the forward-mode path
    d = 0.01 * jax.random.normal(jax.random.key(2), plain.theta.shape, jnp.float64)
    v = jax.random.normal(jax.random.key(5), (plain.num_params,), jnp.float64)
    ra, Ja = plain.residual_and_jacobian(d)
    rb, Jb = local.residual_and_jacobian(d)
    np.testing.assert_allclose(rb, ra, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Jb, Ja, rtol=1e-11, atol=1e-12 * float(jnp.max(jnp.abs(Ja))))
    np.testing.assert_allclose(local.residuals(d), plain.residuals(d), rtol=1e-12, atol=1e-12)
    ga, gb = plain.geodesic_rhs(d, v), local.geodesic_rhs(d, v)
    np.testing.assert_allclose(gb, ga, rtol=1e-10, atol=1e-12 * float(jnp.max(jnp.abs(ga))))
    # Against forward-over-forward autodiff of the plain residual vector: r_vv, and J^T r_vv
    # from the Jacobian the loop holds (`geodesic_rhs(..., jac=J)`), local or not.
    flat = d.reshape(-1)

    def along(t):
        return jax.jvp(plain.residuals, (flat + t * v,), (v,))[1]

    r_vv = jax.jvp(along, (0.0,), (1.0,))[1]
    reference = Ja.T @ r_vv
    scale = float(jnp.max(jnp.abs(reference)))
    for problem, J in ((local, Jb), (plain, Ja)):
        np.testing.assert_allclose(problem.residual_curvature(d, v), r_vv, rtol=1e-10,
                                   atol=1e-12 * float(jnp.max(jnp.abs(r_vv))))
        np.testing.assert_allclose(problem.geodesic_rhs(d, v, jac=J), reference, rtol=1e-10,
                                   atol=1e-12 * scale)
    np.testing.assert_allclose(ga, reference, rtol=1e-10, atol=1e-12 * scale)
    # The pass the loop keeps (`normal_equations(..., jac=True)`): J, and the exponentials of
    # the local terms (`kept`), which the geodesic term at the same point reuses; a mix of a
    # local and a plain term too.
    mixed = CollocationProblem(model, (idn.Collocation(pts, pde, order=2),
                                       idn.Collocation(pts[:3], wall, 2.0)))
    for problem in (local, plain, mixed):
        eq = problem.normal_equations(d, jac=True)
        np.testing.assert_allclose(eq.jac, Ja, rtol=1e-11,
                                   atol=1e-12 * float(jnp.max(jnp.abs(Ja))))
        assert len(eq.kept) == 2
        assert (eq.kept[0] is None) == (problem is plain)
        assert eq.kept[1] is None if problem is not local else eq.kept[1] is not None
        np.testing.assert_allclose(problem.residual_curvature(d, v, eq.kept), r_vv,
                                   rtol=1e-10, atol=1e-12 * float(jnp.max(jnp.abs(r_vv))))
        np.testing.assert_allclose(problem.geodesic_rhs(d, v, jac=eq.jac, kept=eq.kept),
                                   reference, rtol=1e-10, atol=1e-12 * scale)
        assert problem.normal_equations(d).kept is None


def test_order_validated():
    with pytest.raises(ValueError, match="order"):
        idn.Collocation(jnp.zeros((2, 1)), lambda u, x: u(x), order=-1)


def test_local_terms_solve_with_the_kept_jacobian():
    """Declared local, the Poisson problem solves to rounding as without, the geodesic term
    from the Jacobian the loop keeps (``geodesic="on"``, so it is used every iteration)."""
    from infinite_descent._problems._collocation import CollocationProblem as Problem

    interior, edges = square_points()
    boundary = jnp.concatenate(list(edges.values()))
    terms = [idn.Collocation(interior, poisson, order=2),
             idn.Collocation(boundary, dirichlet, order=0)]
    assert Problem.keeps_jacobian
    model, info = idn.solve(idn.AION(2, 2, 1, key=jax.random.key(0)), terms,
                            solver=idn.SNR(geodesic=True), throw=False)
    assert relative_l2_error(model) < 1e-10, (relative_l2_error(model), int(info.inner_steps))
    # Solved again from its fit (as a later segment of `multistart` or a second `solve_once`
    # update does): the start-of-solve check sees residuals at rounding, which differ both
    # ways by rounding only, and must not take that for a broken promise (it had raised).
    again, _ = idn.solve(model, terms, solver=idn.SNR(geodesic=True), throw=False)
    assert relative_l2_error(again) < 1e-10


def third_derivative(u, x):  # uses u_xxx: order 3, not 2
    return jax.grad(lambda p: jax.hessian(u)(p)[0, 0])(x)[0] - source(x)


def elsewhere(u, x):  # u at another point: not local at all
    return jax.hessian(u)(x)[0, 0] + u(x + 0.1) - source(x)


def hidden_in_the_derivative(u, x):
    """Its value is Dirichlet's (order 0), but it varies with u_yyy: only the derivative
    along the parameters tells."""
    u_yyy = jax.grad(lambda p: jax.hessian(u)(p)[1, 1])(x)[1]
    return u(x) - exact(x) + (u_yyy - jax.lax.stop_gradient(u_yyy))


@pytest.mark.parametrize("residual, order", [(third_derivative, 2), (poisson, 1),
                                             (elsewhere, 2), (dirichlet, None),
                                             (hidden_in_the_derivative, 2)])
def test_a_broken_locality_promise_raises(residual, order):
    """A residual that uses more than ``order`` derivatives of ``u`` at the point, or ``u``
    elsewhere, is caught at the start of the solve (its residuals or their derivative along
    a direction of the parameters differ from autodiff), also under ``jit``; a promise kept
    (``order=None`` here, the wall declared ``order=0``) solves."""
    interior, edges = square_points()
    boundary = jnp.concatenate(list(edges.values()))
    terms = [idn.Collocation(interior, residual, order=order),
             idn.Collocation(boundary, dirichlet, order=0)]
    start = idn.AION(2, 2, 1, key=jax.random.key(0))
    if order is None:
        idn.solve(start, terms, max_steps=2, throw=False)
        return
    with pytest.raises(Exception, match="declared local"):
        jax.block_until_ready(idn.solve(start, terms, max_steps=2, throw=False))
    with pytest.raises(Exception, match="declared local"):
        jax.block_until_ready(jax.jit(
            lambda s: idn.solve(s, terms, max_steps=2, throw=False)[0].A)(start))


@pytest.mark.parametrize("dim, order, shared_dims", [(1, 3, False), (3, 2, False),
                                                     (3, 1, True)])
def test_taylor_closed_forms_match_autodiff(dim, order, shared_dims):
    """The closed forms behind local terms, in any dimension: the Jacobian contracted with a
    cotangent (`taylor_jacobian`) against a VJP of the Taylor coefficients, and their first
    and second derivatives along a direction (`taylor_series`) against a JVP of a JVP
    (float64)."""
    from infinite_descent._problems._collocation import (
        multi_indices, taylor_coefficients, taylor_jacobian, taylor_series, unstack_layout)

    model = shifted_aion(jax.random.key(7), rank=2, dim=dim, terms=2, shared_dims=shared_dims)
    problem = CollocationProblem(model, (idn.Collocation(jnp.zeros((1, dim)),
                                                         lambda u, x: u(x)),))
    flat = problem.theta.reshape(-1)
    indices = multi_indices(dim, order)
    points = jax.random.uniform(jax.random.key(8), (5, dim), jnp.float64, -1.0, 1.0)

    def params(f):
        m = unstack_layout(f.reshape(problem.theta.shape), model, model)
        return m.A, m.alpha, m.omega, m.phi

    def coefficients(f):
        return taylor_coefficients(indices, params(f), points)

    cotangent = jax.random.normal(jax.random.key(9), (5, len(indices)), jnp.float64)
    rows = taylor_jacobian(indices, params(flat), points, cotangent)
    full = jax.jacrev(coefficients)(flat)  # (n, K, M)
    np.testing.assert_allclose(rows, jnp.einsum("nk,nkm->nm", cotangent, full), rtol=1e-11,
                               atol=1e-12 * float(jnp.max(jnp.abs(rows))))
    v = jax.random.normal(jax.random.key(10), flat.shape, jnp.float64)
    (c, c_v), (_, c_vv) = jax.jvp(lambda f: jax.jvp(coefficients, (f,), (v,)), (flat,), (v,))
    for got, want in zip(taylor_series(indices, params(flat), params(v), points),
                         (c, c_v, c_vv)):
        np.testing.assert_allclose(got, want, rtol=1e-11,
                                   atol=1e-12 * float(jnp.max(jnp.abs(want))))
