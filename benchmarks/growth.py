"""Growing a ShallowNetwork: splitting against adding units against a fixed width.

    python -m benchmarks.growth [--out results] [--width 8] [--seeds 3] [--quick]

Two problems, float64, from width 2 grown one unit per stage to ``--width`` units by
``idn.expand`` (each stage a joint solve of at most 300 inner iterations):

- ``regression``: ``y = sin(4 x) + 0.5 cos(9 x)`` at 200 points on ``[-1, 1]``;
- ``collocation``: ``-u'' = f`` on ``[0, 1]`` with ``u(0) = u(1) = 0`` and
  ``u = sin(3 pi x / 2) sin(pi x / 2) + x (1 - x) exp(x)`` (64 interior points, the ends
  weighted 10), ``idn.Collocation`` terms.

Methods: ``split`` (``growth="split"``: the unit whose splitting matrix has the most negative
eigenvalue becomes two, along its eigenvector), ``add`` (``growth="terms"``: a new unit fitted
to the residual, and random new units, the best joint solve kept), and ``fixed``: a network of
the final width solved from its default random initialisation. Each from ``--seeds`` random
starts (keys 0, 1, ...); reported per method: the median and best final ``Phi``, the inner
iterations summed over every solve it ran, and the wall time (every stage included, the
compilation of each new width too: growth pays a compilation per width, which is part of
its cost). Prints a table and writes ``OUT/growth.json``.
"""

from __future__ import annotations

import time

from benchmarks._common import machine, parser, print_table, write_json


def _problems():
    import jax
    import jax.numpy as jnp

    import infinite_descent as idn

    x = jnp.linspace(-1.0, 1.0, 200)[:, None]
    regression = (x, jnp.sin(4 * x[:, 0]) + 0.5 * jnp.cos(9 * x[:, 0]))

    def exact(p):
        t = p[0]
        return (jnp.sin(1.5 * jnp.pi * t) * jnp.sin(0.5 * jnp.pi * t)
                + t * (1 - t) * jnp.exp(t))

    def equation(u, p):
        return -jax.hessian(u)(p)[0, 0] + jax.hessian(exact)(p)[0, 0]

    inside = jnp.linspace(0.0, 1.0, 66)[1:-1, None]
    ends = jnp.array([[0.0], [1.0]])
    collocation = ([idn.Collocation(inside, equation),
                    idn.Collocation(ends, lambda u, p: u(p) - exact(p), weight=10.0)], None)
    return {"regression": regression, "collocation": collocation}


def _run(method: str, data, width: int, seed: int) -> dict:
    import jax

    import infinite_descent as idn

    x, y = data
    began = time.perf_counter()
    if method == "fixed":
        net = idn.ShallowNetwork(width, 1, key=jax.random.key(seed))
        fit, info = idn.solve(net, x, y, max_steps=300 * (width - 1), throw=False)
        loss, steps = float(info.loss), int(info.inner_steps)
    else:
        net = idn.ShallowNetwork(2, 1, key=jax.random.key(seed))
        fit, history = idn.expand(net, x, y, max_terms=width, key=jax.random.key(100 + seed),
                                  growth="split" if method == "split" else "terms",
                                  max_steps=300)
        loss, steps = history[-1].loss, sum(h.inner_steps for h in history)
    return {"loss": loss, "inner_steps": steps, "seconds": time.perf_counter() - began}


def main() -> None:
    import numpy as np

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true",
                   help="the regression only, width 3, one seed (a smoke test)")
    args = p.parse_args()
    if args.quick:
        args.width, args.seeds = 3, 1
    import jax

    jax.config.update("jax_enable_x64", True)
    from tqdm.auto import tqdm

    rows, runs = [], {}
    problems = _problems()
    if args.quick:
        problems = {"regression": problems["regression"]}
    cases = [(name, method) for name in problems for method in ("split", "add", "fixed")]
    for name, method in tqdm(cases, desc="growth", leave=False):
        results = [_run(method, problems[name], args.width, seed) for seed in range(args.seeds)]
        runs[f"{name}/{method}"] = results
        losses = np.array([r["loss"] for r in results])
        rows.append({
            "problem": name, "method": method, "width": args.width,
            "median_loss": float(np.median(losses)), "best_loss": float(losses.min()),
            "inner_steps": int(np.median([r["inner_steps"] for r in results])),
            "seconds": float(np.median([r["seconds"] for r in results])),
        })
    print_table(rows, [("problem", "problem"), ("method", "method"), ("width", "width"),
                       ("median_loss", "median Phi"), ("best_loss", "best Phi"),
                       ("inner_steps", "inner it"), ("seconds", "s (median)")])
    path = write_json(args.out, "growth.json", {"machine": machine(), "quick": args.quick,
                                                 "seeds": args.seeds, "results": rows,
                                                 "runs": runs})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
