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
        _check_pair(self, x, g)
        xp, g, narrow = self._prepare(g)
        _, u = self._length(xp, widen(xp, x)[0])
        pg = g - self._expand(xp, vdot(xp, u, g, self.ndim)) * u
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
    value; ``residual`` is ``||W^T A + A^T W||_F`` of the dual iterate before the final tangent projection.
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
    ``||A||_2 <= 1``:

    - square ``W`` (``m = n``): ``A = W K``, ``K`` skew, so ``lmo_at = -W msign(skew(W^T G))`` (closed form, exact);
    - tall ``W``: Lagrangian duality with a symmetric multiplier ``L``: ``A(L) = -msign(G + 2 W L)``, and the dual
      ``max_L -||G + 2 W L||_*`` is climbed by subgradient steps ``L <- L + alpha_k sym(W^T A(L))`` (``alpha_k =
      step_size * ||G||_2 / sqrt(k + 1)``) until ``||W^T A + A^T W||_F <= tol`` or ``max_steps``. The result is projected
      onto the tangent space and rescaled into the unit ball, so it is always feasible; ``lmo_at(..., info=True)``
      also returns the duality-gap certificate ``<G, A> + ||G + 2 W L||_* >= <G, A> - OPT``.

    ``retract(W, step)``: ``retraction="polar"`` (``msign(W + step)``, the closest Stiefel point) or ``"qr"`` (Q of the
    QR factorisation with the signs fixed so that ``diag(R) > 0``). msign is computed by the ``spectral`` solver
    (``method`` etc.; exact SVD by default). Plain ``norm``/``dual_norm``/``lmo``: the ambient spectral geometry.
    """

    retraction: str = "polar"
    tol: float = 1e-6
    max_steps: int = 500
    step_size: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retraction not in ("polar", "qr"):
            raise ValueError(f"Stiefel: retraction must be 'polar' or 'qr'; got retraction={self.retraction!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise ValueError(f"Stiefel: tol must be a number > 0; got tol={self.tol!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"Stiefel: max_steps must be an int >= 1; got max_steps={self.max_steps!r}")
        if not (isinstance(self.step_size, (int, float)) and self.step_size > 0):
            raise ValueError(f"Stiefel: step_size must be a number > 0; got step_size={self.step_size!r}")

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
        g_wide, narrow = widen(xp, g)
        m, n = w.shape[-2], w.shape[-1]
        # scale safety: the oracle is invariant under g -> c g
        peak = xp.max(xp.abs(g_wide), axis=(-2, -1), keepdims=True)
        gs = safe_divide(xp, g_wide, peak)
        wt = xp.matrix_transpose(w)
        if m == n:
            h = xp.matmul(wt, gs)
            a = -xp.matmul(w, self.solver(0.5 * (h - xp.matrix_transpose(h))))
            lam = None
            steps = 0
        else:
            lam = xp.zeros((*gs.shape[:-2], n, n), dtype=gs.dtype, device=device(gs))
            scale = xp.reshape(_svdvals(xp, gs)[1][..., 0], (*gs.shape[:-2], 1, 1))
            steps = 0
            for k in range(self.max_steps):
                a = -self.solver(gs + 2.0 * xp.matmul(w, lam))
                h = xp.matmul(wt, a)
                sym = 0.5 * (h + xp.matrix_transpose(h))
                steps = k + 1
                if float(xp.max(_fro(xp, 2.0 * sym))) <= self.tol:
                    break
                lam = lam + (self.step_size / math.sqrt(k + 1)) * scale * sym
        h = xp.matmul(wt, a)
        residual = _fro(xp, h + xp.matrix_transpose(h))
        a = a - xp.matmul(w, 0.5 * (h + xp.matrix_transpose(h)))  # exact tangent projection
        mm, s = _svdvals(xp, a)
        a = a / xp.reshape(xp.maximum(mm * s[..., 0], xp.ones_like(mm)), (*mm.shape, 1, 1))
        direction = narrow(a * self._factor(tuple(a.shape[-2:])))
        if not info:
            return direction
        primal = vdot(xp, gs, a, 2)
        if lam is None:  # closed form: exact up to rounding
            gap = xp.zeros_like(primal)
        else:
            mm, s = _svdvals(xp, gs + 2.0 * xp.matmul(w, lam))
            gap = xp.maximum(primal + mm * xp.sum(s, axis=-1), xp.zeros_like(primal))
        return StiefelInfo(direction, gap * peak[..., 0, 0], residual, steps)


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
    (``bisection_steps``) after bracketing by doubling. The result is projected onto the tangent space
    (``A - <Theta, A> Theta``) and rescaled into the unit ball. ``retract(W, step) = radius (W + step) /
    ||W + step||_2``. Plain ``norm``/``dual_norm``/``lmo``: the ambient spectral geometry.
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
            raise ValueError(f"SpectralSphere: bisection_steps must be an int in [1, 200]; got {self.bisection_steps!r}")

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
        lam = 0.5 * (lo + hi)
        a = -self.solver(gs - xp.reshape(lam, (*batch, 1, 1)) * theta)
        a = a - xp.reshape(vdot(xp, theta, a, 2), (*batch, 1, 1)) * theta
        mm, s = _svdvals(xp, a)
        a = a / xp.reshape(xp.maximum(mm * s[..., 0], xp.ones_like(mm)), (*batch, 1, 1))
        return narrow(a * self._factor(tuple(a.shape[-2:])))


def _peak_div(xp: Namespace, x: Array) -> tuple[Array, Array]:
    m = xp.max(xp.abs(x), axis=(-2, -1), keepdims=True)
    return m, safe_divide(xp, x, m)
