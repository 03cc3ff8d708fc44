"""Infinite Descent against optimistix's Levenberg-Marquardt on the paper's toy, many starts.

For the 8-parameter shared model and the 16-parameter untied one: the paper's start and
``--starts`` random starts (``idn.problems.random_toy_start``, keys 0..starts-1), each solved by
one ``idn.solve_once`` update and by ``optimistix.LevenbergMarquardt`` (rtol = atol = 1e-12,
which lets it reach the rounding floor), both jit-compiled, timed as the median of
``--repeats`` runs after a warm-up run, in the same process. Success: ``Phi < 1e-20``.

    python -m benchmarks.toy_starts [--starts 30] [--repeats 5] [--out results]

Prints a table and writes ``OUT/toy_starts.json``.
"""

from __future__ import annotations

import jax
import numpy as np

from benchmarks._common import machine, parser, print_table, progress, write_json

import infinite_descent as idn  # noqa: E402  (after _common sets float64)
from infinite_descent.bench import peers  # noqa: E402

SUCCESS = 1e-20


def run(starts: int, repeats: int) -> dict:
    x, y = idn.problems.paper_toy()
    ours = peers.infinite_descent(x, y)
    lm = peers.optimistix_levenberg_marquardt(x, y)
    summary, per_start = [], []
    for shared, label in ((True, "8 parameters (shared)"), (False, "16 parameters (untied)")):
        models = [("paper start", idn.problems.paper_toy_start())] if shared else []
        models += [
            (f"random {i}", idn.problems.random_toy_start(jax.random.key(i), shared_dims=shared))
            for i in range(starts)
        ]
        records = []
        for name, model in progress(models, label):
            a = ours(model, repeats)
            b = lm(model, repeats)
            records.append((a, b))
            per_start.append({
                "model": label, "start": name,
                "id_loss": a.final_loss, "id_ms": a.wall_ms, "id_inner_steps": a.inner_steps,
                "id_data_passes": a.data_passes,
                "lm_loss": b.final_loss, "lm_ms": b.wall_ms, "lm_steps": b.outer_steps,
                "lm_data_passes": b.data_passes,
                "ratio_ms": a.wall_ms / b.wall_ms,
            })
        random_records = [r for (name, _), r in zip(models, records) if name != "paper start"]
        id_ms = np.array([a.wall_ms for a, _ in random_records])
        lm_ms = np.array([b.wall_ms for _, b in random_records])
        summary.append({
            "model": label,
            "starts": len(random_records),
            "id_successes": sum(a.final_loss < SUCCESS for a, _ in random_records),
            "lm_successes": sum(b.final_loss < SUCCESS for _, b in random_records),
            "id_median_ms": float(np.median(id_ms)),
            "lm_median_ms": float(np.median(lm_ms)),
            "median_ratio": float(np.median(id_ms / lm_ms)),
            "id_median_inner_steps": float(np.median([a.inner_steps for a, _ in random_records])),
            "id_median_data_passes": float(np.median([a.data_passes for a, _ in random_records])),
            "lm_median_steps": float(np.median([b.outer_steps for _, b in random_records])),
            "lm_median_data_passes": float(np.median([b.data_passes for _, b in random_records])),
        })
    return {"machine": machine(), "success_threshold": SUCCESS, "summary": summary,
            "per_start": per_start}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    result = run(args.starts, args.repeats)
    paper = [r for r in result["per_start"] if r["start"] == "paper start"]
    print("Paper start (8 parameters):")
    print_table(paper, [("id_loss", "ID Phi"), ("id_inner_steps", "ID inner"),
                        ("id_data_passes", "ID passes"), ("id_ms", "ID ms"),
                        ("lm_loss", "LM Phi"), ("lm_steps", "LM steps"), ("lm_ms", "LM ms"),
                        ("ratio_ms", "ID/LM")])
    print(f"\nRandom starts (success: Phi < {SUCCESS:g}; times: median after compilation):")
    print_table(result["summary"], [
        ("model", "model"), ("starts", "starts"), ("id_successes", "ID ok"),
        ("lm_successes", "LM ok"), ("id_median_ms", "ID ms"), ("lm_median_ms", "LM ms"),
        ("median_ratio", "median ID/LM"), ("id_median_inner_steps", "ID inner"),
        ("id_median_data_passes", "ID passes"), ("lm_median_steps", "LM steps"),
        ("lm_median_data_passes", "LM passes"),
    ])
    path = write_json(args.out, "toy_starts.json", result)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
