"""The spectral (Schatten) family of matrix norms: spectral, spectral_conv, nuclear, schatten, frobenius.

All act on the trailing two axes ``(d_out, d_in)`` (the layout of ``torch.nn.Linear.weight``); leading axes are batch
axes, handled by one batched SVD or one batched matrix iteration. Norms and dual norms are always exact (singular
values by SVD); only the oracles of ``spectral`` (polynomial polar solvers) and ``nuclear`` (power iteration) have
inexact options, which declare the ``delta``/``slack`` they honour.

Every input is divided by its largest entry before any SVD or iteration, so entries near the dtype's overflow or
underflow thresholds give finite, correct results; ``lmo(0) = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from lmo.backend import Array, Namespace, safe_divide
from lmo.norm import Norm, Reference

from . import _references
from .polar_solvers import BOUND_RANK, PolarSolver
from .vector import L2

__all__ = ["Spectral", "SpectralConv", "Nuclear", "Schatten", "Frobenius", "SCALES"]

#: Named shape factors ``f`` of the spectral norm: ``||W|| = ||W||_2 / f``, ``lmo = -f U V^T``.
SCALES = ("none", "rms", "rms_max", "l2_rms")


def _peak(xp: Namespace, x: Array) -> tuple[Array, Array]:
    """``(m, x / m)`` with ``m = max|x|`` over the trailing two axes (keepdims); 0 where ``x = 0``."""
    m = xp.max(xp.abs(x), axis=(-2, -1), keepdims=True)
    return m, safe_divide(xp, x, m)


def _svdvals(xp: Namespace, x: Array) -> tuple[Array, Array]:
    """``(m, s)``: the peak ``m`` (shape ``batch``) and the singular values ``s`` of ``x / m``, descending."""
    m, u = _peak(xp, x)
    return m[..., 0, 0], xp.linalg.svdvals(u)


def _rank_mask(xp: Namespace, s: Array, shape: tuple[int, ...]) -> Array:
    """Singular values above the numerical-rank threshold ``max(m, n) * eps * s_max``."""
    tol = max(shape[-2], shape[-1]) * xp.finfo(s.dtype).eps
    return s > tol * s[..., :1]


class Spectral(Norm, name="spectral"):
    """The spectral norm (operator norm l2 -> l2) ``||W||_2 = s_max(W)``, optionally shape-scaled.

    With the factor ``f`` (``scale``): ``||W|| = s_max(W) / f``, dual ``f ||G||_nuclear = f sum_i s_i(G)``,

        lmo(G) = -f U_r V_r^T        (G = U S V^T, the reduced SVD over the numerical rank r).

    ``scale``: ``"none"`` (``f = 1``), ``"rms"`` (``f = sqrt(d_out / d_in)``: the RMS -> RMS operator norm of Muon and
    Scion's ``Spectral(normalized=True)``), ``"rms_max"`` (``f = max(1, sqrt(d_out / d_in))``: Keller Jordan's Muon
    scaling and Scion's ``Spectral(max=True)``), ``"l2_rms"`` (``f = sqrt(d_out)``: l2 -> RMS for input layers,
    Scion's ``Spectral(normalized=False)``), or a number ``f > 0`` (a fixed radius).

    The oracle's polar factor comes from :class:`lmo.geometries.polar_solvers.PolarSolver` with ``method``, ``steps``,
    ``coefficients``, ``eps``, ``dtype``, ``scaling`` and ``compile`` (``method="svd"``, the default, is exact; see
    :func:`lmo.geometries.polar_solvers.polar` for the others). ``get_norm("spectral", method="newton_schulz", steps=5,
    coefficients=(3.4445, -4.775, 2.0315), eps=1e-7)`` is the oracle of ``torch.optim.Muon``.

    Ties and zero: the oracle is unique on the range (``-U_r V_r^T``) and set-valued on the null spaces of a
    rank-deficient ``G``; it returns the minimum-Frobenius choice, zero there. ``lmo(0) = 0``.

    Declarations: ``delta`` and ``slack`` are those of the solver (:meth:`PolarSolver.bounds`) for matrices whose
    smaller side is at most ``BOUND_RANK`` (4096); :meth:`bounds_for` gives the bound for a given shape.
    """

    method: str = "svd"
    steps: int | None = None
    coefficients: Any = None
    eps: float = 1e-7
    dtype: str | None = None
    scaling: str | None = None
    scale: Any = "none"
    compile: bool = False

    ndim = 2
    symmetry = "orthogonal"
    # the limit of msign(g_t) is the polar factor of the infinite part only where that part has full rank; elsewhere
    # it depends on the finite part, so an infinite input is refused (NaN)
    infinite_input = "nan"

    def __post_init__(self) -> None:
        if isinstance(self.scale, str):
            if self.scale not in SCALES:
                raise ValueError(f"{type(self).__name__}: scale must be one of {SCALES} or a number > 0; "
                                 f"got scale={self.scale!r}")
        elif isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 0 < self.scale < math.inf:
            raise ValueError(f"{type(self).__name__}: scale must be one of {SCALES} or a finite number > 0; "
                             f"got scale={self.scale!r}")
        else:
            object.__setattr__(self, "scale", float(self.scale))
        try:
            solver = PolarSolver(
                self.method, self.steps, self.coefficients, self.eps, self.dtype, self.scaling, self.compile
            )
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None
        object.__setattr__(self, "coefficients", solver.coefficients)
        object.__setattr__(self, "eps", solver.eps)
        object.__setattr__(self, "scaling", solver.scaling)
        object.__setattr__(self, "_solver", solver)

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (
            cls(),
            cls(scale="rms"),
            cls(method="newton_schulz", steps=5, coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, scale="rms_max"),
            cls(method="polar_express", dtype="float32"),
            cls(method="gram_newton_schulz", scale="l2_rms"),
            # the other paths of the solvers: the default auto (s8 scaling, Gram side on wide matrices), a cubic
            # schedule on the Gram side with the gram scaling, a degree-7 schedule (Newton-Schulz's Taylor step)
            cls(method="auto"),
            cls(method="gram_newton_schulz", coefficients=((1.5, -0.5),) * 10, scaling="gram", dtype="float32"),
            cls(method="newton_schulz", coefficients=((2.1875, -2.1875, 1.3125, -0.3125),) * 6, dtype="float32"),
        )

    @property
    def solver(self) -> PolarSolver:
        """The polar-factor solver of the oracle."""
        return self._solver  # type: ignore[attr-defined]

    @property
    def delta(self) -> float:  # type: ignore[override]
        return self.solver.bounds(BOUND_RANK)[0]

    @property
    def slack(self) -> float:  # type: ignore[override]
        return self.solver.bounds(BOUND_RANK)[1]

    @property
    def transposable(self) -> bool:  # type: ignore[override]
        """True for a shape-independent factor (``scale="none"`` or a number) and the class's own oracle: the
        polar factor commutes with transposition, and the iteration runs on the wide side of either orientation
        (the same arithmetic)."""
        return (self.ndim == 2 and type(self).lmo is Spectral.lmo
                and (not isinstance(self.scale, str) or self.scale == "none"))

    def bounds_for(self, shape: tuple[int, ...]) -> tuple[float, float]:
        """``(delta, slack)`` honoured on inputs of ``shape`` (tighter than the class declaration for small ones)."""
        return self.solver.bounds(min(shape[-2], shape[-1]))

    # -- shape handling (overridden by spectral_conv) --------------------------------------------------------
    def _matrix(self, x: Array) -> Array:
        return x

    def _factor(self, core: tuple[int, ...]) -> float:
        d_out, d_in = core[-2], core[-1]
        if not isinstance(self.scale, str):
            return self.scale
        return {
            "none": 1.0,
            "rms": math.sqrt(d_out / d_in),
            "rms_max": max(1.0, math.sqrt(d_out / d_in)),
            "l2_rms": math.sqrt(d_out),
        }[self.scale]

    def _core(self, x: Array) -> tuple[int, ...]:
        return tuple(x.shape[x.ndim - self.ndim :])

    # -- the contract ------------------------------------------------------------------------------------------
    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        m, s = _svdvals(xp, self._matrix(x))
        return narrow(m * s[..., 0] / self._factor(self._core(x)))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        m, s = _svdvals(xp, self._matrix(g))
        return narrow(m * xp.sum(s, axis=-1) * self._factor(self._core(g)))

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        p = self.solver(self._matrix(g))
        return narrow(xp.reshape(p, g.shape) * (-self._factor(self._core(g))))

    def lmo_factored(self, g: Array, *, finite: bool = False, workspace: Any = None) -> tuple[Array, float]:
        """``(P, -f)``: the solver's polar factor ``P`` in its iterate dtype (:meth:`PolarSolver.iterate`, e.g. the
        bfloat16 Newton-Schulz iterate, in ``workspace`` if given) and the shape factor, ``lmo(g) = -f P``."""
        if type(self).lmo is not Spectral.lmo:  # a subclass with an oracle of its own (low rank): its lmo
            return super().lmo_factored(g, finite=finite)
        xp, g, narrow = self._prepare(g, finite=finite)
        p = self.solver.iterate(self._matrix(g), workspace)
        return narrow(xp.reshape(p, g.shape)), -self._factor(self._core(g))

    def reference(self, g: Any) -> Reference:
        return _references.spectral(g, _references.spectral_factor(self.scale, g.shape[-2], g.shape[-1]))


class SpectralConv(Spectral, name="spectral_conv"):
    """The spectral norm of a convolution kernel ``(c_out, c_in, *kernel)`` reshaped to ``(c_out, c_in * K)``,
    ``K = prod(kernel)``, with Scion's ``SpectralConv`` factor ``f = sqrt(c_out / c_in) / K``:

        ||W|| = s_max(reshape(W)) / f,    dual  f ||reshape(G)||_nuclear,    lmo(G) = -f reshape^-1(U_r V_r^T).

    ``ndim``: 3 (Conv1d), 4 (Conv2d, default) or 5 (Conv3d) trailing axes form the kernel. The solver parameters are
    those of ``spectral``; ``scale`` is fixed by the shape (Scion's rule) and not a parameter here. Ties and zero as
    for ``spectral``.
    """

    ndim: int = 4  # type: ignore[misc]

    def __post_init__(self) -> None:
        if self.scale != "none":
            raise ValueError(f"SpectralConv: the factor is fixed by the kernel shape; got scale={self.scale!r}")
        if isinstance(self.ndim, bool) or self.ndim not in (3, 4, 5):
            raise ValueError(f"SpectralConv: ndim must be 3, 4 or 5; got ndim={self.ndim!r}")
        super().__post_init__()

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(), cls(ndim=3, method="newton_schulz", dtype="float32"))

    def bounds_for(self, shape: tuple[int, ...]) -> tuple[float, float]:
        core = shape[len(shape) - self.ndim :]
        return self.solver.bounds(min(core[0], math.prod(core[1:])))

    def _matrix(self, x: Array) -> Array:
        from lmo.backend import namespace

        core = self._core(x)
        return namespace(x).reshape(x, (*x.shape[: x.ndim - self.ndim], core[0], math.prod(core[1:])))

    def _factor(self, core: tuple[int, ...]) -> float:
        return math.sqrt(core[0] / core[1]) / math.prod(core[2:])

    def reference(self, g: Any) -> Reference:
        """The spectral closed form of ``g`` viewed as ``(c_out, c_in K)``, factor ``sqrt(c_out / c_in) / K``."""
        batch, core = g.shape[: g.ndim - self.ndim], g.shape[g.ndim - self.ndim :]
        kernel = math.prod(core[2:])
        ref = _references.spectral(g.reshape(*batch, core[0], core[1] * kernel), math.sqrt(core[0] / core[1]) / kernel)
        return Reference(g, norm=ref.norm, dual_norm=ref.dual_norm, lmo=ref.lmo.reshape(g.shape),
                         condition=ref.condition, source=ref.source + ", on the kernel viewed as (c_out, c_in K)")


class Nuclear(Norm, name="nuclear"):
    """The nuclear norm ``||W||_* = sum_i s_i(W)``; dual: the spectral norm ``s_max(G)``;

        lmo(G) = -u_1 v_1^T        (the top singular pair).

    ``method="svd"`` (default) is exact. ``method="power"`` runs power iteration accelerated by repeated squaring on
    the small Gram matrix ``A`` (``n x n``, ``n = min(d_out, d_in)``): ``steps`` squarings give
    ``A^p``, ``p = 2^steps``; ``v`` is its column of largest norm, ``u = G v / ||G v||``. This costs
    ``O(steps n^3)`` and guarantees ``||G v|| >= n^(-1 / (4p)) s_max(G)`` (log-convexity of the moments
    ``w^T A^j w``), so it declares ``delta = BOUND_RANK^(-1/2^(steps+2))`` minus a float32 rounding allowance
    (0.99 for the default 8 steps).

    Ties and zero: if ``s_1`` is repeated, every unit vector pair of the top singular subspaces is optimal; the
    oracle returns the pair that the SVD (or the iteration) finds. ``lmo(0) = 0``.
    """

    method: str = "svd"
    steps: int = 8

    ndim = 2
    symmetry = "orthogonal"
    infinite_input = "nan"  # a repeated top singular value of the infinite part leaves the limit to the finite part

    def __post_init__(self) -> None:
        if self.method not in ("svd", "power"):
            raise ValueError(f"Nuclear: method must be 'svd' or 'power'; got method={self.method!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 30:
            raise ValueError(f"Nuclear: steps must be an int in [1, 30]; got steps={self.steps!r}")

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(), cls(method="power", steps=6))

    @property
    def delta(self) -> float:  # type: ignore[override]
        if self.method == "svd":
            return 1.0
        return BOUND_RANK ** (-1.0 / 2 ** (self.steps + 2)) - 1e-3

    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        m, s = _svdvals(xp, x)
        return narrow(m * xp.sum(s, axis=-1))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        m, s = _svdvals(xp, g)
        return narrow(m * s[..., 0])

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        _, x = _peak(xp, g)
        if self.method == "svd":
            u, s, vh = xp.linalg.svd(x, full_matrices=False)
            live = xp.astype(s[..., :1] > 0, x.dtype)[..., None]
            return narrow(-live * (u[..., :, :1] * vh[..., :1, :]))
        tall = x.shape[-2] > x.shape[-1]
        w = xp.matrix_transpose(x) if tall else x  # (m, n) with m <= n: top left singular vector from w w^T
        a = xp.matmul(w, xp.matrix_transpose(w))
        b = a
        for _ in range(self.steps):
            b = xp.matmul(b, b)
            b = safe_divide(xp, b, xp.max(xp.abs(b), axis=(-2, -1), keepdims=True))
        cols = xp.sum(b * b, axis=-2)  # squared column norms
        pick = xp.astype(cols == xp.max(cols, axis=-1, keepdims=True), x.dtype)
        pick = pick * xp.astype(xp.cumulative_sum(pick, axis=-1) == 1, x.dtype)  # the first maximiser only
        u = xp.matmul(b, pick[..., None])  # (m, 1): A^p e_i
        u = _unit(xp, u)
        v = _unit(xp, xp.matmul(xp.matrix_transpose(w), u))  # (n, 1)
        d = u * xp.matrix_transpose(v)
        return narrow(-(xp.matrix_transpose(d) if tall else d))

    def reference(self, g: Any) -> Reference:
        return _references.nuclear(g)


def _unit(xp: Namespace, v: Array) -> Array:
    n = xp.sqrt(xp.sum(v * v, axis=(-2, -1), keepdims=True))
    return safe_divide(xp, v, n)


class Schatten(Norm, name="schatten"):
    """The Schatten-p norm ``(sum_i s_i^p)^(1/p)``, ``1 < p < inf``; dual: Schatten-q, ``1/p + 1/q = 1``;

        lmo(G) = -U diag(s^(q-1) / ||s||_q^(q-1)) V^T        (exact, by SVD).

    The maximiser is unique for ``G != 0``; ``lmo(0) = 0``. (``p = 1``, ``2``, ``inf`` are ``nuclear``,
    ``frobenius`` and ``spectral``.)
    """

    p: float = 3.0

    ndim = 2
    symmetry = "orthogonal"
    infinite_input = "limit"  # the oracle is continuous away from 0: its limit is its value at the infinite part

    def __post_init__(self) -> None:
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 1 < self.p < math.inf:
            raise ValueError(f"Schatten: p must be a number with 1 < p < inf; got p={self.p!r}")
        object.__setattr__(self, "p", float(self.p))

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(p=1.5), cls(p=4.0))

    @property
    def q(self) -> float:
        return self.p / (self.p - 1.0)

    def _power_norm(self, xp: Namespace, x: Array, p: float) -> Array:
        m, s = _svdvals(xp, x)
        return m * xp.sum(s**p, axis=-1) ** (1.0 / p)

    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        return narrow(self._power_norm(xp, x, self.p))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(self._power_norm(xp, g, self.q))

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        _, x = _peak(xp, g)
        u, s, vh = xp.linalg.svd(x, full_matrices=False)
        s = s * xp.astype(_rank_mask(xp, s, tuple(x.shape)), s.dtype)
        w = s ** (self.q - 1.0)
        total = xp.sum(s**self.q, axis=-1, keepdims=True) ** (1.0 / self.p)
        w = safe_divide(xp, w, total)
        return narrow(-xp.matmul(u * w[..., None, :], vh))

    def reference(self, g: Any) -> Reference:
        return _references.schatten(g, self.p)


class Frobenius(L2, name="frobenius"):
    """The Frobenius norm ``sqrt(sum_ij W_ij^2)`` of the trailing two axes (Schatten-2); self-dual;
    ``lmo(G) = -G / ||G||_F``, and ``lmo(0) = 0``. The ``l2`` oracle with ``ndim=2``.
    """

    ndim: int = 2  # type: ignore[misc]

    def __post_init__(self) -> None:
        if self.ndim != 2:
            raise ValueError(f"Frobenius: acts on matrices (ndim=2); got ndim={self.ndim!r}; use 'l2' otherwise")
