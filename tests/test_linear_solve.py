"""The step's strategies agree where they are exact; chunks and shards change nothing."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import infinite_descent as idn
from infinite_descent._solver._linear import (
    DampedSystem,
    default_chunk_size,
    linear_solver_from,
    resolve_linear_solver,
)
from infinite_descent._problems._aion import AIONResummation

CASES = [(2, 3, 2, 40), (3, 2, 2, 200), (1, 2, 2, 30)]  # N < M, N > M, one rank


def _point(case, near_fit):
    rank, dim, terms, n = case
    k1, k2, k3 = jax.random.split(jax.random.key(sum(case)), 3)
    model = idn.AION(rank, dim, terms, key=k1)
    x = jax.random.uniform(k2, (n, dim), minval=-1.0, maxval=1.0)
    # Near a fit the residual-weighted blocks are small and every system is definite.
    y = jax.vmap(model)(x) + (1e-3 if near_fit else 1.0) * jnp.sin(3 * x[:, 0])
    problem = AIONResummation(model, x, y)
    chunked = AIONResummation(model, x, y, chunk_size=7)
    delta = 0.02 * jax.random.normal(k3, problem.theta.shape)
    return problem, chunked, delta


def _step(strategy, problem, delta, blocks, mu):
    solver = linear_solver_from(strategy)
    eq = problem.normal_equations(delta, **solver.sums())
    mask = jnp.ones(problem.num_params)
    system = DampedSystem(eq, eq.diag, jnp.asarray(mu), mask, blocks, problem, delta)
    step, passes = solver.solve(solver.init(system), system, -eq.g)
    return step, int(passes)


def _relative(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("hessian", ["gauss_newton", "exact"])
def test_one_step_is_the_same_for_every_exact_strategy(case, hessian):
    problem, chunked, delta = _point(case, near_fit=hessian == "exact")
    blocks = 0.5 * problem.rank_blocks(delta, residual_only=True) if hessian == "exact" else None
    # Damping large enough that the system with the residual blocks is definite (CG needs it).
    mu = 1.0 if hessian == "exact" else 1e-2
    reference, _ = _step("dense", problem, delta, blocks, mu)
    assert bool(jnp.all(jnp.isfinite(reference)))
    for strategy, prob in (("woodbury", problem), ("cg", problem), ("cg", chunked),
                           ("dense", chunked)):
        step, passes = _step(strategy, prob, delta, blocks, mu)
        assert _relative(step, reference) < 1e-10, (strategy, prob.chunked)
        if strategy == "cg":
            assert passes > 0  # each CG iteration is a pass over the data, and is counted
    block, _ = _step("block", problem, delta, blocks, mu)
    if case[0] == 1:
        assert _relative(block, reference) < 1e-12  # one rank: nothing to decouple
    else:
        assert _relative(block, reference) > 1e-3  # the coupling matters


def test_chunked_sums_equal_unchunked_sums():
    problem, chunked, delta = _point((3, 2, 2, 200), near_fit=False)
    a = problem.normal_equations(delta, rank_grams=True)
    b = chunked.normal_equations(delta, rank_grams=True)
    for u, v in ((a.loss, b.loss), (a.g, b.g), (a.gram, b.gram), (a.rank_grams, b.rank_grams),
                 (a.diag, b.diag)):
        assert _relative(v, u) < 1e-12
    v = jax.random.normal(jax.random.key(1), (problem.num_params,))
    assert _relative(chunked.gram_matvec(delta, v), a.gram @ v) < 1e-12
    assert _relative(chunked.geodesic_rhs(delta, v), problem.geodesic_rhs(delta, v)) < 1e-10
    assert _relative(chunked.rank_blocks(delta), problem.rank_blocks(delta)) < 1e-12


@pytest.mark.parametrize("linear_solver", ["dense", "cg"])
def test_chunked_solve_equals_unchunked(linear_solver):
    k1, k2 = jax.random.split(jax.random.key(7))
    target = idn.AION(2, 3, 2, key=k1)
    x = jax.random.uniform(k2, (1500, 3), minval=-1.0, maxval=1.0)
    y = jax.vmap(target)(x)
    start = jax.tree.map(lambda a: a * 1.05, target)
    plain, info = idn.solve(start, x, y, linear_solver=linear_solver, chunk_size=None)
    chunked, info_c = idn.solve(start, x, y, linear_solver=linear_solver, chunk_size=512)
    assert bool(info.result == info_c.result)
    assert float(info.loss) < 1e-20 and float(info_c.loss) < 1e-20
    f, f_c = jax.vmap(plain)(x), jax.vmap(chunked)(x)
    assert _relative(f_c, f) < 1e-8


def test_every_strategy_solves_the_toy():
    x, y = idn.problems.paper_toy()
    start = idn.problems.random_toy_start(jax.random.key(2), shared_dims=False)
    for linear_solver in ("dense", "woodbury", "cg"):
        model, info = idn.solve(start, x, y, linear_solver=linear_solver)
        assert info.linear_solver == linear_solver
        assert float(info.loss) < 1e-20
    model, info = idn.solve(start, x, y, linear_solver="cg", chunk_size=100)
    assert float(info.loss) < 1e-20
    assert int(info.data_passes) > 2 * int(info.inner_steps)  # CG's products are counted


def test_auto_choices():
    assert resolve_linear_solver("auto", 10_000, 128) == idn.Cholesky()
    assert resolve_linear_solver("auto", 100, 1000) == idn.Woodbury()
    assert resolve_linear_solver("auto", 100, 1000, chunked=True) == idn.Cholesky()
    assert resolve_linear_solver("auto", 10_000, 4096) == idn.CG()
    assert resolve_linear_solver("cg", 10, 10) == idn.CG()
    assert resolve_linear_solver(idn.CG(rtol=1e-6), 10, 10) == idn.CG(rtol=1e-6)
    with pytest.raises(ValueError, match="woodbury"):
        resolve_linear_solver("woodbury", 100, 1000, chunked=True)
    assert default_chunk_size(1000, 100) is None
    k = default_chunk_size(10**12, 128)
    assert k is not None and k % 1024 == 0 and k * 128 * 8 <= 2**63
    x, y = idn.problems.paper_toy()
    _, info = idn.solve(idn.problems.paper_toy_start(), x, y)
    assert info.linear_solver == "dense"
    with pytest.raises(ValueError, match="chunk_size"):
        idn.solve(idn.problems.paper_toy_start(), x, y, chunk_size=0)


SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import infinite_descent as idn
    assert len(jax.devices()) == 4
    k1, k2 = jax.random.split(jax.random.key(0))
    target = idn.AION(2, 3, 2, key=k1)
    x = jax.random.uniform(k2, (4000, 3), minval=-1, maxval=1)
    y = jax.vmap(target)(x)
    start = jax.tree.map(lambda a: a * 1.05, target)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    ys = jax.device_put(y, NamedSharding(mesh, P("data")))
    for linear_solver in ("dense", "cg"):
        m1, i1 = idn.solve(start, x, y, linear_solver=linear_solver)
        m2, i2 = idn.solve(start, xs, ys, linear_solver=linear_solver)
        assert bool(i1.result == idn.RESULTS.successful) and bool(i2.result == idn.RESULTS.successful)
        assert float(i1.loss) < 1e-20 and float(i2.loss) < 1e-20
        f1, f2 = jax.vmap(m1)(x), jax.vmap(m2)(x)
        assert float(jnp.linalg.norm(f1 - f2) / jnp.linalg.norm(f1)) < 1e-9
    text = jax.jit(lambda m, x, y: idn.solve(m, x, y, throw=False)).lower(start, xs, ys)
    text = text.compile().as_text()
    assert "all-reduce" in text and "f64[1000,3]" in text  # per-device sums, combined by XLA
    # "auto" chunks from one device's share of the points (and one device's memory).
    from infinite_descent._options import data_shards
    assert data_shards(xs) == 4 and data_shards(x) == 1
    # Chunked, the data stay on their devices: each device sums its own points of every
    # chunk (no all-gather of x, y or J in the compiled loop), the same solve.
    chunked = jax.jit(lambda m, x, y: idn.solve(m, x, y, throw=False, chunk_size=400))
    text = chunked.lower(start, xs, ys).compile().as_text()
    assert "all-reduce" in text and "all-gather" not in text
    assert "f64[10,100,3]" in text  # a device's quarter of every chunk of x
    m3, i3 = chunked(start, xs, ys)
    assert bool(i3.result == idn.RESULTS.successful) and float(i3.loss) < 1e-20
    f3 = jax.vmap(m3)(x)
    assert float(jnp.linalg.norm(f1 - f3) / jnp.linalg.norm(f1)) < 1e-9
    print("ok")
""")


def test_data_sharded_over_four_cpu_devices_gives_the_same_solve():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
