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
    """One stage of :func:`expand`: the model kept at ``terms`` terms and its final ``Phi``;
    what the stage cost: inner iterations and passes over the data of every solve it ran (the
    new term's residual fits and each candidate's joint solve), its wall time, and
    ``candidates``, the joint solves it ran; the kept solve's result code.

    ```python
    x, y = idn.problems.paper_toy()
    _, history = idn.expand(idn.AION(1, 2, 1, key=jax.random.key(0)), x, y, max_terms=2,
                            key=jax.random.key(1))
    for step in history:
        print(step.terms, step.loss, step.inner_steps, step.data_passes, step.candidates)
    ```
    """

    terms: int
    loss: float
    inner_steps: int
    data_passes: int
    seconds: float
    result: str
    candidates: int = 1


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
                                          dtype=model.dtype, output_scale=model.output_scale)
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
    candidates: int = 4,
    **solve_options,
) -> tuple[SumOfTerms, list[ExpansionStep]]:
    """Grow ``model`` a term (an AION rank) at a time until ``Phi <= target_loss`` or
    ``max_terms`` terms.

    The starting model is solved (:func:`solve`); then, while the loss is not low enough, a
    term is added and all the terms are solved jointly. The new term is tried from up to
    ``candidates`` starts, each followed by its own joint solve, and the best joint result is
    kept (the tries stop at the first that reaches ``target_loss``):

    1. the fit of the current residual ``y - f(x)`` by a one-term model (the best of
       ``term_starts`` random starts, each a :func:`solve`);
    2. then ``candidates - 1`` one-term models from ``new_term``'s random initialisation.

    Why both: the best one-term fit of the residual is unique and greedy, and the joint solve
    from it can settle in a local minimum (measured on random rank-4 and rank-6 AION targets:
    every residual-fit start led to the same minimum at ``Phi / sum y^2 ~ 1e-5``, where 6 of 8
    random new terms reached ``1e-31``; ``benchmarks/expansion.py``). ``candidates=1`` keeps the
    residual fit alone.

    **Arguments:** ``model`` (the starting model, often one term), data as for :func:`solve`,
    ``max_terms``, ``target_loss``, ``key`` (for the new terms' starts), ``new_term`` (a function
    ``key -> one-term model``; AION, GaussianAtoms and ShallowNetwork have a default),
    ``term_starts``, ``candidates`` and any option of :func:`solve`.

    **Returns** ``(model, history)``: the grown model and a list of :class:`ExpansionStep`,
    one per stage, with everything the stage cost. A stage that cannot reach ``target_loss``
    (below the target's rank) pays for all its candidates.

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
    for name, value in (("term_starts", term_starts), ("candidates", candidates)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"expand: `{name}` must be a positive integer, got {value!r}.")
    new_term = new_term or default_new_term(model)
    solve_options.setdefault("throw", False)
    points = x.points() if isinstance(x, GridData) else x
    targets = x.values() if isinstance(x, GridData) else y

    def run(start, data_x, data_y):
        fitted, info = solve(start, data_x, data_y, **solve_options)
        jax.block_until_ready(fitted)
        return fitted, info

    began = time.perf_counter()
    model, info = run(model, x, y)
    history = [ExpansionStep(
        terms=model.num_terms, loss=float(info.loss), inner_steps=int(info.inner_steps),
        data_passes=int(info.data_passes), seconds=time.perf_counter() - began,
        result=str(int(info.result._value)), candidates=1,
    )]
    while history[-1].loss > target_loss and model.num_terms < max_terms:
        began = time.perf_counter()
        steps = passes = 0
        residual = targets - jax.vmap(model)(points)
        key, fit_key, random_key = jax.random.split(key, 3)
        best_term, best_term_loss = None, jnp.inf
        for k in jax.random.split(fit_key, term_starts):
            fitted, term_info = run(new_term(k), points, residual)
            steps += int(term_info.inner_steps)
            passes += int(term_info.data_passes)
            if float(term_info.loss) < best_term_loss:
                best_term, best_term_loss = fitted, float(term_info.loss)
        starts = [best_term] + [new_term(k) for k in
                                jax.random.split(random_key, candidates)[:candidates - 1]]
        best, best_info, tried = None, None, 0
        for term in starts:
            joint, joint_info = run(append_term(model, term), x, y)
            tried += 1
            steps += int(joint_info.inner_steps)
            passes += int(joint_info.data_passes)
            if best is None or float(joint_info.loss) < float(best_info.loss):
                best, best_info = joint, joint_info
            if float(joint_info.loss) <= target_loss:
                break
        model = best
        history.append(ExpansionStep(
            terms=model.num_terms, loss=float(best_info.loss), inner_steps=steps,
            data_passes=passes, seconds=time.perf_counter() - began,
            result=str(int(best_info.result._value)), candidates=tried,
        ))
    return model, history
