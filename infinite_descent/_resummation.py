r"""The resummed residual ``F(Delta) = grad Phi(Theta + Delta)`` of an AION model.

Shifting an atom's parameters by ``Delta`` multiplies its complex term by a factor that does
not depend on ``Theta``:

.. math::

    (A + \delta A)\, e^{z(x; \Theta)}\, e^{(\delta\alpha + i \delta\omega) x + i \delta\varphi}.

So the basis ``B = exp(z(x_n; Theta))`` is computed once at ``Theta`` and every quantity at
``Theta + Delta`` (values, gradient, Jacobian) is an exact algebraic function of ``Delta``:
polynomial prefactors (``1, x, i x, i`` times the shifted amplitude) times ``B`` times the
diagonal shift ``D(Delta) = exp(<a, Delta>)``. Products over the other dimensions are
leave-one-out products built from prefix and suffix products (no division).

Internally the parameters are stacked rank-major as ``theta[j] = (A, alpha, omega, phi)[j]``,
an array of shape ``(rank, 4, d', P)``; rank ``j`` owns the contiguous slice
``[j m, (j + 1) m)`` of the flat vector, ``m = 4 d' P``.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

from ._models._aion import AION, atom_exponentials, complex_exp, leave_one_out_products


def stack_params(tree) -> Float[Array, "rank 4 dims terms"]:
    """``(A, alpha, omega, phi)`` of an AION-shaped pytree, stacked to ``(rank, 4, d', P)``."""
    return jnp.stack([tree.A, tree.alpha, tree.omega, tree.phi], axis=1)


def unstack_params(theta: Array, like):
    """Inverse of :func:`stack_params`: write ``theta`` into the AION-shaped pytree ``like``."""
    return eqx.tree_at(
        lambda m: (m.A, m.alpha, m.omega, m.phi),
        like,
        (theta[:, 0], theta[:, 1], theta[:, 2], theta[:, 3]),
    )


def _materialized(fn, *args):
    """``fn(*args)``, stored once rather than recomputed inside every consumer.

    On the CPU, XLA copies elementwise producers into each fusion that consumes them, so the
    complex exponentials (the dominant cost of an iteration) were evaluated three to four
    times per iteration (measured: 0.20 ms instead of 0.10 ms per iteration on the paper's
    toy). The output of a conditional is always materialised, so the computation goes into
    one. The predicate is true unless the input is NaN, in which case the other branch
    returns NaN, which is then also the right answer. Other backends fuse well and skip this.
    """
    if jax.default_backend() != "cpu":
        return fn(*args)
    probe = jax.tree.leaves(args)[0].reshape(-1)[0]
    shapes = jax.eval_shape(fn, *args)

    def nan_branch(*_):
        return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)

    return jax.lax.cond(probe == probe, fn, nan_branch, *args)


def _shifted_terms(theta, delta, basis, x):
    """Real and imaginary parts of ``exp(z(x; Theta + Delta))`` and the atoms ``psi``.

    With ``basis = exp(z(x; Theta))`` given, the shift ``exp(<a, Delta>)`` carries it to
    ``Theta + Delta`` (the resummation). With ``basis=None`` the exponentials are evaluated at
    ``Theta + Delta`` directly, the same numbers without storing an ``N``-sized basis (used
    when the data are processed in chunks).
    """
    amplitude = (theta[:, 0] + delta[:, 0])[None]  # (1, r, d', P)
    xs = x[:, None, :, None]  # (N, 1, d, 1)

    def exponentials(delta):
        if basis is None:
            t = (theta + delta)[None]
            e = complex_exp(t[:, :, 1] * xs, t[:, :, 2] * xs + t[:, :, 3])
        else:
            d = delta[None]
            shift = complex_exp(d[:, :, 1] * xs, d[:, :, 2] * xs + d[:, :, 3])  # D(Delta)
            e = basis * shift  # exp(z(x; Theta + Delta)), (N, r, d, P)
        return jnp.real(e), jnp.imag(e)

    re, im = _materialized(exponentials, delta)
    psi = jnp.sum(amplitude * re, axis=-1)  # atoms, (N, r, d)
    return amplitude, xs, re, im, psi


def aion_values(
    theta: Float[Array, "rank 4 dims terms"],
    delta: Float[Array, "rank 4 dims terms"],
    basis: Complex[Array, "N rank dim terms"] | None,
    x: Float[Array, "N dim"],
) -> Float[Array, "N rank"]:
    """Each rank's values ``T_j(x_n)`` at ``Theta + Delta`` (no derivatives)."""
    *_, psi = _shifted_terms(theta, delta, basis, x)
    return jnp.prod(psi, axis=-1)


def separable_terms(psi, atom_derivatives, shared: bool):
    """Values and gradients of separable terms ``T_j = prod_i psi_ji`` from their atoms.

    ``psi``: the atoms ``(N, r, d)``; ``atom_derivatives``: one ``(N, r, d, P)`` array per
    parameter kind, the derivative of atom ``psi_ji`` by that kind's parameter ``(j, i, p)``.
    The derivative of ``T_j`` is that times the leave-one-out product ``prod_{s != i} psi_js``
    (prefix and suffix products, no division). With ``shared`` (one atom for every
    dimension) the chain rule sums over the dimensions. Returns ``(N, r)`` and
    ``(N, r, kinds, d', P)``.
    """
    loo, total = leave_one_out_products(psi)
    loo = loo[..., None]
    columns = [c * loo for c in atom_derivatives]
    dim = psi.shape[-1]
    if shared and dim > 1:
        # Unrolled over the (small, static) dimension count: cheaper than a reduction here.
        columns = [sum(c[:, :, i : i + 1] for i in range(dim)) for c in columns]
    return total, jnp.stack(columns, axis=2)


def aion_terms(
    theta: Float[Array, "rank 4 dims terms"],
    delta: Float[Array, "rank 4 dims terms"],
    basis: Complex[Array, "N rank dim terms"] | None,
    x: Float[Array, "N dim"],
) -> tuple[Float[Array, "N rank"], Float[Array, "N rank 4 dims terms"]]:
    """Each rank at ``Theta + Delta``: its values ``T_j(x_n)`` and their gradient.

    ``basis = exp(z(x_n; Theta))`` was computed at ``Theta``; the shift
    ``D(Delta) = exp(<a, Delta>)`` carries it to ``Theta + Delta``. Cost per point: ``r d P``
    complex exponentials and ``O(r d P)`` real products.
    """
    amplitude, xs, re, im, psi = _shifted_terms(theta, delta, basis, x)
    re_c, im_c = amplitude * re, amplitude * im  # the complex term c = A e^z
    # d/dA, d/dalpha, d/domega, d/dphi of the atom: the polynomial prefactors 1, x, i x, i.
    derivatives = [re, xs * re_c, -xs * im_c, -im_c]
    return separable_terms(psi, derivatives, theta.shape[-2] == 1)


class NormalEquations(NamedTuple):
    """Sums over the data at one point: what one pass of an SNR iteration produces.

    ``loss = r.r``, ``g = J^T r``, ``diag = diag(J^T J)``; ``gram = J^T J`` (``M x M``),
    ``rank_grams`` (its ``r`` diagonal blocks, ``(r, m, m)``) and ``jac`` (``J`` itself,
    ``N x M``) only when asked for.
    """

    loss: Array
    g: Array
    diag: Array
    gram: Array | None = None
    rank_grams: Array | None = None
    jac: Array | None = None


def chunk_data(x: Array, y: Array, chunk_size: int | None):
    """``(x, y, weight)``: as given when ``chunk_size`` is ``None`` (``weight=None``), else
    reshaped to ``(chunks, K, ...)`` and padded with zero-weight points."""
    if chunk_size is None or chunk_size >= x.shape[0]:
        return x, y, None
    chunks = -(-x.shape[0] // chunk_size)
    pad = chunks * chunk_size - x.shape[0]
    weight = jnp.concatenate([jnp.ones_like(y), jnp.zeros((pad,), y.dtype)])
    return (
        jnp.pad(x, ((0, pad), (0, 0))).reshape(chunks, chunk_size, x.shape[1]),
        jnp.pad(y, (0, pad)).reshape(chunks, chunk_size),
        weight.reshape(chunks, chunk_size),
    )


class DataProblem(eqx.Module):
    """A sum-of-terms model over its data: every sum an SNR iteration needs.

    Subclasses provide the per-chunk values and Jacobian of the terms (``_terms`` and
    ``_term_values``) and, for the residual-weighted Hessian blocks, one term's values and
    gradient (``_one_term``). The parameters are ``theta``, shape ``(terms, ...)``; term ``j``
    owns the contiguous slice ``[j m, (j + 1) m)`` of the flat vector.

    With ``chunk_size=None`` the data are used whole; with ``chunk_size=K`` every sum is
    accumulated ``K`` points at a time in a ``lax.scan`` (padded with zero-weight points), so no
    array grows with ``N`` beyond the data themselves: memory ``O(M^2 + K M)``.
    """

    theta: Array
    x: Float[Array, "..."]  # (N, d), or (chunks, K, d) when chunked
    y: Float[Array, "..."]  # (N,), or (chunks, K)
    weight: Float[Array, "chunks K"] | None
    num_data: int = eqx.field(static=True)

    # -- what a subclass provides ------------------------------------------------------------

    def _terms(self, delta, x, basis):
        """Per-term values ``(K, r)`` and gradients ``(K, r, m)`` at ``theta + delta``."""
        raise NotImplementedError

    def _term_values(self, delta, x, basis):
        """Per-term values ``(K, r)`` at ``theta + delta``."""
        raise NotImplementedError

    def _one_term(self, theta_j, delta_j, x, basis_j):
        """One term's values ``(K,)`` and gradient ``(K, m)``."""
        raise NotImplementedError

    def _basis(self):
        """What the unchunked evaluation reuses (the resummation's basis), or ``None``."""
        return None

    def _basis_by_term(self, num_points):
        """The basis split by term (axis 1), for vmapping over terms; a placeholder if none."""
        return jnp.zeros((num_points, self.theta.shape[0], 0))

    # -- shape --------------------------------------------------------------------------------

    @property
    def chunked(self) -> bool:
        return self.weight is not None

    def data_finite(self) -> Array:
        return jnp.all(jnp.isfinite(self.x)) & jnp.all(jnp.isfinite(self.y))

    @property
    def rank(self) -> int:
        return self.theta.shape[0]

    @property
    def block_size(self) -> int:
        """Parameters per term, ``m``."""
        return self.theta[0].size

    @property
    def num_params(self) -> int:
        return self.theta.size

    # -- one chunk ----------------------------------------------------------------------------

    def _chunk_terms(self, delta, x, y, w, basis):
        values, grads = self._terms(delta, x, basis)
        r = jnp.sum(values, axis=1) - y
        jac = grads.reshape(grads.shape[0], -1)
        if w is not None:
            r, jac = r * w, jac * w[:, None]
        return values, r, jac

    def _chunk_residuals(self, delta, x, y, w, basis):
        r = jnp.sum(self._term_values(delta, x, basis), axis=1) - y
        return r if w is None else r * w

    def _sum_over_data(self, fn):
        """``sum_chunks fn(x_c, y_c, w_c, basis_c)`` for a pytree-valued ``fn``."""
        if not self.chunked:
            return fn(self.x, self.y, None, self._basis())
        first = jax.eval_shape(fn, self.x[0], self.y[0], self.weight[0], None)
        init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)

        def body(acc, chunk):
            x, y, w = chunk
            return jax.tree.map(jnp.add, acc, fn(x, y, w, None)), None

        return jax.lax.scan(body, init, (self.x, self.y, self.weight))[0]

    # -- what the SNR loop uses --------------------------------------------------------------

    def normal_equations(
        self, delta: Array, *, gram: bool = True, rank_grams: bool = False, jac: bool = False
    ) -> NormalEquations:
        """One pass over the data at ``Theta + delta``: ``Phi``, ``J^T r``, ``diag(J^T J)`` and,
        as asked, ``J^T J``, its per-term diagonal blocks, or ``J`` itself (unchunked only)."""
        m = self.block_size

        def fn(x, y, w, basis):
            _, r, J = self._chunk_terms(delta, x, y, w, basis)
            out = {"loss": r @ r, "g": r @ J, "diag": jnp.sum(J * J, axis=0)}
            if gram:
                out["gram"] = J.T @ J
            if rank_grams:
                Jr = J.reshape(J.shape[0], -1, m)
                out["rank_grams"] = jnp.einsum("nja,njb->jab", Jr, Jr)
            return out

        sums = self._sum_over_data(fn)
        full_jac = None
        if jac:
            if self.chunked:
                raise ValueError("the full Jacobian is not formed when the data are chunked")
            full_jac = self._chunk_terms(delta, self.x, self.y, None, self._basis())[2]
        return NormalEquations(
            loss=sums["loss"], g=sums["g"], diag=sums["diag"], gram=sums.get("gram"),
            rank_grams=sums.get("rank_grams"), jac=full_jac,
        )

    def gram_matvec(self, delta: Array, v: Array) -> Array:
        """``J^T (J v)`` at ``Theta + delta`` without forming ``J``: a JVP and a VJP of the
        residuals per chunk (one pass)."""
        v = v.reshape(self.theta.shape)

        def fn(x, y, w, basis):
            def res(d):
                return self._chunk_residuals(d, x, y, w, basis)

            _, jv = jax.jvp(res, (delta,), (v,))
            _, pullback = jax.vjp(res, delta)
            return pullback(jv)[0].reshape(-1)

        return self._sum_over_data(fn)

    def geodesic_rhs(self, delta: Array, v: Array) -> Array:
        """``J^T r_vv``, with ``r_vv = d^2/dt^2 r(Theta + delta + t v)`` at ``t = 0`` (exact: a
        JVP of a JVP of the values), per chunk (one pass)."""
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
        """Per-term diagonal blocks of the Jacobian of ``F`` (the Hessian of ``Phi``).

        Built with ``jax.jacfwd`` of one term's part of ``F`` (``m`` tangents) vmapped over
        the terms, shape ``(terms, m, m)``, summed over the data. With ``residual_only=True``
        the residuals are held fixed, which leaves the residual-weighted part
        ``2 sum_n r_n Hess T_j(x_n)``; the full block is that plus ``2 J_j^T J_j``. Cost: ``m``
        forward tangents of one pass over the data per term.
        """

        def fn(x, y, w, basis):
            values = self._term_values(delta, x, basis)
            residual = jnp.sum(values, axis=1) - y
            others = residual[:, None] - values  # residual without term j's own value
            weight = jnp.ones_like(y) if w is None else w
            by_term = self._basis_by_term(x.shape[0]) if basis is None else basis

            def term_gradient(delta_j, theta_j, basis_j, others_j):
                t_j, g_j = self._one_term(theta_j, delta_j, x, None if basis is None else basis_j)
                r = weight * (others_j + (jax.lax.stop_gradient(t_j) if residual_only else t_j))
                return 2 * (r @ (weight[:, None] * g_j))

            def block(delta_j, theta_j, basis_j, others_j):
                return jax.jacfwd(
                    lambda dj: term_gradient(dj.reshape(delta_j.shape), theta_j, basis_j, others_j)
                )(delta_j.reshape(-1))

            return jax.vmap(block, in_axes=(0, 0, 1, 1))(delta, self.theta, by_term, others)

        return self._sum_over_data(fn)

    # -- the full vectors (unchunked) ----------------------------------------------------------

    def residuals(self, delta: Array) -> Array:
        """Residuals ``f(x_n) - y_n`` at ``Theta + delta`` (values only)."""
        return self._chunk_residuals(delta, self.x, self.y, None, self._basis())

    def residual_and_jacobian(self, delta: Array) -> tuple[Array, Array]:
        """Residuals ``f(x_n) - y_n`` and the Jacobian of ``f``, ``(N, M)`` term-major."""
        _, r, jac = self._chunk_terms(delta, self.x, self.y, None, self._basis())
        return r, jac

    def gradient(self, delta: Array) -> Array:
        """``F(delta) = grad Phi(Theta + delta) = 2 J^T r``, shaped like ``theta``."""
        return (2 * self.normal_equations(delta, gram=False).g).reshape(self.theta.shape)


class AIONResummation(DataProblem):
    """An AION problem over its data, evaluated through the resummation.

    With the data whole, the basis ``exp(z(x_n; Theta))`` is stored (``N r d P`` complex
    numbers) and each evaluation applies the shift ``exp(<a, Delta>)``. In chunks, the
    exponentials are evaluated per chunk at ``Theta + Delta`` (the same numbers, nothing
    ``N``-sized stored). The closed-form Jacobian makes a pass several times cheaper than
    autodiff of the model.
    """

    basis: Complex[Array, "N rank dim terms"] | None

    def __init__(self, model: AION, x: Array, y: Array, chunk_size: int | None = None):
        self.theta = stack_params(model)
        self.num_data = x.shape[0]
        self.x, self.y, self.weight = chunk_data(x, y, chunk_size)
        self.basis = None
        if self.weight is None:
            self.basis = atom_exponentials(
                model.alpha[None], model.omega[None], model.phi[None], x[:, None, :]
            )

    def _basis(self):
        return self.basis

    def _terms(self, delta, x, basis):
        values, grads = aion_terms(self.theta, delta, basis, x)
        return values, grads.reshape(*grads.shape[:2], -1)

    def _term_values(self, delta, x, basis):
        return aion_values(self.theta, delta, basis, x)

    def _one_term(self, theta_j, delta_j, x, basis_j):
        b = None if basis_j is None else basis_j[:, None]
        t, g = aion_terms(theta_j[None], delta_j[None], b, x)
        return t[:, 0], g.reshape(g.shape[0], -1)

    def rank_terms(self, delta: Array) -> tuple[Array, Array]:
        """Per-rank values ``(N, r)`` and gradients ``(N, r, 4, d', P)`` at ``Theta + delta``."""
        return aion_terms(self.theta, delta, self.basis, self.x)

    def to_model(self, theta: Array, like):
        return unstack_params(theta, like)


class ResummedResidual(eqx.Module):
    """``F(delta) = grad Phi(model + delta)``, a pure function of the shift ``delta``.

    Returned by :func:`infinite_descent.resummed_residual`. Call it with ``delta`` shaped like
    ``eqx.filter(model, eqx.is_inexact_array)`` (zeros = no shift); it returns the gradient in
    that same structure, as ``eqx.filter_grad`` would.

    Besides ``__call__`` it offers ``loss(delta)`` (``Phi`` at ``model + delta``) and
    ``rank_blocks(delta)`` (the per-rank diagonal blocks of the Jacobian of ``F``, which is the
    Hessian of ``Phi``; shape ``(rank, m, m)``, each rank's parameters ordered
    ``A, alpha, omega, phi`` and, within each, row-major over ``(dims, terms)``).
    """

    resummation: DataProblem  # AION's, GaussianAtoms', a grid's, or the autodiff one
    structure: object  # the filtered model, used as the template for inputs and outputs

    def _stack(self, delta):
        from ._terms import stack_tree

        return stack_tree(self.structure, delta)

    # Each method is compiled once per shape (eqx.filter_jit), so that calling F eagerly is
    # as fast as calling it inside the user's own jit.
    @eqx.filter_jit
    def __call__(self, delta):
        from ._terms import unstack_tree

        gradient = self.resummation.gradient(self._stack(delta))
        return eqx.filter(unstack_tree(self.structure, gradient), eqx.is_inexact_array)

    @eqx.filter_jit
    def loss(self, delta) -> Array:
        """``Phi = sum_n (f(x_n) - y_n)^2`` at ``model + delta``."""
        return self.resummation.normal_equations(self._stack(delta), gram=False).loss

    @eqx.filter_jit
    def rank_blocks(self, delta) -> Array:
        """Per-rank Hessian blocks of ``Phi`` at ``model + delta``, shape ``(rank, m, m)``."""
        return self.resummation.rank_blocks(self._stack(delta))
