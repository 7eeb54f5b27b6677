"""``check_manifold``: the point-dependent half of a manifold geometry's contract (``lmo_at``, ``retract``,
``project``, ``tangent_residual``; see :mod:`lmo.geometries.manifold`).

The kit finds the tangent space at a point ``x`` by itself, without trusting ``tangent_residual``: ``project`` maps
a neighbourhood of ``x`` onto the manifold and fixes its points, so the range of its derivative at ``x`` (central
differences, in float64) is the tangent space. Against that basis it checks that ``tangent_residual`` vanishes on
tangent vectors and not on normal ones, that ``lmo_at(x, g)`` is tangent, feasible and at least as good as every
tangent point it samples (projected gradients, the ambient oracle projected, random tangent vectors refined by hill
climbing inside the tangent space), and the geometry's declared reference optima; that ``retract`` and ``project``
land on the manifold (``project`` fixes their output), that ``project`` is idempotent, and that both are first-order
correct: ``retract(x, t v) = x + t v + O(t^2)`` and ``project(x + t v) = x + t v + O(t^2)`` for tangent ``v``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmo.norm import Norm, Reference

from ._backends import single_threaded, to_numpy
from ._checks import _Case, _check_outputs, _require_finite

__all__ = ["MANIFOLD_METHODS", "ShapeRefused", "check_manifold", "is_manifold", "manifold_inputs"]

MANIFOLD_METHODS = ("lmo_at", "retract", "project", "tangent_residual")
# tangent_residual of a tangent vector, and project's idempotence, relative; per dtype of the check
_TANGENT_TOL = {"float64": 1e-8, "float32": 2e-3}
_FIRST_ORDER = 0.05  # ||R(x, t v) - x - t v|| <= 0.05 t ||v|| at the small t below: o(t), not O(t)
_SMALL_T = {"float64": 1e-3, "float32": 2e-3}


class ShapeRefused(Exception):
    """``project`` refused this shape with a ``ValueError`` (a Stiefel point must be tall): the shape is skipped."""


def is_manifold(norm: Any) -> bool:
    """Whether ``norm`` is a manifold geometry: it has ``lmo_at``, ``retract``, ``project`` and ``tangent_residual``."""
    return all(callable(getattr(norm, m, None)) for m in MANIFOLD_METHODS)


def manifold_inputs(norm: Norm, *, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(label, x0, g)``: starting points (``check_manifold`` projects them) and gradients, at square, tall, nearly
    square, wide and single-column shapes, one with a batch axis."""
    rng = np.random.default_rng(seed)
    fixed = norm.core_shape()
    if fixed is not None:
        shapes = [tuple(fixed), (3, *fixed)]
    elif norm.ndim == 1:
        shapes = [(6,), (40,), (3, 9)]
    elif norm.ndim == 2:
        shapes = [(5, 5), (7, 5), (6, 5), (9, 5), (16, 12), (8, 3), (6, 1), (4, 6), (2, 7, 5)]
    else:
        shapes = [(3, 2) + (2,) * (norm.ndim - 2)]
    return [("x".join(map(str, s)), rng.standard_normal(s), rng.standard_normal(s)) for s in shapes]


@single_threaded()
def check_manifold(norm: Norm, x0: Any, g: Any, *, reference: Reference | None = None, seed: int = 0) -> None:
    """Assert the manifold contract at ``project(x0)`` for the gradient ``g`` (arrays of one backend and dtype,
    float32 or float64); raise ``ContractViolation`` naming the method on failure, ``ShapeRefused`` if ``project``
    rejects the shape with a ``ValueError``. ``reference``: a declared optimum (``point``, ``tangent_value``)."""
    case = _Case(norm, g, None, point=x0)
    if case.dtype not in _TANGENT_TOL:
        raise ValueError(f"check_manifold runs in float32 or float64; got {case.dtype}")
    tol = _TANGENT_TOL[case.dtype]
    rng = np.random.default_rng(seed)
    try:
        with np.errstate(all="ignore"):
            y = norm.project(x0)
    except ValueError as err:
        raise ShapeRefused(str(err)) from None
    except Exception as err:
        case.fail("crash", "project", f"project(x) raised {type(err).__name__}: {err}")
    _check_outputs(case, {"project": y})
    y64 = to_numpy(y)
    _require_finite(case, "project", "project(x)", y64)
    case.point64 = y64
    ambient = _flat(case, y64)
    size = np.maximum(np.max(np.abs(ambient), axis=-1), 1.0)

    again = to_numpy(case.call("project", y, what="project(x)"))
    err = np.max(np.abs(_flat(case, again) - ambient), axis=-1)
    if np.any(err > tol * size):
        case.fail("project", "project", "project(project(x)) differs from project(x): project does not land on the "
                  "manifold, or moves points that are on it", **{"max difference": float(np.max(err))})

    basis = _tangent_basis(case, y64)
    if basis is not None:
        _check_residual(case, y64, *basis, tol)

    dual = to_numpy(case.call("dual_norm", g))
    v = case.call("lmo_at", y, g, what="x, g")
    if not np.array_equal(to_numpy(g), case.g64) or not np.array_equal(to_numpy(y), y64):
        case.fail("input unchanged", "lmo_at", "lmo_at(x, g) modified x or g in place")
    _check_outputs(case, {"lmo_at": v})
    v64 = to_numpy(v)
    _require_finite(case, "lmo_at", "lmo_at(x, g)", v64)
    _check_lmo_at(case, y, y64, v64, dual, basis, reference, rng, tol)
    _check_first_order(case, y, y64, v64, basis, tol)


def _flat(case: _Case, a: np.ndarray) -> np.ndarray:
    return a.reshape(*a.shape[: a.ndim - case.norm.ndim], -1)


def _tangent_basis(case: _Case, y64: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Orthonormal bases ``(T, N)`` (shapes ``(*batch, n, k)`` and ``(*batch, n, n - k)``) of the tangent space at
    ``y`` and its orthogonal complement, from central differences of ``project`` in float64; ``None`` where this is
    not possible (no float64, more than 400 entries, or no clear gap between tangent and normal directions)."""
    n = case.size
    if "float64" not in case.backend.dtypes or n > 400:
        return None
    core = y64.shape[y64.ndim - case.norm.ndim:]
    batch = y64.shape[: y64.ndim - case.norm.ndim]
    h = 1e-5 * max(1.0, float(np.max(np.abs(y64))))  # ~eps^(1/3): truncation and rounding errors ~1e-10
    eye = np.eye(n).reshape(n, *(1,) * len(batch), *core)
    both = np.concatenate([y64[None] + h * eye, y64[None] - h * eye])
    moved = to_numpy(case.call("project", case.precise(both), what="points near x"))
    jac = (moved[:n] - moved[n:]).reshape(n, *batch, n) / (2 * h)  # jac[i] = d project / d x_i
    jac = np.moveaxis(jac, 0, -1)  # (*batch, n_out, n_in)
    u, s, _ = np.linalg.svd(jac)
    rel = s / np.maximum(s[..., :1], 1e-300)
    k = int(np.sum(rel.reshape(-1, n)[0] > 1e-3))
    counts = np.sum(rel > 1e-3, axis=-1)
    if not np.all(counts == k) or (k < n and np.any(rel[..., k] > 1e-6)) or k == 0:
        return None  # project is not smooth here, or the differences are too noisy to tell
    return u[..., :, :k], u[..., :, k:]


def _vectors(case: _Case, basis: np.ndarray) -> np.ndarray:
    """The columns of a per-batch-entry basis ``(*batch, n, k)`` as ``k`` points ``(k, *batch, *core)``."""
    batch = basis.shape[:-2]
    core = case.g64.shape[case.g64.ndim - case.norm.ndim:]
    return np.moveaxis(basis, -1, 0).reshape(basis.shape[-1], *batch, *core)


def _check_residual(case: _Case, y64: np.ndarray, tangent: np.ndarray, normal: np.ndarray, tol: float) -> None:
    for vectors, kind in ((tangent, "tangent"), (normal, "normal")):
        k = vectors.shape[-1]
        if k == 0:
            continue
        points = np.broadcast_to(y64, (k, *y64.shape))
        res = to_numpy(case.call("tangent_residual", case.on_backend(points), case.on_backend(_vectors(case, vectors)),
                                 what=f"x, {kind} vectors"))
        if kind == "tangent" and np.any(res > tol):
            case.fail("tangent space", "tangent_residual", "tangent_residual(x, v) is not 0 for a tangent v (a "
                      "direction in which project keeps the point on the manifold)",
                      **{"largest residual": float(np.max(res)), "tangent dimension": k})
        if kind == "normal" and np.any(~(res > 1e-3)):
            case.fail("tangent space", "tangent_residual", "tangent_residual(x, v) is (nearly) 0 for a v normal to the "
                      "manifold (a direction that project removes): it does not measure the tangent space",
                      **{"smallest residual": float(np.min(res)), "normal dimension": k})


def _check_lmo_at(case: _Case, y: Any, y64: np.ndarray, v64: np.ndarray, dual: np.ndarray,
                  basis: tuple[np.ndarray, np.ndarray] | None, reference: Reference | None,
                  rng: np.random.Generator, tol: float) -> None:
    norm = case.norm
    delta, slack = float(norm.delta), float(norm.slack)
    flat_v = _flat(case, v64)
    length_f = np.sqrt(np.sum(flat_v**2, axis=-1))
    residual = to_numpy(case.call("tangent_residual", y, case.on_backend(v64), what="x, lmo_at(x, g)"))
    if np.any(residual > tol):
        case.fail("tangent", "lmo_at", "lmo_at(x, g) is not tangent at x: tangent_residual(x, lmo_at(x, g)) is not 0",
                  **{"tangent_residual": float(np.max(residual))})
    if basis is not None:
        tangent, normal = basis
        off = np.sqrt(np.sum(np.einsum("...nk,...n->...k", normal, flat_v) ** 2, axis=-1))
        if np.any(off > tol * np.maximum(length_f, 1e-300)):
            case.fail("tangent", "lmo_at", "lmo_at(x, g) has a component normal to the manifold (the kit's tangent "
                      "space: the range of project's derivative at x)", **{"normal part / length": float(np.max(
                          off / np.maximum(length_f, 1e-300)))})
    length = case.norm_of(v64, "lmo_at(x, g)")
    if np.any(length > 1 + slack + case.tol):
        i = case.worst(length)
        case.fail("feasibility", "lmo_at", f"lmo_at(x, g) is outside the unit ball (slack = {slack})",
                  **{"norm(lmo_at(x, g))": float(length[i]), "batch index": i})
    value = case.inner(case.g64, v64)
    slop = case.tol * 4 * np.maximum(dual, np.abs(value)) + case.atol
    if reference is not None and reference.tangent_value is not None:
        want = np.broadcast_to(np.asarray(reference.tangent_value, dtype=np.float64), value.shape)
        excess = value - delta * want - slop - reference.rtol * np.abs(want)
        if np.any(excess > 0):
            i = case.worst(excess)
            case.fail("reference", "lmo_at", "<g, lmo_at(x, g)> falls short of the known optimum over the tangent "
                      f"ball ({reference.source})", **{"<g, lmo_at(x, g)>": float(value[i]), "optimum": float(want[i]),
                                                  "relative gap": float(excess[i] / max(abs(want[i]), 1e-300)),
                                                  "batch index": i})
        if reference.tangent_lmo is not None and delta == 1 and slack == 0:
            err = np.max(np.abs(v64 - np.asarray(reference.tangent_lmo, dtype=np.float64)))
            if err > 1e3 * case.tol + reference.rtol * 1e3:
                case.fail("reference", "lmo_at", f"lmo_at(x, g) differs from the known argmin ({reference.source})",
                          **{"max difference": float(err)})
    if basis is not None:
        tangent = basis[0]
        flat_g = _flat(case, case.g64)
        p_g = np.einsum("...nk,...k->...n", tangent, np.einsum("...nk,...n->...k", tangent, flat_g))
        live = np.sqrt(np.sum(p_g**2, axis=-1)) > 1e3 * case.tol * np.sqrt(np.sum(flat_g**2, axis=-1))
        if np.any(live & (length < delta - case.tol)):
            i = case.worst(np.where(live, delta - length, -1.0))
            case.fail("tightness", "lmo_at", f"lmo_at(x, g) lies strictly inside the ball (norm < delta = {delta}) "
                      "although g has a tangent component", **{"norm(lmo_at(x, g))": float(length[i]),
                                                               "batch index": i})
        best, point = _best_tangent(case, tangent, v64, rng)
        # the basis comes from central differences (error ~1e-10): its points may leave the tangent space by as much
        excess = value - delta * best - slop - 1e-8 * dual
        if np.any(excess > 0):
            i = case.worst(excess)
            case.fail("optimality", "lmo_at", "a feasible tangent point does better than lmo_at(x, g): it is not the "
                      "argmin over the tangent ball", **{"<g, lmo_at(x, g)>": float(value[i]),
                                                         "<g, v>/norm(v)": float(best[i]), "batch index": i})
    c = 2.0**-3
    value_c = case.inner(case.g64, to_numpy(case.call("lmo_at", y, case.on_backend(case.g64 * c), what="x, g / 8")))
    inexact = 1.0 - delta + slack
    if np.any(np.abs(value_c - value) > (4 * case.tol + inexact) * np.maximum(dual, 1e-300) + case.atol):
        case.fail("homogeneity", "lmo_at", "lmo_at(x, g) must be positively homogeneous of degree 0 in g: "
                  "lmo_at(x, g/8) attains a different value", **{"<g, lmo_at(x, g/8)>": float(np.max(value_c)),
                                                   "<g, lmo_at(x, g)>": float(np.max(value))})


def _best_tangent(case: _Case, tangent: np.ndarray, v64: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The most negative ``<g, v> / ||v||`` over sampled tangent points ``v`` (per batch entry)."""
    core = case.g64.shape[case.g64.ndim - case.norm.ndim:]
    batch = case.batch_shape
    k = tangent.shape[-1]

    def lift(coords: np.ndarray) -> np.ndarray:  # (..., *batch, k) -> (..., *batch, *core)
        return np.einsum("...nk,...k->...n", tangent, coords).reshape(*coords.shape[:-1], *core)

    def down(a: np.ndarray) -> np.ndarray:
        return np.einsum("...nk,...n->...k", tangent, _flat(case, a))

    ambient = to_numpy(case.call("lmo", case.g))
    projected_g = case.on_backend(lift(down(case.g64)))
    ambient_of_projected = to_numpy(case.call("lmo", projected_g, what="the tangent part of g"))
    coords = np.stack([down(-case.g64), down(ambient), down(ambient_of_projected), down(v64),
                       *rng.standard_normal((8, *batch, k))])
    ratios = _tangent_ratios(case, lift(coords))
    pick = np.argmin(ratios, axis=0)
    best = np.take_along_axis(ratios, pick[None], axis=0)[0]
    point = np.take_along_axis(coords, pick.reshape(1, *batch, 1), axis=0)[0]
    for radius in np.geomspace(0.3, 1e-5, 30):
        spread = np.sqrt(np.mean(point**2, axis=-1, keepdims=True)) + 1e-300
        trial = point + radius * spread * rng.standard_normal((24, *batch, k))
        found_all = _tangent_ratios(case, lift(trial))
        j = np.argmin(found_all, axis=0)
        found = np.take_along_axis(found_all, j[None], axis=0)[0]
        better = found < best
        chosen = np.take_along_axis(trial, j.reshape(1, *batch, 1), axis=0)[0]
        best = np.where(better, found, best)
        point = np.where(better[..., None], chosen, point)
    return best, point


def _tangent_ratios(case: _Case, xs: np.ndarray) -> np.ndarray:
    lengths = case.norm_of(xs, "tangent points")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sum(case.g64 * xs, axis=case.core_axes) / lengths
    return np.where((lengths > 0) & np.isfinite(ratio), ratio, np.inf)


def _check_first_order(case: _Case, y: Any, y64: np.ndarray, v64: np.ndarray,
                       basis: tuple[np.ndarray, np.ndarray] | None, tol: float) -> None:
    """retract and project: on the manifold, retract(x, 0) = x, and first-order correct along tangent steps."""
    step = v64
    if basis is not None:  # the first tangent basis vector where lmo_at gave no step
        first = _vectors(case, basis[0][..., :1])[0]
        none = np.sqrt(np.sum(_flat(case, v64) ** 2, axis=-1)) == 0
        step = np.where(none.reshape(*none.shape, *(1,) * case.norm.ndim), first, v64)
    size = np.maximum(np.max(np.abs(_flat(case, y64)), axis=-1), 1.0)
    still = to_numpy(case.call("retract", y, case.on_backend(np.zeros_like(v64)), what="x, 0"))
    err = np.max(np.abs(_flat(case, still - y64)), axis=-1)
    if np.any(err > tol * size):
        case.fail("retract", "retract", "retract(x, 0) must be x", **{"max |retract(x, 0) - x|": float(np.max(err))})
    moved = case.call("retract", y, case.on_backend(0.5 * step), what="x, a tangent step")
    moved64 = to_numpy(moved)
    _require_finite(case, "retract", "retract(x, step)", moved64)
    back = to_numpy(case.call("project", moved, what="retract(x, step)"))
    err = np.max(np.abs(_flat(case, back - moved64)), axis=-1)
    if np.any(err > tol * np.maximum(np.max(np.abs(_flat(case, moved64)), axis=-1), 1.0)):
        case.fail("retract", "retract", "retract(x, step) is not on the manifold (project moves it)",
                  **{"max |project(r) - r|": float(np.max(err))})
    t = _SMALL_T[case.dtype]
    lengths = np.sqrt(np.sum(_flat(case, step) ** 2, axis=-1))
    live = lengths > 0
    target = y64 + t * step
    for method, got in (("retract", case.call("retract", y, case.on_backend(t * step), what="x, t v")),
                        ("project", case.call("project", case.on_backend(target), what="x + t v"))):
        err = np.sqrt(np.sum(_flat(case, to_numpy(got) - target) ** 2, axis=-1))
        ratio = np.where(live, err / np.where(live, t * lengths, 1.0), 0.0)
        if np.any(ratio > _FIRST_ORDER):
            what = "retract(x, t v)" if method == "retract" else "project(x + t v)"
            case.fail("first order", method, f"{what} must be x + t v + O(t^2) for tangent v (a first-order "
                      f"{'retraction' if method == 'retract' else 'projection'}); at t = {t:g} the error is "
                      f"{float(np.max(ratio)):.3g} t ||v||", **{"t": t})
