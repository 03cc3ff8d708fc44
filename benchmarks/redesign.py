"""This checkout against a baseline commit: time per inner iteration and the cost of a direct call.

    python -m benchmarks.redesign [--baseline 5fcb300] [--rounds 5] [--quick] [--out results]

The baseline (default ``5fcb300``, the last commit before the redesign; any git ref, ``HEAD``
included) is extracted with ``git archive REF | tar -x`` into a temporary folder; the current
version is this checkout's working tree as it stands. Each (version, round) runs in a fresh
worker subprocess with ``PYTHONPATH=<tree>`` (the worker also puts the tree first on
``sys.path``, ahead of the ``-m`` folder and an editable install) and checks that
``infinite_descent.__file__`` lies under that tree. Rounds interleave the versions (baseline,
current, baseline, current, ...). Each worker, float64, ``OPENBLAS_NUM_THREADS=1``, times with
``time.perf_counter`` and ``jax.block_until_ready`` after warm-up calls:

- ``toy``: ms per inner iteration on the paper's toy (``paper_toy_start()``; the targets with
  ``N(0, 0.01^2)`` noise added, key 0, so that no solve converges before ``max_steps``): solves
  of ``K1`` and ``K2`` inner iterations (``--toy-steps``, default 5 and 25) with every tolerance
  0 and ``throw=False``, jit-compiled, called alternately; ``(median t(K2) - median t(K1)) /
  (K2 - K1)``. The worker fails if ``info.inner_steps != max_steps``.
- ``aion``: the same at ``N = 1e4``, ``M = 128``: ``AION(rank=4, dim=4, terms=2, key)`` fitted
  to another random AION of that shape on uniform points in ``[0, 1]^4``, ``chunk_size=None``,
  ``linear_solver="dense"``, ``--aion-steps`` (default 2 and 10).
- ``direct``: the wall time of ``idn.solve(start, toy_x, toy_y, throw=False)`` called as is (no
  outer ``jit``; the exact toy, default options); ``jitted``: the same call inside ``jax.jit``,
  i.e. the compiled computation and the jit dispatch alone; called alternately.
  ``overhead = median(direct) - median(jitted)``: the Python-side checks and preparation of one
  direct call (target under 0.2 ms).

Each worker reports its medians; a version's figure is the median over its rounds, the ratio is
current / baseline, and the paired ratios (round i's current over round i's baseline) show the
noise. The iteration counts and data passes of both versions are compared too (the same work),
and the load average is noted before and after (on a shared machine, others' work moves the
figures at N = 1e4 most: XLA's threads share the cores). Prints a table and writes ``OUT/redesign_<date>.json`` with every raw sample. ``--strict``
exits 1 when a check fails (a ratio above 1.10, or an overhead of 0.2 ms or more).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import REPO, machine, parser, print_table, progress, write_json

import jax  # noqa: E402  (after _common sets float64; infinite_descent only in the worker)
import numpy as np  # noqa: E402

DEFAULT_BASELINE = "5fcb300"
TOLERANCE = 1.10  # "within 10%"
OVERHEAD_LIMIT_MS = 0.2
TOY_NOISE = 1e-2
AION_N = 10_000

FULL = {"toy_repeats": 200, "aion_repeats": 7, "call_repeats": 300, "warmup": 3}
QUICK = {"toy_repeats": 20, "aion_repeats": 2, "call_repeats": 30, "warmup": 1}

METRICS = [  # (key, label, check)
    ("toy_ms_per_iteration", "toy: ms per inner iteration", "ratio"),
    ("aion_ms_per_iteration", "N = 1e4, M = 128: ms per inner iteration", "ratio"),
    ("direct_ms", "direct call idn.solve(toy), ms", None),
    ("jitted_ms", "the same inside jax.jit, ms", None),
    ("overhead_ms", "direct-call overhead, ms", "overhead"),
]


# --------------------------------------------------------------------------------- worker


def _package_root(tree: Path) -> Path:
    """The folder to put on the path: the tree itself, or its ``src/`` in a src layout."""
    for root in (tree, tree / "src"):
        if (root / "infinite_descent" / "__init__.py").is_file():
            return root
    raise FileNotFoundError(f"no infinite_descent package under {tree}")


def _alternate(fns: dict, repeats: int, warmup: int) -> dict:
    """Call each of ``fns`` in turn, ``warmup`` untimed rounds then ``repeats`` timed ones;
    the raw times in milliseconds per name."""
    for _ in range(warmup):
        for fn in fns.values():
            jax.block_until_ready(fn())
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            began = time.perf_counter()
            jax.block_until_ready(fn())
            samples[name].append(1e3 * (time.perf_counter() - began))
    return samples


def _per_iteration(idn, start, x, y, steps, repeats, warmup, **options) -> dict:
    """ms per inner iteration from jit-compiled solves of ``steps[0]`` and ``steps[1]``."""
    off = dict(ftol=0.0, xtol=0.0, loss_atol=0.0, loss_rtol=0.0, grad_atol=0.0, grad_rtol=0.0,
               throw=False)
    fns, work = {}, {}
    for k in steps:
        # The data are arguments, not constants closed over (XLA would fold them).
        run = jax.jit(lambda m, x, y, k=k: idn.solve(m, x, y, max_steps=k, **off, **options))
        _, info = jax.block_until_ready(run(start, x, y))
        if int(info.inner_steps) != k:
            raise RuntimeError(f"max_steps={k} ran {int(info.inner_steps)} inner iterations: the "
                               "solve converged early, so the timing would not be per iteration")
        work[k] = {"inner_steps": int(info.inner_steps), "data_passes": int(info.data_passes),
                   "loss": float(info.loss)}
        fns[k] = lambda run=run: run(start, x, y)
    raw = _alternate(fns, repeats, warmup)
    k1, k2 = steps
    value = (float(np.median(raw[k2])) - float(np.median(raw[k1]))) / (k2 - k1)
    return {"ms_per_iteration": value, "steps": list(steps), "work": work,
            "samples_ms": {str(k): raw[k] for k in steps}}


def worker(tree: Path, settings: dict) -> dict:
    """One version, one round, in this process (the driver runs each in a fresh subprocess)."""
    root = _package_root(tree)
    sys.path.insert(0, str(root))  # ahead of the -m folder (this checkout) and any .pth entry
    import infinite_descent as idn

    where = Path(idn.__file__).resolve()
    if not where.is_relative_to(root.resolve()):
        raise RuntimeError(f"imported {where}, not the package under {root}")

    began = time.perf_counter()
    x, y = idn.problems.paper_toy()
    start = idn.problems.paper_toy_start()
    noisy = y + TOY_NOISE * jax.random.normal(jax.random.key(0), y.shape, y.dtype)
    toy = _per_iteration(idn, start, x, noisy, settings["toy_steps"], settings["toy_repeats"],
                         settings["warmup"])

    k1, k2, k3 = jax.random.split(jax.random.key(settings["seed"]), 3)
    aion_start = idn.AION(4, 4, 2, key=k1)
    target = idn.AION(4, 4, 2, key=k2)
    ax = jax.random.uniform(k3, (AION_N, 4), x.dtype)
    ay = jax.vmap(target)(ax)
    aion = _per_iteration(idn, aion_start, ax, ay, settings["aion_steps"],
                          settings["aion_repeats"], settings["warmup"], chunk_size=None,
                          linear_solver="dense")

    jitted = jax.jit(lambda m, x, y: idn.solve(m, x, y, throw=False))
    _, direct_info = jax.block_until_ready(idn.solve(start, x, y, throw=False))
    _, jitted_info = jax.block_until_ready(jitted(start, x, y))
    calls = _alternate({"direct": lambda: idn.solve(start, x, y, throw=False),
                        "jitted": lambda: jitted(start, x, y)},
                       settings["call_repeats"], settings["warmup"])
    direct_ms, jitted_ms = (float(np.median(calls[k])) for k in ("direct", "jitted"))
    return {
        "tree": str(tree), "module_file": str(where), "version": getattr(idn, "__version__", None),
        "seconds": time.perf_counter() - began,
        "toy_ms_per_iteration": toy["ms_per_iteration"],
        "aion_ms_per_iteration": aion["ms_per_iteration"],
        "direct_ms": direct_ms, "jitted_ms": jitted_ms, "overhead_ms": direct_ms - jitted_ms,
        "toy": toy, "aion": aion,
        "calls": {"samples_ms": calls,
                  "direct": {"inner_steps": int(direct_info.inner_steps),
                             "data_passes": int(direct_info.data_passes),
                             "loss": float(direct_info.loss)},
                  "jitted": {"inner_steps": int(jitted_info.inner_steps),
                             "data_passes": int(jitted_info.data_passes),
                             "loss": float(jitted_info.loss)}},
    }


# --------------------------------------------------------------------------------- driver


def _git(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                          **kwargs)


def extract(ref: str, into: Path) -> str:
    """``git archive REF | tar -x`` into ``into``; returns the full commit hash."""
    try:
        commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}", text=True).stdout.strip()
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"cannot resolve {ref!r} in {REPO} ({err.stderr.strip()}); a shallow "
                         "clone lacks old commits: git fetch --unshallow") from None
    archive = _git("archive", "--format=tar", commit).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def _current_commit() -> dict:
    try:
        head = _git("rev-parse", "HEAD", text=True).stdout.strip()
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", text=True).stdout)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": dirty}


def _run_worker(tree: Path, settings: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(_package_root(tree)), OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "benchmarks.redesign", "--worker", str(tree),
           json.dumps(settings)]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"worker for {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(runs: dict) -> list[dict]:
    """One row per metric: the median over rounds per version, their ratio, the paired ratios."""
    rows = []
    for key, label, check in METRICS:
        base = np.array([r[key] for r in runs["baseline"]])
        cur = np.array([r[key] for r in runs["current"]])
        paired = cur / base
        row = {"metric": key, "label": label,
               "baseline_ms": float(np.median(base)), "current_ms": float(np.median(cur)),
               "baseline_rounds_ms": base.tolist(), "current_rounds_ms": cur.tolist(),
               "paired_ratio_min": float(paired.min()), "paired_ratio_max": float(paired.max())}
        row["ratio"] = row["current_ms"] / row["baseline_ms"]
        row["spread"] = f"{row['paired_ratio_min']:.2f}-{row['paired_ratio_max']:.2f}"
        if check == "ratio":
            row["check"] = f"ratio <= {TOLERANCE:.2f}"
            row["ok"] = row["ratio"] <= TOLERANCE
        elif check == "overhead":
            row["check"] = f"current < {OVERHEAD_LIMIT_MS} ms"
            row["ok"] = row["current_ms"] < OVERHEAD_LIMIT_MS
        rows.append(row)
    return rows


def same_work(runs: dict) -> dict:
    """Whether both versions ran the same iterations and data passes in every solve timed."""
    def counts(r):
        solves = {f"toy max_steps={k}": w for k, w in r["toy"]["work"].items()}
        solves.update({f"aion max_steps={k}": w for k, w in r["aion"]["work"].items()})
        solves.update({"direct": r["calls"]["direct"], "jitted": r["calls"]["jitted"]})
        return {name: [w["inner_steps"], w["data_passes"]] for name, w in solves.items()}

    base, cur = (counts(runs[v][0]) for v in ("baseline", "current"))
    return {"same": base == cur, "baseline": base, "current": cur}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help=f"git ref of the baseline (default {DEFAULT_BASELINE}; HEAD works too)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per version (default 5)")
    p.add_argument("--quick", action="store_true", help="1 round, few repeats (a smoke run)")
    p.add_argument("--toy-steps", type=int, nargs=2, default=[5, 25], metavar=("K1", "K2"))
    p.add_argument("--aion-steps", type=int, nargs=2, default=[2, 10], metavar=("K1", "K2"))
    p.add_argument("--seed", type=int, default=0, help="key of the N = 1e4 problem")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    p.add_argument("--worker", nargs=2, metavar=("TREE", "SETTINGS"), help="(internal)")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), json.loads(args.worker[1]))))
        return

    if shutil.which("git") is None:
        raise SystemExit("git is needed to extract the baseline")
    settings = {**(QUICK if args.quick else FULL), "toy_steps": args.toy_steps,
                "aion_steps": args.aion_steps, "seed": args.seed}
    rounds = 1 if args.quick else args.rounds
    runs = {"baseline": [], "current": []}
    began, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="idn-baseline-") as tmp:
        commit = extract(args.baseline, Path(tmp))
        trees = {"baseline": Path(tmp), "current": REPO}
        print(f"baseline {args.baseline} = {commit[:12]} (extracted to {tmp}); "
              f"current = {REPO}", flush=True)
        for r in progress(range(rounds), "rounds"):
            for version in ("baseline", "current"):
                print(f"round {r + 1}/{rounds}: {version} ...", flush=True)
                runs[version].append(_run_worker(trees[version], settings))
    load_after = os.getloadavg()
    rows = summarise(runs)
    work = same_work(runs)

    print(f"\nMedians over {rounds} round(s) per version; paired = round i's current / "
          "baseline (min-max):")
    print_table(rows, [("label", "metric"), ("baseline_ms", "baseline"), ("current_ms", "current"),
                       ("ratio", "current/baseline"), ("spread", "paired"), ("check", "check"),
                       ("ok", "ok")])
    print(f"same iterations and data passes in both versions: {work['same']}")
    busy = load_before[0] > 0.5 * (os.cpu_count() or 1)  # others' work, before ours began
    print(f"load average (1 min): {load_before[0]:.1f} before the run, {load_after[0]:.1f} after "
          f"(ours included), {os.cpu_count()} CPUs"
          + ("; the machine was busy: expect noisy ratios" if busy else ""))
    payload = {
        "machine": machine(),
        "baseline": {"ref": args.baseline, "commit": commit},
        "current": {"tree": str(REPO), **_current_commit()},
        "rounds": rounds, "quick": args.quick, "settings": settings,
        "toy_noise": TOY_NOISE, "aion_n": AION_N, "tolerance_ratio": TOLERANCE,
        "overhead_limit_ms": OVERHEAD_LIMIT_MS, "seconds": time.perf_counter() - began,
        "load_average": {"before": load_before, "after": load_after},
        "summary": rows, "same_work": work, "runs": runs,
    }
    path = write_json(args.out, f"redesign_{datetime.date.today().isoformat()}.json", payload)
    print(f"\nwrote {path}")
    failed = [r["metric"] for r in rows if r.get("ok") is False]
    if not work["same"]:
        failed.append("same_work")
    if args.strict and failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
