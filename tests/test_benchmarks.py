"""The benchmark scripts run and write what their docs promise (tiny settings: no timing claims)."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
METHODS = {
    "Infinite Descent", "Infinite Descent (grid)", "Steepest Descent", "Newton-CG",
    "optimistix LevenbergMarquardt",
    "optax L-BFGS", "optax Adam", "scipy least_squares",
}


def run_module(name, *args):
    subprocess.run([sys.executable, "-m", name, *args], cwd=REPO, check=True,
                   capture_output=True, text=True, timeout=900)


def test_table1_script(tmp_path):
    run_module("benchmarks.table1", "--out", str(tmp_path), "--starts", "2", "--repeats", "1")
    result = json.loads((tmp_path / "table1.json").read_text())
    assert (tmp_path / "figure1.png").stat().st_size > 10_000
    measured = {r["method"]: r for r in result["rows"] if r["source"] == "measured"}
    paper = {r["method"] for r in result["rows"] if r["source"] == "paper"}
    assert set(measured) == METHODS
    assert paper == {"Steepest Descent", "Newton-CG", "Infinite Descent"}
    for row in result["rows"]:
        assert set(row) >= {"source", "method", "outer_steps", "inner_steps", "data_passes",
                            "wall_ms", "final_loss"}
    ours = measured["Infinite Descent"]
    assert ours["outer_steps"] == 1 and ours["final_loss"] < 1e-20
    # One pass for step zero (values only), one to start, one per iteration, one more per
    # geodesically accelerated iteration.
    assert ours["inner_steps"] + 2 <= ours["data_passes"] <= 2 * ours["inner_steps"] + 2
    assert {r["method"] for r in result["robustness"]} == METHODS
    for r in result["robustness"]:
        assert r["starts"] == 2 and 0 <= r["successes"] <= r["successes_1e12"] <= 2


def test_toy_starts_script(tmp_path):
    run_module("benchmarks.toy_starts", "--out", str(tmp_path), "--starts", "2", "--repeats", "1")
    result = json.loads((tmp_path / "toy_starts.json").read_text())
    assert [s["model"] for s in result["summary"]] == ["8 parameters (shared)", "16 parameters (untied)"]
    assert all(s["starts"] == 2 for s in result["summary"])
    assert len(result["per_start"]) == 1 + 2 + 2


def test_spectral_bias_script(tmp_path):
    run_module("benchmarks.spectral_bias", "--out", str(tmp_path), "--quick")
    result = json.loads((tmp_path / "spectral_bias.json").read_text())
    assert (tmp_path / "spectral_bias.png").stat().st_size > 10_000
    methods = [r["method"] for r in result["rows"]]
    assert any(m.startswith("kernel limit of Newton") for m in methods)
    assert any(m.startswith("Newton (exact)") for m in methods)
    assert any(m.startswith("gradient descent") for m in methods)
    for name, errors in result["errors"].items():
        # One error per target frequency, from the start (iteration 0, error 1) on.
        assert result["iterations"][name][0] == 0
        assert len(result["iterations"][name]) == len(errors)
        assert all(len(e) == len(result["frequencies"]) for e in errors)
        assert max(abs(v - 1.0) for v in errors[0]) < 1e-9, name


def test_variable_projection_script(tmp_path):
    run_module("benchmarks.variable_projection", "--out", str(tmp_path), "--quick",
               "--starts", "1")
    result = json.loads((tmp_path / "variable_projection.json").read_text())
    assert {r["method"] for r in result["rows"]} == {
        "idn.solve", "idn.solve, variable_projection=True", "optimistix LM",
        "optimistix LM, projected"}
    for r in result["rows"]:
        assert r["starts"] == 1 and 0 <= r["successes"] <= 1 and r["median_steps"] <= 500


def test_versus_peers_script(tmp_path):
    run_module("benchmarks.versus_peers", "--out", str(tmp_path), "--quick", "--starts", "2",
               "--only", "friedman1", "--methods", "optimistix,projection", "--projection")
    result = json.loads((tmp_path / "versus_peers.json").read_text())
    rows = {r["method"]: r for r in result["results"]}
    # Variable projection is for AION only: not run on the network problem.
    assert set(rows) == {"Infinite Descent", "optimistix LevenbergMarquardt"}
    assert rows["Infinite Descent"]["ms_ratio_to_id"] == 1.0
    for r in rows.values():
        assert r["problem"].startswith("friedman1") and r["starts"] == 2
        assert r["success_level"] > 0 and 0 <= r["successes"] <= 2
        assert r["best_relative_loss"] <= r["median_relative_loss"]
        # Every method that reached the level has a time to reach it, and only those.
        assert (r["median_ms_to_target"] is None) == (r["successes"] == 0)


def test_nist_script(tmp_path):
    run_module("benchmarks.nist", "--out", str(tmp_path), "--quick", "--max-steps", "500")
    result = json.loads((tmp_path / "nist.json").read_text())
    rows = result["rows"]
    assert [(r["problem"], r["start"]) for r in rows] == [
        (name, start) for name in ("Misra1a", "DanWood", "BoxBOD") for start in (1, 2)]
    assert [s["method"] for s in result["summary"]] == [
        "least_squares", "optimistix LM", "scipy lm", "scipy trf"]
    for r in rows:
        for key in ("ID", "optx", "lm", "trf"):
            assert len(r[f"{key}_parameter_lre"]) == r["M"] == 2
            assert 0 <= r[f"{key}_min_lre"] <= 11 and 0 <= r[f"{key}_rss_lre"] <= 11
            assert 0 < r[f"{key}_work"] <= 500
    # Misra1a and DanWood are the easiest of the suite: every method certifies them.
    for r in rows[:4]:
        assert all(r[f"{key}_certified"] for key in ("ID", "optx", "lm", "trf")), r["problem"]
        assert r["ID_se_lre"] >= 4


def test_redesign_script(tmp_path):
    # HEAD against the working tree: fast, and independent of the history (a shallow clone has
    # HEAD but not the default baseline). Needs git and a checkout, not an sdist.
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip(f"not a git checkout with a commit: {head.stderr.strip()}")
    run_module("benchmarks.redesign", "--out", str(tmp_path), "--quick", "--baseline", "HEAD")
    [path] = tmp_path.glob("redesign_*.json")
    result = json.loads(path.read_text())
    assert result["baseline"]["commit"] == head.stdout.strip() and result["rounds"] == 1
    assert [r["metric"] for r in result["summary"]] == [
        "toy_ms_per_iteration", "aion_ms_per_iteration", "direct_ms", "jitted_ms", "overhead_ms"]
    for row in result["summary"]:
        assert math.isfinite(row["ratio"])
        assert len(row["baseline_rounds_ms"]) == len(row["current_rounds_ms"]) == 1
    # Each version imported its own tree: the baseline from the extracted copy, not this one.
    [base], [cur] = result["runs"]["baseline"], result["runs"]["current"]
    assert Path(cur["module_file"]).is_relative_to(REPO)
    assert not Path(base["module_file"]).is_relative_to(REPO)
    assert Path(base["module_file"]).is_relative_to(base["tree"])
    for run in (base, cur):
        # Every timed solve ran exactly its max_steps (none converged early).
        for case in ("toy", "aion"):
            assert {int(k): w["inner_steps"] for k, w in run[case]["work"].items()} == {
                k: k for k in run[case]["steps"]}
            assert all(len(v) > 0 for v in run[case]["samples_ms"].values())
        assert len(run["calls"]["samples_ms"]["direct"]) == len(
            run["calls"]["samples_ms"]["jitted"]) > 0


def test_least_squares_script(tmp_path):
    run_module("benchmarks.least_squares", "--out", str(tmp_path), "--quick", "--starts", "1",
               "--only", "AION")
    result = json.loads((tmp_path / "least_squares.json").read_text())
    rows = {r["method"]: r for r in result["results"]}
    assert set(rows) == {"idn.least_squares", "optimistix LevenbergMarquardt",
                         "scipy least_squares"}
    for r in rows.values():
        assert r["problem"].startswith("AION") and r["starts"] == 1
        assert 0 <= r["successes"] <= 1 and r["best_relative_loss"] <= r["median_relative_loss"]
        assert r["median_iterations"] <= r["budget"]
        assert r["median_wall_ms"] > 0 and r["median_cpu_ms"] > 0
        # Every method that reached the level has a time to reach it, and only those.
        assert (r["interpolated_cpu_ms_to_target"] is None) == (r["successes"] == 0)
    ours = rows["idn.least_squares"]
    assert ours["cpu_ratio_to_ours"] == 1.0
    assert ours["successes_stopped_at_target"] <= 1 and ours["to_target"].startswith("measured")
    [goals] = result["goals"]
    assert set(goals) >= {"as_many_successes_as_the_best_peer", "at_least_2x_optimistix",
                          "cpu_speedup_to_target_over_optimistix"}
    [traces] = result["traces"].values()
    assert set(traces) == set(rows)
    for runs in traces.values():
        [trace] = runs
        assert len(trace["x"]) == len(trace["relative_loss"]) > 0


def test_many_fits_script(tmp_path):
    run_module("benchmarks.many_fits", "--out", str(tmp_path), "--quick")
    result = json.loads((tmp_path / "many_fits.json").read_text())
    rows = {r["method"]: r for r in result["results"]}
    assert set(rows) == {
        "idn.least_squares", "idn.least_squares, rtol=1e-8", "idn.least_squares, geodesic=False",
        "optimistix LM, rtol=atol=1e-12", "optimistix LM, rtol=atol=1e-8",
        "idn.least_squares, batched=True", "idn.least_squares, batched=True, geodesic=False",
        "scipy curve_fit, analytic jac", "scipy curve_fit, finite differences"}
    for r in rows.values():
        assert r["fits_per_second"] > 0 and 0 <= r["success_fraction"] <= 1
        assert r["fits"] == (result["scipy_sample"] if r["extrapolated"] else result["fits"])
    for name, r in rows.items():
        if "batched" in name:  # one call over every fit: no batches to report
            assert r["max_iterations"] <= result["max_steps"]
            assert r["converged_fraction"] > 0.5
        elif not r["extrapolated"]:
            assert 0 < r["lane_utilisation"] <= 1
            assert r["max_iterations"] <= result["max_steps"]
            assert len(result["per_batch"][name]["batch_seconds"]) == result["fits"] // result[
                "batch"]
    assert set(result["goals"]) >= {"at_least_100x_scipy", "at_least_3x_optimistix"}


def test_growth_script(tmp_path):
    run_module("benchmarks.growth", "--out", str(tmp_path), "--quick")
    result = json.loads((tmp_path / "growth.json").read_text())
    methods = {r["method"] for r in result["results"]}
    assert methods == {"split", "add", "fixed"}
    for r in result["results"]:
        assert math.isfinite(r["median_loss"]) and r["median_loss"] >= 0 and r["inner_steps"] > 0


def test_physics_informed_script(tmp_path):
    run_module("benchmarks.physics_informed", "--out", str(tmp_path), "--quick")
    result = json.loads((tmp_path / "physics_informed.json").read_text())
    rows = result["systems"]
    assert [r["system"] for r in rows] == ["2-D Poisson", "1-D + time viscous Burgers"]
    for r in rows:
        assert r["num_params"] == 4 * r["rank"] * r["terms_per_atom"] * 2
        assert 1 <= r["seeds_tried"] == len(r["runs"]) <= 3
        assert r["goal_met"] == (r["relative_error"] < r["goal"])
        for key in ("relative_error", "loss", "wall_s", "talk_relative_error"):
            assert math.isfinite(r[key]) and r[key] >= 0, key
        assert 0 < r["inner_steps"] <= r["data_passes"] <= 2 * r["inner_steps"] + 1
    assert [b["rank"] for b in result["burgers_by_rank"]] == [1]
    methods = [p["method"] for p in result["peers"]]
    assert len(methods) == 4 and methods[0].startswith("idn.solve")
    assert any("Adam" in m for m in methods) and any("optimistix" in m for m in methods)
    for p in result["peers"]:
        assert math.isfinite(p["relative_error"]) and p["wall_s"] >= 0
    [goals] = result["peer_goals"]
    assert set(goals) >= {"at_least_1000x_below_adam_lbfgs_at_equal_time",
                          "below_gauss_newton_mlp",
                          "at_least_5x_faster_than_optimistix_to_the_same_error"}
    adam = next(p for p in result["peers"] if "Adam" in p["method"])
    assert [t["wall_s"] for t in adam["trace"]] == sorted(t["wall_s"] for t in adam["trace"])
    assert {o["how"] for o in result["outside_class"]} == {"fixed rank, best of seeds",
                                                           "idn.expand"}
    assert all(math.isfinite(o["relative_error"]) for o in result["outside_class"])
    [cost] = result["iteration_cost"]
    assert cost["closed_form_call_ms"] > 0 and cost["plain_autodiff_call_ms"] > 0
    assert math.isfinite(cost["speedup"])
    assert cost["models_agree_to"] < 1e-12  # the same function both ways
    grid, points = result["grid"]  # one grid system, both ways: the same terms and start
    assert (grid["way"], points["way"]) == ("grid sums", "points")
    assert grid["N"] == points["N"] == 12 * 12 and grid["M"] == points["M"] == 16
    for row in (grid, points):
        assert math.isfinite(row["relative_error"]) and row["wall_s"] > 0
        assert 0 < row["inner_steps"] <= row["data_passes"]
    assert math.isfinite(grid["speedup_solve"])
