"""Starts drawn around a model, as [`multistart`][infinite_descent.multistart] draws them.

Part of the benchmark harness `infinite_descent.bench`; needs only the core dependencies.
A benchmark that solves the starts ``idn.multistart`` solves, one at a time with another method,
draws them here with the same key and spread (``tests/test_bench.py`` checks that they agree).

    from infinite_descent.bench import starts
    batch = starts.perturbed(model, 16, jax.random.key(7), 0.3)   # stacked, start 0 = model
    first_other = jax.tree.map(lambda a: a[1], batch)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["perturbed"]


def perturbed(model, num_starts: int, key, spread: float):
    """``num_starts`` models stacked on a leading axis: ``model`` first, then copies with every
    inexact array multiplied by ``1 + spread * xi``, ``xi ~ N(0, 1)``.

    One key per parameter array (``jax.random.split(key, number of arrays)``, in pytree order)
    and one normal draw of shape ``(num_starts - 1, *shape)`` per array: the draw
    ``idn.multistart(model, x, y, num_starts=..., key=key, spread=spread)`` makes when every
    parameter is trainable.
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    stacked = []
    for k, leaf in zip(keys, leaves):
        noise = jax.random.normal(k, (num_starts - 1, *leaf.shape), leaf.dtype)
        stacked.append(jnp.concatenate([leaf[None], leaf[None] * (1 + spread * noise)]))
    return eqx.combine(jax.tree.unflatten(treedef, stacked), static)
