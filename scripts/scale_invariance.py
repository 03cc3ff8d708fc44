"""The toy with its targets scaled by 10^k: inner iterations, passes, the reported loss and the
returned model's misfit relative to the data (issue 17, item 1). Not a benchmark: nothing is
timed.

    python scripts/scale_invariance.py float64 -150,-100,-50,-20,-3,0,3,12,50,100,150
    python scripts/scale_invariance.py float32 -18,-15,-9,-3,0,3,9,15,18 "initial_damping=1e8"

The misfit is computed in float64 on residuals divided by 10^k, so it does not underflow
where the loss in the caller's units does (reported 0).
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import infinite_descent as idn  # noqa: E402


def main(dtype: str, exponents: str, options: str = "") -> None:
    dt = jnp.dtype(dtype)
    x, y = idn.problems.paper_toy(dtype=dt)
    start = idn.problems.paper_toy_start(dtype=dt)
    extra = eval(f"dict({options})")  # e.g. "initial_damping=1e8"
    solve = jax.jit(lambda m, x, y: idn.solve(m, x, y, throw=False, **extra))
    print(f"{dtype} {extra}")
    print("scale     inner passes  loss/sum(y^2)  misfit      initial/sum(y^2)  result")
    for k in (int(k) for k in exponents.split(",")):
        yy = jnp.asarray((10.0**k * np.asarray(y, np.float64)).astype(dt))
        model, info = solve(start, x, yy)
        y64 = yy.astype(jnp.float64)
        total = float(jnp.sum(y64**2))
        model64 = jax.tree.map(
            lambda a: a.astype(jnp.float64) if isinstance(a, jax.Array) else a, model)
        r = (jax.vmap(model64)(x.astype(jnp.float64)) - y64) / 10.0**k
        misfit = float(jnp.sum(r * r) / jnp.sum((y64 / 10.0**k) ** 2))
        result = idn.RESULTS[info.result].split(".")[0] or "successful"
        print(f"1e{k:+04d}  {int(info.inner_steps):5d} {int(info.data_passes):6d}  "
              f"{float(info.loss) / total:.3e}      {misfit:.3e}   "
              f"{float(info.initial_loss) / total:.3e}        {result}")


if __name__ == "__main__":
    main(*sys.argv[1:])
