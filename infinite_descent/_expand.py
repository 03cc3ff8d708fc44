"""``expand``: grow a sum-of-terms model one term at a time (iterative architecture expansion)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._checks import as_collocation, check_collocation, check_data, check_grid, check_model
from ._models._aion import AION
from ._models._base import AbstractSumOfTerms
from ._models._gaussian import GaussianAtoms
from ._models._shallow import ShallowNetwork
from ._options import check_max_steps, solver_from, trainable_leaves
from ._problems._collocation import Collocation, pointwise, term_residuals
from ._problems._grid import GridData
from ._solution import RESULTS
from ._solve import raise_unless_successful, solve
from ._solver._snr import SNR


class ExpansionStep(NamedTuple):
    """One stage of [`expand`][infinite_descent.expand]: the model kept at ``terms`` terms and
    its final ``Phi``; what the stage cost: inner iterations and passes over the data of every
    solve it ran (the new term's residual fits and each candidate's joint solve), its wall
    time, and ``candidates``, the joint solves it ran; the kept solve's `RESULTS` message
    (empty when it converged).

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


def default_new_term(model: AbstractSumOfTerms) -> Callable:
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


def append_term(model: AbstractSumOfTerms, term: AbstractSumOfTerms) -> AbstractSumOfTerms:
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


def residual_terms(model: AbstractSumOfTerms, terms: tuple) -> list[Collocation]:
    """The collocation terms as a new term ``v`` sees them with ``model`` held fixed: each
    residual evaluated at ``u + v`` (the collocation analogue of fitting ``y - f(x)``)."""
    u = pointwise(model)

    def shifted(residual):
        return lambda v, x: residual(lambda p: u(p) + v(p), x)

    return [Collocation(t.points, shifted(t.residual), t.weight, t.order) for t in terms]


def _loss_function(terms, x, y) -> Callable:
    """``model -> Phi``: the squared residuals on the data, or the collocation terms'."""
    if terms is not None:
        return lambda model: sum(jnp.sum(term_residuals(t, pointwise(model)) ** 2) for t in x)
    return lambda model: jnp.sum((jax.vmap(model)(x) - y) ** 2)


@eqx.filter_jit
def splitting_matrices(model: ShallowNetwork, loss: Callable) -> Array:
    """Every hidden unit's splitting matrix, ``(width, dim + 1, dim + 1)``.

    Unit ``j`` (``c sigma(w . x + b)``) split into two offspring with output weights ``c / 2``
    at ``(w, b) +- eps v`` changes the model by ``(c eps^2 / 2) v^T Hess sigma v`` and
    ``Phi`` by ``(eps^2 / 2) v^T S_j v + O(eps^4)``, with ``S_j`` the Hessian in the unit's
    input parameters of ``<dPhi/df, c sigma>``: the derivative of ``Phi`` along the unit's own
    function. A negative eigenvalue is a direction in which splitting lowers ``Phi`` where no
    move of the unit itself can (at a stationary point); computed here by autodiff of
    ``loss``, so it holds for any loss, collocation residuals included."""
    dim = model.dim

    def matrix(c, w, b):
        def along(delta):
            def with_unit(eta):
                unit = ShallowNetwork(1, dim, c=(eta * c)[None], w=(w + delta[:dim])[None],
                                      b=(b + delta[dim])[None], activation=model.activation,
                                      dtype=model.dtype, output_scale=model.output_scale)
                return loss(append_term(model, unit))

            zero = jnp.zeros((), model.dtype)
            return jax.jvp(with_unit, (zero,), (jnp.ones_like(zero),))[1]

        return jax.hessian(along)(jnp.zeros(dim + 1, model.dtype))

    return jax.vmap(matrix)(model.c, model.w, model.b)


def split_unit(model: ShallowNetwork, loss: Callable, scale: float = 0.1):
    """``model`` with the unit whose splitting matrix has the most negative eigenvalue split
    into two offspring, ``c / 2`` each, at ``(w, b) +- eps v`` along its eigenvector
    (``eps = scale * max(1, |(w, b)|)``); and that eigenvalue."""
    values, vectors = jnp.linalg.eigh(splitting_matrices(model, loss))
    j = int(jnp.argmin(values[:, 0]))
    v = vectors[j, :, 0]
    theta = jnp.concatenate([model.w[j], model.b[j][None]])
    eps = scale * jnp.maximum(1.0, jnp.linalg.norm(theta))
    dim = model.dim
    moved = theta + eps * v
    c = model.c.at[j].set(model.c[j] / 2)
    w = model.w.at[j].set(theta[:dim] - eps * v[:dim])
    b = model.b.at[j].set(theta[dim] - eps * v[dim])
    halved = eqx.tree_at(lambda m: (m.c, m.w, m.b), model, (c, w, b))
    offspring = ShallowNetwork(1, dim, c=c[j][None], w=moved[:dim][None], b=moved[dim:],
                               activation=model.activation, dtype=model.dtype,
                               output_scale=model.output_scale)
    return append_term(halved, offspring), float(values[j, 0])


def _grown_trainable(model: AbstractSumOfTerms, frozen):
    """The ``trainable`` spec of ``model`` when the first terms follow ``frozen`` (the start's
    spec, numpy leaves) and the terms added since are trainable."""
    if frozen is None:
        return None
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    grown = [
        np.concatenate([f, np.ones((leaf.shape[0] - f.shape[0], *f.shape[1:]), bool)])
        for f, leaf in zip(jax.tree.leaves(frozen), leaves)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, grown), static)


def expand(
    model: AbstractSumOfTerms,
    x,
    y=None,
    *,
    max_terms: int,
    target_loss: float = 0.0,
    key=None,
    new_term: Callable | None = None,
    term_starts: int = 4,
    candidates: int = 4,
    solver: SNR | None = None,
    max_steps: int = 256,
    trainable=None,
    throw: bool = False,
    chunk_size: int | str | None = "auto",
    record_history: bool = False,
    verbose: bool = False,
    growth: str = "terms",
    **solver_options,
) -> tuple[AbstractSumOfTerms, list[ExpansionStep]]:
    """Grow ``model`` a term (an AION rank) at a time until ``Phi <= target_loss`` or
    ``max_terms`` terms.

    The starting model is solved (`solve`); then, while the loss is not low enough, a term
    is added and all the terms are solved jointly. The new term is tried from up to
    ``candidates`` starts, each followed by its own joint solve, and the best joint result is
    kept (the tries stop at the first that reaches ``target_loss``):

    1. the fit of the current residual ``y - f(x)`` by a one-term model (the best of
       ``term_starts`` random starts, each a `solve`); on `Collocation` terms, the one-term
       model ``v`` fitted to the residuals of ``f + v`` with ``f`` held;
    2. then ``candidates - 1`` one-term models from ``new_term``'s random initialisation.

    Why both: the best one-term fit of the residual is unique and greedy, and the joint solve
    from it can settle in a local minimum (on random AION targets every residual-fit start
    led to the same minimum where most random new terms reached the exact fit; see the
    benchmarks). ``candidates=1`` keeps the residual fit alone.

    ``growth="split"`` (a `ShallowNetwork` only) grows by splitting instead: at each stage
    the hidden unit whose splitting matrix (`splitting_matrices`) has the most negative
    eigenvalue becomes two offspring with half its output weight each, moved apart along
    that eigenvector, and the network is solved jointly (one candidate; no new random
    term). Splitting lowers ``Phi`` at second order where the unit's own moves cannot;
    which rule grows a given problem faster is measured in ``benchmarks/growth.py``.

    **Arguments:** ``model`` (the starting model, often one term), data as for `solve`
    (``x, y``, a `GridData`, or `Collocation` terms: a differential equation whose solution
    the model's rank grows to meet),
    ``max_terms``, ``target_loss``, ``key`` (for the new terms' starts), ``new_term`` (a function
    ``key -> one-term model``; AION, GaussianAtoms and ShallowNetwork have a default),
    ``term_starts``, ``candidates``, and as for `solve` the ``solver`` (or its keywords) and
    the run options: ``max_steps``, ``chunk_size`` and ``verbose`` apply to every solve;
    ``trainable`` is the start's spec (the terms added are trainable); ``throw`` (default
    ``False``) raises when the last solve kept is not successful; ``record_history`` is
    refused (an expansion is many solves: read each stage's figures in the returned list).

    **Returns** ``(model, history)``: the grown model and a list of `ExpansionStep`,
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
    caller = "expand"
    check_model(model, caller)
    if key is None:
        raise ValueError(f"{caller}: pass `key=jax.random.key(...)` for the new terms' starts.")
    if isinstance(max_terms, (bool, np.bool_)) or not isinstance(max_terms, (int, np.integer)) or (
        max_terms < model.num_terms
    ):
        raise ValueError(
            f"{caller}: `max_terms` must be an integer >= the model's {model.num_terms} terms, "
            f"got {max_terms!r}."
        )
    for name, value in (("term_starts", term_starts), ("candidates", candidates)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or (
            value < 1
        ):
            raise ValueError(f"{caller}: `{name}` must be a positive integer, got {value!r}.")
    if isinstance(target_loss, (bool, np.bool_)) or not isinstance(
        target_loss, (int, float, np.integer, np.floating)
    ) or not (0 <= target_loss < math.inf):
        raise ValueError(
            f"{caller}: `target_loss` must be a finite number >= 0, got {target_loss!r}."
        )
    if record_history:
        raise ValueError(
            f"{caller}: record_history=True is not supported (an expansion runs many solves); "
            "the returned list has each stage's figures."
        )
    if growth not in ("terms", "split"):
        raise ValueError(f"{caller}: `growth` must be 'terms' or 'split', got {growth!r}.")
    if growth == "split" and not isinstance(model, ShallowNetwork):
        raise TypeError(f"{caller}: growth='split' splits the hidden units of a "
                        f"ShallowNetwork, got {type(model).__name__}.")
    snr = solver_from(solver, caller, solver_options)
    check_max_steps(max_steps, caller)
    new_term = new_term or default_new_term(model)
    terms = as_collocation(x, caller)
    if terms is not None:
        if y is not None:
            raise TypeError(
                f"{caller}: collocation terms hold their own residuals; pass no `y` with them."
            )
        x = check_collocation(model, terms, caller)
    elif isinstance(x, GridData):
        grid = check_grid(model, x, y, caller)
        points, targets = grid.points(), grid.values()
    else:
        x, y = check_data(model, x, y, caller)
        points, targets = x, y
    frozen = trainable_leaves(model, trainable, caller)

    def run(start, data_x, data_y, spec=None):
        fitted, info = solve(start, data_x, data_y, solver=snr, max_steps=max_steps,
                             trainable=spec, throw=False, chunk_size=chunk_size,
                             verbose=verbose)
        jax.block_until_ready(fitted)
        return fitted, info

    began = time.perf_counter()
    model, info = run(model, x, y, _grown_trainable(model, frozen))
    history = [ExpansionStep(
        terms=model.num_terms, loss=float(info.loss), inner_steps=int(info.inner_steps),
        data_passes=int(info.data_passes), seconds=time.perf_counter() - began,
        result=RESULTS[info.result], candidates=1,
    )]
    last = info
    loss = _loss_function(terms, x, y) if growth == "split" else None
    while history[-1].loss > target_loss and model.num_terms < max_terms:
        began = time.perf_counter()
        steps = passes = 0
        if growth == "split":
            grown, _ = split_unit(model, loss)
            model, last = run(grown, x, y, _grown_trainable(grown, frozen))
            history.append(ExpansionStep(
                terms=model.num_terms, loss=float(last.loss),
                inner_steps=int(last.inner_steps), data_passes=int(last.data_passes) + 1,
                seconds=time.perf_counter() - began, result=RESULTS[last.result], candidates=1,
            ))
            continue
        if terms is None:
            fit_x, fit_y = points, targets - jax.vmap(model)(points)
        else:
            fit_x, fit_y = residual_terms(model, x), None
        key, fit_key, random_key = jax.random.split(key, 3)
        best_term, best_term_loss = None, jnp.inf
        for k in jax.random.split(fit_key, term_starts):
            fitted, term_info = run(new_term(k), fit_x, fit_y)
            steps += int(term_info.inner_steps)
            passes += int(term_info.data_passes)
            if float(term_info.loss) < best_term_loss:
                best_term, best_term_loss = fitted, float(term_info.loss)
        starts = [best_term] + [new_term(k) for k in
                                jax.random.split(random_key, candidates)[:candidates - 1]]
        best, best_info, tried = None, None, 0
        for term in starts:
            grown = append_term(model, term)
            joint, joint_info = run(grown, x, y, _grown_trainable(grown, frozen))
            tried += 1
            steps += int(joint_info.inner_steps)
            passes += int(joint_info.data_passes)
            if best is None or float(joint_info.loss) < float(best_info.loss):
                best, best_info = joint, joint_info
            if float(joint_info.loss) <= target_loss:
                break
        model, last = best, best_info
        history.append(ExpansionStep(
            terms=model.num_terms, loss=float(best_info.loss), inner_steps=steps,
            data_passes=passes, seconds=time.perf_counter() - began,
            result=RESULTS[best_info.result], candidates=tried,
        ))
    if throw:
        model = raise_unless_successful(model, last, caller)
    return model, history
