"""``expand``: grow a sum-of-terms model one term at a time (iterative architecture expansion)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from ._checks import check_model
from ._grid import GridData
from ._models._aion import AION
from ._models._gaussian import GaussianAtoms
from ._models._protocol import SumOfTerms
from ._models._shallow import ShallowNetwork
from ._solve import solve


class ExpansionStep(NamedTuple):
    """One stage of :func:`expand`: the joint solve at ``terms`` terms, its final ``Phi``,
    its inner iterations and passes over the data, its wall time and its result code.

    ```python
    x, y = idn.problems.paper_toy()
    _, history = idn.expand(idn.AION(1, 2, 1, key=jax.random.key(0)), x, y, max_terms=2,
                            key=jax.random.key(1))
    for step in history:
        print(step.terms, step.loss, step.inner_steps, step.data_passes)
    ```
    """

    terms: int
    loss: float
    inner_steps: int
    data_passes: int
    seconds: float
    result: str


def default_new_term(model: SumOfTerms) -> Callable:
    """A function ``key -> one-term model`` like ``model``, from its default initialisation."""
    if isinstance(model, AION):
        return lambda key: AION(1, model.dim, model.terms, key=key, shared_dims=model.shared_dims,
                                dtype=model.dtype)
    if isinstance(model, GaussianAtoms):
        return lambda key: GaussianAtoms(1, model.dim, model.terms, key=key,
                                         shared_dims=model.shared_dims, dtype=model.dtype)
    if isinstance(model, ShallowNetwork):
        return lambda key: ShallowNetwork(1, model.dim, key=key, activation=model.activation,
                                          dtype=model.dtype)
    raise TypeError(
        f"expand: pass `new_term=` (a function key -> one-term {type(model).__name__}) for this "
        "model."
    )


def append_term(model: SumOfTerms, term: SumOfTerms) -> SumOfTerms:
    """``model`` with ``term``'s parameters appended along the term axis."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    extra = jax.tree.leaves(eqx.filter(term, eqx.is_inexact_array))
    # By leaves: the two models' static fields (a term count) may differ.
    grown = jax.tree.unflatten(
        treedef, [jnp.concatenate([a, b.astype(a.dtype)]) for a, b in zip(leaves, extra)]
    )
    # Models that keep their term count as a static field are rebuilt through their
    # constructor, so that count stays true.
    if isinstance(model, AION):
        return AION(model.rank + 1, model.dim, model.terms, shared_dims=model.shared_dims,
                    dtype=model.dtype, A=grown.A, alpha=grown.alpha, omega=grown.omega,
                    phi=grown.phi)
    if isinstance(model, GaussianAtoms):
        return GaussianAtoms(model.rank + 1, model.dim, model.terms,
                             shared_dims=model.shared_dims, dtype=model.dtype, A=grown.A,
                             a=grown.a, m=grown.m)
    return eqx.combine(grown, static)


def expand(
    model: SumOfTerms,
    x,
    y=None,
    *,
    max_terms: int,
    target_loss: float = 0.0,
    key=None,
    new_term: Callable | None = None,
    term_starts: int = 4,
    **solve_options,
) -> tuple[SumOfTerms, list[ExpansionStep]]:
    """Grow ``model`` a term (an AION rank) at a time until ``Phi <= target_loss`` or
    ``max_terms`` terms.

    At each stage: solve all the terms jointly (:func:`solve`); if the loss is not yet low
    enough, fit the current residual ``y - f(x)`` with a one-term model (the best of
    ``term_starts`` random starts, each a :func:`solve`), append it, and solve jointly again.
    Each stage's solve, inner iterations and passes over the data are recorded.

    **Arguments:** ``model`` (the starting model, often one term), data as for :func:`solve`,
    ``max_terms``, ``target_loss``, ``key`` (for the new terms' starts), ``new_term`` (a function
    ``key -> one-term model``; AION, GaussianAtoms and ShallowNetwork have a default) and any
    option of :func:`solve`.

    **Returns** ``(model, history)``: the grown model and a list of :class:`ExpansionStep`.
    Cost: the joint solves dominate; each new term adds ``term_starts`` one-term solves.

    ```python
    x, y = idn.problems.paper_toy()
    start = idn.AION(1, 2, 1, key=jax.random.key(0))
    model, history = idn.expand(start, x, y, max_terms=3, target_loss=1e-20,
                                key=jax.random.key(1))
    print([(h.terms, h.loss) for h in history])
    ```
    """
    check_model(model, "expand")
    if key is None:
        raise ValueError("expand: pass `key=jax.random.key(...)` for the new terms' starts.")
    if not isinstance(max_terms, int) or max_terms < model.num_terms:
        raise ValueError(
            f"expand: `max_terms` must be an integer >= the model's {model.num_terms} terms."
        )
    new_term = new_term or default_new_term(model)
    solve_options.setdefault("throw", False)
    points = x.points() if isinstance(x, GridData) else x
    targets = x.values() if isinstance(x, GridData) else y
    history = []
    while True:
        began = time.perf_counter()
        model, info = solve(model, x, y, **solve_options)
        jax.block_until_ready(model)
        history.append(ExpansionStep(
            terms=model.num_terms, loss=float(info.loss), inner_steps=int(info.inner_steps),
            data_passes=int(info.data_passes), seconds=time.perf_counter() - began,
            result=str(int(info.result._value)),
        ))
        if float(info.loss) <= target_loss or model.num_terms >= max_terms:
            return model, history
        residual = targets - jax.vmap(model)(points)
        key, *keys = jax.random.split(key, term_starts + 1)
        best, best_loss = None, jnp.inf
        for k in keys:
            fitted, term_info = solve(new_term(k), points, residual, **solve_options)
            if float(term_info.loss) < best_loss:
                best, best_loss = fitted, float(term_info.loss)
        model = append_term(model, best)
