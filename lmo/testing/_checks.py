"""``check_norm``: the contract of one oracle on one input, with failures that say what is wrong.

Every number is compared in float64 on the harness side; the oracle itself runs on the input's backend and dtype.
The dual norm is checked independently of the oracle: sampled points ``x`` give lower bounds
``<g, x> / ||x|| >= -||g||_*`` that use nothing but ``norm``, and on small inputs an exhaustive set of directions
(all of {-1, 0, 1}^n) refined by hill climbing approaches the true optimum.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import array_api_compat
import numpy as np

from lmo.norm import Norm

from ._backends import Backend, backend_for, to_numpy

__all__ = ["ContractViolation", "Measured", "check_norm", "tolerance"]

_EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "bfloat16": 2.0**-7, "float16": 2.0**-10}
_MAX_EXPONENT = {"float64": 1023, "float32": 127, "bfloat16": 127, "float16": 15}
_MIN_EXPONENT = {"float64": -1022, "float32": -126, "bfloat16": -126, "float16": -14}
# Inputs up to this many core entries get the exhaustive search over {-1, 0, 1}^n and hill climbing.
EXHAUSTIVE_SIZE = 6


class ContractViolation(AssertionError):
    """An oracle broke its contract. ``property`` names the broken property; ``numbers`` holds the evidence."""

    def __init__(
        self,
        prop: str,
        explanation: str,
        *,
        norm: Norm,
        g: np.ndarray,
        backend: str,
        dtype: str,
        numbers: dict[str, Any] | None = None,
    ) -> None:
        self.property = prop
        self.norm = norm
        self.shape = tuple(g.shape)
        self.backend = backend
        self.dtype = dtype
        self.numbers = dict(numbers or {})
        self.input = g
        text = np.array2string(g, precision=6, threshold=40, max_line_width=110)
        lines = [
            f"[{prop}] {norm!r}: {explanation}",
            f"  input g: shape {self.shape}, {dtype}, backend {backend}",
        ]
        if self.numbers:
            lines.append("  " + ", ".join(f"{k} = {_fmt(v)}" for k, v in self.numbers.items()))
        lines.append("  g = " + text.replace("\n", "\n      "))
        super().__init__("\n".join(lines))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.10g}"
    return str(v)


@dataclasses.dataclass(frozen=True)
class Measured:
    """What ``check_norm`` measured, per batch entry (float64): ``<g, lmo(g)>``, ``||g||_*``, ``||g||``."""

    value: np.ndarray
    dual: np.ndarray
    norm: np.ndarray


def tolerance(dtype: str, size: int) -> float:
    """Relative tolerance for comparing values computed by an oracle in ``dtype`` over ``size`` entries."""
    eps32 = _EPS["float32"]
    if dtype in ("float16", "bfloat16"):  # computed in float32, rounded once to half precision
        return 4 * _EPS[dtype] + eps32 * (16 + 4 * size)
    return _EPS.get(dtype, eps32) * (16 + 4 * size)


def _dtype_name(x: Any) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]


class _Case:
    """One input on one backend: runs the oracle's methods and raises ``ContractViolation`` with context."""

    def __init__(self, norm: Norm, g: Any, rtol: float | None) -> None:
        self.norm = norm
        self.g = g
        self.backend: Backend = backend_for(g)
        self.dtype = _dtype_name(g)
        self.g64 = to_numpy(g)
        ndim = norm.ndim
        self.core_axes = tuple(range(-ndim, 0))
        self.batch_shape = tuple(g.shape[: g.ndim - ndim])
        self.size = math.prod(g.shape[g.ndim - ndim :])
        self.tol = rtol if rtol is not None else tolerance(self.dtype, self.size)
        # results below the smallest normal number carry no relative precision
        self.atol = 2.0 ** _MIN_EXPONENT.get(self.dtype, -126) * 64 * self.size

    def fail(self, prop: str, explanation: str, **numbers: Any) -> None:
        raise ContractViolation(
            prop, explanation, norm=self.norm, g=self.g64, backend=self.backend.name, dtype=self.dtype,
            numbers=numbers,
        )

    def call(self, method: str, x: Any, what: str = "g") -> Any:
        try:
            with np.errstate(all="ignore"):  # the kit checks finiteness itself and says where it fails
                return getattr(self.norm, method)(x)
        except Exception as err:  # a crash is a contract failure with the input that caused it
            self.fail("crash", f"{method}({what}) raised {type(err).__name__}: {err} (input shape {tuple(x.shape)})")

    def on_backend(self, a: np.ndarray, dtype: str | None = None) -> Any:
        return self.backend.asarray(a, dtype or self.dtype)

    def inner(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sum(a * b, axis=self.core_axes)

    def worst(self, excess: np.ndarray) -> tuple[int, ...]:
        """The batch index with the largest violation."""
        return tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape)) if excess.ndim else ()


def check_norm(
    norm: Norm,
    g: Any,
    d: Any = None,
    *,
    rtol: float | None = None,
    exhaustive: bool | None = None,
    seed: int = 0,
) -> Measured:
    """Assert the ``Norm`` contract on one input ``g`` (any backend); raise ``ContractViolation`` on failure.

    Checked, in order: outputs keep namespace, shape, dtype and device; the input is left unchanged; outputs are
    finite; ``lmo(0) = 0``; feasibility ``||lmo(g)|| <= 1 + slack``; tightness ``||lmo(g)|| >= delta``
    for ``g != 0``; optimality ``<g, lmo(g)> <= -delta ||g||_*``; duality (Hölder) ``<g, lmo(g)> >= -||g||_*
    ||lmo(g)||``; optimality against sampled feasible points (and, for small inputs, an exhaustive search);
    positive homogeneity (``lmo`` of degree 0, ``norm`` and ``dual_norm`` of degree 1) and evenness; the norm
    axioms and Hölder's inequality on ``g`` and ``d`` (a random point of ``g``'s shape if not given); finite,
    consistent results at extreme scales; invariance under the norm's declared ``symmetry``; the declared
    ``separable_axes`` (lmo of blocks cut along them equals the blocks of lmo).

    ``rtol`` overrides the dtype-derived tolerance; ``exhaustive`` forces the small-size exhaustive search on or off
    (default: on for numpy float64 inputs of at most 6 core entries; other backends are held to numpy's
    values by the parity check). Returns the measured values for parity checks.
    """
    case = _Case(norm, g, rtol)
    if not np.all(np.isfinite(case.g64)):
        raise ValueError(f"check_norm needs a finite input g; got shape {case.g64.shape} with non-finite entries")
    delta, slack = float(norm.delta), float(norm.slack)
    if not (0 < delta <= 1 and slack >= 0):
        case.fail("declaration", f"delta must lie in (0, 1] and slack be >= 0; got delta={delta}, slack={slack}")

    d_out = case.call("lmo", g)
    dual_out = case.call("dual_norm", g)
    norm_out = case.call("norm", g, "x")
    _check_outputs(case, d_out, dual_out, norm_out)
    if not np.array_equal(to_numpy(g), case.g64):
        case.fail("input unchanged", "a method modified its input g in place")

    d64, dual, norm_g = to_numpy(d_out), to_numpy(dual_out), to_numpy(norm_out)
    if not np.all(np.isfinite(d64)):
        case.fail("finite", "lmo(g) has non-finite entries", bad=int(np.sum(~np.isfinite(d64))))
    if not _representable(case):
        # The exact norm or dual norm of g (times 32, for the homogeneity check) overflows this dtype, so the
        # values cannot be compared; what is owed here is a finite lmo, checked above.
        return Measured(value=case.inner(case.g64, d64), dual=dual, norm=norm_g)
    for label, arr in (("dual_norm(g)", dual), ("norm(g)", norm_g)):
        if not np.all(np.isfinite(arr)):
            case.fail("finite", f"{label} has non-finite entries", bad=int(np.sum(~np.isfinite(arr))))
    zero = np.all(case.g64 == 0, axis=case.core_axes)
    if np.any(zero & np.any(d64 != 0, axis=case.core_axes)):
        case.fail("zero", "lmo(0) must be 0 (a zero gradient gives no step)")
    if np.any(zero & ((dual != 0) | (norm_g != 0))):
        case.fail("zero", "norm(0) and dual_norm(0) must be 0")

    lmo_norm = to_numpy(case.call("norm", d_out, "lmo(g)"))
    value = case.inner(case.g64, d64)
    scale = np.maximum(dual, np.abs(value))
    tol = case.tol

    excess = lmo_norm - (1 + slack) - tol
    if np.any(excess > 0):
        i = case.worst(excess)
        case.fail("feasibility", f"lmo(g) is outside the unit ball: norm(lmo(g)) exceeds 1 + slack (slack = {slack})",
                  **{"norm(lmo(g))": float(lmo_norm[i]), "tolerance": tol, "batch index": i})
    shortfall = np.where(zero, -1.0, delta - tol - lmo_norm)
    if np.any(shortfall > 0):
        i = case.worst(shortfall)
        case.fail("tightness", f"lmo(g) lies strictly inside the ball (norm < delta = {delta}), so it cannot be an "
                  "argmin of a linear function over the ball", **{"norm(lmo(g))": float(lmo_norm[i]), "batch index": i})
    excess = value + delta * dual - tol * scale - case.atol
    if np.any(excess > 0):
        i = case.worst(excess)
        case.fail("optimality", f"<g, lmo(g)> must be <= -delta * dual_norm(g) (delta = {delta}); a wrong sign, "
                  "a non-optimal lmo or a dual norm that is too large", **{"<g, lmo(g)>": float(value[i]),
                  "-delta * dual_norm(g)": float(-delta * dual[i]), "batch index": i})
    excess = -(value + dual * lmo_norm) - tol * scale - case.atol
    if np.any(excess > 0):
        i = case.worst(excess)
        case.fail("duality", "Hölder's inequality <g, d> >= -dual_norm(g) norm(d) fails at d = lmo(g): dual_norm(g) "
                  "is too small for this norm", **{"<g, lmo(g)>": float(value[i]), "dual_norm(g)": float(dual[i]),
                  "norm(lmo(g))": float(lmo_norm[i]), "batch index": i})

    if exhaustive is None:
        exhaustive = case.dtype == "float64" and case.size <= EXHAUSTIVE_SIZE and case.backend.name == "numpy"
    rng = np.random.default_rng(seed)
    best, witness = _best_direction(case, d64, rng, exhaustive)
    excess = value - delta * best - tol * scale - case.atol
    if np.any(excess > 0):
        i = case.worst(excess)
        case.fail("optimality", "a feasible point x / norm(x) does better than lmo(g): lmo(g) is not the argmin "
                  f"(found by {'exhaustive' if exhaustive else 'sampled'} search)",
                  **{"<g, lmo(g)>": float(value[i]), "<g, x>/norm(x)": float(best[i]),
                     "x": np.array2string(witness[i], precision=4, threshold=20), "batch index": i})
    excess = -best - dual - tol * scale - case.atol
    if np.any(excess > 0):
        i = case.worst(excess)
        case.fail("duality", "dual_norm(g) is smaller than <g, x>/norm(x) for a sampled x (Hölder), so it is not "
                  "the dual of norm", **{"dual_norm(g)": float(dual[i]), "-<g, x>/norm(x)": float(-best[i]),
                                        "batch index": i})

    _check_homogeneity(case, value, dual, norm_g, scale)
    _check_axioms(case, d, rng, dual, norm_g)
    _check_scales(case, value, dual, norm_g, scale)
    _check_symmetry(case, dual, norm_g, rng)
    _check_separable(case, d64)
    return Measured(value=value, dual=dual, norm=norm_g)


def _check_separable(case: _Case, d64: np.ndarray) -> None:
    """The declared ``separable_axes``: lmo of each block (cut along such an axis) is that block of lmo(g)."""
    axes = tuple(case.norm.separable_axes)
    for axis in axes:
        if not (isinstance(axis, int) and -case.norm.ndim <= axis < 0):
            case.fail("declaration", f"separable_axes must hold negative core axes in [-{case.norm.ndim}, -1]; "
                      f"got {axes}")
        n = case.g64.shape[axis]
        if n < 2:
            continue
        cut = n // 2
        pieces = []
        for block in np.split(case.g64, [cut], axis=axis):
            pieces.append(to_numpy(case.call("lmo", case.on_backend(block), f"a block of g along axis {axis}")))
        joined = np.concatenate(pieces, axis=axis)
        err = float(np.max(np.abs(joined - d64))) if d64.size else 0.0
        if err > case.tol * max(1.0, float(np.max(np.abs(d64)))) + case.atol:
            case.fail("separable", f"the norm declares separable_axes={axes}, but lmo of the blocks of g cut along "
                      f"axis {axis} differs from lmo(g) cut the same way", **{"max difference": err, "cut": cut})


def _representable(case: _Case) -> bool:
    """Whether ``norm(g)`` and ``dual_norm(g)``, computed in float64, fit the input's dtype with room to spare."""
    if case.dtype not in ("float16", "bfloat16") or "float64" not in case.backend.dtypes:
        return True
    wide = case.on_backend(case.g64, "float64")
    limit = 2.0 ** (_MAX_EXPONENT[case.dtype] - 6)
    return all(np.all(to_numpy(case.call(m, wide)) < limit) for m in ("norm", "dual_norm"))


def _check_outputs(case: _Case, d: Any, dual: Any, norm_g: Any) -> None:
    g = case.g
    xp_name = case.backend.name
    for label, out, shape in (("lmo(g)", d, tuple(g.shape)), ("dual_norm(g)", dual, case.batch_shape),
                              ("norm(g)", norm_g, case.batch_shape)):
        if not array_api_compat.is_array_api_obj(out):
            case.fail("output", f"{label} returned {type(out).__name__}, not an array of the input's namespace")
        if backend_for(out).name != xp_name:
            case.fail("output", f"{label} is an array of {backend_for(out).name}, but the input was {xp_name}")
        if tuple(out.shape) != shape:
            case.fail("output", f"{label} has shape {tuple(out.shape)}; expected {shape}")
        if out.dtype != g.dtype:
            case.fail("output", f"{label} has dtype {out.dtype}; the input's dtype is {g.dtype}")
        if array_api_compat.device(out) != array_api_compat.device(g):
            case.fail("output", f"{label} is on device {array_api_compat.device(out)}, the input on "
                      f"{array_api_compat.device(g)}")


def _best_direction(case: _Case, d64: np.ndarray, rng: np.random.Generator,
                    exhaustive: bool) -> tuple[np.ndarray, np.ndarray]:
    """The most negative ``<g, x> / ||x||`` over candidate points x, per batch entry, and the point attaining it."""
    g = case.g64
    core = g.shape[g.ndim - case.norm.ndim:]
    n = case.size
    # candidates built from g are rescaled by a power of two to unit size, so that <g, x> cannot underflow
    peak = np.max(np.abs(g), axis=case.core_axes, keepdims=True)
    unit = g * 2.0 ** -np.floor(np.log2(np.where(peak > 0, peak, 1.0)))
    cands = [-unit, -np.sign(g), d64, -unit + 0.1 * rng.standard_normal(g.shape)]
    cands += list(rng.standard_normal((8, *g.shape)))
    directions = []
    if n <= 64:
        eye = np.eye(n).reshape(n, *core)
        directions += [eye, -eye]
    if exhaustive:
        grid = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=n)))  # x = 0 is masked out
        directions.append(grid.reshape(-1, *core))
    stacked = np.stack(cands)
    if directions:
        dirs = np.concatenate(directions)
        dirs = np.broadcast_to(dirs.reshape(dirs.shape[0], *(1,) * len(case.batch_shape), *core),
                               (dirs.shape[0], *g.shape))
        stacked = np.concatenate([stacked, dirs])
    ratios = _ratios(case, stacked)
    pick = np.argmin(ratios, axis=0)
    best = np.take_along_axis(ratios, pick[None], axis=0)[0]
    point = np.take_along_axis(stacked, pick.reshape(1, *pick.shape, *(1,) * len(core)), axis=0)[0]
    if exhaustive:
        best, point = _hill_climb(case, best, point, rng)
    return best, point


def _ratios(case: _Case, xs: np.ndarray) -> np.ndarray:
    precise = "float64" if "float64" in case.backend.dtypes else case.dtype
    lengths = to_numpy(case.call("norm", case.on_backend(xs, precise), f"a batch of points of shape {xs.shape}"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sum(case.g64 * xs, axis=tuple(range(-case.norm.ndim, 0))) / lengths
    return np.where((lengths > 0) & np.isfinite(ratio), ratio, np.inf)


def _hill_climb(case: _Case, best: np.ndarray, point: np.ndarray, rng: np.random.Generator,
                rounds: int = 30, proposals: int = 24) -> tuple[np.ndarray, np.ndarray]:
    core_axes = tuple(range(-case.norm.ndim, 0))
    for radius in np.geomspace(0.3, 1e-5, rounds):
        spread = np.sqrt(np.mean(point**2, axis=core_axes, keepdims=True))
        trial = point + radius * spread * rng.standard_normal((proposals, *point.shape))
        ratios = _ratios(case, trial)
        pick = np.argmin(ratios, axis=0)
        found = np.take_along_axis(ratios, pick[None], axis=0)[0]
        better = found < best
        chosen = np.take_along_axis(trial, pick.reshape(1, *pick.shape, *(1,) * case.norm.ndim), axis=0)[0]
        best = np.where(better, found, best)
        point = np.where(better.reshape(*better.shape, *(1,) * case.norm.ndim), chosen, point)
    return best, point


def _check_homogeneity(case: _Case, value: np.ndarray, dual: np.ndarray, norm_g: np.ndarray,
                       scale: np.ndarray) -> None:
    inexact = 1.0 - float(case.norm.delta) + float(case.norm.slack)
    for c in (2.0**-3, 2.0**5):
        gc = case.on_backend(case.g64 * c)
        if not np.array_equal(to_numpy(gc), case.g64 * c):
            continue  # c g is not exact in this dtype (subnormal or overflowing entries): nothing to compare
        value_c = case.inner(case.g64, to_numpy(case.call("lmo", gc, f"{c:g} * g")))
        gap = np.abs(value_c - value) - (case.tol + inexact) * scale
        if np.any(gap > 0):
            i = case.worst(gap)
            case.fail("homogeneity", f"lmo must be positively homogeneous of degree 0: lmo({c:g} g) attains a "
                      "different value than lmo(g)", **{"<g, lmo(c g)>": float(value_c[i]),
                                                         "<g, lmo(g)>": float(value[i]), "batch index": i})
        for method, base in (("dual_norm", dual), ("norm", norm_g)):
            got = to_numpy(case.call(method, gc, f"{c:g} * g"))
            gap = np.abs(got - c * base) - case.tol * c * base - case.atol
            if np.any(gap > 0):
                i = case.worst(gap)
                case.fail("homogeneity", f"{method} must be positively homogeneous of degree 1",
                          **{f"{method}({c:g} g)": float(got[i]), f"{c:g} * {method}(g)": float(c * base[i]),
                             "batch index": i})
    neg = to_numpy(case.call("norm", case.on_backend(-case.g64), "-g"))
    gap = np.abs(neg - norm_g) - case.tol * norm_g - case.atol
    if np.any(gap > 0):
        i = case.worst(gap)
        case.fail("norm axioms", "norm(-x) must equal norm(x)", **{"norm(-g)": float(neg[i]),
                                                                    "norm(g)": float(norm_g[i]), "batch index": i})


def _check_axioms(case: _Case, d: Any, rng: np.random.Generator, dual: np.ndarray, norm_g: np.ndarray) -> None:
    if d is None:
        spread = max(float(np.abs(case.g64).max()), 1.0) if case.dtype == "float64" else 1.0
        d64 = rng.standard_normal(case.g64.shape) * spread
    else:
        d64 = to_numpy(d)
    dd = case.on_backend(d64)
    d64 = to_numpy(dd)  # as rounded to the input's dtype
    norm_d = to_numpy(case.call("norm", dd, "d"))
    if np.any(norm_g < 0) or np.any(norm_d < 0):
        case.fail("norm axioms", "norm(x) must be >= 0", **{"min norm": float(min(norm_g.min(), norm_d.min()))})
    # definiteness is owed where the input is not lost in the subnormal range (a norm of 1e-45 / 3 may round to 0)
    nonzero = np.max(np.abs(case.g64), axis=case.core_axes) >= 2.0 ** (_MIN_EXPONENT.get(case.dtype, -126) + 10)
    if np.any(nonzero & (norm_g <= 0)):
        case.fail("norm axioms", "norm(x) must be > 0 for x != 0 (definiteness)")
    total = case.on_backend(case.g64 + d64)
    if np.all(np.isfinite(to_numpy(total))):
        norm_sum = to_numpy(case.call("norm", total, "g + d"))
        gap = norm_sum - norm_g - norm_d - case.tol * (norm_g + norm_d) - case.atol
        if np.any(gap > 0):
            i = case.worst(gap)
            case.fail("norm axioms", "triangle inequality norm(g + d) <= norm(g) + norm(d) fails",
                      **{"norm(g + d)": float(norm_sum[i]), "norm(g) + norm(d)": float(norm_g[i] + norm_d[i]),
                         "batch index": i})
    pairing = case.inner(case.g64, d64)
    gap = np.abs(pairing) - dual * norm_d - case.tol * (dual * norm_d + np.abs(pairing)) - case.atol
    if np.any(gap > 0):
        i = case.worst(gap)
        case.fail("hölder", "Hölder's inequality |<g, d>| <= dual_norm(g) norm(d) fails: dual_norm is too small",
                  **{"|<g, d>|": float(abs(pairing[i])), "dual_norm(g) norm(d)": float(dual[i] * norm_d[i]),
                     "batch index": i})


def _check_scales(case: _Case, value: np.ndarray, dual: np.ndarray, norm_g: np.ndarray, scale: np.ndarray) -> None:
    """Scale-robustness: at 2^(+-3/4 of the dtype's exponent range) results stay finite and consistent."""
    peak = np.max(np.abs(case.g64), axis=case.core_axes, keepdims=True)
    if not np.any(peak > 0):
        return
    unit = np.where(peak > 0, case.g64 / np.where(peak > 0, peak, 1.0), 0.0)
    unit_backend = case.on_backend(unit)
    unit = to_numpy(unit_backend)
    base_value = case.inner(unit, to_numpy(case.call("lmo", unit_backend, "g / max|g|")))
    base_dual = to_numpy(case.call("dual_norm", unit_backend, "g / max|g|"))
    base_norm = to_numpy(case.call("norm", unit_backend, "g / max|g|"))
    inexact = 1.0 - float(case.norm.delta) + float(case.norm.slack)
    hi, lo = _MAX_EXPONENT.get(case.dtype, 127), _MIN_EXPONENT.get(case.dtype, -126)
    for exponent in (int(0.75 * hi), int(0.75 * lo)):
        s = 2.0**exponent
        gs = case.on_backend(unit * s)
        what = f"2^{exponent} * g / max|g|"
        d = to_numpy(case.call("lmo", gs, what))
        dual_s = to_numpy(case.call("dual_norm", gs, what)) / s
        norm_s = to_numpy(case.call("norm", gs, what)) / s
        if not np.all(np.isfinite(d)):
            case.fail("extreme scale", f"lmo({what}) is not finite: squares or powers overflow or underflow; "
                      "divide by the largest entry first")
        value_s = case.inner(unit, d)
        if np.any(np.abs(value_s - base_value) > (case.tol + inexact) * base_dual + case.atol):
            case.fail("extreme scale", f"lmo({what}) attains a different value than lmo(g / max|g|)",
                      **{"scaled": float(np.max(value_s)), "unscaled": float(np.max(base_value))})
        for label, got, base in (("dual_norm", dual_s, base_dual), ("norm", norm_s, base_norm)):
            # only where the exact result is a normal number of the dtype is it owed (a float16 norm of 1e5 is not)
            owed = (base * s < 2.0 ** (hi - 2)) & (base * s > 2.0 ** (lo + 2))
            if not np.all(np.isfinite(got[owed])):
                case.fail("extreme scale", f"{label}({what}) is not finite: squares or powers overflow or underflow; "
                          "divide by the largest entry first")
            if np.any(owed & (np.abs(got - base) > case.tol * base + case.atol)):
                case.fail("extreme scale", f"{label}({what}) / 2^{exponent} differs from {label}(g / max|g|)",
                          **{"scaled": float(np.max(got)), "unscaled": float(np.max(base))})


def _random_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _transform(symmetry: str, x: np.ndarray, ndim: int, rng: np.random.Generator) -> np.ndarray:
    core = x.shape[x.ndim - ndim:]
    batch = x.shape[: x.ndim - ndim]
    if symmetry in ("signed_permutation", "sign_flip"):
        flat = x.reshape(*batch, -1)
        signs = rng.choice([-1.0, 1.0], size=flat.shape[-1])
        perm = rng.permutation(flat.shape[-1]) if symmetry == "signed_permutation" else np.arange(flat.shape[-1])
        return (flat[..., perm] * signs).reshape(x.shape)
    if symmetry == "orthogonal" and ndim == 1:
        return x @ _random_orthogonal(rng, core[-1]).T
    if symmetry in ("orthogonal", "orthogonal_left", "orthogonal_right") and ndim >= 2:
        y = x
        if symmetry in ("orthogonal", "orthogonal_left"):
            y = _random_orthogonal(rng, core[-2]) @ y
        if symmetry in ("orthogonal", "orthogonal_right"):
            y = y @ _random_orthogonal(rng, core[-1])
        return y
    raise ValueError(f"unknown symmetry {symmetry!r} for a norm with ndim={ndim}")


def _check_symmetry(case: _Case, dual: np.ndarray, norm_g: np.ndarray, rng: np.random.Generator) -> None:
    symmetry = case.norm.symmetry
    if symmetry is None:
        return
    moved = case.on_backend(_transform(symmetry, case.g64, case.norm.ndim, rng))
    for method, base in (("norm", norm_g), ("dual_norm", dual)):
        got = to_numpy(case.call(method, moved, f"T g ({symmetry})"))
        # T g is rounded to the dtype again, so allow the rounding of every entry
        gap = np.abs(got - base) - 2 * case.tol * np.maximum(base, np.abs(got)) - case.atol
        if np.any(gap > 0):
            i = case.worst(gap)
            case.fail("symmetry", f"{method} is declared invariant under {symmetry!r} maps T, but {method}(T g) "
                      f"differs from {method}(g)", **{f"{method}(T g)": float(got[i]), f"{method}(g)": float(base[i]),
                                                      "batch index": i})
