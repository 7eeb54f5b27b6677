"""Low-rank and randomized spectral oracles: stateful geometries of the driver (:func:`lmo.optimizers.stateful_oracle`).

Each is a ``Norm`` (the spectral norm; ``norm``/``dual_norm`` exact) whose driver-facing oracle
``lmo_stateful(x, g, state, step) -> (d, state)`` keeps its state in the optimizer state (slots
``"geometry.<key>"``, saved by ``state_dict``). The stateless ``lmo(g)`` is the ideal rank-``r`` oracle
``-U_r V_r^T`` (top ``r`` singular pairs, by SVD): a feasible point with ``<g, lmo(g)> = -sum_{i<=r} s_i(g)``, i.e.
optimal up to the factor ``r / min(m, n)`` in the worst case. These classes are not registered (their contract is a
rank-``r`` one); pass instances to a configuration or a :class:`~lmo.optimizers.ParamGeometry`.

- :class:`LowRankPolar`: Dion (Ahn et al. 2025, arXiv 2504.05295, Algorithm 1) and Orth-Dion
  (``right="qr"``; arXiv 2605.16341, implemented from the issue text: QR on both sides, an exact rank-``r`` partial
  isometry). One power iteration per step from the right basis ``Q`` kept in the state, and Dion's error-feedback
  buffer ``M`` (the momentum): the buffer is part of the compressor, so this geometry owns it and the driver's
  estimator is plain (``beta = 0``).
- :class:`RandomizedPolar`: the randomized polar factor (randomized range finder, Halko-Martinsson-Tropp 2011, as
  used by arXiv 2605.06884 and low-rank Muon, arXiv 2509.11983): a sketch ``Omega`` (Gaussian, or columns sampled
  uniformly or proportionally to their squared norms), ``h`` power steps, oversampling ``p``, ``Q = qr(Y)``,
  ``B = Q^T G`` and the polar factor of the small ``B`` (exact, truncated to rank ``r``, or by a Newton-Schulz-type
  solver). The state holds the seed of the sketches (one fresh sketch per step, reproducible).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import array_api_compat

from lmo.backend import Array, Namespace, device, namespace

from .spectral import BOUND_RANK, Spectral

__all__ = ["LowRankPolar", "RandomizedPolar", "gaussian", "uniform"]


# ---------------------------------------------------------------------------------------------------------------
# seeded random numbers in any namespace (torch: its own generator on the array's device; others: numpy's PCG64)
# ---------------------------------------------------------------------------------------------------------------
def _draw(xp: Namespace, like: Array, shape: tuple[int, ...], seed: int, kind: str) -> Array:
    dtype, dev = like.dtype, device(like)
    seed = int(seed) % (2**63 - 1)
    if array_api_compat.is_torch_array(like):
        import torch

        gen = torch.Generator(device=dev)
        gen.manual_seed(seed)
        draw = torch.randn if kind == "normal" else torch.rand
        return draw(shape, generator=gen, device=dev, dtype=dtype)
    import numpy as np

    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape) if kind == "normal" else rng.random(shape)
    if array_api_compat.is_cupy_array(like):
        import cupy

        return cupy.asarray(values, dtype=dtype)
    return xp.asarray(values, dtype=dtype, device=dev)


def gaussian(like: Array, shape: tuple[int, ...], seed: int) -> Array:
    """Standard normal samples of ``shape`` in the namespace, dtype and device of ``like``, from ``seed``."""
    return _draw(namespace(like), like, tuple(shape), seed, "normal")


def uniform(like: Array, shape: tuple[int, ...], seed: int) -> Array:
    """Uniform ``[0, 1)`` samples of ``shape`` in the namespace, dtype and device of ``like``, from ``seed``."""
    return _draw(namespace(like), like, tuple(shape), seed, "uniform")


def _mix(*values: int) -> int:
    """A 62-bit seed from integers (splitmix-style mixing; deterministic across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & ((1 << 62) - 1)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _rank(rank: int | None, fraction: float | None, m: int, n: int) -> int:
    k = min(m, n)
    if rank is not None:
        return max(1, min(rank, k))
    return max(1, min(k, math.ceil(fraction * k)))


def _check_rank(owner: str, rank: Any, fraction: Any) -> None:
    if (rank is None) == (fraction is None):
        raise ValueError(f"{owner}: give exactly one of rank (an int >= 1) and rank_fraction (in (0, 1]); "
                         f"got rank={rank!r}, rank_fraction={fraction!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"{owner}: rank must be an int >= 1; got rank={rank!r}")
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1
    ):
        raise ValueError(f"{owner}: rank_fraction must be a number in (0, 1]; got rank_fraction={fraction!r}")


def _qr(xp: Namespace, a: Array) -> tuple[Array, Array]:
    """Reduced QR with ``diag(R) >= 0`` (a unique factorisation for full-rank ``a``)."""
    q, r = xp.linalg.qr(a)
    d = xp.linalg.diagonal(r)
    sign = xp.where(d < 0, -xp.ones_like(d), xp.ones_like(d))
    return q * sign[..., None, :], r * sign[..., :, None]


def _t(xp: Namespace, a: Array) -> Array:
    return xp.matrix_transpose(a)


def _live_columns(xp: Namespace, r: Array, scale: Array) -> Array:
    """1 for the columns whose pivot ``|diag(R)|`` is above rounding noise (relative to ``scale``), else 0."""
    d = xp.abs(xp.linalg.diagonal(r))
    eps = xp.finfo(r.dtype).eps
    n = r.shape[-2] + r.shape[-1]
    return xp.astype(d > 16 * n * eps * scale[..., None], r.dtype)


def _fro(xp: Namespace, a: Array) -> Array:
    return xp.sqrt(xp.sum(a * a, axis=(-2, -1)))


class _LowRank(Spectral):
    """Shared: the spectral norm with the ideal rank-``r`` oracle as stateless ``lmo``."""

    rank: int | None = None
    rank_fraction: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rank(type(self).__name__, self.rank, self.rank_fraction)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"{type(self).__name__}: seed must be an int; got seed={self.seed!r}")

    @property
    def delta(self) -> float:  # type: ignore[override]
        """Declared optimality: the solver's, times ``r / min(m, n)`` (``rank_fraction``, or ``rank / 4096``)."""
        share = self.rank_fraction if self.rank_fraction is not None else min(1.0, self.rank / BOUND_RANK)
        return self.solver.bounds(BOUND_RANK)[0] * share

    def rank_of(self, m: int, n: int) -> int:
        """The rank ``r`` used for an ``m x n`` matrix."""
        return _rank(self.rank, self.rank_fraction, m, n)

    def lmo(self, g: Array) -> Array:
        """``-U_r V_r^T`` (top ``r`` singular pairs of ``g``; pairs with ``s = 0`` dropped, so ``lmo(0) = 0``)."""
        xp, gw, narrow = self._prepare(g)
        m, n = gw.shape[-2], gw.shape[-1]
        r = self.rank_of(m, n)
        u, s, vh = xp.linalg.svd(gw, full_matrices=False)
        top = xp.max(s, axis=-1, keepdims=True)
        keep = xp.astype(s > 16 * max(m, n) * xp.finfo(s.dtype).eps * top, gw.dtype)
        keep = keep * xp.astype(xp.arange(s.shape[-1]) < r, gw.dtype)
        return narrow(-((u * keep[..., None, :]) @ vh) * self._factor((m, n)))

    def _seed(self, name: str) -> int:
        return _mix(self.seed, zlib.crc32(name.encode()))


# ---------------------------------------------------------------------------------------------------------------
# Dion / Orth-Dion
# ---------------------------------------------------------------------------------------------------------------
class LowRankPolar(_LowRank):
    r"""Dion's low-rank orthonormalised update (Ahn et al. 2025, arXiv 2504.05295, Algorithm 1), one power
    iteration per step, with error feedback; ``right="qr"`` is Orth-Dion (arXiv 2605.16341).

    State per matrix ``(m, n)``: the buffer ``M`` (``"momentum"``, zeros) and the right basis ``Q`` (``"basis"``,
    ``n x r``, Gaussian from ``seed`` and the parameter's name). One call, with ``mu`` the momentum::

        B  = M + G
        P  = qr(B Q)                           (m x r, orthonormal columns)
        R  = B^T P                             (n x r)
        M <- B - (1 - mu) P R^T                (error feedback: what the rank-r update missed stays in M)
        Q <- R / (||R_:j|| + column_eps)       (right="column": Dion's column normalisation)
        Q <- qr(R)                             (right="qr": Orth-Dion, then P Q^T is an exact partial isometry)
        d  = -P Q^T

    ``rank`` (an int) or ``rank_fraction`` (of ``min(m, n)``) fixes ``r``. Zero inputs give ``d = 0`` (Orth-Dion
    keeps only the columns of ``R`` above rounding noise). Leading axes are batch axes. Dion's learning-rate factor
    ``sqrt(m / n)`` is the radius of the configuration (:func:`lmo.optimizers.dion`), not part of this oracle.
    """

    mu: float = 0.95
    right: str = "column"
    column_eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.mu, bool) or not isinstance(self.mu, (int, float)) or not 0 <= self.mu < 1:
            raise ValueError(f"LowRankPolar: mu must be a number in [0, 1); got mu={self.mu!r}")
        if self.right not in ("column", "qr"):
            raise ValueError(f"LowRankPolar: right must be 'column' (Dion) or 'qr' (Orth-Dion); got {self.right!r}")
        eps = self.column_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"LowRankPolar: column_eps must be a number > 0; got column_eps={eps!r}")

    def init_state(self, name: str, x: Array) -> dict[str, Array]:
        xp = namespace(x)
        m, n = x.shape[-2], x.shape[-1]
        r = self.rank_of(m, n)
        return {"momentum": xp.zeros_like(x), "basis": gaussian(x, (*x.shape[:-2], n, r), self._seed(name))}

    def lmo_stateful(self, x: Array, g: Array, state: dict[str, Array], step: int) -> tuple[Array, dict[str, Array]]:
        xp = namespace(g)
        b = state["momentum"] + g
        q = state["basis"]
        p, _ = _qr(xp, b @ q)
        r = _t(xp, b) @ p
        momentum = b - (1 - self.mu) * (p @ _t(xp, r))
        if self.right == "qr":
            basis, rr = _qr(xp, r)
            basis = basis * _live_columns(xp, rr, _fro(xp, r))[..., None, :]
        else:
            basis = r / (xp.sqrt(xp.sum(r * r, axis=-2, keepdims=True)) + self.column_eps)
        d = -(p @ _t(xp, basis)) * self._factor(tuple(g.shape[-2:]))
        return d, {"momentum": momentum, "basis": basis}


# ---------------------------------------------------------------------------------------------------------------
# randomized polar / low-rank Muon
# ---------------------------------------------------------------------------------------------------------------
_SKETCHES = ("gaussian", "norm", "uniform")


class RandomizedPolar(_LowRank):
    r"""The randomized polar factor: ``lmo(G) ~ -Q polar(Q^T G)`` with ``Q`` an orthonormal basis of a sketch of
    the range of ``G`` (Halko, Martinsson & Tropp 2011; the randomized polar of arXiv 2605.06884; with
    ``sketch="norm"``/``"uniform"``, ``oversample=0`` and a Newton-Schulz ``method`` the column-selected low-rank
    orthogonalisation of low-rank Muon, arXiv 2509.11983). One call, ``k = min(r + p, m, n)``::

        Omega: n x k    Gaussian (sketch="gaussian"), or k distinct columns of the identity sampled with
                        probabilities ~ ||G_:j||^2 (sketch="norm") or uniformly (sketch="uniform")
        Y = G Omega;  h times: Y = G (G^T qr(Y))          (power steps; "norm"/"uniform": Y = the chosen columns)
        Q = qr(Y);  B = Q^T G                              (k x n)
        d = -Q U_r V_r^T     (method="svd": exact SVD of the small B = U S V^T, truncated to rank r)
        d = -Q polar(B)      (other methods: the polar solver of lmo.geometries.polar, rank k)

    ``rank`` or ``rank_fraction`` gives ``r``; ``oversample`` is ``p``; ``power_steps`` is ``h``. A fresh sketch
    is drawn at every step from the seed in the state (``"seed"``: 8 bytes from ``seed`` and the parameter's name) and
    the step index, so runs are reproducible and a ``state_dict`` round trip continues the same sequence.
    """

    sketch: str = "gaussian"
    oversample: int = 5
    power_steps: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sketch not in _SKETCHES:
            raise ValueError(f"RandomizedPolar: sketch must be one of {_SKETCHES}; got sketch={self.sketch!r}")
        for field in ("oversample", "power_steps"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"RandomizedPolar: {field} must be an int >= 0; got {field}={value!r}")

    def init_state(self, name: str, x: Array) -> dict[str, Array]:
        # the seed as 8 bytes, each an integer in [0, 255] of x's dtype: exact in every float format down to
        # bfloat16, so it survives torch's load_state_dict (which casts state to the parameter's dtype)
        xp = namespace(x)
        seed = self._seed(name)
        digits = [(seed >> (8 * i)) & 0xFF for i in range(8)]
        return {"seed": xp.asarray(digits, dtype=x.dtype, device=device(x))}

    @staticmethod
    def _read_seed(state: dict[str, Array]) -> int:
        digits = [int(round(float(v))) for v in state["seed"]]
        return sum(d << (8 * i) for i, d in enumerate(digits))

    def sketch_matrix(self, g: Array, k: int, seed: int) -> Array:
        """The ``n x k`` sketch ``Omega`` for ``g`` (batched over leading axes)."""
        xp = namespace(g)
        batch, n = tuple(g.shape[:-2]), g.shape[-1]
        if self.sketch == "gaussian":
            return gaussian(g, (*batch, n, k), seed)
        # k distinct columns: Gumbel-top-k on log-probabilities (sampling without replacement)
        u = uniform(g, (*batch, n), seed)
        tiny = xp.finfo(g.dtype).smallest_normal
        gumbel = -xp.log(-xp.log(xp.clip(u, tiny, 1.0 - xp.finfo(g.dtype).eps)))
        if self.sketch == "norm":
            weight = xp.sum(g * g, axis=-2)
            keys = xp.where(weight > 0, xp.log(xp.clip(weight, tiny, None)), -xp.inf) + gumbel
        else:
            keys = gumbel
        chosen = xp.argsort(keys, axis=-1, descending=True, stable=True)[..., :k]
        columns = xp.arange(n, device=device(g))
        return xp.astype(columns[..., :, None] == chosen[..., None, :], g.dtype)

    def lmo_stateful(self, x: Array, g: Array, state: dict[str, Array], step: int) -> tuple[Array, dict[str, Array]]:
        xp, gw, narrow = self._prepare(g)
        m, n = gw.shape[-2], gw.shape[-1]
        r = self.rank_of(m, n)
        k = min(r + self.oversample, m, n)
        peak = xp.max(xp.abs(gw), axis=(-2, -1), keepdims=True)
        gs = gw / xp.where(peak > 0, peak, xp.ones_like(peak))  # the oracle is scale-invariant; avoid overflow
        y = gs @ self.sketch_matrix(gs, k, _mix(self._read_seed(state), step))
        if self.sketch == "gaussian":
            for _ in range(self.power_steps):
                y = gs @ (_t(xp, gs) @ _qr(xp, y)[0])
        q, rr = _qr(xp, y)
        q = q * _live_columns(xp, rr, _fro(xp, y))[..., None, :]
        b = _t(xp, q) @ gs
        if self.method == "svd":
            u, s, vh = xp.linalg.svd(b, full_matrices=False)
            top = xp.max(s, axis=-1, keepdims=True)
            keep = xp.astype(s > 16 * max(m, n) * xp.finfo(s.dtype).eps * top, gw.dtype)
            keep = keep * xp.astype(xp.arange(s.shape[-1]) < r, gw.dtype)
            polar = (u * keep[..., None, :]) @ vh
        else:
            polar = self.solver(b)
        d = -(q @ polar) * self._factor((m, n))
        return narrow(d), dict(state)
