"""The paper's Table 1 and Figure 1, reproduced and set beside the peers.

Used by ``python -m benchmarks.table1`` and by ``notebooks/01_paper_toy.ipynb``; needs the
``benchmarks`` extra (optimistix, scipy, matplotlib, tqdm). Part of the benchmark harness
`infinite_descent.bench`; not imported by ``import infinite_descent``.

    from infinite_descent.bench import reproduction
    table = reproduction.measure()          # every method from paper_toy_start(), float64
    reproduction.figure1(table, "figure1.png")

All methods start from
[`problems.paper_toy_start`][infinite_descent.problems.paper_toy_start] on
[`problems.paper_toy`][infinite_descent.problems.paper_toy]; every reported loss is
``Phi = sum_n (f(x_n) - y_n)^2`` recomputed from the final model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

from infinite_descent import problems
from infinite_descent.bench import peers

SUCCESS = 1e-20
SUCCESS_LOOSE = 1e-12

#: The paper's Table 1 (its own machine; "iterations" as it counts them).
PAPER_ROWS = (
    {"method": "Steepest Descent", "outer_steps": 1000, "wall_ms": 6123.0, "final_loss": 6e-6},
    {"method": "Newton-CG", "outer_steps": 28, "wall_ms": 383.0, "final_loss": 5e-13},
    {"method": "Infinite Descent", "outer_steps": 1, "wall_ms": 102.0, "final_loss": 9e-18},
)

ADAM_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


class Table1(NamedTuple):
    """The measured reproduction.

    - ``rows``: one dict per method (measured, then the paper's), the fields of
      `infinite_descent.bench.peers.MethodRun.row`.
    - ``robustness``: per method, successes over random starts and the median time.
    - ``adam_sweep``: the learning rates tried for Adam from the paper's start.
    - ``runs``: the `peers.MethodRun` of each method from the paper's start, with its
      ``trace`` (and, for the three methods of Figure 1, its iterates).
    """

    rows: list[dict[str, Any]]
    robustness: list[dict[str, Any]]
    adam_sweep: list[dict[str, Any]]
    runs: dict[str, peers.MethodRun]


# The toy's points are a 25 x 25 grid: the same solve on the grid path (the peers get the
# same points as points).
GRID = "Infinite Descent (grid)"


def _paper_rows() -> list[dict[str, Any]]:
    return [
        {"source": "paper", "method": r["method"], "outer_steps": r["outer_steps"],
         "inner_steps": None, "data_passes": None, "wall_ms": r["wall_ms"],
         "final_loss": r["final_loss"]}
        for r in PAPER_ROWS
    ]


def measure(
    *,
    repeats: int = 7,
    starts: int = 30,
    adam_steps: int = 2000,
    adam_rates: tuple[float, ...] = ADAM_RATES,
    progress: Callable[[str], None] | None = print,
) -> Table1:
    """Run every method from the paper's start, then from ``starts`` random starts.

    ``repeats``: timed runs per method from the paper's start (the median is reported; a
    warm-up run before them absorbs compilation). Random starts are timed once each after a
    warm-up. Random starts are
    [`problems.random_toy_start`][infinite_descent.problems.random_toy_start] with keys
    ``0 .. starts - 1``. Adam's learning rate is the best of ``adam_rates`` from the paper's
    start (lowest final loss) and is then used for every start.
    """
    say = progress or (lambda _: None)
    x, y = problems.paper_toy()
    start = problems.paper_toy_start()

    say("Adam learning-rate sweep from the paper's start ...")
    sweep = []
    for rate in adam_rates:
        run = peers.optax_adam(x, y, learning_rate=rate, steps=adam_steps)(start, repeats=1)
        sweep.append({"learning_rate": rate, "final_loss": run.final_loss, "wall_ms": run.wall_ms})
    best_rate = min(sweep, key=lambda r: r["final_loss"])["learning_rate"]

    runners = {
        "Infinite Descent": peers.infinite_descent(x, y),
        GRID: peers.infinite_descent(x, y, grid=problems.paper_toy_grid(), method=GRID),
        "Steepest Descent": peers.steepest_descent_armijo(x, y),
        "Newton-CG": peers.scipy_newton_cg(x, y),
        "optimistix LevenbergMarquardt": peers.optimistix_levenberg_marquardt(x, y),
        "optax L-BFGS": peers.optax_lbfgs(x, y),
        "optax Adam": peers.optax_adam(x, y, learning_rate=best_rate, steps=adam_steps),
        "scipy least_squares": peers.scipy_least_squares(x, y),
    }

    runs = {}
    for name, runner in runners.items():
        say(f"{name}: from the paper's start ...")
        runs[name] = runner(start, repeats=repeats, trace=True)
    rows = [runs[name].row() for name in runners] + _paper_rows()

    say(f"Robustness: {starts} random starts per method ...")
    random_starts = [problems.random_toy_start(jax.random.key(i)) for i in range(starts)]
    robustness = []
    for name, runner in runners.items():
        results = [runner(m, repeats=1)
                   for m in _progress(random_starts, f"  {name}", progress is not None)]
        losses = np.array([r.final_loss for r in results])
        robustness.append({
            "method": name,
            "starts": starts,
            "successes": int(np.sum(losses < SUCCESS)),
            "successes_1e12": int(np.sum(losses < SUCCESS_LOOSE)),
            "median_ms": float(np.median([r.wall_ms for r in results])),
            "median_final_loss": float(np.median(losses)),
            "median_data_passes": float(np.median([r.data_passes for r in results])),
        })
        say(f"  {name}: {robustness[-1]['successes']}/{starts}")
    return Table1(rows=rows, robustness=robustness, adam_sweep=sweep, runs=runs)


def _progress(items, description: str, enabled: bool):
    """``items`` with a tqdm progress bar when progress is on."""
    if not enabled:
        return items
    return tqdm(items, desc=description, leave=False)


def _landscape(table: Table1, axes: tuple[str, str], extent, resolution: int = 121):
    """``log10 Phi`` on a grid over two rank-1 parameters, the rest at ID's solution."""
    x, y = problems.paper_toy()
    centre = table.runs["Infinite Descent"].model
    (lo0, hi0), (lo1, hi1) = extent
    u = np.linspace(lo0, hi0, resolution)
    v = np.linspace(lo1, hi1, resolution)

    @jax.jit
    def phi(a, b):
        model = eqx.tree_at(
            lambda m: (getattr(m, axes[0]), getattr(m, axes[1])),
            centre,
            (getattr(centre, axes[0]).at[0].set(a), getattr(centre, axes[1]).at[0].set(b)),
        )
        return jnp.sum((jax.vmap(model)(x) - y) ** 2)

    grid = jax.vmap(jax.vmap(phi, in_axes=(None, 0)), in_axes=(0, None))(
        jnp.asarray(u), jnp.asarray(v)
    )
    return u, v, np.log10(np.maximum(np.asarray(grid), 1e-32))


_STYLE = {
    "Infinite Descent": dict(color="limegreen", lw=2.2, marker="o", ms=4),
    GRID: dict(color="darkgreen", lw=1.4, ls=":", marker="s", ms=3),
    "Steepest Descent": dict(color="deepskyblue", lw=1.2),
    "Newton-CG": dict(color="magenta", lw=1.6, marker=".", ms=5),
    "optimistix LevenbergMarquardt": dict(color="darkorange", lw=1.4),
    "optax L-BFGS": dict(color="saddlebrown", lw=1.4),
    "optax Adam": dict(color="grey", lw=1.4),
    "scipy least_squares": dict(color="navy", lw=1.4, ls="--"),
}


def figure1(table: Table1, path=None):
    """Figure 1 (two level-set panels with the paths) and the convergence of every method.

    Panels: (a) ``alpha_1 x phi_1`` and (b) ``A_1 x omega_1``, level sets of ``log10 Phi`` with
    the other six parameters at Infinite Descent's solution, and the paths of Infinite
    Descent (its inner iterates), Steepest Descent and Newton-CG from the same start;
    (c) best loss so far against passes over the data and (d) against wall time, where each
    method's measured median time is spread over its passes in proportion. Saved to ``path``
    when given; returns the matplotlib figure.
    """
    if path is not None:
        matplotlib.use("Agg")
    fig, axs = plt.subplots(2, 2, figsize=(13, 10.5))
    start = problems.paper_toy_start()
    paths = {name: table.runs[name].extra["iterates"]
             for name in ("Steepest Descent", "Newton-CG", "Infinite Descent")}
    for ax, (p0, p1), label in (
        (axs[0, 0], ("alpha", "phi"), (r"$\alpha_1$", r"$\varphi_1$")),
        (axs[0, 1], ("A", "omega"), (r"$A_1$", r"$\omega_1$")),
    ):
        points = np.concatenate([
            np.stack([np.asarray(getattr(it, p0))[:, 0].ravel(),
                      np.asarray(getattr(it, p1))[:, 0].ravel()], axis=1)
            for it in paths.values()
        ])
        lo, hi = points.min(axis=0), points.max(axis=0)
        pad = 0.25 * np.maximum(hi - lo, 0.2)
        extent = ((lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))
        u, v, z = _landscape(table, (p0, p1), extent)
        cs = ax.contourf(u, v, z.T, levels=30, cmap="viridis")
        ax.contour(u, v, z.T, levels=15, colors="k", linewidths=0.3, alpha=0.5)
        fig.colorbar(cs, ax=ax, label=r"$\log_{10}\Phi$ (other parameters at ID's solution)")
        for name, it in paths.items():
            a = np.asarray(getattr(it, p0))[:, 0].ravel()
            b = np.asarray(getattr(it, p1))[:, 0].ravel()
            run = table.runs[name]
            ax.plot(a, b, label=f"{name} ({len(a) - 1} iterates)", **_STYLE[name])
        ax.plot(float(getattr(start, p0)[0].ravel()[0]), float(getattr(start, p1)[0].ravel()[0]),
                "x", color="red", ms=12, mew=3, label="start")
        ax.set_xlabel(label[0])
        ax.set_ylabel(label[1])
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    axs[0, 0].set_title(r"(a) level sets over $\alpha_1 \times \varphi_1$")
    axs[0, 1].set_title(r"(b) level sets over $A_1 \times \omega_1$")

    for name, run in table.runs.items():
        trace = run.extra["trace"]
        passes = np.asarray(trace["data_passes"], float)
        best = np.minimum.accumulate(np.asarray(trace["loss"], float))
        ms_per_pass = run.wall_ms / max(run.data_passes or passes[-1], 1)
        label = f"{name}: {run.final_loss:.1e} in {run.wall_ms:.3g} ms"
        axs[1, 0].loglog(passes, best, label=label, **{**_STYLE[name], "marker": None})
        axs[1, 1].loglog(passes * ms_per_pass, best, label=label,
                         **{**_STYLE[name], "marker": None})
    for ax, xlabel, title in (
        (axs[1, 0], "passes over the data", "(c) best loss against passes over the data"),
        (axs[1, 1], "wall time after compilation (ms, median spread over passes)",
         "(d) best loss against wall time"),
    ):
        ax.axhline(SUCCESS, color="k", ls=":", lw=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(r"$\Phi = \sum_n (f(x_n) - y_n)^2$")
        ax.set_title(title)
        ax.set_ylim(1e-31, 1e4)
        ax.grid(True, which="major", alpha=0.3)
    axs[1, 0].legend(fontsize=7.5, loc="upper right")
    fig.suptitle("The paper's toy, cos(pi (x - y)) on a 25 x 25 grid, 8 parameters, from "
                 "paper_toy_start()", fontsize=12)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
