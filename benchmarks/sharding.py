"""Data sharded over 4 CPU devices, chunked and not, against the same data on one device.

    python -m benchmarks.sharding [--out results] [--sizes 40000 200000]

Runs on 4 host devices (``--xla_force_host_platform_device_count=4``, set here before JAX
loads). An exactly representable AION target (rank 4, 4 dimensions, 2 terms: ``M = 128``) on
``N`` points, a start 5% off. Layouts:

- ``one device``: ``x, y`` on the first device, unchunked (the reference);
- ``sharded``: ``x, y`` sharded over the 4 devices along the points, unchunked;
- ``sharded, chunked``: the same, summed ``N / 8`` points at a time (each device sums its own
  points of every chunk);
- ``one device, chunked``: for comparison, the chunks on one device.

For each: the time of one inner iteration (solves of 2 and 6 iterations, tolerances off,
medians after warm-up), its ratio to ``one device``, and what the compiled solve moves
between devices (counts of all-gather and all-reduce in its text; an all-gather would mean
the data were copied to every device). Prints a table and writes ``OUT/sharding.json``.
"""

from __future__ import annotations

import os
import re

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()

from benchmarks._common import machine, parser, print_table, progress, write_json  # noqa: E402


def measure(n: int, layout: str, repeats: int) -> dict:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import infinite_descent as idn
    from infinite_descent.bench import timing

    _, start, x, y = timing.random_problem(n, 4, 4, 2)
    devices = jax.devices()
    if layout.startswith("sharded"):
        mesh = Mesh(np.array(devices), ("data",))
        x = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", None)))
        y = jax.device_put(y, NamedSharding(mesh, PartitionSpec("data")))
    else:
        x, y = jax.device_put(x, devices[0]), jax.device_put(y, devices[0])
        start = jax.device_put(start, devices[0])
    chunk = n // 8 if layout.endswith("chunked") else None
    totals, text = [], ""
    for k in (2, 6):
        run = jax.jit(lambda m, x, y, k=k: idn.solve(
            m, x, y, throw=False, max_steps=k, xtol=0.0, ftol=0.0, chunk_size=chunk))
        if k == 6:
            text = run.lower(start, x, y).compile().as_text()
        totals.append(timing.median_ms(lambda: run(start, x, y), repeats))
    return {
        "N": n, "layout": layout, "chunk_size": chunk,
        "ms_per_iteration": (totals[1] - totals[0]) / 4,
        "all_gathers": len(re.findall(r"\ball-gather(?:-start)?\(", text)),
        "all_reduces": len(re.findall(r"\ball-reduce(?:-start)?\(", text)),
    }


def main() -> None:
    import jax

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[40_000, 200_000])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    assert len(jax.devices()) == 4, jax.devices()
    rows = []
    layouts = ("one device", "sharded", "sharded, chunked", "one device, chunked")
    for n in args.sizes:
        for layout in progress(layouts, f"N = {n:,}"):
            rows.append(measure(n, layout, args.repeats))
            print(rows[-1], flush=True)
        reference = next(r for r in rows if r["N"] == n and r["layout"] == "one device")
        for r in rows:
            if r["N"] == n:
                r["over_one_device"] = r["ms_per_iteration"] / reference["ms_per_iteration"]
    print_table(rows, [("N", "N"), ("layout", "layout"), ("chunk_size", "chunk"),
                       ("ms_per_iteration", "ms/iteration"),
                       ("over_one_device", "x one device"),
                       ("all_gathers", "all-gathers"), ("all_reduces", "all-reduces")])
    path = write_json(args.out, "sharding.json", {"machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
