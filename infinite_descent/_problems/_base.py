"""The problem interface: a model over its data, and every sum one solver iteration needs.

A *problem* is what the SNR loop iterates on. It owns the parameter layout (an array
``theta`` whose leading axis is the blocks of the structured Hessian: an AION's ranks, a
network's hidden units) and, at a shift ``delta`` of that layout, gives the loop the sums
over the data it needs:

- ``normal_equations``: ``Phi = r.r``, ``g = J^T r``, ``diag(J^T J)`` and, as the linear solver
  asks, ``J^T J``, its per-block diagonal blocks, or ``J`` itself (one pass over the data);
- ``gram_matvec``: ``J^T (J v)`` without ``J`` (for conjugate gradients; one pass);
- ``geodesic_rhs``: ``J^T r_vv``, the second directional derivative of the residuals along
  ``v`` (for geodesic acceleration; one pass);
- ``rank_blocks``: the per-block diagonal blocks of the Hessian of ``Phi`` (for the exact
  Hessian; one pass).

`AbstractProblem` declares this; `AbstractPointProblem` implements
every sum for a sum-of-terms model on scattered points, in chunks or whole, from three
per-chunk primitives its subclasses give (the resummed AION and Gaussian problems, and the
autodiff problem of any model).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float


class NormalEquations(NamedTuple):
    """Sums over the data at one point: what one pass of an SNR iteration produces.

    ``loss = r.r``, ``g = J^T r``, ``diag = diag(J^T J)``; ``gram = J^T J`` (``M x M``),
    ``rank_grams`` (its diagonal blocks, ``(blocks, m, m)``) and ``jac`` (``J`` itself,
    ``N x M``) only when asked for. ``kept``: with ``jac``, anything else the problem keeps
    from its pass for ``geodesic_rhs(delta, v, jac=J, kept=kept)`` at the same point (a
    `CollocationProblem`'s exponentials); ``None`` for most problems.
    """

    loss: Array
    g: Array
    diag: Array
    gram: Array | None = None
    rank_grams: Array | None = None
    jac: Array | None = None
    kept: Any = None


class AbstractProblem(eqx.Module):
    """A least-squares problem as the SNR loop sees it (see the module docstring).

    ``theta`` is the start in the problem's layout, shape ``(blocks, ...)``: block ``j`` owns
    the contiguous slice ``[j m, (j + 1) m)`` of the flat vector, ``m = block_size``. Every
    method takes ``delta`` in that shape; vectors come back flat, length ``M``.
    """

    theta: eqx.AbstractVar[Array]
    num_data: eqx.AbstractVar[int]
    # Whether the SNR loop keeps ``J`` from its pass (`NormalEquations`' ``jac``) and hands
    # it to ``geodesic_rhs(delta, v, jac=J)``: for problems that form ``J`` whole anyway and
    # whose ``J^T r_vv`` would otherwise repeat the reverse pass that formed it.
    keeps_jacobian: ClassVar[bool] = False

    @property
    def num_params(self) -> int:
        """``M``, the number of parameters."""
        return self.theta.size

    @property
    def block_size(self) -> int:
        """``m``, the parameters per block of the structured Hessian."""
        return self.theta[0].size

    @property
    def eval_dtype(self):
        """The dtype the residuals are evaluated in, whose rounding is the loop's floor: the
        parameters' (a mixed-precision problem carries them wider, `MixedPrecision`)."""
        return self.theta.dtype

    @abc.abstractmethod
    def data_finite(self) -> Bool[Array, ""]:
        """Whether every datum is finite."""

    @abc.abstractmethod
    def data_norm(self) -> Array:
        """``|y|`` (weighted), the scale of the data: the loop's floors are relative to it
        (``0`` where the residuals hold no separate data)."""

    def data_peak(self) -> Array:
        """The largest datum ``max_n |y_n|`` (weighted), which sets the rounding of ``Phi``:
        each residual is rounded by about ``eps |y_n|``, independently of the others, so ``Phi
        = r.r`` changes by rounding within a few ``eps sqrt(Phi) max_n |y_n|`` (`SNR`'s loss
        resolution). The default, `data_norm`, is the bound for roundings that all agree: right
        for any problem, loose by up to ``sqrt(N)``."""
        return self.data_norm()

    @abc.abstractmethod
    def normal_equations(
        self, delta: Array, *, gram: bool = True, rank_grams: bool = False, jac: bool = False
    ) -> NormalEquations:
        """One pass over the data at ``theta + delta``."""

    @abc.abstractmethod
    def gram_matvec(self, delta: Array, v: Array) -> Array:
        """``J^T (J v)`` at ``theta + delta`` without forming ``J`` (one pass)."""

    @abc.abstractmethod
    def geodesic_rhs(self, delta: Array, v: Array) -> Array:
        """``J^T r_vv``, ``r_vv = d^2/dt^2 r(theta + delta + t v)`` at ``t = 0`` (one pass)."""

    @abc.abstractmethod
    def rank_blocks(self, delta: Array, *, residual_only: bool = False) -> Array:
        """Per-block diagonal blocks of the Hessian of ``Phi``, ``(blocks, m, m)``; with
        ``residual_only`` only the residual-weighted part ``2 sum_n r_n Hess f_n``."""

    def rebased(self, theta: Array) -> AbstractProblem | None:
        """This problem expanded about ``theta`` (this layout) instead of its start: the same
        function of the parameters, evaluated at ``theta + delta``. The loop then carries the
        current point and re-bases after every iteration, so that a parameter that moves far
        below its start keeps its relative precision. ``None`` (the default): the problem
        keeps its expansion point (AION's resummation computes its basis there)."""
        del theta
        return None

    @abc.abstractmethod
    def stack(self, tree) -> Array:
        """A pytree shaped like the model's parameters, in this problem's layout."""

    @abc.abstractmethod
    def to_model(self, theta: Array, like):
        """The model ``like`` with its parameters set to ``theta`` (this layout)."""

    # -- units (optional) ----------------------------------------------------------------------
    # A problem whose output scales through some of its parameters (the amplitudes of an AION
    # or of Gaussian atoms) gives the four methods below, and the loop then works in units of
    # the data: targets divided by a power of two near their scale, the start's output scaled
    # to them (see `_solver._snr.in_units`). The defaults say that it cannot: a general
    # residual (`least_squares`), a regularised or robust loss, variable projection, any
    # model fitted through autodiff.

    def target_scale(self) -> Array | None:
        """``max_n |y_n|`` (weighted), the scale the loop's units are chosen from; ``None``
        (the default) where this problem cannot change units."""
        return None

    @property
    def amplitude_dims(self) -> int:
        """``d``: scaling every amplitude by ``s`` scales the output by ``s^d``."""
        raise NotImplementedError(f"{type(self).__name__} does not change units")

    def output_factors(self, c: Array, mask: Array, root: Array | None = None
                       ) -> tuple[Array, Array]:
        """Factors ``F`` (flat, one per parameter) such that the model at ``F * theta``
        outputs ``c`` times its output at ``theta``, changing only parameters with ``mask``
        (and only amplitudes), and whether that is possible. ``root``: the per-dimension factor
        (``|c|^(1/d)``), given when it must be exact."""
        raise NotImplementedError(f"{type(self).__name__} does not change units")

    def output_moments(self, delta: Array, unit: Array) -> tuple[Array, Array, Array, Array]:
        """One pass, values only, at ``theta + delta``: ``(f.f, f.y, y.y, |f - unit y|^2)``
        of the model's values ``f`` and the targets ``y`` (weighted)."""
        raise NotImplementedError(f"{type(self).__name__} does not change units")

    def rescaled(self, unit: Array, factors: Array) -> AbstractProblem:
        """This problem with its targets divided by ``unit`` and its parameters multiplied
        by ``factors`` (flat; they change only amplitudes, which no stored basis depends
        on)."""
        raise NotImplementedError(f"{type(self).__name__} does not change units")


def gram_sums(r: Array, J: Array, *, gram: bool, rank_grams: bool, block_size: int,
              dtype=None) -> NormalEquations:
    """The sums of `NormalEquations` from residuals ``r`` (``(K,)``) and their Jacobian
    ``J`` (``(K, M)``): ``r.r``, ``J^T r``, ``diag(J^T J)`` and, as asked, ``J^T J`` and its
    diagonal blocks of ``block_size``. ``dtype``: form the products in it (wider than
    ``r``'s: `MixedPrecision`). At the highest precision the backend has, so that a GPU does
    not round float32 operands to TF32's 10-bit mantissa."""
    if dtype is not None:
        r, J = r.astype(dtype), J.astype(dtype)
    highest = jax.lax.Precision.HIGHEST
    blocks = None
    if rank_grams:
        Jr = J.reshape(J.shape[0], -1, block_size)
        blocks = jnp.einsum("nja,njb->jab", Jr, Jr, precision=highest)
    if not gram:
        return NormalEquations(
            loss=r @ r, g=jnp.matmul(r, J, precision=highest), diag=jnp.sum(J * J, axis=0),
            rank_grams=blocks,
        )
    G = jnp.matmul(J.T, J, precision=highest)
    return NormalEquations(loss=r @ r, g=jnp.matmul(r, J, precision=highest),
                           diag=jnp.diagonal(G), gram=G, rank_grams=blocks)


def residual_jacobian(residuals, delta: Array, num_data: int) -> tuple[Array, Array]:
    """``(r, J)`` of a residual function of the flat shift with ``num_data`` residuals:
    forward mode (``M`` tangents) when there are at most as many parameters as residuals,
    reverse mode (``N`` cotangents) otherwise.

    The linearisation's stored values (``jax.linearize``'s or ``jax.vjp``'s residuals: the
    primal's exponentials, activations' derivatives) are materialised once before the
    tangents are pushed through (`stored_linearization`): on the CPU, XLA otherwise fuses
    their elementwise producers into the batched tangent computation and evaluates them
    again for every tangent."""
    flat = delta.reshape(-1)
    if flat.shape[0] <= num_data:
        r, jvp = stored_linearization(*jax.linearize(residuals, flat), flat)
        jac = jax.vmap(jvp, out_axes=1)(jnp.eye(flat.shape[0], dtype=flat.dtype))
    else:
        r, vjp = stored_linearization(*jax.vjp(residuals, flat), None)
        jac = jax.vmap(lambda c: vjp(c)[0])(jnp.eye(r.shape[0], dtype=r.dtype))
    return r, jac


def leafwise_residual_jacobian(of_leaves, leaves: list, flat: Array) -> tuple[Array, Array]:
    """``(r, J)`` of ``of_leaves(leaves)`` (a residual vector) by forward mode one leaf at a
    time: leaf ``i``'s columns from a linearisation in that leaf alone, the other leaves held
    as constants, so that its tangents only flow through what follows it (a network's later
    layers). ``flat`` is the leaves raveled (``ravel_pytree``'s order and dtype); the columns
    come in that order and dtype, each leaf's block stored as in `residual_jacobian`. Every
    leaf re-runs the primal, which pays when the parameters sit at different depths."""
    r, blocks, offset = None, [], 0
    for i, leaf in enumerate(leaves):
        size = int(np.prod(leaf.shape))
        piece = flat[offset:offset + size]
        offset += size
        if size == 0:
            continue

        def of_leaf(x, i=i, leaf=leaf):
            return of_leaves([*leaves[:i], x.reshape(leaf.shape).astype(leaf.dtype),
                              *leaves[i + 1:]])

        r_i, jvp = stored_linearization(*jax.linearize(of_leaf, piece), piece)
        r = r_i if r is None else r
        blocks.append(jax.vmap(jvp, out_axes=1)(jnp.eye(size, dtype=flat.dtype)))
    return r, jnp.concatenate(blocks, axis=1)


def stored_linearization(r: Array, linear, example):
    """``(r, linear)`` with the arrays the linear map closes over (and ``r``) materialised
    (`materialized`), so that a ``vmap`` of ``linear`` over many tangents reads them instead
    of recomputing them per tangent.

    ``linear`` is ``jax.linearize``'s JVP, a plain closure (its arrays lifted out with
    ``equinox.filter_closure_convert`` at the input ``example``), or ``jax.vjp``'s pullback
    (``example=None``), already a pytree of its arrays. optimistix gets the same effect
    without asking: its Levenberg-Marquardt carries the linearised operator through its
    loop, and a loop's carry is always materialised. The figures are in the design notes."""
    if example is not None:
        linear = eqx.filter_closure_convert(linear, example)
    dynamic, static = eqx.partition(linear, eqx.is_array)
    # ``r`` first: `materialized` probes its first value (never empty here), and a NaN
    # there gives NaN residuals, which the loop rejects whatever ``J`` holds.
    r, dynamic = materialized(lambda *values: values, r, dynamic)
    return r, eqx.combine(dynamic, static)


def residual_gram_matvec(residuals, delta: Array, v: Array) -> Array:
    """``J^T (J v)`` of a residual function of the flat shift, by a JVP and a VJP."""
    flat = delta.reshape(-1)
    _, jv = jax.jvp(residuals, (flat,), (v.reshape(-1),))
    _, pullback = jax.vjp(residuals, flat)
    return pullback(jv)[0]


def residual_geodesic_rhs(residuals, delta: Array, v: Array) -> Array:
    """``J^T r_vv`` of a residual function of the flat shift: ``r_vv`` by a JVP of a JVP."""
    flat, v = delta.reshape(-1), v.reshape(-1)

    def along(t):
        return jax.jvp(residuals, (flat + t * v,), (v,))[1]

    zero = jnp.zeros((), flat.dtype)
    r_vv = jax.jvp(along, (zero,), (jnp.ones_like(zero),))[1]
    _, pullback = jax.vjp(residuals, flat)
    return pullback(r_vv)[0]


class AbstractResidualProblem(AbstractProblem):
    """A problem given by its whole residual vector ``residuals(delta)`` and its Jacobian
    ``residual_and_jacobian(delta)`` (``N x M``, formed): every sum of the interface from
    them, the products by JVPs and VJPs, the blocks of ``J^T J`` and of the Hessian cut out
    of the full matrices along ``theta``'s leading axis. For residual functions and
    collocation terms, whose residuals have no per-term structure to sum by."""

    @abc.abstractmethod
    def residuals(self, delta: Array) -> Array:
        """The residuals at ``theta + delta``, raveled to ``(N,)``."""

    @abc.abstractmethod
    def residual_and_jacobian(self, delta: Array) -> tuple[Array, Array]:
        """``(r, J)`` at ``theta + delta``, ``J`` of shape ``(N, M)``."""

    def _blocks_of(self, matrix: Array) -> Array:
        blocks = self.theta.shape[0]
        m = matrix.shape[0] // blocks
        shaped = matrix.reshape(blocks, m, blocks, m)
        return jnp.moveaxis(jnp.diagonal(shaped, axis1=0, axis2=2), -1, 0)

    def normal_equations(
        self, delta: Array, *, gram: bool = True, rank_grams: bool = False, jac: bool = False
    ) -> NormalEquations:
        r, J = self.residual_and_jacobian(delta)
        return gram_sums(r, J, gram=gram, rank_grams=rank_grams,
                         block_size=self.block_size)._replace(jac=J if jac else None)

    def gram_matvec(self, delta: Array, v: Array) -> Array:
        return residual_gram_matvec(self.residuals, delta, v)

    def geodesic_rhs(self, delta: Array, v: Array) -> Array:
        return residual_geodesic_rhs(self.residuals, delta, v)

    def rank_blocks(self, delta: Array, *, residual_only: bool = False) -> Array:
        """The blocks of the exact Hessian of ``Phi`` (or its residual-weighted part), from
        ``jax.hessian`` of the whole residual vector."""
        flat = delta.reshape(-1)
        r = jax.lax.stop_gradient(self.residuals(flat))

        def weighted(d):
            value = self.residuals(d)
            return r @ value if residual_only else 0.5 * value @ value

        return self._blocks_of(2 * jax.hessian(weighted)(flat))


def chunk_data(x: Array, y: Array, chunk_size: int | None, weights: Array | None = None):
    """``(x, y, root_weights)``. ``root_weights`` are ``sqrt(w)`` of the per-point weights
    (``None``: all one). Unchunked (``chunk_size=None``) the arrays are as given; chunked they
    are padded with points of weight zero and laid out as ``(chunks, K, ...)``, strided: chunk
    ``c`` holds the points ``c, c + chunks, c + 2 chunks, ...``.

    Strided, not contiguous, for data sharded over devices along the points: a shard (a
    contiguous block of points) then owns a contiguous block of every chunk's ``K`` axis, so
    each device sums its own points of each chunk and only the ``M x M`` sums are combined.
    With contiguous chunks the scan walked the sharded axis, and XLA gathered the whole data
    set onto every device inside the loop (measured on 4 CPU devices: 6.5x slower than
    unchunked). A sum over all chunks is the same either way, up to rounding."""
    root = None if weights is None else jnp.sqrt(weights)
    if chunk_size is None or chunk_size >= x.shape[0]:
        return x, y, root
    chunks = -(-x.shape[0] // chunk_size)
    pad = chunks * chunk_size - x.shape[0]
    root = jnp.ones_like(y) if root is None else root
    root = jnp.concatenate([root, jnp.zeros((pad,), y.dtype)])

    def strided(a):  # (chunks K, ...) -> (chunks, K, ...), chunk c = points c + chunks k
        return jnp.swapaxes(a.reshape(chunk_size, chunks, *a.shape[1:]), 0, 1)

    return (
        strided(jnp.pad(x, ((0, pad), (0, 0)))),
        strided(jnp.pad(y, (0, pad))),
        strided(root),
    )


def materialized(fn, *args):
    """``fn(*args)``, stored once rather than recomputed inside every consumer.

    On the CPU, XLA copies elementwise producers into each fusion that consumes them, so the
    complex exponentials (the dominant cost of an iteration) were evaluated three to four
    times per iteration, which made each iteration on the paper's toy markedly slower
    (measured; the figures are in the design notes). The output of a conditional is always
    materialised, so the computation goes into one. The predicate is true unless the input is
    NaN, in which case the other branch returns NaN, which is then also the right answer.
    Other backends fuse well and skip this.
    """
    if jax.default_backend() != "cpu":
        return fn(*args)
    probe = jax.tree.leaves(args)[0].reshape(-1)[0]
    shapes = jax.eval_shape(fn, *args)

    def nan_branch(*_):
        return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)

    return jax.lax.cond(probe == probe, fn, nan_branch, *args)


class AbstractPointProblem(AbstractProblem):
    """A sum-of-terms model ``f = sum_j g_j`` on scattered points: every sum of the interface
    from three per-chunk primitives.

    Subclasses give the per-chunk values and Jacobian of the terms (``terms``), their values
    alone (``term_values``) and one term's values and gradient (``one_term``, for the
    residual-weighted Hessian blocks), plus ``basis``: what an unchunked evaluation reuses
    (a resummation's basis at ``theta``), or ``None``.

    ``weight`` holds ``sqrt(w_n)`` of per-point weights (``None``: unweighted): residuals and
    Jacobian rows are multiplied by it, so ``Phi = sum_n w_n r_n^2``. Unchunked, ``x`` is
    ``(N, d)``; chunked, ``x, y, weight`` are ``(chunks, K, ...)`` and every sum is
    accumulated ``K`` points at a time in a ``lax.scan`` (padded with zero-weight points), so
    no array grows with ``N`` beyond the data themselves: memory ``O(M^2 + K M)``.
    """

    x: eqx.AbstractVar[Float[Array, "..."]]  # (N, d), or (chunks, K, d) when chunked
    y: eqx.AbstractVar[Float[Array, "..."]]  # (N,), or (chunks, K)
    weight: eqx.AbstractVar[Float[Array, "..."] | None]
    basis: eqx.AbstractVar[object]

    # -- what a subclass provides ------------------------------------------------------------

    @abc.abstractmethod
    def terms(self, delta: Array, x: Array, basis) -> tuple[Array, Array]:
        """Per-term values ``(K, r)`` and gradients ``(K, r, m)`` at ``theta + delta``."""

    @abc.abstractmethod
    def term_values(self, delta: Array, x: Array, basis) -> Array:
        """Per-term values ``(K, r)`` at ``theta + delta``."""

    @abc.abstractmethod
    def one_term(self, theta_j: Array, delta_j: Array, x: Array, basis_j) -> tuple[Array, Array]:
        """One term's values ``(K,)`` and gradient ``(K, m)``."""

    # -- shape --------------------------------------------------------------------------------

    @property
    def chunked(self) -> bool:
        return self.x.ndim == 3

    @property
    def rank(self) -> int:
        return self.theta.shape[0]

    def data_finite(self) -> Bool[Array, ""]:
        return jnp.all(jnp.isfinite(self.x)) & jnp.all(jnp.isfinite(self.y))

    def data_norm(self) -> Array:
        y = self.y if self.weight is None else self.y * self.weight
        return jnp.sqrt(jnp.sum(y * y))

    def data_peak(self) -> Array:
        y = self.y if self.weight is None else self.y * self.weight
        return jnp.max(jnp.abs(y))

    # -- one chunk ----------------------------------------------------------------------------

    def _chunk_terms(self, delta, x, y, w, basis):
        values, grads = self.terms(delta, x, basis)
        r = jnp.sum(values, axis=1) - y
        jac = grads.reshape(grads.shape[0], -1)
        if w is not None:
            r, jac = r * w, jac * w[:, None]
        return values, r, jac

    def _chunk_residuals(self, delta, x, y, w, basis):
        r = jnp.sum(self.term_values(delta, x, basis), axis=1) - y
        return r if w is None else r * w

    def _sum_over_data(self, fn):
        """``sum_chunks fn(x_c, y_c, w_c, basis_c)`` for a pytree-valued ``fn``."""
        if not self.chunked:
            return fn(self.x, self.y, self.weight, self.basis)
        first = jax.eval_shape(fn, self.x[0], self.y[0], self.weight[0], None)
        init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)

        def body(acc, chunk):
            x, y, w = chunk
            return jax.tree.map(jnp.add, acc, fn(x, y, w, None)), None

        return jax.lax.scan(body, init, (self.x, self.y, self.weight))[0]

    # -- the interface ------------------------------------------------------------------------

    def normal_equations(
        self, delta: Array, *, gram: bool = True, rank_grams: bool = False, jac: bool = False
    ) -> NormalEquations:
        def fn(x, y, w, basis):
            _, r, J = self._chunk_terms(delta, x, y, w, basis)
            sums = gram_sums(r, J, gram=gram, rank_grams=rank_grams, block_size=self.block_size)
            return {k: v for k, v in sums._asdict().items() if v is not None}

        sums = self._sum_over_data(fn)
        full_jac = None
        if jac:
            if self.chunked:
                raise ValueError("the full Jacobian is not formed when the data are chunked")
            full_jac = self._chunk_terms(delta, self.x, self.y, self.weight, self.basis)[2]
        return NormalEquations(
            loss=sums["loss"], g=sums["g"], diag=sums["diag"], gram=sums.get("gram"),
            rank_grams=sums.get("rank_grams"), jac=full_jac,
        )

    def gram_matvec(self, delta: Array, v: Array) -> Array:
        v = v.reshape(self.theta.shape)

        def fn(x, y, w, basis):
            def res(d):
                return self._chunk_residuals(d, x, y, w, basis)

            _, jv = jax.jvp(res, (delta,), (v,))
            _, pullback = jax.vjp(res, delta)
            return pullback(jv)[0].reshape(-1)

        return self._sum_over_data(fn)

    def geodesic_rhs(self, delta: Array, v: Array) -> Array:
        v = v.reshape(self.theta.shape)

        def fn(x, y, w, basis):
            def along(t):
                return self._chunk_residuals(delta + t * v, x, y, w, basis)

            def first(t):
                return jax.jvp(along, (t,), (jnp.ones_like(t),))[1]

            zero = jnp.zeros((), delta.dtype)
            r_vv = jax.jvp(first, (zero,), (jnp.ones_like(zero),))[1]
            _, _, J = self._chunk_terms(delta, x, y, w, basis)
            return r_vv @ J

        return self._sum_over_data(fn)

    def rank_blocks(self, delta: Array, *, residual_only: bool = False) -> Array:
        """Built with ``jax.jacfwd`` of one term's part of ``F`` (``m`` tangents) vmapped over
        the terms, summed over the data. Cost: ``m`` forward tangents of one pass per term."""

        def fn(x, y, w, basis):
            values = self.term_values(delta, x, basis)
            residual = jnp.sum(values, axis=1) - y
            others = residual[:, None] - values  # residual without term j's own value
            weight = jnp.ones_like(y) if w is None else w
            by_term = jnp.zeros((x.shape[0], self.rank, 0)) if basis is None else basis

            def term_gradient(delta_j, theta_j, basis_j, others_j):
                t_j, g_j = self.one_term(theta_j, delta_j, x, None if basis is None else basis_j)
                r = weight * (others_j + (jax.lax.stop_gradient(t_j) if residual_only else t_j))
                return 2 * (r @ (weight[:, None] * g_j))

            def block(delta_j, theta_j, basis_j, others_j):
                return jax.jacfwd(
                    lambda dj: term_gradient(dj.reshape(delta_j.shape), theta_j, basis_j, others_j)
                )(delta_j.reshape(-1))

            return jax.vmap(block, in_axes=(0, 0, 1, 1))(delta, self.theta, by_term, others)

        return self._sum_over_data(fn)

    # -- units (used by the problems that give `output_factors`) -------------------------------

    def output_moments(self, delta: Array, unit: Array) -> tuple[Array, Array, Array, Array]:
        def fn(x, y, w, basis):
            f = jnp.sum(self.term_values(delta, x, basis), axis=1)
            if w is not None:
                f, y = f * w, y * w
            r = f - unit * y
            return f @ f, f @ y, y @ y, r @ r

        return self._sum_over_data(fn)

    def rescaled(self, unit: Array, factors: Array) -> AbstractPointProblem:
        theta = self.theta * factors.reshape(self.theta.shape)
        return eqx.tree_at(lambda p: (p.theta, p.y), self, (theta, self.y / unit))

    # -- the full vectors (unchunked) ----------------------------------------------------------

    def residuals(self, delta: Array) -> Array:
        """Residuals ``sqrt(w_n) (f(x_n) - y_n)`` at ``theta + delta`` (values only)."""
        return self._chunk_residuals(delta, self.x, self.y, self.weight, self.basis)

    def residual_and_jacobian(self, delta: Array) -> tuple[Array, Array]:
        """Residuals and their Jacobian, ``(N, M)`` term-major (weighted, if weights)."""
        _, r, jac = self._chunk_terms(delta, self.x, self.y, self.weight, self.basis)
        return r, jac
