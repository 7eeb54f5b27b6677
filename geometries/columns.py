"""Column and row norms of matrices, and the remaining Scion geometries (scion_sign, bias_rms).

Matrices have the layout ``(d_out, d_in)`` of ``torch.nn.Linear.weight`` (trailing two axes; leading axes batch).
Correspondence with LIONS-EPFL/scion (``scion.py``), whose oracles return ``-lmo``:

===============================================  ==================================================
Scion                                            here
===============================================  ==================================================
``ColNorm(normalized=a, transpose=b)``           ``colnorm(rms=True, normalized=a, transpose=b)``
``RowNorm(normalized=a, transpose=b)``           ``rownorm(normalized=a, transpose=b)``
``Sign(normalized=a)``                           ``scion_sign(normalized=a)``
``BiasRMS()``                                    ``bias_rms()`` (1-D biases)
``Spectral(normalized=True, max=m)``             ``spectral(scale="rms_max" if m else "rms")``
``Spectral(normalized=False)``                   ``spectral(scale="l2_rms")``
``SpectralConv()``                               ``spectral_conv()``
===============================================  ==================================================

Scion adds ``eps = 1e-8`` to its denominators; here a zero column/row gives zero and every other one is normalised
exactly (scale-safe), so results agree with Scion's up to that ``eps``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from lmo.backend import Array, Namespace, safe_divide
from lmo.norm import Norm, Reference

from . import _references
from .vector import RMS, Sign

__all__ = ["ColNorm", "RowNorm", "ScionSign", "BiasRMS"]


class _LineNorm(Norm):
    """``||W|| = c * max_lines ||line||_2`` over the columns (``axis=-2`` reduced) or rows (``axis=-1``) of ``W``.

    Unit ball: every line has l2 norm ``<= 1/c``. Dual ``(1/c) sum_lines ||g_line||_2``;
    ``lmo(G)_line = -(1/c) g_line / ||g_line||_2`` on every line, and 0 on a zero line (set-valued there: any vector
    of norm ``<= 1/c`` is optimal; 0 keeps the oracle odd and ``lmo(0) = 0``).
    """

    transpose: bool = False
    ndim = 2
    infinite_input = "limit"

    def _reduce_axis(self) -> int:  # the axis whose entries form one line
        raise NotImplementedError

    def _c(self, core: tuple[int, int]) -> float:
        raise NotImplementedError

    def __post_init__(self) -> None:
        for f in ("transpose", "normalized", "rms"):
            if hasattr(self, f) and not isinstance(getattr(self, f), bool):
                raise ValueError(f"{type(self).__name__}: {f} must be a bool; got {f}={getattr(self, f)!r}")

    @property
    def symmetry(self) -> str:  # type: ignore[override]
        # column norms are invariant under W -> Q W (each column rotated); row norms under W -> W Q
        left = (self._reduce_axis() == -2) != self.transpose
        return "orthogonal_left" if left else "orthogonal_right"

    @property
    def separable_axes(self) -> tuple[int, ...]:  # type: ignore[override]
        # lines are independent; blocks of whole lines keep the line length, so the shape factor c must not
        # depend on the number of lines (the other axis of the core)
        lines = -1 if self._reduce_axis() == -2 else -2  # the axis that indexes the lines (of the viewed matrix)
        if self._c((2, 3)) != self._c((2, 4) if lines == -1 else (3, 3)):
            return ()
        return ((-3 - lines) if self.transpose else lines,)

    def _view(self, xp: Namespace, x: Array) -> Array:
        return xp.matrix_transpose(x) if self.transpose else x

    def _at_infinity(self, xp: Namespace, x: Array) -> Array:
        """Line by line: a line with infinite entries is replaced by the signs of those entries (its limit
        direction), the other lines stay (their oracle does not depend on the rest)."""
        axis = self._reduce_axis() if not self.transpose else -3 - self._reduce_axis()
        infinite = xp.isinf(x)
        line = xp.any(infinite, axis=axis, keepdims=True)
        return xp.where(line, xp.where(infinite, xp.sign(x), xp.zeros_like(x)), x)

    def _lengths(self, xp: Namespace, x: Array) -> tuple[Array, Array]:
        """``(lengths, units)``: l2 length of each line (keepdims) and the unit lines, scale-safe."""
        axis = self._reduce_axis()
        m = xp.max(xp.abs(x), axis=axis, keepdims=True)
        u = safe_divide(xp, x, m)
        r = xp.sqrt(xp.sum(u * u, axis=axis, keepdims=True))
        return m * r, safe_divide(xp, u, r)

    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        x = self._view(xp, x)
        lengths, _ = self._lengths(xp, x)
        return narrow(self._c(x.shape[-2:]) * xp.max(lengths, axis=(-2, -1)))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        g = self._view(xp, g)
        lengths, _ = self._lengths(xp, g)
        return narrow(xp.sum(lengths, axis=(-2, -1)) / self._c(g.shape[-2:]))

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        v = self._view(xp, g)
        _, units = self._lengths(xp, v)
        return narrow(self._view(xp, units * (-1.0 / self._c(v.shape[-2:]))))


class ColNorm(_LineNorm, name="colnorm"):
    """The l1 -> l2 operator norm ``max_j ||W[:, j]||_2`` (largest column norm), with Scion's scalings.

    ``||W|| = c max_j ||W[:, j]||_2``, ``c = (1/sqrt(d_out) if rms) * (d_in if normalized)``; so ``rms=True`` is the
    l1 -> RMS operator norm (Scion's ``ColNorm``, the embedding-layer geometry: each column of the oracle has RMS 1),
    and ``normalized=True`` divides the radius by ``d_in``. Dual ``(1/c) sum_j ||G[:, j]||_2``;
    ``lmo(G)[:, j] = -(1/c) G[:, j] / ||G[:, j]||_2`` (0 for a zero column). ``transpose=True`` applies all of this to
    ``W^T`` with the transposed shape (Scion's ``transpose``, for embeddings stored as ``(vocab, dim)``).
    Invariant under ``W -> Q W`` (``W -> W Q`` when transposed).
    """

    rms: bool = False
    normalized: bool = False

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(), cls(rms=True), cls(rms=True, normalized=True, transpose=True))

    def _reduce_axis(self) -> int:
        return -2

    def _c(self, core: tuple[int, int]) -> float:
        d_out, d_in = core
        return (1 / math.sqrt(d_out) if self.rms else 1.0) * (d_in if self.normalized else 1.0)

    def reference(self, g: Any) -> Reference:
        d_out, d_in = (g.shape[-1], g.shape[-2]) if self.transpose else (g.shape[-2], g.shape[-1])
        c = (d_out**-0.5 if self.rms else 1.0) * (d_in if self.normalized else 1.0)
        return _references.lines(g, -2, c, self.transpose)


class RowNorm(_LineNorm, name="rownorm"):
    """The l2 -> l-infinity operator norm ``max_i ||W[i, :]||_2`` (largest row norm), with Scion's scaling.

    ``||W|| = c max_i ||W[i, :]||_2``, ``c = sqrt(d_in) if normalized else 1``: ``normalized=True`` is the
    RMS -> l-infinity operator norm (Scion's ``RowNorm`` default). Dual ``(1/c) sum_i ||G[i, :]||_2``;
    ``lmo(G)[i, :] = -(1/c) G[i, :] / ||G[i, :]||_2`` (0 for a zero row). ``transpose=True`` as for ``colnorm``.
    Invariant under ``W -> W Q`` (``W -> Q W`` when transposed).
    """

    normalized: bool = False

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(), cls(normalized=True), cls(normalized=True, transpose=True))

    def _reduce_axis(self) -> int:
        return -1

    def _c(self, core: tuple[int, int]) -> float:
        return math.sqrt(core[1]) if self.normalized else 1.0

    def reference(self, g: Any) -> Reference:
        d_in = g.shape[-2] if self.transpose else g.shape[-1]
        return _references.lines(g, -1, d_in**0.5 if self.normalized else 1.0, self.transpose)


class ScionSign(Norm, name="scion_sign"):
    """Scion's ``Sign``: the l1 -> l-infinity operator norm ``max_ij |W_ij|``, with radius ``1/d_in`` if normalized.

    ``||W|| = c max_ij |W_ij|`` with ``c = d_in if normalized else 1``; dual ``(1/c) sum_ij |G_ij|``;
    ``lmo(G) = -sign(G) / c`` (``-sign(G) / d_in``: Scion's output-layer geometry). Zero entries get 0 (any value in
    ``[-1/c, 1/c]`` is optimal). The ``sign`` oracle with ``ndim=2``, scaled by the shape.
    """

    normalized: bool = True

    ndim = 2
    symmetry = "signed_permutation"
    infinite_input = "limit"

    def _at_infinity(self, xp: Namespace, x: Array) -> Array:
        return x  # -sign(G) / c does not depend on the magnitudes: the oracle is its own limit

    def __post_init__(self) -> None:
        if not isinstance(self.normalized, bool):
            raise ValueError(f"ScionSign: normalized must be a bool; got normalized={self.normalized!r}")

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(), cls(normalized=False))

    def _c(self, x: Array) -> float:
        return float(x.shape[-1]) if self.normalized else 1.0

    @property
    def separable_axes(self) -> tuple[int, ...]:  # type: ignore[override]
        return (-2,) if self.normalized else (-2, -1)  # the factor d_in fixes the row length

    # the shape factor is applied before narrowing: sum |G| may overflow float16 where sum |G| / d_in does not
    def norm(self, x: Array) -> Array:
        _, x, narrow = self._prepare(x, "x")
        return narrow(_SIGN2.norm(x) * self._c(x))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        if not self.normalized:
            return narrow(_SIGN2.dual_norm(g))
        # sum |G| overflows where sum |G| / d_in does not: summed at unit scale, max |G| applied last (an infinite
        # or NaN entry, whose value the policy sets, is summed as it is: no inf / inf)
        peak = xp.max(xp.abs(g), axis=(-2, -1))
        peak = xp.where(peak < math.inf, peak, xp.ones_like(peak))
        unit = safe_divide(xp, xp.abs(g), peak[..., None, None])
        return narrow(xp.sum(unit, axis=(-2, -1)) / self._c(g) * peak)

    def lmo(self, g: Array) -> Array:
        _, g, narrow = self._prepare(g)
        return narrow(_SIGN2.lmo(g) / self._c(g))

    def reference(self, g: Any) -> Reference | None:
        return _references.scaled(_references.sign(g, 2), 1.0 / g.shape[-1] if self.normalized else 1.0)


_SIGN2 = Sign(ndim=2)


class BiasRMS(RMS, name="bias_rms"):
    """Scion's ``BiasRMS`` for biases: the RMS norm ``||b||_2 / sqrt(n)`` of a vector; dual ``sqrt(n) ||g||_2``;
    ``lmo(g) = -g / rms(g)`` (unit RMS), ``lmo(0) = 0``. The ``rms`` oracle under Scion's name.
    """
