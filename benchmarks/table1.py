"""Reproduce the paper's Table 1 and Figure 1 and set them beside the peers (float64).

    python -m benchmarks.table1 [--out results] [--repeats 7] [--starts 30]

Every method starts from ``idn.problems.paper_toy_start()`` on ``idn.problems.paper_toy()``.
Prints the table (measured rows, then the paper's) and the robustness over random starts, and
writes ``OUT/table1.json`` and ``OUT/figure1.png``. The machinery lives in
``infinite_descent.bench.reproduction`` so that notebook 01 runs the same code.
"""

from __future__ import annotations

import time

from benchmarks._common import machine, parser, print_table, write_json

from infinite_descent.bench import reproduction  # noqa: E402  (after _common sets float64)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed runs from the paper's start")
    p.add_argument("--starts", type=int, default=30, help="random starts for robustness")
    args = p.parse_args()

    began = time.perf_counter()
    table = reproduction.measure(repeats=args.repeats, starts=args.starts)
    print("\nTable 1 (median wall time after compilation; Phi = sum (f - y)^2):")
    print_table(table.rows, [
        ("source", "source"), ("method", "method"), ("outer_steps", "outer steps"),
        ("inner_steps", "inner steps"), ("data_passes", "data passes"),
        ("wall_ms", "wall ms"), ("final_loss", "final Phi"),
    ])
    print(f"\nRobustness over {args.starts} random starts (success: Phi < "
          f"{reproduction.SUCCESS:g}; also Phi < {reproduction.SUCCESS_LOOSE:g}):")
    print_table(table.robustness, [
        ("method", "method"), ("starts", "starts"), ("successes", "Phi<1e-20"),
        ("successes_1e12", "Phi<1e-12"), ("median_ms", "median ms"),
        ("median_data_passes", "median passes"), ("median_final_loss", "median Phi"),
    ])
    best = min(table.adam_sweep, key=lambda r: r["final_loss"])
    print("\nAdam learning-rate sweep (paper start): " + ", ".join(
        f"{r['learning_rate']:g} -> {r['final_loss']:.2e}" for r in table.adam_sweep
    ) + f"; chosen {best['learning_rate']:g}")

    by_name = {r["method"]: r for r in table.rows if r["source"] == "measured"}
    ours = by_name["Infinite Descent"]
    ratios = {
        "newton_cg_over_id": by_name["Newton-CG"]["wall_ms"] / ours["wall_ms"],
        "id_over_optimistix_lm": ours["wall_ms"] / by_name["optimistix LevenbergMarquardt"]["wall_ms"],
    }
    print(f"\nNewton-CG / Infinite Descent wall time: {ratios['newton_cg_over_id']:.1f}x; "
          f"Infinite Descent / optimistix LM: {ratios['id_over_optimistix_lm']:.2f}")

    args.out.mkdir(parents=True, exist_ok=True)
    figure_path = args.out / "figure1.png"
    reproduction.figure1(table, figure_path)
    json_path = write_json(args.out, "table1.json", {
        "problem": "cos(pi (x - y)) on a 25 x 25 grid over [0, 1]^2; AION rank 2, P = 1, "
                   "shared dimensions (8 parameters); start: idn.problems.paper_toy_start()",
        "dtype": "float64",
        "machine": machine(),
        "repeats": args.repeats,
        "rows": table.rows,
        "robustness": table.robustness,
        "adam_sweep": table.adam_sweep,
        "ratios": ratios,
        "seconds": time.perf_counter() - began,
    })
    print(f"\nwrote {json_path} and {figure_path} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
