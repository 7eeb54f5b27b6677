"""Manifold geometries: the hypersphere, the Stiefel manifold (manifold Muon) and the spectral sphere.

A manifold geometry is a ``Norm`` (the norm that measures tangent vectors) with four more methods:

``lmo_at(x, g)``
    The point-dependent oracle ``argmin { <g, v> : v tangent at x, ||v|| <= 1 }``.
``retract(x, step)``
    A retraction: a point of the manifold near ``x + step`` (for ``step`` tangent at ``x``).
``tangent_residual(x, v)``
    How far ``v`` is from the tangent space at ``x``, relative to ``||v||`` (0 for a tangent vector); one value per
    batch entry.
``project(x)``
    The nearest point of the manifold (for initialisation and for the tests).

The plain contract methods ``norm``/``dual_norm``/``lmo`` are those of the ambient norm (no tangency constraint),
so a manifold geometry can also be used where any norm is expected. Leading axes are batch axes throughout.
Stiefel's and the spectral sphere's oracles use the Euclidean (Frobenius) inner product; ``x`` is assumed on the
manifold (``project`` it first otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from lmo.backend import Array, Namespace, device, namespace, safe_divide, vdot, widen
from lmo.norm import Norm, Reference

from . import _references
from .polar_solvers import polar
from .spectral import Spectral, _svdvals
from .vector import L2

__all__ = ["Sphere", "Stiefel", "SpectralSphere", "StiefelInfo"]


def _check_pair(norm: Norm, x: Array, v: Array, vname: str = "g") -> None:
    if tuple(x.shape) != tuple(v.shape):
        raise ValueError(f"{norm!r}: x and {vname} must have the same shape; got {tuple(x.shape)} and {tuple(v.shape)}")


class Sphere(L2, name="sphere"):
    """The hypersphere ``{x : ||x||_2 = radius}`` over the trailing ``ndim`` axes, with the l2 norm on tangent vectors.

    Tangent space at ``x``: ``{v : <x, v> = 0}``. ``lmo_at(x, g) = -P g / ||P g||`` with
    ``P g = g - <x, g> x / ||x||^2`` (0 when ``g`` is normal to the sphere). ``retract(x, step) = radius (x + step) /
    ||x + step||`` (normalisation). Plain ``lmo``/``norm``/``dual_norm``: the ambient l2 geometry.
    """

    radius: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.radius, bool) or not isinstance(self.radius, (int, float)) or not 0 < self.radius < math.inf:
            raise ValueError(f"Sphere: radius must be a finite number > 0; got radius={self.radius!r}")

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(), cls(ndim=2, radius=2.0))

    def reference_cases(self) -> Iterable[Reference]:
        shapes = {1: ((9,), (3, 9)), 2: ((4, 6),)}.get(self.ndim, ())
        return _references.sphere_cases(self.ndim, self.radius, shapes)

    def _expand(self, xp: Namespace, v: Array) -> Array:
        return xp.reshape(v, tuple(v.shape) + (1,) * self.ndim)

    def project(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        return narrow(self.radius * self._length(xp, x)[1])

    def tangent_component(self, x: Array, g: Array) -> Array:
        """``P g = g - <x, g> x / ||x||^2``."""
        _check_pair(self, x, g)
        xp, g, narrow = self._prepare(g)
        _, u = self._length(xp, widen(xp, x)[0])
        return narrow(g - self._expand(xp, vdot(xp, u, g, self.ndim)) * u)

    def lmo_at(self, x: Array, g: Array) -> Array:
        """``-P g / ||P g||``; 0 when ``P g`` is rounding noise (``||P g|| <= 16 n eps ||g||``): ``g`` normal to the
        sphere has no descent direction, and normalising the noise would return an arbitrary one."""
        xp, g, narrow = self._prepare(g)
        pg = self.tangent_component(x, g)
        n = self._size(g)
        noise = 16 * n * xp.finfo(g.dtype).eps * self._length(xp, g)[0]
        live = xp.astype(self._length(xp, pg)[0] > noise, g.dtype)
        return narrow(-self._length(xp, pg)[1] * live)

    def retract(self, x: Array, step: Array) -> Array:
        _check_pair(self, x, step, "step")
        return self.project(x + step)

    def tangent_residual(self, x: Array, v: Array) -> Array:
        _check_pair(self, x, v, "v")
        xp, v, narrow = self._prepare(v, "v")
        _, u = self._length(xp, widen(xp, x)[0])
        _, w = self._length(xp, v)
        return narrow(xp.abs(vdot(xp, u, w, self.ndim)))


class StiefelInfo(tuple):
    """``(direction, gap, residual, steps)`` returned by ``Stiefel.lmo_at(..., info=True)``.

    ``gap`` (per batch entry) certifies optimality: ``<g, direction> - OPT <= gap``, where ``OPT`` is the optimal
    value (weak duality: ``OPT >= -||G + W L||_*`` for every symmetric ``L``); ``residual`` is
    ``||W^T A + A^T W||_F`` of the solver's iterate before the final tangent projection; ``steps`` counts the solver's
    iterations (0 for the closed form).
    """

    __slots__ = ()

    def __new__(cls, direction: Array, gap: Array, residual: Array, steps: int) -> StiefelInfo:
        return super().__new__(cls, (direction, gap, residual, steps))

    direction = property(lambda self: self[0])
    gap = property(lambda self: self[1])
    residual = property(lambda self: self[2])
    steps = property(lambda self: self[3])


class Stiefel(Spectral, name="stiefel"):
    """The Stiefel manifold ``{W in R^(m x n) : W^T W = I}`` (``m >= n``) with the spectral norm on tangent vectors:
    the geometry of manifold Muon (Bernstein, "Modular manifolds", Thinking Machines Lab 2025).

    Tangent space at ``W``: ``{A : W^T A + A^T W = 0}``. ``lmo_at(W, G) = argmin <G, A>`` over tangent ``A`` with
    ``||A||_2 <= 1``, a convex problem (a semidefinite program) whose dual is ``OPT = -min_L ||G + W L||_*`` over
    symmetric ``L``:

    - square ``W`` (``m = n``): ``A = W K``, ``K`` skew, so ``lmo_at = -W msign(skew(W^T G))`` (closed form, exact);
    - tall ``W``: no closed form, and the dual is non-smooth where it matters: on nearly square shapes (measured: for
      random ``G`` whenever ``m - n < n`` and ``n - (m - n)`` is odd, as (7, 5), (9, 5), (7, 6)) the optimal
      ``G + W L`` is rank-deficient and the optimal ``A`` has a singular value below 1, so ``A = -msign(G + W L)``
      (what dual ascent returns) is not the answer for any ``L``. It is solved by the proximal point method on
      the primal, ``A_(k+1) = argmin { <G, A> + (eps_k / 2) ||A - A_k||_F^2 : A tangent, ||A||_2 <= 1 }``
      with ``eps_k`` shrinking (``eps_0 = 10^-2 ||P G||_2``, factor 1/5 per round), each round solved through its
      smooth dual: ``A(L) = -U min(S / eps, 1) V^T`` for ``G + W L - eps A_k = U S V^T``, and ``L`` solves
      ``sym(W^T A(L)) = 0`` by a semismooth Newton method (conjugate gradients on the exact generalised Jacobian,
      Levenberg-Marquardt damping with a ratio test). Rounds stop when the duality gap
      ``<G, A> + ||G + W L||_*`` is at most ``tol`` times ``|OPT|``, or after ``max_steps`` iterations in all
      (Newton trials and round changes; each costs one SVD of an ``m x n`` matrix and conjugate-gradient
      products of ``n x n`` ones).

    The result is projected onto the tangent space and rescaled into the unit ball, so it is always feasible;
    ``lmo_at(..., info=True)`` also returns the gap certificate (:class:`StiefelInfo`). On inputs whose gap target is
    met the answer is optimal to ``tol`` relative (1e-7 by default in float64; the target is floored at
    ``100 eps`` of the working dtype); where ``max_steps`` runs out first, ``info`` says by how much it is not.

    ``retract(W, step)``: ``retraction="polar"`` (``msign(W + step)``, the closest Stiefel point) or ``"qr"`` (Q of the
    QR factorisation with the signs fixed so that ``diag(R) > 0``). msign is computed by the ``spectral`` solver
    (``method`` etc.; exact SVD by default) for the closed form and the retraction; the tall solver needs singular
    vectors and always uses the SVD. Plain ``norm``/``dual_norm``/``lmo``: the ambient spectral geometry.
    """

    retraction: str = "polar"
    tol: float = 1e-7
    max_steps: int = 400

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retraction not in ("polar", "qr"):
            raise ValueError(f"Stiefel: retraction must be 'polar' or 'qr'; got retraction={self.retraction!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not 0 < self.tol < 1:
            raise ValueError(f"Stiefel: tol must be a number in (0, 1); got tol={self.tol!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"Stiefel: max_steps must be an int >= 1; got max_steps={self.max_steps!r}")

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(), cls(retraction="qr"))

    def reference_cases(self) -> Iterable[Reference]:
        return _references.stiefel_cases(lambda m, n: _references.spectral_factor(self.scale, m, n))

    def _point(self, x: Array) -> tuple[Namespace, Array]:
        xp = namespace(x)
        if x.ndim < 2 or x.shape[-2] < x.shape[-1]:
            raise ValueError(f"{self!r}: a Stiefel point is a tall matrix (m >= n); got shape {tuple(x.shape)}")
        return xp, widen(xp, x, name="x")[0]

    def project(self, x: Array) -> Array:
        xp, w = self._point(x)
        return xp.astype(self.solver(w), x.dtype)

    def retract(self, x: Array, step: Array) -> Array:
        _check_pair(self, x, step, "step")
        if self.retraction == "polar":
            return self.project(x + step)
        xp, y = self._point(x + step)
        q, r = xp.linalg.qr(y)
        d = xp.linalg.diagonal(r)
        sign = xp.where(d < 0, -xp.ones_like(d), xp.ones_like(d))
        return xp.astype(q * sign[..., None, :], x.dtype)

    def tangent_residual(self, x: Array, v: Array) -> Array:
        _check_pair(self, x, v, "v")
        xp, w = self._point(x)
        v = widen(xp, v, name="v")[0]
        h = xp.matmul(xp.matrix_transpose(w), v)
        res = _fro(xp, h + xp.matrix_transpose(h))
        return xp.astype(safe_divide(xp, res, _fro(xp, v)), x.dtype)

    def lmo_at(self, x: Array, g: Array, *, info: bool = False) -> Any:
        _check_pair(self, x, g)
        xp, w = self._point(x)
        _, g, narrow = self._prepare(g)
        w = xp.astype(w, g.dtype)
        if xp.finfo(x.dtype).bits < 32:  # a half-precision point is orthonormal to ~1e-3 only: take the nearest one
            w = polar(w)
        if w.shape[-2] == w.shape[-1]:
            a, gap, residual, steps = self._square(xp, w, g)
        else:
            a, gap, residual, steps = _TangentSolver(xp, w, g, self.tol, self.max_steps).run()
        direction = narrow(a * self._factor(tuple(a.shape[-2:])))
        if not info:
            return direction
        return StiefelInfo(direction, narrow(gap), narrow(residual), steps)

    def _square(self, xp: Namespace, w: Array, g: Array) -> tuple[Array, Array, Array, int]:
        """``-W msign(skew(W^T G))``, exact: ``A = W K`` is tangent iff ``K`` is skew, and the polar factor of a
        skew matrix is skew."""
        k = _skew(xp, xp.matmul(xp.matrix_transpose(w), g))
        k = xp.where(_fro(xp, k)[..., None, None] > _noise(xp, g), k, xp.zeros_like(k))
        a, residual = _feasible(xp, w, -xp.matmul(w, self.solver(k)))
        gap = _gap(xp, g, a, k)  # dual point L = -sym(W^T G): G + W L = W skew(W^T G), of nuclear norm ||k||_*
        return a, gap, residual, 0


def _sym(xp: Namespace, a: Array) -> Array:
    return 0.5 * (a + xp.matrix_transpose(a))


def _skew(xp: Namespace, a: Array) -> Array:
    return 0.5 * (a - xp.matrix_transpose(a))


def _dot(xp: Namespace, a: Array, b: Array) -> Array:
    """``<a, b>`` per batch entry, shape ``(*batch, 1, 1)``."""
    return xp.sum(a * b, axis=(-2, -1), keepdims=True)


def _feasible(xp: Namespace, w: Array, a: Array) -> tuple[Array, Array]:
    """The exact tangent projection of ``a``, rescaled into the unit spectral ball; and ``||W^T a + a^T W||_F``."""
    h = xp.matmul(xp.matrix_transpose(w), a)
    residual = _fro(xp, h + xp.matrix_transpose(h))
    a = a - xp.matmul(w, _sym(xp, h))
    top = xp.linalg.svdvals(a)[..., :1, None]
    return a / xp.maximum(top, xp.ones_like(top)), residual


def _noise(xp: Namespace, g: Array) -> Array:
    """The rounding level of ``g``'s tangent part (shape ``(*batch, 1, 1)``): a gradient whose tangent part is below
    it is normal to the manifold, has no descent direction, and gets 0 (normalising the noise would return an
    arbitrary direction)."""
    return 16 * (g.shape[-2] + g.shape[-1]) * xp.finfo(g.dtype).eps * _fro(xp, g)[..., None, None]


def _gap(xp: Namespace, g: Array, a: Array, dual_point: Array) -> Array:
    """``<g, a> + ||dual_point||_*`` (clipped at 0): an upper bound on ``<g, a> - OPT`` when ``a`` is feasible and
    ``dual_point = G + W L`` for a symmetric ``L``."""
    gap = xp.sum(g * a, axis=(-2, -1)) + xp.sum(xp.linalg.svdvals(dual_point), axis=-1)
    return xp.maximum(gap, xp.zeros_like(gap))


class _TangentSolver:
    """The tall-``W`` tangent oracle of :class:`Stiefel` (see its docstring), batched over the leading axes.

    Everything runs on the tangent component ``P G = G - W sym(W^T G)`` divided by its spectral norm (the oracle is
    invariant under both). Per batch entry the state is the multiplier ``L`` (``n x n`` symmetric), the proximal
    centre ``A_k``, the regularisation ``eps`` and the damping ``mu`` (relative to ``1 / eps``). With
    ``X = G + W L - eps A_k = U S V^T`` and ``f(s) = min(s / eps, 1)``, the dual of a round is the concave
    ``theta(L) = <G + W L, A> + (eps / 2) ||A - A_k||^2`` at ``A = -U f(S) V^T``, with gradient ``F = sym(W^T A)``
    and generalised Hessian ``-J``: ``J[D] = sym(W^T DF[W D])``, where ``DF`` is the derivative of the spectral
    function ``X -> U f(S) V^T`` (divided differences of ``f`` on the symmetric and skew parts of ``U^T E V``,
    ``f(s) / s`` on the complement of the range). With ``C = W^T U`` all of it is ``n x n`` work.
    """

    _EPS0 = 1e-2  # first regularisation, relative to ||P G||_2
    _SHRINK = 0.2
    _CG_STEPS = 100

    def __init__(self, xp: Namespace, w: Array, g: Array, tol: float, max_steps: int) -> None:
        self.xp, self.w, self.max_steps = xp, w, max_steps
        self.wt = xp.matrix_transpose(w)
        eps_dtype = float(xp.finfo(g.dtype).eps)
        self.tol = max(tol, 100 * eps_dtype)
        self.noise = 100 * eps_dtype  # predicted changes below this (relative to |theta|) are rounding
        self.eps_min = max(1e-9, 1e4 * eps_dtype)
        gt = g - xp.matmul(w, _sym(xp, xp.matmul(self.wt, g)))
        scale = xp.linalg.svdvals(gt)[..., :1, None]
        self.scale = xp.where(scale > _noise(xp, g), scale, xp.zeros_like(scale))
        self.g = safe_divide(xp, gt, self.scale)
        batch, n = tuple(g.shape[:-2]), g.shape[-1]
        ones = xp.ones((*batch, 1, 1), dtype=g.dtype, device=device(g))
        self.lam = xp.zeros((*batch, n, n), dtype=g.dtype, device=device(g))
        self.centre = xp.zeros_like(self.g)
        self.eps = self._EPS0 * ones
        self.mu = 1e-2 * ones
        self.inner_tol = 1e-2 * ones
        self.done = self.scale[..., 0, 0] <= 0  # a normal gradient: the answer is 0

    # -- one evaluation of the round's dual -------------------------------------------------------------------
    def _evaluate(self, lam: Array) -> dict[str, Array]:
        xp = self.xp
        y = self.g + xp.matmul(self.w, lam)
        u, s, vh = xp.linalg.svd(y - self.eps * self.centre, full_matrices=False)
        f = xp.minimum(s / self.eps[..., 0], xp.ones_like(s))
        a = -xp.matmul(u * f[..., None, :], vh)
        theta = _dot(xp, y, a) + 0.5 * self.eps * _dot(xp, a - self.centre, a - self.centre)
        grad = _sym(xp, xp.matmul(self.wt, a))
        return {"u": u, "s": s, "vh": vh, "f": f, "a": a, "theta": theta, "grad": grad,
                "gnorm": xp.sqrt(_dot(xp, grad, grad))}

    def _jacobian(self, st: dict[str, Array]) -> Any:
        """``D -> J[D]`` at the evaluation ``st``."""
        xp = self.xp
        s, f, eps = st["s"], st["f"], self.eps
        c = xp.matmul(self.wt, st["u"])
        v, vh = xp.matrix_transpose(st["vh"]), st["vh"]
        si, sj, fi, fj = s[..., :, None], s[..., None, :], f[..., :, None], f[..., None, :]
        inv = 1.0 / eps  # (..., 1, 1)
        above = (si >= eps) & (sj >= eps)
        below = (si < eps) & (sj < eps)
        # divided differences of f: 0 where both values are above eps, 1/eps where both are below; a straddling
        # pair differs by more than 0, so its quotient is well defined (and at most 1/eps)
        apart = xp.where(above | below, xp.ones_like(si - sj), si - sj)
        gam_sym = xp.where(above, xp.zeros_like(apart), xp.where(below, inv, (fi - fj) / apart))
        total = si + sj
        gam_skew = xp.where(total > 0, (fi + fj) / xp.where(total > 0, total, xp.ones_like(total)), inv)
        ratio = xp.where(s > 0, f / xp.where(s > 0, s, xp.ones_like(s)), inv[..., 0])  # f(s) / s; 1/eps at 0

        def apply(d: Array) -> Array:
            dv = xp.matmul(d, v)
            t = xp.matmul(xp.matrix_transpose(c), dv)
            inner = gam_sym * _sym(xp, t) + gam_skew * _skew(xp, t)
            out = xp.matmul(xp.matmul(c, inner) + (dv - xp.matmul(c, t)) * ratio[..., None, :], vh)
            return _sym(xp, out)

        # preconditioner: the Lyapunov operator D -> sym(D V diag(f(s)/s) V^T) (the range-complement part of J when
        # W^T U = 0), inverted in the basis of V
        lyap = 0.5 * (ratio[..., :, None] + ratio[..., None, :])

        def solve(r: Array, damp: Array) -> Array:
            return xp.matmul(v, xp.matmul(xp.matmul(vh, xp.matmul(r, v)) / (lyap + damp), vh))

        return apply, solve

    def _newton_direction(self, st: dict[str, Array], active: Array) -> tuple[Array, Array]:
        """Conjugate gradients on ``(J + mu / eps) D = F`` for the active entries; returns ``D`` and the predicted
        increase ``<F, D> - <D, J D> / 2``."""
        xp = self.xp
        jac, precondition = self._jacobian(st)
        damp = self.mu / self.eps
        rhs = xp.where(active[..., None, None], st["grad"], xp.zeros_like(st["grad"]))
        target = xp.minimum(0.1 * xp.ones_like(st["gnorm"]), st["gnorm"]) * st["gnorm"]
        d = xp.zeros_like(rhs)
        r = rhs
        z = precondition(r, damp)
        p = z
        rz = _dot(xp, r, z)
        live = active[..., None, None] & (rz > 0)
        for _ in range(self._CG_STEPS):
            hp = jac(p) + damp * p
            php = _dot(xp, p, hp)
            live = live & (php > 0)
            alpha = xp.where(live, rz / xp.where(live, php, xp.ones_like(php)), xp.zeros_like(php))
            d = d + alpha * p
            r = r - alpha * hp
            live = live & (xp.sqrt(_dot(xp, r, r)) > target)
            if not bool(xp.any(live)):
                break
            z = precondition(r, damp)
            rz_new = _dot(xp, r, z)
            beta = xp.where(live, rz_new / xp.where(rz > 0, rz, xp.ones_like(rz)), xp.zeros_like(rz))
            p = z + beta * p
            rz = rz_new
        pred = _dot(xp, rhs, d) - 0.5 * _dot(xp, d, jac(d))
        return d, pred

    def _certify(self, st: dict[str, Array]) -> tuple[Array, Array, Array]:
        """The feasible point of ``st``, its duality gap, and the gap relative to the dual bound (per entry)."""
        xp = self.xp
        a, _ = _feasible(xp, self.w, st["a"])
        dual_point = self.g + xp.matmul(self.w, self.lam)
        gap = _gap(xp, self.g, a, dual_point)
        return a, gap, safe_divide(xp, gap, xp.sum(xp.linalg.svdvals(dual_point), axis=-1))

    def run(self) -> tuple[Array, Array, Array, int]:
        xp = self.xp
        st = self._evaluate(self.lam)
        steps = 0
        _, _, rel = self._certify(st)
        self.done = self.done | (rel <= self.tol)
        while steps < self.max_steps and not bool(xp.all(self.done)):
            inner = ~self.done & (st["gnorm"][..., 0, 0] > self.inner_tol[..., 0, 0])
            if not bool(xp.any(inner)):
                # every open entry solved its round: certify, then move the centre and shrink eps
                _, _, rel = self._certify(st)
                self.done = self.done | (rel <= self.tol)
                move = ~self.done[..., None, None]
                self.centre = xp.where(move, st["a"], self.centre)
                self.eps = xp.where(move, xp.clip(self.eps * self._SHRINK, self.eps_min, None), self.eps)
                # the next round is solved to a gradient norm that keeps pace with the gap
                target = xp.clip(1e-2 * rel[..., None, None], 0.1 * self.noise, 1e-2)
                self.inner_tol = xp.where(move, target, self.inner_tol)
                st = self._evaluate(self.lam)
                steps += 1
                continue
            d, pred = self._newton_direction(st, inner)
            trial = self._evaluate(self.lam + d)
            steps += 1
            # Levenberg-Marquardt ratio test; below rounding level the gradient norm decides
            active = inner[..., None, None]
            rounding = pred <= self.noise * (1 + xp.abs(st["theta"]))
            rho = (trial["theta"] - st["theta"]) / xp.where(rounding, xp.ones_like(pred), pred)
            ok = active & xp.where(rounding, trial["gnorm"] < st["gnorm"], rho > 1e-4)
            good = ok & (rounding | (rho > 0.5))
            poor = active & ~good & (~ok | (rho < 0.1))
            # an entry whose most damped step cannot improve beyond rounding has solved its round
            stuck = active & ~ok & rounding & (self.mu >= 1)
            self.inner_tol = xp.where(stuck, 2 * st["gnorm"], self.inner_tol)
            self.mu = xp.where(good, xp.clip(self.mu / 10, 1e-12, 1.0),
                               xp.where(poor, xp.clip(self.mu * 10, 1e-12, 1.0), self.mu))
            self.lam = xp.where(ok, self.lam + d, self.lam)
            st = {k: xp.where(_expand(ok, v), trial[k], v) for k, v in st.items()}
        a, gap, _ = self._certify(st)
        _, residual = _feasible(xp, self.w, st["a"])
        return a, gap * self.scale[..., 0, 0], residual, steps


def _expand(mask: Array, like: Array) -> Array:
    """``mask`` (shape ``(*batch, 1, 1)``) reshaped to broadcast against ``like`` (shape ``(*batch, ...)``)."""
    batch = tuple(mask.shape[:-2])
    return namespace(mask).reshape(mask, batch + (1,) * (like.ndim - len(batch)))


def _fro(xp: Namespace, x: Array) -> Array:
    m = xp.max(xp.abs(x), axis=(-2, -1), keepdims=True)
    u = safe_divide(xp, x, m)
    return m[..., 0, 0] * xp.sqrt(xp.sum(u * u, axis=(-2, -1)))


class SpectralSphere(Spectral, name="spectral_sphere"):
    """The spectral sphere ``{W : ||W||_2 = radius}`` with the spectral norm on tangent vectors.

    Where the top singular value of ``W`` is simple, with singular vectors ``u1, v1``, the tangent space is
    ``{A : <Theta, A> = 0}``, ``Theta = u1 v1^T``. ``lmo_at(W, G) = argmin <G, A>`` over tangent ``A`` with
    ``||A||_2 <= 1`` is ``A = -msign(G - lam Theta)`` where ``lam`` solves ``<Theta, msign(G - lam Theta)> = 0``:
    the derivative of the convex dual ``||G - lam Theta||_*``, monotone in ``lam``, so ``lam`` is found by bisection
    (``bisection_steps``) after bracketing by doubling. Where ``G - lam Theta`` is singular at the optimum (generic
    for square matrices), ``msign`` is zero on its null pair ``u_k v_k^T`` and not the argmin: the subgradient
    ``-(U_r V_r^T + t u_k v_k^T)`` with ``t`` in ``[-1, 1]`` chosen by ``<Theta, A> = 0`` is (an SVD). The result is
    projected onto the tangent space (``A - <Theta, A> Theta``) and rescaled into the unit ball.
    ``retract(W, step) = radius (W + step) / ||W + step||_2``. Plain ``norm``/``dual_norm``/``lmo``: the ambient
    spectral geometry.
    """

    radius: float = 1.0
    bisection_steps: int = 60

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.radius, bool) or not isinstance(self.radius, (int, float)) or not 0 < self.radius < math.inf:
            raise ValueError(f"SpectralSphere: radius must be a finite number > 0; got radius={self.radius!r}")
        if isinstance(self.bisection_steps, bool) or not isinstance(self.bisection_steps, int) or not (
            1 <= self.bisection_steps <= 200
        ):
            raise ValueError(
                f"SpectralSphere: bisection_steps must be an int in [1, 200]; got {self.bisection_steps!r}")

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(), cls(radius=3.0))

    def reference_cases(self) -> Iterable[Reference]:
        return _references.spectral_sphere_cases(
            self.radius, lambda m, n: _references.spectral_factor(self.scale, m, n))

    def _theta(self, xp: Namespace, w: Array) -> Array:
        _, u = _peak_div(xp, w)
        uu, _, vh = xp.linalg.svd(u, full_matrices=False)
        return uu[..., :, :1] * vh[..., :1, :]

    def project(self, x: Array) -> Array:
        xp, w, narrow = self._prepare(x, "x")
        m, s = _svdvals(xp, w)
        top = xp.reshape(m * s[..., 0], (*s.shape[:-1], 1, 1))
        return narrow(self.radius * safe_divide(xp, w, top))

    def retract(self, x: Array, step: Array) -> Array:
        _check_pair(self, x, step, "step")
        return self.project(x + step)

    def tangent_residual(self, x: Array, v: Array) -> Array:
        _check_pair(self, x, v, "v")
        xp, w, _ = self._prepare(x, "x")
        _, v, narrow = self._prepare(v, "v")
        theta = self._theta(xp, w)
        return narrow(safe_divide(xp, xp.abs(vdot(xp, theta, v, 2)), _fro(xp, v)))

    def lmo_at(self, x: Array, g: Array) -> Array:
        _check_pair(self, x, g)
        xp, w, _ = self._prepare(x, "x")
        _, g, narrow = self._prepare(g)
        _, gs = _peak_div(xp, g)
        theta = self._theta(xp, w)
        batch = tuple(gs.shape[:-2])

        def slope(lam: Array) -> Array:  # <Theta, msign(G - lam Theta)>, decreasing in lam
            return vdot(xp, theta, self.solver(gs - xp.reshape(lam, (*batch, 1, 1)) * theta), 2)

        width = _fro(xp, gs) + 1.0
        lo, hi = -width, width
        for _ in range(60):  # bracket: slope(lo) >= 0 >= slope(hi)
            bad_lo, bad_hi = slope(lo) < 0, slope(hi) > 0
            if not bool(xp.any(bad_lo | bad_hi)):
                break
            lo = xp.where(bad_lo, 2.0 * lo, lo)
            hi = xp.where(bad_hi, 2.0 * hi, hi)
        for _ in range(self.bisection_steps):
            mid = 0.5 * (lo + hi)
            pos = slope(mid) > 0
            lo, hi = xp.where(pos, mid, lo), xp.where(pos, hi, mid)
        lam = xp.reshape(0.5 * (lo + hi), (*batch, 1, 1))
        # A = -(U_r V_r^T + t u_k v_k^T), a subgradient of ||G - lam Theta||_*: where the smallest singular value is
        # (numerically) zero -- generic for square matrices at the optimal lam -- its weight t in [-1, 1] is free and
        # is chosen to make A tangent; elsewhere t = 1 (the polar factor). msign alone would leave t = 0.
        u, s, vh = xp.linalg.svd(gs - lam * theta, full_matrices=False)
        k = s.shape[-1]
        head = xp.matmul(u[..., :, : k - 1], vh[..., : k - 1, :])
        last = u[..., :, k - 1 :] * vh[..., k - 1 : k, :]
        on_head, on_last = vdot(xp, theta, head, 2), vdot(xp, theta, last, 2)
        null = (s[..., k - 1] <= s[..., 0] * xp.finfo(s.dtype).eps ** 0.5) & (xp.abs(on_last) > 0)
        t = xp.where(null, xp.clip(-on_head / xp.where(null, on_last, xp.ones_like(on_last)), -1.0, 1.0),
                     xp.ones_like(on_last))
        a = -(head + xp.reshape(t, (*batch, 1, 1)) * last)
        a = a - xp.reshape(vdot(xp, theta, a, 2), (*batch, 1, 1)) * theta
        mm, sv = _svdvals(xp, a)
        a = a / xp.reshape(xp.maximum(mm * sv[..., 0], xp.ones_like(mm)), (*batch, 1, 1))
        return narrow(a * self._factor(tuple(a.shape[-2:])))


def _peak_div(xp: Namespace, x: Array) -> tuple[Array, Array]:
    m = xp.max(xp.abs(x), axis=(-2, -1), keepdims=True)
    return m, safe_divide(xp, x, m)
