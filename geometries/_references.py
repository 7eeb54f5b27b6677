"""Closed forms of the catalogue's norms, dual norms and oracles in float64 numpy: the geometries' ``reference``.

These are the property kit's independent answers (``lmo.testing`` compares every built-in with them on every input it
draws). They are written from the formulas in the geometries' docstrings, with numpy's SVD where singular values are
needed, and never call a geometry's methods. Inputs are divided by their largest entry before squares and powers,
so the closed forms hold at every scale. An argmin that is too ill-conditioned to compare, or set-valued without a
documented rule, is NaN (not compared).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lmo.norm import Reference

__all__ = [
    "sign", "l1", "euclidean", "lp", "weighted_sign", "spectral", "nuclear", "schatten", "lines", "scaled",
    "spectral_factor", "table",
]

# The argmin of a spectral oracle is compared only where the spectrum separates cleanly into singular values of at least
# _CONDITION s_max and zeros: below half the documented numerical-rank threshold max(m, n) eps s_max of float64, so
# that every oracle that follows the documented rule drops them too (float32 inputs, with singular values ~1e-7 s_max
# that a float32 oracle cannot resolve, are then not compared).
_CONDITION = 1e-5


def table(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A deterministic, platform-independent pseudo-random array in (-1, 1): the MINSTD sequence ``x <- 48271 x mod
    (2^31 - 1)`` in exact integer arithmetic, for inputs whose results are stated as numbers."""
    modulus, x = 2**31 - 1, 1 + 7919 * (seed + 1)
    values = []
    for _ in range(math.prod(shape)):
        x = 48271 * x % modulus
        values.append(2.0 * x / modulus - 1.0)
    return np.array(values, dtype=np.float64).reshape(shape)


def _flat(g: np.ndarray, ndim: int) -> np.ndarray:
    return g.reshape(*g.shape[: g.ndim - ndim], -1)


def _peak(x: np.ndarray, axis: int | tuple[int, ...] = -1) -> tuple[np.ndarray, np.ndarray]:
    """``(m, x / m)`` with ``m = max |x|`` over ``axis`` (keepdims), 0 where ``x = 0``."""
    m = np.max(np.abs(x), axis=axis, keepdims=True)
    return m, np.divide(x, m, out=np.zeros_like(x), where=m > 0)


def sign(g: np.ndarray, ndim: int) -> Reference:
    a = np.abs(_flat(g, ndim))
    return Reference(g, norm=a.max(-1), dual_norm=a.sum(-1), lmo=-np.sign(g),
                     source="closed form: max |x|, sum |g|, -sign(g) with 0 at g_i = 0")


def l1(g: np.ndarray, ndim: int) -> Reference:
    flat = _flat(g, ndim)
    a = np.abs(flat)
    top = a.max(-1, keepdims=True)
    winners = (a == top) & (top > 0)
    share = winners / np.maximum(winners.sum(-1, keepdims=True), 1)
    return Reference(g, norm=a.sum(-1), dual_norm=top[..., 0], lmo=(-np.sign(flat) * share).reshape(g.shape),
                     source="closed form: sum |x|, max |g|, -sign(g_i) e_i at the largest |g_i| (ties split equally)")


def euclidean(g: np.ndarray, ndim: int, factor: float = 1.0) -> Reference:
    """The l2 norm divided by ``factor`` (``factor = sqrt(n)`` for RMS): dual ``factor ||g||``,
    lmo ``-factor g / ||g||``."""
    m, u = _peak(_flat(g, ndim))
    r = np.sqrt(np.sum(u * u, axis=-1, keepdims=True))
    length = (m * r)[..., 0]
    direction = np.divide(u, r, out=np.zeros_like(u), where=r > 0)
    return Reference(g, norm=length / factor, dual_norm=length * factor, lmo=(-factor * direction).reshape(g.shape),
                     source=f"closed form: ||x||_2 / {factor:g}, {factor:g} ||g||_2, -{factor:g} g / ||g||_2")


def lp(g: np.ndarray, ndim: int, p: float) -> Reference:
    q = p / (p - 1)
    m, u = _peak(_flat(g, ndim))
    a = np.abs(u)
    sq = np.sum(a**q, axis=-1, keepdims=True)
    weights = np.divide(a ** (q - 1), sq ** ((q - 1) / q), out=np.zeros_like(a), where=sq > 0)
    return Reference(g, norm=(m * np.sum(a**p, axis=-1, keepdims=True) ** (1 / p))[..., 0],
                     dual_norm=(m * sq ** (1 / q))[..., 0], lmo=(-np.sign(u) * weights).reshape(g.shape),
                     condition=max(1.0, q - 1), source=f"closed form: l{p:g} norm, l{q:g} dual, "
                     "-sign(g) |g|^(q-1) / ||g||_q^(q-1)")


def weighted_sign(g: np.ndarray, weights: tuple[float, ...]) -> Reference:
    w = np.asarray(weights, dtype=np.float64)
    return Reference(g, norm=np.max(np.abs(g) * w, axis=-1), dual_norm=np.sum(np.abs(g) / w, axis=-1),
                     lmo=-np.sign(g) / w, source="closed form: max w |x|, sum |g| / w, -sign(g) / w")


def spectral_factor(scale: str | float, d_out: int, d_in: int) -> float:
    """The shape factor ``f`` of ``spectral(scale=...)`` as its docstring defines it (``||W|| = s_max / f``)."""
    if not isinstance(scale, str):
        return float(scale)
    if scale == "rms":
        return math.sqrt(d_out / d_in)
    if scale == "rms_max":
        return max(1.0, math.sqrt(d_out / d_in))
    if scale == "l2_rms":
        return math.sqrt(d_out)
    return 1.0


def _svd(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(m, U, s, Vh)``: the peak of each matrix and the SVD of ``g / m``."""
    m, u = _peak(g, (-2, -1))
    left, s, right = np.linalg.svd(u, full_matrices=False)
    return m[..., 0, 0], left, s, right


def _kept(s: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, clean)``: the singular values above float64's numerical rank, and whether every batch entry's spectrum
    separates cleanly into those (all at least ``_CONDITION`` s_max) and zeros (module comment)."""
    top = s[..., :1]
    rel = np.divide(s, top, out=np.zeros_like(s), where=top > 0)
    zero = rel < 0.5 * max(shape[-2], shape[-1]) * np.finfo(np.float64).eps
    clean = np.all(zero | (rel >= _CONDITION), axis=-1)
    return ~zero, clean


def _condition(s: np.ndarray, keep: np.ndarray) -> np.ndarray:
    smallest = np.min(np.where(keep, s, np.inf), axis=-1)
    return np.where(np.isfinite(smallest) & (smallest > 0), s[..., 0] / np.where(smallest > 0, smallest, 1.0), 1.0)


def _only(clean: np.ndarray, lmo: np.ndarray) -> np.ndarray:
    """``lmo`` where the batch entry is ``clean``, NaN (not compared) elsewhere."""
    return np.where(clean.reshape(*clean.shape, 1, 1), lmo, np.nan)


def spectral(g: np.ndarray, factor: float) -> Reference:
    """``s_max / f``, dual ``f sum s``, lmo ``-f U_r V_r^T`` (the minimum-Frobenius argmin, 0 on the null spaces)."""
    m, left, s, right = _svd(g)
    keep, clean = _kept(s, g.shape)
    polar = (left * keep[..., None, :]) @ right
    return Reference(g, norm=m * s[..., 0] / factor, dual_norm=m * factor * s.sum(-1),
                     lmo=_only(clean, -factor * polar), condition=_condition(s, keep),
                     source=f"closed form from numpy's SVD: s_max / {factor:g}, {factor:g} sum s, -{factor:g} U V^T")


def nuclear(g: np.ndarray) -> Reference:
    """``sum s``, dual ``s_max``, lmo ``-u_1 v_1^T`` (compared where ``s_1`` is clearly simple)."""
    m, left, s, right = _svd(g)
    top = left[..., :, :1] * right[..., :1, :] * (s[..., :1, None] > 0)
    second = s[..., 1] if s.shape[-1] > 1 else np.zeros_like(s[..., 0])
    gap = np.divide(s[..., 0] - second, s[..., 0], out=np.ones_like(second), where=s[..., 0] > 0)
    clean = gap >= _CONDITION
    return Reference(g, norm=m * s.sum(-1), dual_norm=m * s[..., 0], lmo=_only(clean, -top),
                     condition=1.0 / np.maximum(gap, _CONDITION),
                     source="closed form from numpy's SVD: sum s, s_max, -u_1 v_1^T")


def schatten(g: np.ndarray, p: float) -> Reference:
    q = p / (p - 1)
    m, left, s, right = _svd(g)
    keep, clean = _kept(s, g.shape)
    if q < 2:  # s^(q-1) is not Lipschitz at 0: tiny singular values matter, so compare full-rank spectra only
        clean = clean & np.all(keep, axis=-1)
    kept = np.where(keep, s, 0.0)
    total = np.sum(kept**q, axis=-1, keepdims=True)
    w = np.divide(kept ** (q - 1), total ** ((q - 1) / q), out=np.zeros_like(kept), where=total > 0)
    return Reference(g, norm=m * np.sum(s**p, axis=-1) ** (1 / p), dual_norm=m * np.sum(s**q, axis=-1) ** (1 / q),
                     lmo=_only(clean, -(left * w[..., None, :]) @ right), condition=_condition(s, keep),
                     source=f"closed form from numpy's SVD: Schatten-{p:g}, dual Schatten-{q:g}, "
                     "-U diag(s^(q-1) / ||s||_q^(q-1)) V^T")


def lines(g: np.ndarray, axis: int, c: float, transpose: bool) -> Reference:
    """``c max_lines ||line||_2`` over the lines along ``axis`` (-2: columns, -1: rows) of ``g`` (or ``g^T``);
    dual ``(1/c) sum ||line||_2``; lmo ``-(1/c) line / ||line||_2``."""
    x = np.swapaxes(g, -1, -2) if transpose else g
    m, u = _peak(x, axis)
    r = np.sqrt(np.sum(u * u, axis=axis, keepdims=True))
    length = m * r
    direction = -np.divide(u, r, out=np.zeros_like(u), where=r > 0) / c
    lmo = np.swapaxes(direction, -1, -2) if transpose else direction
    return Reference(g, norm=c * np.max(length, axis=(-2, -1)), dual_norm=np.sum(length, axis=(-2, -1)) / c,
                     lmo=lmo, source=f"closed form: {c:g} max_line ||line||_2, sum ||line||_2 / {c:g}")


def scaled(ref: Reference | None, scale: float) -> Reference | None:
    """The reference of a ball ``scale`` times larger: norm ``/ scale``, dual and lmo ``* scale``."""
    if ref is None:
        return None
    times: Callable = lambda v: None if v is None else np.asarray(v) * scale
    return Reference(ref.g, norm=None if ref.norm is None else np.asarray(ref.norm) / scale,
                     dual_norm=times(ref.dual_norm), lmo=times(ref.lmo), condition=ref.condition,
                     source=f"{ref.source}, ball scaled by {scale:g}")


def product(g: np.ndarray, blocks: list[tuple[Reference | None, tuple[int, ...]]], radii: tuple[float, ...],
            combine: str) -> Reference | None:
    """The product formulas of :mod:`lmo.geometries.product` on the blocks' references (``None`` if one is unknown):
    block norms ``n_i / r_i`` and duals ``a_i = r_i n_i^*`` combined by max/sum (dual: sum/max) or l2, and the
    oracle ``r_i lmo_i`` weighted per block (``"sum"``: all mass on the largest ``a_i``, ties split; ``"l2"``:
    ``a_i / ||a||_2``); under ``"sum"`` the argmin of a near tie is left unknown (NaN)."""
    if any(ref is None or ref.norm is None or ref.dual_norm is None for ref, _ in blocks):
        return None
    batch = g.shape[:-1]
    norms = np.stack([np.broadcast_to(np.asarray(ref.norm), batch) / r for (ref, _), r in zip(blocks, radii)], -1)
    duals = np.stack([np.broadcast_to(np.asarray(ref.dual_norm), batch) * r for (ref, _), r in zip(blocks, radii)],
                     -1)
    if combine == "max":
        norm, dual, weights = norms.max(-1), duals.sum(-1), np.ones_like(duals)
    elif combine == "sum":
        top = duals.max(-1, keepdims=True)
        winners = (duals == top) & (top > 0)
        norm, dual = norms.sum(-1), top[..., 0]
        weights = winners / np.maximum(winners.sum(-1, keepdims=True), 1)
        # within 1% of a tie the argmin jumps between blocks under the oracle's own rounding (half precision
        # included): its value is still checked, the argmin is left unknown there
        near = np.sum(duals >= top * (1 - 1e-2), -1, keepdims=True) > 1
        weights = np.where(near & (top > 0), np.nan, weights)
    else:
        m, u = _peak(norms)
        norm = (m * np.sqrt(np.sum(u * u, -1, keepdims=True)))[..., 0]
        m, u = _peak(duals)
        dual = (m * np.sqrt(np.sum(u * u, -1, keepdims=True)))[..., 0]
        weights = np.divide(duals, dual[..., None], out=np.zeros_like(duals), where=dual[..., None] > 0)
    parts = []
    for i, ((ref, shape), r) in enumerate(zip(blocks, radii)):
        block = np.full((*batch, *shape), np.nan) if ref.lmo is None else np.broadcast_to(ref.lmo, (*batch, *shape))
        parts.append((r * weights[..., i].reshape(*batch, *(1,) * len(shape)) * block).reshape(*batch, -1))
    condition = max(float(np.max(ref.condition)) for ref, _ in blocks)
    return Reference(g, norm=norm, dual_norm=dual, lmo=np.concatenate(parts, -1), condition=condition,
                     source=f"the blocks' closed forms combined by {combine!r}")


# -- manifolds ----------------------------------------------------------------------------------------------------
def polar(h: np.ndarray) -> np.ndarray:
    """``U V^T`` of ``h`` by numpy's SVD: the nearest point of the Stiefel manifold (a full-rank tall ``h``)."""
    u, _, vh = np.linalg.svd(h, full_matrices=False)
    return u @ vh


def sphere_cases(ndim: int, radius: float, shapes: tuple[tuple[int, ...], ...]) -> list[Reference]:
    """The hypersphere in closed form: at ``x`` on it, the tangent optimum is ``-||P g||`` with ``P g = g - <x, g> x /
    ||x||^2`` (argmin ``-P g / ||P g||``), and ``project(y) = radius y / ||y||``."""
    cases = []
    for i, shape in enumerate(shapes):
        axes = tuple(range(-ndim, 0))
        y, g = table(shape, 2 * i), table(shape, 2 * i + 1)
        x = radius * y / np.sqrt(np.sum(y * y, axis=axes, keepdims=True))
        pg = g - np.sum(x * g, axis=axes, keepdims=True) * x / radius**2
        length = np.sqrt(np.sum(pg * pg, axis=axes))
        cases.append(Reference(g, point=x, tangent_value=-length, tangent_lmo=-pg / length.reshape(
            *length.shape, *(1,) * ndim), source="closed form: -||P g||, P g = g - <x, g> x / radius^2"))
        cases.append(Reference(y, project=x, source="closed form: radius y / ||y||_2"))
    return cases


#: ``min <G, A>`` over tangent ``A`` at ``W`` with ``||A||_2 <= 1``, for ``W = polar(table(shape, 2 k))`` and
#: ``G = table(shape, 2 k + 1)``: ``shape: (k, optimum)``. Solved by cvxpy 1.9.3 (Clarabel 0.11, gap and feasibility
#: tolerances 1e-11) with the tangent space parametrised as ``A = W (K - K^T) + W_perp B``; on the square case, whose
#: closed form is known, the solver is within 2e-8 relative. tests/test_kit_references.py solves them again.
STIEFEL_OPTIMA = {
    (7, 5): (0, -4.779771295312851),
    (9, 5): (1, -6.9398630989725625),
    (6, 5): (0, -3.954170858823672),
    (16, 12): (2, -16.592563098873775),
    (8, 3): (0, -4.830061909948656),
}
#: The same for the spectral sphere at ``W = table(shape, 2 k)`` scaled onto the sphere (the tangent space
#: ``<Theta, A> = 0``, ``Theta = u_1 v_1^T``, does not depend on the radius), by cvxpy with the constraint as stated.
SPECTRAL_SPHERE_OPTIMA = {
    (5, 5): (0, -5.60193376966054),
    (4, 4): (1, -3.4492448099626314),
    (6, 4): (0, -5.541872327504423),
    (4, 6): (0, -5.6177588766583755),
    (7, 5): (0, -6.820108301305027),
}
#: What the kit allows lmo_at against these optima: the solver's accuracy and the 1e-6 of issue 16 item 4.
SOLVER_RTOL = 1e-6


def stiefel_cases(factor: Callable[[int, int], float]) -> list[Reference]:
    """Tangent optima of the Stiefel manifold: the cvxpy table above, the square closed form ``-||skew(W^T G)||_*``
    (``A = W K`` with ``K`` skew) and the single column (the unit sphere: ``-||P g||_2``); and ``project = polar``.
    ``factor(m, n)``: the spectral shape factor (the tangent ball has radius ``factor``)."""
    cases = []
    source = "cvxpy 1.9.3 (Clarabel), tolerances 1e-11 (accurate to ~2e-8)"
    for shape, (k, optimum) in STIEFEL_OPTIMA.items():
        cases.append(Reference(table(shape, 2 * k + 1), point=polar(table(shape, 2 * k)),
                               tangent_value=factor(*shape) * optimum, rtol=SOLVER_RTOL, source=source))
    w, g = polar(table((5, 5), 0)), table((5, 5), 1)
    h = w.T @ g
    skew = 0.5 * (h - h.T)
    cases.append(Reference(g, point=w, tangent_value=-factor(5, 5) * np.linalg.svd(skew, compute_uv=False).sum(),
                           source="closed form (square): -||skew(W^T G)||_*"))
    w, g = polar(table((6, 1), 0)), table((6, 1), 1)
    pg = g - w * np.sum(w * g)
    cases.append(Reference(g, point=w, tangent_value=-factor(6, 1) * np.linalg.norm(pg),
                           tangent_lmo=-factor(6, 1) * pg / np.linalg.norm(pg),
                           source="closed form (one column: the sphere): -||P g||_2"))
    y = table((7, 4), 11)
    cases.append(Reference(y, project=polar(y), source="closed form: U V^T of numpy's SVD"))
    return cases


def spectral_sphere_cases(radius: float, factor: Callable[[int, int], float]) -> list[Reference]:
    """Tangent optima of the spectral sphere (the cvxpy table above) and ``project(y) = radius y / ||y||_2``."""
    cases = []
    for shape, (k, optimum) in SPECTRAL_SPHERE_OPTIMA.items():
        y = table(shape, 2 * k)
        cases.append(Reference(table(shape, 2 * k + 1), point=radius * y / np.linalg.norm(y, 2),
                               tangent_value=factor(*shape) * optimum, rtol=SOLVER_RTOL,
                               source="cvxpy 1.9.3 (Clarabel), tolerances 1e-11"))
    y = table((5, 3), 13)
    cases.append(Reference(y, project=radius * y / np.linalg.norm(y, 2), source="closed form: radius y / ||y||_2"))
    return cases
