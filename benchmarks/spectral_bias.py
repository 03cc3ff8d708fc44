"""Regularized Newton against gradient descent and Adam, frequency by frequency (float64).

    python -m benchmarks.spectral_bias [--out results] [--width 2048] [--quick]

The claim under test (the Newton-NTK analysis of one-hidden-layer networks): regularized
Newton fits every frequency of a target at about the same rate, where gradient descent fits
the low frequencies first (spectral bias), because its rate for each eigen-direction of the
tangent kernel ``K = J J^T`` is proportional to the eigenvalue.

Set-up: ``N = 64`` points on the uniform grid ``x_n = -1 + 2 n / N`` (so each ``sin(pi k x)`` is
one DFT bin), target ``y = sin(pi x) + sin(3 pi x) + sin(8 pi x)``; a ``tanh`` network of width
``m`` in the kernel parametrization (``output_scale = m^-1/2``, ``c ~ U(-1, 1)``,
``w, b ~ N(0, 4^2)``), initialised antisymmetrically (units in pairs with opposite ``c``) so
that ``f_0 = 0`` and the residual starts as ``-y`` for every method. Error of frequency ``k``:
``|DFT(f - y)_k| / |DFT(y)_k|``.

Methods, all from the same network:

- ``idn.regularized_newton`` with the exact Hessian, step 1, ``lambda`` relative to the mean
  diagonal of ``K``, for several ``lambda``; and the same with ``hessian="gauss_newton"``;
  each with the push-through identity (a 64 x 64 system; ``M = 3 m`` parameters);
- gradient descent on ``Phi / 2`` with the largest stable step ``1 / lambda_max(K)``
  (``optax.sgd``);
- Adam (``optax.adam``), learning rate the best of 1e-2, 1e-3, 1e-4 by final loss.

Beside them, the kernel limit: the same iterations on the network linearised at the start
(``r <- lambda (K + lambda)^-1 r`` for Newton, ``r <- (I - K / lambda_max) r`` for GD), which
is what the infinite-width analysis describes. Newton methods run 50 iterations, GD and Adam
5000. Then the lazy regime: Newton (``lambda = 1e-4``, both Hessians) on the target scaled
by 1e-2 and 1e-4, where the steps stay small enough for the network to follow its
linearisation. Reported: per-frequency error at
iterations 1, 10, 50 (and 5000), whether every Newton step was a descent direction, the median
time per iteration after compilation and the passes over the data. Prints a table and writes
``OUT/spectral_bias.json`` and ``OUT/spectral_bias.png``. Final losses are relative
(``Phi / sum y^2``).
"""

from __future__ import annotations

import time

from benchmarks._common import machine, parser, print_table, progress, write_json

FREQS = (1, 3, 8)
N = 64
REPORT_AT = (1, 10, 50, 500, 5000)
AMPLITUDES = (1e-2, 1e-4)


def _network(width: int, key):
    import jax
    import jax.numpy as jnp

    import infinite_descent as idn

    half = width // 2
    kc, kw, kb = jax.random.split(key, 3)
    c = jax.random.uniform(kc, (half,), minval=-1.0, maxval=1.0)
    w = 4.0 * jax.random.normal(kw, (half, 1))
    b = 4.0 * jax.random.normal(kb, (half,))
    return idn.ShallowNetwork(
        2 * half, 1, c=jnp.concatenate([c, -c]), w=jnp.concatenate([w, w]),
        b=jnp.concatenate([b, b]), output_scale=(2 * half) ** -0.5,
    )


def _errors(residuals, y):
    """Per-frequency relative error for each row of ``residuals`` (iterations x N)."""
    import numpy as np

    spectrum = np.abs(np.fft.rfft(np.asarray(residuals), axis=-1))
    reference = np.abs(np.fft.rfft(np.asarray(y)))
    return spectrum[..., list(FREQS)] / reference[list(FREQS)]


def _run_newton(net, x, y, steps, **options):
    import equinox as eqx
    import jax
    import numpy as np

    import infinite_descent as idn

    opt = idn.regularized_newton(**options)

    @eqx.filter_jit
    def step(model, state):
        updates, state = opt.update(None, state, model, x=x, y=y)
        model = eqx.apply_updates(model, updates)
        return model, state, jax.vmap(model)(x) - y

    model, state = net, opt.init(net)
    step(model, state)  # compile
    residuals, times, descent = [np.asarray(jax.vmap(net)(x) - y)], [], True
    for _ in range(steps):
        t0 = time.perf_counter()
        model, state, r = step(model, state)
        r = jax.block_until_ready(r)
        times.append(time.perf_counter() - t0)
        residuals.append(np.asarray(r))
        descent = descent and bool(state.descent)
    passes = 2 if options.get("hessian", "exact") == "exact" else 1
    return np.stack(residuals), float(np.median(times)), passes, descent


def _run_optax(net, x, y, optimizer, steps):
    import equinox as eqx
    import jax
    import numpy as np

    params, static = eqx.partition(net, eqx.is_inexact_array)

    def residual(p):
        return jax.vmap(eqx.combine(p, static))(x) - y

    def loss(p):
        r = residual(p)
        return 0.5 * r @ r

    @jax.jit
    def run(p):
        state = optimizer.init(p)

        def body(carry, _):
            p, state = carry
            g = jax.grad(loss)(p)
            updates, state = optimizer.update(g, state, p)
            p = eqx.apply_updates(p, updates)
            return (p, state), residual(p)

        return jax.lax.scan(body, (p, state), None, length=steps)[1]

    jax.block_until_ready(run(params))  # compile
    t0 = time.perf_counter()
    residuals = jax.block_until_ready(run(params))
    seconds = time.perf_counter() - t0
    r0 = np.asarray(residual(params))[None]
    return np.concatenate([r0, np.asarray(residuals)]), seconds / steps


def main() -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--quick", action="store_true", help="width 256, fewer iterations")
    args = p.parse_args()
    width = 256 if args.quick else args.width
    newton_steps, first_order_steps = (10, 200) if args.quick else (50, 5000)
    began = time.perf_counter()

    x = (-1.0 + 2.0 * jnp.arange(N) / N)[:, None]
    y = sum(jnp.sin(jnp.pi * k * x[:, 0]) for k in FREQS)
    net = _network(width, jax.random.key(0))

    params, static = eqx.partition(net, eqx.is_inexact_array)
    jac = jax.jacrev(lambda q: jax.vmap(eqx.combine(q, static))(x))(params)
    jac = jnp.concatenate([a.reshape(N, -1) for a in jax.tree.leaves(jac)], axis=1)
    kernel = np.asarray(jac @ jac.T)
    eig = np.linalg.eigvalsh(kernel)
    modes = np.stack([np.sin(np.pi * k * np.asarray(x[:, 0])) for k in FREQS])
    # The kernel's weight on each target frequency: the Rayleigh quotient of its mode.
    mode_weights = np.einsum("kn,nm,km->k", modes, kernel, modes) / np.sum(modes**2, axis=1)
    print(f"width {width}: {3 * width} parameters; kernel eigenvalues {eig[-1]:.3g} .. "
          f"{eig[0]:.3g}; mean diagonal {np.trace(kernel) / N:.3g}; Rayleigh quotients of "
          f"the target frequencies {FREQS}: " + ", ".join(f"{v:.3g}" for v in mode_weights),
          flush=True)

    runs = []
    # The kernel limit: the dynamics linearised at the start (what the infinite-width analysis
    # describes), r_k = (lambda (K + lambda)^-1)^k r_0 for Newton, (I - K / lambda_max)^k r_0
    # for gradient descent, from the eigendecomposition of K.
    eigval, eigvec = np.linalg.eigh(kernel)
    eigval = np.maximum(eigval, 0.0)
    r0 = -np.asarray(y)
    coefficients = eigvec.T @ r0
    mean_diag = np.trace(kernel) / N
    for lam in (1e-1, 1e-2, 1e-4):
        factor = (lam * mean_diag) / (eigval + lam * mean_diag)
        its = np.arange(newton_steps + 1)[:, None]
        runs.append({"method": f"kernel limit of Newton, lambda {lam:g}",
                     "residuals": (factor[None] ** its * coefficients[None]) @ eigvec.T,
                     "seconds_per_iteration": None, "passes_per_iteration": None,
                     "all_descent": None})
    its = np.arange(first_order_steps + 1)[:, None]
    runs.append({"method": "kernel limit of gradient descent",
                 "residuals": ((1 - eigval / eigval[-1])[None] ** its * coefficients[None])
                 @ eigvec.T,
                 "seconds_per_iteration": None, "passes_per_iteration": None,
                 "all_descent": None})
    newton = [(hessian, lam) for hessian in ("exact", "gauss_newton")
              for lam in (1.0, 1e-1, 1e-2, 1e-4)]
    for hessian, lam in progress(newton, "Newton"):
        residuals, per_step, passes, descent = _run_newton(
            net, x, y, newton_steps, regularization=lam, hessian=hessian)
        runs.append({"method": f"Newton ({hessian}), lambda {lam:g}", "residuals": residuals,
                     "seconds_per_iteration": per_step, "passes_per_iteration": passes,
                     "all_descent": descent})
        print(f"  {runs[-1]['method']}: done", flush=True)
    lr = 1.0 / float(eig[-1])
    residuals, per_step = _run_optax(net, x, y, optax.sgd(lr), first_order_steps)
    runs.append({"method": f"gradient descent, step 1/lambda_max = {lr:.3g}",
                 "residuals": residuals, "seconds_per_iteration": per_step,
                 "passes_per_iteration": 1, "all_descent": None})
    best = None
    for adam_lr in progress((1e-2, 1e-3, 1e-4), "Adam learning rates"):
        residuals, per_step = _run_optax(net, x, y, optax.adam(adam_lr), first_order_steps)
        final = float(np.sum(residuals[-1] ** 2))
        if best is None or final < best[0]:
            best = (final, adam_lr, residuals, per_step)
    runs.append({"method": f"Adam, learning rate {best[1]:g} (best of 3)", "residuals": best[2],
                 "seconds_per_iteration": best[3], "passes_per_iteration": 1,
                 "all_descent": None})
    print("  gradient descent and Adam: done", flush=True)
    # The lazy regime: the same network and frequencies, the target scaled down, so that the
    # steps stay where the network is close to its linearisation.
    lazy = [(amplitude, hessian) for amplitude in AMPLITUDES
            for hessian in ("exact", "gauss_newton")]
    for amplitude, hessian in progress(lazy, "scaled-down targets"):
        residuals, per_step, passes, descent = _run_newton(
            net, x, amplitude * y, newton_steps, regularization=1e-4, hessian=hessian)
        runs.append({"method": f"Newton ({hessian}), lambda 0.0001, target x {amplitude:g}",
                     "residuals": residuals, "y": amplitude * y,
                     "seconds_per_iteration": per_step, "passes_per_iteration": passes,
                     "all_descent": descent})
    print("  scaled-down targets: done", flush=True)

    rows = []
    for run in runs:
        target = run.get("y", y)
        errors = _errors(run["residuals"], target)
        run["errors"] = errors
        seconds = run["seconds_per_iteration"]
        row = {"method": run["method"],
               "ms / iteration": None if seconds is None else 1e3 * seconds,
               "passes / iteration": run["passes_per_iteration"],
               "every step descent": run["all_descent"]}
        for it in REPORT_AT:
            if it < len(errors):
                row[f"it {it}"] = " ".join(f"{e:.0e}" for e in errors[it])
        row["final Phi"] = float(np.sum(run["residuals"][-1] ** 2) / np.sum(target**2))
        rows.append(row)
    columns = [("method", "method")] + [(f"it {it}", f"errors k={FREQS} @ {it}")
                                        for it in REPORT_AT if any(f"it {it}" in r for r in rows)]
    columns += [("final Phi", "final Phi/sum y^2"), ("ms / iteration", "ms/it"),
                ("passes / iteration", "passes/it"), ("every step descent", "descent")]
    print_table(rows, columns)
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(runs, args.out / "spectral_bias.png", width)
    path = write_json(args.out, "spectral_bias.json", {
        "machine": machine(), "width": width, "N": N, "frequencies": FREQS,
        "kernel_eigenvalues": eig, "kernel_rayleigh_quotients": mode_weights,
        "rows": rows,
        # Every iteration up to 50, then about 100 log-spaced ones: enough to redraw the figure.
        "iterations": {run["method"]: _kept(len(run["errors"])) for run in runs},
        "errors": {run["method"]: run["errors"][_kept(len(run["errors"]))] for run in runs},
        "seconds": time.perf_counter() - began,
    })
    print(f"wrote {path}")


def _kept(length):
    import numpy as np

    its = np.unique(np.round(np.geomspace(50, max(length - 1, 50), 100)).astype(int))
    return np.unique(np.concatenate([np.arange(min(length, 51)), its[its < length]]))


def _plot(runs, path, width):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    wanted = ("kernel limit of Newton, lambda 0.0001", "kernel limit of Newton, lambda 0.1",
              "kernel limit of gradient descent", "Newton (gauss_newton), lambda 0.1",
              "Newton (exact), lambda 0.0001", "Newton (gauss_newton), lambda 0.0001",
              "gradient descent", "Adam",
              "Newton (exact), lambda 0.0001, target x 0.0001",
              "Newton (gauss_newton), lambda 0.0001, target x 0.0001",
              "Newton (exact), lambda 0.0001, target x 0.01",
              "Newton (gauss_newton), lambda 0.0001, target x 0.01")
    chosen = [next(r for r in runs if r["method"].startswith(w)) for w in wanted]
    fig, axes = plt.subplots(3, 4, figsize=(16, 11), sharey=True)
    axes = axes.ravel()
    for ax, run in zip(axes, chosen):
        errors = np.clip(run["errors"], 1e-16, 1e4)
        its = np.asarray(run.get("iterations", np.arange(len(errors))))
        for j, k in enumerate(FREQS):
            ax.plot(its[1:], errors[1:, j], label=f"sin({k} pi x)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(run["method"], fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("relative error of the frequency")
    axes[4].set_ylabel("relative error of the frequency")
    axes[8].set_ylabel("relative error of the frequency")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Error per frequency, tanh network of width {width}, N = {N}\nTop: the "
                 "linearised (kernel) limit, and the network where it follows it. Middle: the "
                 "network on the unit target. Bottom: the target scaled down (lazy regime)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
