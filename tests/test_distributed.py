"""Data sharded over two processes (jax.distributed on localhost, CPU, gloo collectives) give
the same solve as one process."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent("""
    import sys
    pid, port = int(sys.argv[1]), sys.argv[2]
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=pid)
    import numpy as np
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import infinite_descent as idn
    k1, k2 = jax.random.split(jax.random.key(0))
    target = idn.AION(2, 3, 2, key=k1)
    x = jax.random.uniform(k2, (4000, 3), minval=-1, maxval=1)
    y = jax.vmap(target)(x)
    start = jax.tree.map(lambda a: a * 1.05, target)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    mine = slice(pid * 2000, (pid + 1) * 2000)  # each process holds only its half of the data
    xs = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("data", None)), np.asarray(x[mine]), (4000, 3))
    ys = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("data")), np.asarray(y[mine]), (4000,))
    assert jax.process_count() == 2 and not xs.is_fully_addressable
    model, info = jax.jit(lambda m, x, y: idn.solve(m, x, y, throw=False))(start, xs, ys)
    with jax.default_device(jax.local_devices()[0]):
        reference, ref_info = idn.solve(start, x, y, throw=False)
        f, f_ref = jax.vmap(model)(x[mine]), jax.vmap(reference)(x[mine])
    assert bool(info.result == idn.RESULTS.successful) and bool(ref_info.result == idn.RESULTS.successful)
    assert float(info.loss) < 1e-20 and float(ref_info.loss) < 1e-20
    assert float(jnp.linalg.norm(f - f_ref) / jnp.linalg.norm(f_ref)) < 1e-9
    # Chunked, each process sums its own points of every chunk: no all-gather in the loop.
    chunked = jax.jit(lambda m, x, y: idn.solve(m, x, y, throw=False, chunk_size=500))
    assert "all-gather" not in chunked.lower(start, xs, ys).compile().as_text()
    model_c, info_c = chunked(start, xs, ys)
    assert bool(info_c.result == idn.RESULTS.successful) and float(info_c.loss) < 1e-20
    with jax.default_device(jax.local_devices()[0]):
        f_c = jax.vmap(model_c)(x[mine])
    assert float(jnp.linalg.norm(f_c - f_ref) / jnp.linalg.norm(f_ref)) < 1e-9
    print("ok", pid, float(info.loss), int(info.inner_steps))
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two-process solve did not finish in 300 s")
        outs.append((p.returncode, out, err))
    for returncode, out, err in outs:
        assert returncode == 0, err[-3000:]
        assert out.strip().splitlines()[-1].startswith("ok")
    # Both processes end at the same point.
    assert outs[0][1].split()[-2:] == outs[1][1].split()[-2:]
