"""Time per inner iteration and peak memory of ``idn.solve`` as N and M grow (float64).

    python -m benchmarks.scaling [--out results] [--quick]

Each configuration runs in a fresh subprocess (so its peak resident memory, ``ru_maxrss``, is
its own): a random exactly representable AION target on uniform points in ``[-1, 1]^d``, a
start 5% off, and solves of 1 and 1 + ``--steps`` inner iterations (tolerances off), timed as
medians after warm-up; their difference divided by ``--steps`` is the time per inner
iteration (``infinite_descent.bench.timing.iteration_time``). Sweeps:

- ``N`` from 1e3 to 1e6 at ``M = 128`` (rank 4, dim 4, terms 2), dense, unchunked, and
  ``N = 4e6`` in chunks of 65536 points;
- ``M`` from 16 to 2048 at ``N = 1e4`` (dim 4, terms 2, rank 1/2 .. 64), dense.

Prints a table, the log-log slopes, and writes ``OUT/scaling.json`` and ``OUT/scaling.png``.
``--one`` runs a single configuration and prints its JSON (what the driver calls).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks._common import REPO, machine, parser, print_table, progress, write_json

N_SWEEP = [(1_000, None), (10_000, None), (100_000, None), (1_000_000, None),
           (4_000_000, 65536)]
M_SWEEP = [(1, 2, 2), (1, 4, 2), (4, 4, 2), (16, 4, 2), (32, 4, 2), (64, 4, 2)]  # r, d, P
QUICK_N = [(1_000, None), (10_000, None), (100_000, None), (200_000, 16384)]
QUICK_M = [(1, 2, 2), (4, 4, 2), (16, 4, 2)]


def one(n, rank, dim, terms, chunk, steps, repeats, linear_solver):
    """One configuration, in this process (the driver runs each in a fresh subprocess)."""
    import resource

    from infinite_descent.bench import timing

    began = time.perf_counter()
    row = timing.iteration_time(n, rank, dim, terms, steps=(1, 1 + steps),
                                linear_solver=linear_solver, chunk_size=chunk,
                                repeats=repeats, floor=False)
    row.update(chunk_size=chunk, seconds=time.perf_counter() - began,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def _run_subprocess(n, rank, dim, terms, chunk, steps, repeats, linear_solver):
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--one", str(n), str(rank), str(dim),
           str(terms), str(chunk or 0), str(steps), str(repeats), linear_solver]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _slope(xs, ys):
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small sweep (for a smoke run)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", nargs=8, help=argparse_help())
    args = p.parse_args()
    if args.one:
        n, rank, dim, terms, chunk, steps, repeats = (int(v) for v in args.one[:7])
        print(json.dumps(one(n, rank, dim, terms, chunk or None, steps, repeats, args.one[7])))
        return

    n_sweep, m_sweep = (QUICK_N, QUICK_M) if args.quick else (N_SWEEP, M_SWEEP)
    rows = []
    for n, chunk in progress(n_sweep, "sweep over N"):
        print(f"N = {n:,}{' (chunks of %d)' % chunk if chunk else ''} ...", flush=True)
        rows.append({"sweep": "N", **_run_subprocess(n, 4, 4, 2, chunk, args.steps,
                                                      args.repeats, "dense")})
    for rank, dim, terms in progress(m_sweep, "sweep over M"):
        print(f"M = {4 * rank * dim * terms} ...", flush=True)
        rows.append({"sweep": "M", **_run_subprocess(10_000, rank, dim, terms, None,
                                                      args.steps, args.repeats, "dense")})
    columns = [("sweep", "sweep"), ("N", "N"), ("M", "M"), ("chunk_size", "chunk"),
               ("linear_solver", "solver"), ("ms_per_iteration", "ms/iter"),
               ("peak_rss_mb", "peak MB"), ("seconds", "seconds")]
    print_table(rows, columns)
    n_rows = [r for r in rows if r["sweep"] == "N" and not r["chunk_size"]]
    m_rows = [r for r in rows if r["sweep"] == "M"]
    slopes = {
        "time_vs_N": _slope([r["N"] for r in n_rows], [r["ms_per_iteration"] for r in n_rows]),
        "time_vs_N_from_1e4": _slope([r["N"] for r in n_rows if r["N"] >= 10_000],
                                     [r["ms_per_iteration"] for r in n_rows if r["N"] >= 10_000]),
        "time_vs_M": _slope([r["M"] for r in m_rows], [r["ms_per_iteration"] for r in m_rows]),
        "time_vs_M_from_256": _slope([r["M"] for r in m_rows if r["M"] >= 256],
                                     [r["ms_per_iteration"] for r in m_rows if r["M"] >= 256]),
    }
    print("\nlog-log slopes:", ", ".join(f"{k} {v:.2f}" for k, v in slopes.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(rows, args.out / "scaling.png")
    path = write_json(args.out, "scaling.json", {"machine": machine(), "rows": rows,
                                                 "slopes": slopes, "steps": args.steps})
    print(f"wrote {path} and {args.out / 'scaling.png'}")


def argparse_help():
    return "N rank dim terms chunk steps repeats linear_solver (internal)"


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    n_rows = [r for r in rows if r["sweep"] == "N"]
    m_rows = [r for r in rows if r["sweep"] == "M"]
    for ax, rs, key, label in ((a, n_rows, "N", "N (M = 128)"), (b, m_rows, "M", "M (N = 1e4)")):
        xs = [r[key] for r in rs]
        ax.loglog(xs, [r["ms_per_iteration"] for r in rs], "o-", label="ms per inner iteration")
        ax.loglog(xs, [r["peak_rss_mb"] for r in rs], "s--", label="peak resident MB")
        for r in rs:
            if r["chunk_size"]:
                ax.annotate(f"chunks of {r['chunk_size']}", (r[key], r["ms_per_iteration"]),
                            fontsize=8)
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("idn.solve: time per inner iteration and peak memory (dense exact step, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
