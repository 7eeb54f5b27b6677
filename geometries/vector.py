"""Vector geometries: entrywise norms of the trailing axes, and the ``Scaled`` wrapper.

Every entrywise norm takes ``ndim`` (default 1): the number of trailing axes that are flattened into one vector, so
``get_norm("sign", ndim=2)`` is the max-entry norm of a matrix while ``get_norm("sign")`` treats each row as a
vector. All computations are scale-safe: inputs are divided by their largest entry before squares or powers are
taken, so entries near the dtype's overflow or underflow threshold give finite, correct results.

Conventions at zero and at ties are part of each oracle's contract and are stated in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from lmo.backend import Array, Namespace, device, safe_divide
from lmo.norm import Norm, Reference, get_norm

from . import _references

__all__ = ["Sign", "L1", "L2", "Lp", "RMS", "WeightedSign", "Scaled"]


class _Entrywise(Norm):
    """Shared plumbing of the entrywise norms: the ``ndim`` parameter and max-abs normalisation."""

    ndim: int = 1  # type: ignore[misc]  # a per-instance field here, a class constant in Norm
    symmetry = "signed_permutation"

    def __post_init__(self) -> None:
        if not isinstance(self.ndim, int) or isinstance(self.ndim, bool) or self.ndim < 1:
            raise ValueError(f"{type(self).__name__}: ndim must be an int >= 1; got {self.ndim!r}")

    def _max_abs(self, xp: Namespace, x: Array) -> Array:
        return xp.max(xp.abs(x), axis=self._axes(), keepdims=True)

    def _normalised(self, xp: Namespace, x: Array) -> tuple[Array, Array]:
        """``(m, u)`` with ``m = max|x|`` (keepdims) and ``u = x / m`` (0 where ``m = 0``), so ``|u| <= 1``."""
        m = self._max_abs(xp, x)
        return m, safe_divide(xp, x, m)

    def _squeeze(self, xp: Namespace, m: Array) -> Array:
        return xp.reshape(m, tuple(m.shape[: m.ndim - self.ndim]))

    def _size(self, x: Array) -> int:
        return math.prod(x.shape[x.ndim - self.ndim :])


class Sign(_Entrywise, name="sign"):
    """The l-infinity norm ``max_i |x_i|``; dual ``sum_i |g_i|``; ``lmo(g) = -sign(g)``.

    Ties and zero: a coordinate with ``g_i = 0`` gets ``d_i = 0`` (any value in [-1, 1] is optimal; 0 keeps the
    oracle odd, equivariant and ``lmo(0) = 0``). Infinite entries: ``-sign(g)``, the limit (it does not depend on
    the magnitudes).
    """

    infinite_input = "limit"

    def _at_infinity(self, xp: Namespace, x: Array) -> Array:
        return x  # -sign(g_t) does not depend on t: the oracle is its own limit

    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.max(xp.abs(x), axis=self._axes()))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(xp.sum(xp.abs(g), axis=self._axes()))

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(-xp.sign(g))

    def reference(self, g: Any) -> Reference:
        return _references.sign(g, self.ndim)

    @property
    def separable_axes(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(range(-self.ndim, 0))  # entrywise: every block is its own oracle


class L1(_Entrywise, name="l1"):
    """The l1 norm ``sum_i |x_i|``; dual ``max_i |g_i|``; ``lmo(g) = -sign(g_i) e_i`` at the largest ``|g_i|``.

    Ties: the unit mass is split equally among all coordinates that attain ``max|g|`` (never full mass on each, which
    would be infeasible), so the oracle is deterministic and equivariant under signed permutations. ``lmo(0) = 0``.
    Infinite entries: the limit splits the mass among the infinite coordinates.
    """

    infinite_input = "limit"

    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.sum(xp.abs(x), axis=self._axes()))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(xp.max(xp.abs(g), axis=self._axes()))

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        magnitude = xp.abs(g)
        peak = xp.max(magnitude, axis=self._axes(), keepdims=True)
        winners = xp.astype((magnitude == peak) & (peak > 0), g.dtype)
        count = xp.sum(winners, axis=self._axes(), keepdims=True)
        return narrow(-xp.sign(g) * safe_divide(xp, winners, count))

    def reference(self, g: Any) -> Reference:
        return _references.l1(g, self.ndim)


class L2(_Entrywise, name="l2"):
    """The Euclidean norm; self-dual; ``lmo(g) = -g / ||g||_2``, and ``lmo(0) = 0``. Infinite entries: the limit
    ``-s / ||s||_2``, ``s`` the signs of the infinite entries (0 elsewhere)."""

    symmetry = "orthogonal"
    infinite_input = "limit"

    def _length(self, xp: Namespace, x: Array) -> tuple[Array, Array]:
        """``(||x||_2, x / ||x||_2)``, both 0 at ``x = 0``, computed without overflow or underflow."""
        m, u = self._normalised(xp, x)
        r = xp.sqrt(xp.sum(u * u, axis=self._axes(), keepdims=True))
        return m * r, safe_divide(xp, u, r)

    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        return narrow(self._squeeze(xp, self._length(xp, x)[0]))

    def dual_norm(self, g: Array) -> Array:
        return self.norm(g)

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(-self._length(xp, g)[1])

    def reference(self, g: Any) -> Reference:
        return _references.euclidean(g, self.ndim)


class RMS(L2, name="rms"):
    """The root-mean-square norm ``||x||_2 / sqrt(n)`` (``n`` entries); dual ``sqrt(n) ||g||_2``;
    ``lmo(g) = -sqrt(n) g / ||g||_2`` (every entry of unit RMS), and ``lmo(0) = 0``."""

    # the factor is applied in the wide dtype, before narrowing: one rounding into a half-precision result
    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        return narrow(self._squeeze(xp, self._length(xp, x)[0]) / math.sqrt(self._size(x)))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(self._squeeze(xp, self._length(xp, g)[0]) * math.sqrt(self._size(g)))

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(-self._length(xp, g)[1] * math.sqrt(self._size(g)))

    def reference(self, g: Any) -> Reference:
        return _references.euclidean(g, self.ndim, factor=math.sqrt(math.prod(g.shape[g.ndim - self.ndim:])))


class Lp(_Entrywise, name="lp"):
    """The lp norm ``(sum_i |x_i|^p)^(1/p)`` for ``1 < p < inf``; dual: the lq norm with ``1/p + 1/q = 1``;

        lmo(g) = -sign(g) |g|^(q-1) / ||g||_q^(q-1).

    The maximiser is unique for ``g != 0``; ``lmo(0) = 0``. (``p = 1``, ``2``, ``inf`` have their own classes.)
    Infinite entries: the limit, the oracle at the signs of the infinite entries (0 elsewhere).
    """

    p: float = 3.0
    infinite_input = "limit"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 1 < self.p < math.inf:
            raise ValueError(f"Lp: p must be a number with 1 < p < inf; got p={self.p!r}")
        object.__setattr__(self, "p", float(self.p))

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(p=1.5), cls(p=3.0), cls(p=8.0, ndim=2))

    @property
    def q(self) -> float:
        """The dual exponent ``p / (p - 1)``."""
        return self.p / (self.p - 1.0)

    def _power_norm(self, xp: Namespace, x: Array, p: float) -> Array:
        m, u = self._normalised(xp, x)
        s = xp.sum(xp.abs(u) ** p, axis=self._axes(), keepdims=True)
        return self._squeeze(xp, m * s ** (1.0 / p))

    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        return narrow(self._power_norm(xp, x, self.p))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(self._power_norm(xp, g, self.q))

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        _, u = self._normalised(xp, g)
        q = self.q
        w = xp.abs(u) ** (q - 1.0)
        s = xp.sum(xp.abs(u) ** q, axis=self._axes(), keepdims=True)
        return narrow(-xp.sign(u) * safe_divide(xp, w, s ** (1.0 / self.p)))

    def reference(self, g: Any) -> Reference:
        return _references.lp(g, self.ndim, self.p)


class WeightedSign(Norm, name="weighted_sign"):
    """The weighted l-infinity norm ``max_i w_i |x_i|`` with weights ``w_i > 0`` on the trailing axis;
    dual ``sum_i |g_i| / w_i``; ``lmo(g) = -sign(g) / w``. Zero coordinates get ``d_i = 0``, as for ``sign``.

    ``weights`` is stored as a tuple of floats (the norm stays an immutable, hashable value); the trailing axis of
    every input must have ``len(weights)`` entries.
    """

    weights: Sequence[float] = (1.0,)
    symmetry = "sign_flip"
    infinite_input = "limit"

    def _at_infinity(self, xp: Namespace, x: Array) -> Array:
        return x  # -sign(g_t) does not depend on t: the oracle is its own limit

    def __post_init__(self) -> None:
        try:
            weights = tuple(float(w) for w in _as_sequence(self.weights))
        except (TypeError, ValueError):
            raise ValueError(f"WeightedSign: weights must be a sequence of numbers; got {self.weights!r}") from None
        if not weights or not all(0 < w < math.inf for w in weights):
            raise ValueError(f"WeightedSign: weights must be non-empty, finite and > 0; got {weights}")
        object.__setattr__(self, "weights", weights)

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(weights=(1.0, 2.0, 0.5, 4.0)), cls(weights=(3.0,)))

    def core_shape(self) -> tuple[int, ...]:
        return (len(self.weights),)

    def _weights(self, xp: Namespace, g: Array) -> Array:
        return xp.asarray(self.weights, dtype=g.dtype, device=device(g))

    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.max(xp.abs(x) * self._weights(xp, x), axis=-1))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(xp.sum(xp.abs(g) / self._weights(xp, g), axis=-1))

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(-xp.sign(g) / self._weights(xp, g))

    def reference(self, g: Any) -> Reference:
        return _references.weighted_sign(g, self.weights)


def _as_sequence(weights: Any) -> Sequence[Any]:
    if hasattr(weights, "tolist"):
        weights = weights.tolist()
    return weights


class Scaled(Norm, name="scaled"):
    """A norm whose unit ball is ``scale`` times that of ``base``: ``||x||_s = ||x|| / s``.

    Then ``||g||_{s,*} = s ||g||_*`` and ``lmo_s(g) = s lmo(g)``: a step of radius ``s`` in ``base``'s geometry,
    e.g. Scion's per-layer radii or a shape factor such as ``sqrt(d_out / d_in)``. ``base`` may be a registry name.
    Declarations (``ndim``, ``delta``, ``slack``, ``symmetry``, core shape) are those of ``base``.
    """

    base: Norm | str = "l2"
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", get_norm(self.base))
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 0 < self.scale < math.inf:
            raise ValueError(f"Scaled: scale must be a finite number > 0; got scale={self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        return (cls(base=L2(), scale=3.0), cls(base=L1(ndim=2), scale=0.25), cls(base=Sign(), scale=1e-3))

    @property
    def ndim(self) -> int:  # type: ignore[override]
        return self.base.ndim

    @property
    def delta(self) -> float:  # type: ignore[override]
        return self.base.delta

    @property
    def slack(self) -> float:  # type: ignore[override]
        return self.base.slack

    @property
    def symmetry(self) -> str | None:  # type: ignore[override]
        return self.base.symmetry

    @property
    def separable_axes(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.base.separable_axes

    @property
    def infinite_input(self) -> str:  # type: ignore[override]
        return self.base.infinite_input

    def _at_infinity(self, xp: Namespace, x: Array) -> Array:
        return x  # the base applies the policy to the raw input itself

    def core_shape(self) -> tuple[int, ...] | None:
        return self.base.core_shape()

    # The base runs on the widened input and the scale is applied before narrowing: a half-precision
    # intermediate (say sum |g| > 65504) may overflow where the scaled result does not.
    def norm(self, x: Array) -> Array:
        _, x, narrow = self._prepare(x, "x")
        return narrow(self.base.norm(x) / self.scale)

    def dual_norm(self, g: Array) -> Array:
        _, g, narrow = self._prepare(g)
        return narrow(self.base.dual_norm(g) * self.scale)

    def lmo(self, g: Array) -> Array:
        _, g, narrow = self._prepare(g)
        return narrow(self.base.lmo(g) * self.scale)

    def sharp(self, g: Array) -> Array:
        _, g, narrow = self._prepare(g)
        return narrow(self.base.sharp(g) * self.scale**2)

    def reference(self, g: Any) -> Reference | None:
        return _references.scaled(self.base.reference(g), self.scale)

