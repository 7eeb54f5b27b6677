"""``check_norm``: the contract of one oracle on one input, with failures that name the method that is wrong.

Every number is compared in float64 on the harness side; the oracle itself runs on the input's backend and dtype.
The methods are checked in dependency order, so that a failure is blamed on the method that causes it: ``norm``
first (its closed form where the geometry declares one, the norm axioms), then ``dual_norm`` (its closed form, and
Hölder against points measured with ``norm`` alone: sampled points ``x`` give lower bounds ``<g, x> / ||x|| >=
-||g||_*``, and on small inputs an exhaustive set of directions, all of {-1, 0, 1}^n, refined by hill climbing,
approaches the true optimum), then ``lmo`` (feasibility, tightness, optimality, homogeneity, extreme scales) and
``sharp``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import array_api_compat
import numpy as np

from lmo.norm import Norm, Reference

from ._backends import Backend, backend_for, single_threaded, to_numpy
from ._names import short_name

__all__ = ["ContractViolation", "Measured", "check_norm", "tolerance", "rounding"]

_EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "bfloat16": 2.0**-7, "float16": 2.0**-10}
_MAX_EXPONENT = {"float64": 1023, "float32": 127, "bfloat16": 127, "float16": 15}
_MIN_EXPONENT = {"float64": -1022, "float32": -126, "bfloat16": -126, "float16": -14}
_MANTISSA = {"float64": 52, "float32": 23, "bfloat16": 7, "float16": 10}
_HALF = ("float16", "bfloat16")
# Inputs up to this many core entries get the exhaustive search over {-1, 0, 1}^n and hill climbing.
EXHAUSTIVE_SIZE = 6
# Inputs up to this many entries (batch included) get every property by default; larger ones the cheaper ones.
FULL_SIZE = 1024
INFINITE_INPUT = ("limit", "nan")


class ContractViolation(AssertionError):
    """An oracle broke its contract.

    ``property`` names the broken property and ``method`` the method that is wrong (``"norm"``, ``"dual_norm"``,
    ``"lmo"``, ``"sharp"``, ``"lmo_at"``, ``"retract"``, ``"project"``, ``"tangent_residual"``, or a declaration);
    ``numbers`` holds the evidence and ``input`` the input (float64).
    """

    def __init__(
        self,
        prop: str,
        explanation: str,
        *,
        norm: Norm,
        g: np.ndarray,
        backend: str,
        dtype: str,
        method: str | None = None,
        numbers: dict[str, Any] | None = None,
        layout: str | None = None,
        point: np.ndarray | None = None,
    ) -> None:
        self.property = prop
        self.method = method
        self.norm = norm
        self.shape = tuple(g.shape)
        self.backend = backend
        self.dtype = dtype
        self.numbers = dict(numbers or {})
        self.input = g
        self.point = point
        where = short_name(norm) + (f".{method}" if method else "")
        stored = f", {layout}" if layout else ""
        lines = [f"[{prop}] {where}: {explanation}",
                 f"  input g: shape {self.shape}, {dtype}, backend {backend}{stored}"]
        if self.numbers:
            lines.append("  " + ", ".join(f"{k} = {_fmt(v)}" for k, v in self.numbers.items()))
        if point is not None:
            lines.append("  x = " + _show(point).replace("\n", "\n      "))
        lines.append("  g = " + _show(g).replace("\n", "\n      "))
        super().__init__("\n".join(lines))


def _show(a: np.ndarray) -> str:
    return np.array2string(a, precision=6, threshold=40, max_line_width=110)


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
    """Relative tolerance for values that an oracle computes in ``dtype`` over ``size`` entries (float16 and
    bfloat16: computed in float32; their output rounding is :func:`rounding`, accounted for separately)."""
    eps = _EPS["float32"] if dtype in _HALF else _EPS.get(dtype, _EPS["float32"])
    return eps * (16 + 8 * math.sqrt(size))


def rounding(dtype: str) -> float:
    """The unit roundoff of storing a float32 result in ``dtype``: ``2^-(mantissa + 1)`` for half precision, else 0."""
    return 2.0 ** -(_MANTISSA[dtype] + 1) if dtype in _HALF else 0.0


def _dtype_name(x: Any) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]


def _layout(x: Any) -> str | None:
    """A description of a non-contiguous torch layout, for messages (``None`` when contiguous)."""
    if array_api_compat.is_torch_array(x) and not x.is_contiguous():
        return f"non-contiguous (strides {tuple(x.stride())})"
    return None


class _Case:
    """One input on one backend: runs the oracle's methods and raises ``ContractViolation`` with context."""

    def __init__(self, norm: Norm, g: Any, rtol: float | None, point: Any = None) -> None:
        self.norm = norm
        self.g = g
        self.backend: Backend = backend_for(g)
        self.dtype = _dtype_name(g)
        self.g64 = to_numpy(g)
        self.point64 = None if point is None else to_numpy(point)
        ndim = norm.ndim
        self.core_axes = tuple(range(-ndim, 0))
        self.batch_shape = tuple(g.shape[: g.ndim - ndim])
        self.size = math.prod(g.shape[g.ndim - ndim :])
        self.tol = rtol if rtol is not None else tolerance(self.dtype, self.size)
        self.unit = rounding(self.dtype)
        # below the smallest normal number a result carries only absolute precision: a few subnormal spacings
        self.atol = 2.0 ** (_MIN_EXPONENT.get(self.dtype, -126) - _MANTISSA.get(self.dtype, 23)) * 16 * self.size
        self.layout = _layout(g)
        self.full = True

    def fail(self, prop: str, method: str | None, explanation: str, **numbers: Any) -> None:
        raise ContractViolation(
            prop, explanation, norm=self.norm, g=self.g64, backend=self.backend.name, dtype=self.dtype,
            method=method, numbers=numbers, layout=self.layout, point=self.point64,
        )

    def call(self, method: str, *args: Any, what: str = "g") -> Any:
        try:
            with np.errstate(all="ignore"):  # the kit checks finiteness itself and says where it fails
                return getattr(self.norm, method)(*args)
        except Exception as err:  # a crash is a contract failure with the input that caused it
            shape = tuple(args[-1].shape) if args and hasattr(args[-1], "shape") else "?"
            self.fail("crash", method, f"{method}({what}) raised {type(err).__name__}: {err} (input shape {shape})")

    def call_on_input(self, method: str) -> Any:
        """``method(g)``, and a failure naming ``method`` if it wrote into ``g``."""
        out = self.call(method, self.g, what="x" if method == "norm" else "g")
        if not np.array_equal(to_numpy(self.g), self.g64):
            self.fail("input unchanged", method, f"{method} modified its input g in place")
        return out

    def on_backend(self, a: np.ndarray, dtype: str | None = None) -> Any:
        return self.backend.asarray(a, dtype or self.dtype)

    def precise(self, a: np.ndarray) -> Any:
        """``a`` on this backend in its widest dtype (for measuring the harness's own points)."""
        return self.backend.asarray(a, "float64" if "float64" in self.backend.dtypes else self.dtype)

    def inner(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sum(a * b, axis=self.core_axes)

    def worst(self, excess: np.ndarray) -> tuple[int, ...]:
        """The batch index with the largest violation."""
        return tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape)) if excess.ndim else ()

    def norm_of(self, xs: np.ndarray, what: str) -> np.ndarray:
        """``norm`` of harness points, measured in the backend's widest dtype."""
        return to_numpy(self.call("norm", self.precise(xs), what=what))


@single_threaded()
def check_norm(
    norm: Norm,
    g: Any,
    d: Any = None,
    *,
    rtol: float | None = None,
    exhaustive: bool | None = None,
    seed: int = 0,
    reference: Reference | None = None,
    full: bool | None = None,
) -> Measured:
    """Assert the ``Norm`` contract on one finite input ``g`` (any backend); raise ``ContractViolation`` on failure.

    Checked, in order: the declarations; outputs of ``norm``, ``dual_norm``, ``lmo``, ``sharp`` keep namespace,
    shape, dtype and device, leave the input unchanged, and are finite (NaN and overflow told apart); zero in, zero
    out. Then per method: ``norm`` against the geometry's reference (``norm.reference(g)``, or ``reference``) and
    the norm axioms (positivity, definiteness, homogeneity, evenness, the triangle inequality); ``dual_norm`` against
    the reference, Hölder's inequality at sampled points (and, for small inputs, an exhaustive search), and
    homogeneity; ``lmo`` against the reference, feasibility ``||lmo(g)|| <= 1 + slack``, tightness ``||lmo(g)|| >=
    delta`` for ``g != 0``, optimality ``<g, lmo(g)> <= -delta ||g||_*`` and against every sampled feasible point,
    homogeneity of degree 0; ``sharp``: ``<g, sharp(g)> = ||g||_*^2`` and ``||sharp(g)|| = ||g||_*`` (within
    ``delta``/``slack``); finite, consistent results at extreme scales (up to just below overflow); invariance under
    the declared ``symmetry``; the declared ``separable_axes``.

    Tolerances come from the dtype: the float32 (or float64) rounding of the computation, plus, for float16 and
    bfloat16 outputs, the rounding of the result to that dtype (so a 2% excess in bfloat16 fails). ``rtol``
    overrides the computation part; ``exhaustive`` forces the small-size exhaustive search on or off (default: on
    for numpy float64 inputs of at most 6 core entries; other backends are held to numpy's values by the parity
    check). ``full=False`` skips the properties that take many calls (homogeneity, extreme scales, most sampled
    points); the default runs them on inputs of at most ``FULL_SIZE`` entries (real-size inputs get the rest).
    Returns the measured values for parity checks.
    """
    case = _Case(norm, g, rtol)
    if full is None:
        full = case.g64.size <= FULL_SIZE
    case.full = full
    if not np.all(np.isfinite(case.g64)):
        raise ValueError(f"check_norm needs a finite input g (check_nonfinite takes NaN and inf); got shape "
                         f"{case.g64.shape} with non-finite entries")
    _check_declarations(case)

    norm_out = case.call_on_input("norm")
    dual_out = case.call_on_input("dual_norm")
    d_out = case.call_on_input("lmo")
    sharp_out = case.call_on_input("sharp")
    _check_outputs(case, {"norm": norm_out, "dual_norm": dual_out, "lmo": d_out, "sharp": sharp_out})

    d64, dual, norm_g, sharp64 = to_numpy(d_out), to_numpy(dual_out), to_numpy(norm_out), to_numpy(sharp_out)
    _require_finite(case, "lmo", "lmo(g)", d64)
    if not _representable(case):
        # The exact norm or dual norm of g (times 32, for the homogeneity check) overflows this dtype, so the
        # values cannot be compared; what is owed here is a finite lmo, checked above.
        return Measured(value=case.inner(case.g64, d64), dual=dual, norm=norm_g)
    _require_finite(case, "norm", "norm(g)", norm_g)
    _require_finite(case, "dual_norm", "dual_norm(g)", dual)
    _require_finite(case, "sharp", "sharp(g)", sharp64)
    zero = np.all(case.g64 == 0, axis=case.core_axes)
    for method, out in (("norm", norm_g), ("dual_norm", dual)):
        if np.any(zero & (out != 0)):
            case.fail("zero", method, f"{method}(0) must be 0")
    for method, out in (("lmo", d64), ("sharp", sharp64)):
        if np.any(zero & np.any(out != 0, axis=case.core_axes)):
            case.fail("zero", method, f"{method}(0) must be 0 (a zero gradient gives no step)")

    rng = np.random.default_rng(seed)
    if reference is None:
        reference = _declared_reference(case)
    d_other = _other_point(case, d, rng)
    # -- norm: its closed form and its axioms (everything below measures with it) --
    _check_reference_values(case, reference, "norm", norm_g)
    lmo_norm = to_numpy(case.call("norm", d_out, what="lmo(g)"))
    norm_d = _check_norm_axioms(case, d_other, norm_g, d64, lmo_norm, full)
    if full:
        _check_degree_one(case, "norm", norm_g)
    # -- dual_norm: its closed form, then Hölder against points measured by norm alone --
    _check_reference_values(case, reference, "dual_norm", dual)
    value = case.inner(case.g64, d64)
    scale = np.maximum(dual, np.abs(value))
    slop = _value_slop(case, d64, dual, scale)
    if exhaustive is None:
        exhaustive = case.dtype == "float64" and case.size <= EXHAUSTIVE_SIZE and case.backend.name == "numpy"
    best, witness = _best_direction(case, d64, rng, exhaustive)
    excess = -best - dual - slop
    if np.any(excess > 0):
        i = case.worst(excess)
        case.fail("duality", "dual_norm", "dual_norm(g) is smaller than <g, x>/norm(x) for a point x found by "
                  f"{'exhaustive' if exhaustive else 'sampled'} search (Hölder), so it is not the dual of norm",
                  **{"dual_norm(g)": float(dual[i]), "-<g, x>/norm(x)": float(-best[i]),
                     "x": np.array2string(witness[i], precision=4, threshold=20), "batch index": i})
    _check_dual_holder(case, d_other, norm_d, dual)
    if full:
        _check_degree_one(case, "dual_norm", dual)
    # -- lmo --
    delta, slack = float(norm.delta), float(norm.slack)
    feasible = _feasibility_slop(case, d64)
    excess = lmo_norm - (1 + slack) - feasible
    if np.any(excess > 0):
        i = case.worst(excess)
        case.fail("feasibility", "lmo", f"lmo(g) is outside the unit ball: norm(lmo(g)) exceeds 1 + slack "
                  f"(slack = {slack})", **{"norm(lmo(g))": float(lmo_norm[i]), "tolerance": float(feasible[i]),
                                           "batch index": i})
    shortfall = np.where(zero, -1.0, delta - feasible - lmo_norm)
    if np.any(shortfall > 0):
        i = case.worst(shortfall)
        case.fail("tightness", "lmo", f"lmo(g) lies strictly inside the ball (norm < delta = {delta}), so it cannot be "
                  "an argmin of a linear function over the ball", **{"norm(lmo(g))": float(lmo_norm[i]),
                                                                       "batch index": i})
    excess = value + delta * dual - slop
    if np.any(excess > 0):
        i = case.worst(excess)
        # a sampled point as good as -dual_norm(g) (or a declared closed form) shows that the dual norm is right
        confirmed = (reference is not None and reference.dual_norm is not None) or bool(best[i] <= -dual[i] + slop[i])
        case.fail("optimality", "lmo" if confirmed else "lmo or dual_norm",
                  f"<g, lmo(g)> must be <= -delta * dual_norm(g) (delta = {delta}): " + (
                      "lmo(g) is not optimal (or has the wrong sign)" if confirmed else
                      "a wrong sign, a non-optimal lmo, or a dual norm that is too large"),
                  **{"<g, lmo(g)>": float(value[i]), "-delta * dual_norm(g)": float(-delta * dual[i]),
                     "batch index": i})
    _check_reference_lmo(case, reference, d64, value, slop)
    excess = -(value + dual * lmo_norm) - slop
    if np.any(excess > 0):
        i = case.worst(excess)
        case.fail("duality", "dual_norm", "Hölder's inequality <g, d> >= -dual_norm(g) norm(d) fails at d = lmo(g): "
                  "dual_norm(g) is too small for this norm", **{"<g, lmo(g)>": float(value[i]),
                                                                "dual_norm(g)": float(dual[i]),
                                                                "norm(lmo(g))": float(lmo_norm[i]), "batch index": i})
    excess = value - delta * best - slop
    if np.any(excess > 0):
        i = case.worst(excess)
        case.fail("optimality", "lmo", "a feasible point x / norm(x) does better than lmo(g): lmo(g) is not the argmin "
                  f"(found by {'exhaustive' if exhaustive else 'sampled'} search)",
                  **{"<g, lmo(g)>": float(value[i]), "<g, x>/norm(x)": float(best[i]),
                     "x": np.array2string(witness[i], precision=4, threshold=20), "batch index": i})

    _check_sharp(case, sharp64, dual, delta, slack)
    if full:
        _check_homogeneity(case, value, scale, sharp64)
        _check_scales(case)
    _check_symmetry(case, dual, norm_g, rng)
    _check_separable(case, d64)
    _check_transposable(case, dual, norm_g)
    return Measured(value=value, dual=dual, norm=norm_g)


# -- declarations -------------------------------------------------------------------------------------------------
def _check_declarations(case: _Case) -> None:
    norm = case.norm
    delta, slack = norm.delta, norm.slack
    if not (isinstance(delta, (int, float)) and isinstance(slack, (int, float)) and 0 < delta <= 1 and slack >= 0):
        case.fail("declaration", "delta/slack", f"delta must lie in (0, 1] and slack be >= 0; got delta={delta!r}, "
                  f"slack={slack!r}")
    policy = getattr(norm, "infinite_input", "nan")
    if policy not in INFINITE_INPUT:
        case.fail("declaration", "infinite_input", f"infinite_input must be one of {INFINITE_INPUT}; got {policy!r}")


def _declared_reference(case: _Case) -> Reference | None:
    try:
        ref = case.norm.reference(case.g64)
    except Exception as err:
        case.fail("reference", "reference", f"reference(g) raised {type(err).__name__}: {err}")
    if ref is None:
        return None
    if not isinstance(ref, Reference):
        case.fail("reference", "reference", f"reference(g) must return a lmo.norm.Reference or None; got "
                  f"{type(ref).__name__}")
    if np.shape(ref.g) != case.g64.shape:
        case.fail("reference", "reference", f"reference(g) describes an input of shape {np.shape(ref.g)}, not "
                  f"{case.g64.shape}")
    return ref


# -- outputs ------------------------------------------------------------------------------------------------------
def _check_outputs(case: _Case, outs: dict[str, Any]) -> None:
    g = case.g
    xp_name = case.backend.name
    for method, out in outs.items():
        label = f"{method}(g)"
        shape = case.batch_shape if method in ("norm", "dual_norm") else tuple(g.shape)
        if not array_api_compat.is_array_api_obj(out):
            case.fail("output", method, f"{label} returned {type(out).__name__}, not an array of the input's namespace")
        if backend_for(out).name != xp_name:
            case.fail("output", method, f"{label} is an array of {backend_for(out).name}, but the input was {xp_name}")
        if tuple(out.shape) != shape:
            case.fail("output", method, f"{label} has shape {tuple(out.shape)}; expected {shape}")
        if out.dtype != g.dtype:
            case.fail("output", method, f"{label} has dtype {out.dtype}; the input's dtype is {g.dtype}")
        if array_api_compat.device(out) != array_api_compat.device(g):
            case.fail("output", method, f"{label} is on device {array_api_compat.device(out)}, the input on "
                      f"{array_api_compat.device(g)}")


def _require_finite(case: _Case, method: str, label: str, out: np.ndarray, advice: str = "") -> None:
    """A failure that says NaN when there is a NaN, and overflow only when there is an infinity."""
    nan, inf = int(np.sum(np.isnan(out))), int(np.sum(np.isinf(out)))
    if nan:
        case.fail("finite", method, f"{label} has {nan} NaN entries on a finite input (0/0, inf - inf or 0 * inf "
                  "inside the computation)" + (f"; {inf} infinite ones too" if inf else ""))
    if inf:
        case.fail("finite", method, f"{label} has {inf} infinite entries: an intermediate overflows"
                  + (advice or "; divide by the largest entry before taking squares or powers"))


def _representable(case: _Case) -> bool:
    """Whether ``norm(g)`` and ``dual_norm(g)``, computed in float64, fit the input's dtype with room to spare."""
    if case.dtype not in _HALF or "float64" not in case.backend.dtypes:
        return True
    wide = case.on_backend(case.g64, "float64")
    limit = 2.0 ** (_MAX_EXPONENT[case.dtype] - 6)
    return all(np.all(to_numpy(case.call(m, wide)) < limit) for m in ("norm", "dual_norm"))


# -- tolerances ---------------------------------------------------------------------------------------------------
def _value_slop(case: _Case, d64: np.ndarray, dual: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Allowed error of ``<g, lmo(g)>`` against ``dual_norm(g)``, per batch entry: the computation's rounding, and
    for half precision the rounding of each stored output entry (relative ``u``)."""
    slop = case.tol * scale + case.atol
    if case.unit:
        slop = slop + 2 * case.unit * (case.inner(np.abs(case.g64), np.abs(d64)) + dual)
    return slop


def _feasibility_slop(case: _Case, d64: np.ndarray) -> np.ndarray:
    """Allowed excess of ``norm(lmo(g))`` over ``1 + slack``: the computation's rounding, and for half precision the
    norm of the rounding error of the output, ``|d - round(d)| <= u |d|`` (twice the largest of ``norm(u |d| e)``
    over the signs ``e = sign(d)`` and three random sign patterns)."""
    base = case.tol * (1 + float(case.norm.slack)) + np.zeros(case.batch_shape)
    if not case.unit:
        return base
    rng = np.random.default_rng(1)
    signs = [np.sign(d64)] + [rng.choice([-1.0, 1.0], size=d64.shape) for _ in range(3 if case.full else 1)]
    patterns = np.stack([case.unit * np.abs(d64) * e for e in signs])
    return base + 2 * np.max(case.norm_of(patterns, "a rounding pattern of lmo(g)"), axis=0)


# -- norm ---------------------------------------------------------------------------------------------------------
def _other_point(case: _Case, d: Any, rng: np.random.Generator) -> np.ndarray:
    if d is None:
        spread = max(float(np.abs(case.g64).max()), 1.0) if case.dtype == "float64" else 1.0
        d64 = rng.standard_normal(case.g64.shape) * spread
        return to_numpy(case.on_backend(d64))  # as rounded to the input's dtype
    return to_numpy(d)


def _check_norm_axioms(case: _Case, d64: np.ndarray, norm_g: np.ndarray, lmo64: np.ndarray,
                       lmo_norm: np.ndarray, full: bool) -> np.ndarray:
    """Positivity, definiteness, evenness and the triangle inequality of ``norm``; returns ``norm(d)``."""
    norm_d = to_numpy(case.call("norm", case.on_backend(d64), what="d"))
    if np.any(norm_g < 0) or np.any(norm_d < 0) or np.any(lmo_norm < 0):
        case.fail("norm axioms", "norm", "norm(x) must be >= 0",
                  **{"min norm": float(min(norm_g.min(), norm_d.min(), lmo_norm.min()))})
    # definiteness is owed where the input is not lost in the subnormal range (a norm of 1e-45 / 3 may round to 0)
    nonzero = np.max(np.abs(case.g64), axis=case.core_axes) >= 2.0 ** (_MIN_EXPONENT.get(case.dtype, -126) + 10)
    if np.any(nonzero & (norm_g <= 0)):
        case.fail("norm axioms", "norm", "norm(x) must be > 0 for x != 0 (definiteness)")
    neg = to_numpy(case.call("norm", case.on_backend(-case.g64), what="-g"))
    gap = np.abs(neg - norm_g) - (case.tol + 4 * case.unit) * norm_g - case.atol
    if np.any(gap > 0):
        i = case.worst(gap)
        case.fail("norm axioms", "norm", "norm(-x) must equal norm(x)", **{"norm(-g)": float(neg[i]),
                                                                           "norm(g)": float(norm_g[i]),
                                                                           "batch index": i})
    # the triangle inequality on (g, d), on g cut into its even and odd entries (disjoint supports, where
    # quasi-norms such as (sum |x|^(1/2))^2 fail), and on (g, lmo(g) scaled to the length of g)
    mask = (np.arange(case.size) % 2 == 0).reshape(case.g64.shape[case.g64.ndim - case.norm.ndim:])
    shape = (*case.batch_shape, *(1,) * case.norm.ndim)
    unit_lmo = lmo64 * np.where(lmo_norm > 0, 1.0 / np.where(lmo_norm > 0, lmo_norm, 1.0), 0.0).reshape(shape)
    pairs = [(case.g64, d64), (np.where(mask, case.g64, 0.0), np.where(mask, 0.0, case.g64)),
             (case.g64, to_numpy(case.on_backend(unit_lmo * norm_g.reshape(shape))))][: 3 if full else 2]
    a_all = np.stack([a for a, _ in pairs])
    b_all = np.stack([b for _, b in pairs])
    sums = to_numpy(case.on_backend(a_all + b_all))
    if not np.all(np.isfinite(sums)):
        return norm_d
    norm_a = to_numpy(case.call("norm", case.on_backend(a_all), what="a point"))
    norm_b = to_numpy(case.call("norm", case.on_backend(b_all), what="a point"))
    norm_sum = to_numpy(case.call("norm", case.on_backend(sums), what="a + b"))
    gap = norm_sum - norm_a - norm_b - (case.tol + 6 * case.unit) * (norm_a + norm_b) - case.atol
    if np.any(gap > 0):
        k, *i = (int(v) for v in np.unravel_index(int(np.argmax(gap)), gap.shape))
        which = ("(g, d) for a random d", "(the two halves of g)", "(g, lmo(g) scaled to norm(g))")[k]
        case.fail("norm axioms", "norm", f"triangle inequality norm(a + b) <= norm(a) + norm(b) fails at {which}, so "
                  "norm is not a norm", **{"norm(a + b)": float(norm_sum[(k, *i)]),
                                           "norm(a) + norm(b)": float(norm_a[(k, *i)] + norm_b[(k, *i)]),
                                           "batch index": tuple(i)})
    return norm_d


def _check_dual_holder(case: _Case, d64: np.ndarray, norm_d: np.ndarray, dual: np.ndarray) -> None:
    pairing = case.inner(case.g64, d64)
    # a subnormal dual_norm carries an absolute error of a few spacings (atol), which norm(d) multiplies: for
    # g = 2.2e-308 under Scaled(Sign, 0.001) the dual is 2.2e-311 and norm(d) 126, so dual * norm(d) may be off by
    # 3e-322, more than atol itself
    gap = np.abs(pairing) - dual * norm_d - case.tol * (dual * norm_d + np.abs(pairing)) - case.atol * (1 + norm_d)
    gap = gap - 4 * case.unit * dual * norm_d
    if np.any(gap > 0):
        i = case.worst(gap)
        case.fail("hölder", "dual_norm", "Hölder's inequality |<g, d>| <= dual_norm(g) norm(d) fails: dual_norm is too "
                  "small", **{"|<g, d>|": float(abs(pairing[i])), "dual_norm(g) norm(d)": float(dual[i] * norm_d[i]),
                              "batch index": i})


# -- references ---------------------------------------------------------------------------------------------------
def _batch_array(case: _Case, value: Any) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float64), case.batch_shape)


def _check_reference_values(case: _Case, ref: Reference | None, method: str, got: np.ndarray) -> None:
    """``norm(g)`` or ``dual_norm(g)`` against the independently known value (NaN in the reference: unknown)."""
    if ref is None or getattr(ref, method) is None:
        return
    want = _batch_array(case, getattr(ref, method))
    known = np.isfinite(want)
    gap = np.where(known, np.abs(got - want) - (case.tol + 2 * case.unit + ref.rtol) * np.abs(want) - case.atol, -1.0)
    if np.any(gap > 0):
        i = case.worst(gap)
        case.fail("reference", method, f"{method}(g) differs from the independently known value ({ref.source})",
                  **{f"{method}(g)": float(got[i]), "reference": float(want[i]), "batch index": i})


def _check_reference_lmo(case: _Case, ref: Reference | None, d64: np.ndarray, value: np.ndarray,
                         slop: np.ndarray) -> None:
    """The optimum value ``-||g||_*`` from the reference (exact oracles attain it, inexact ones ``delta`` of it),
    and the reference argmin itself for exact oracles."""
    if ref is None:
        return
    delta, slack = float(case.norm.delta), float(case.norm.slack)
    if ref.dual_norm is not None:
        want = _batch_array(case, ref.dual_norm)
        excess = np.where(np.isfinite(want), value + delta * want - slop - ref.rtol * want, -1.0)
        if np.any(excess > 0):
            i = case.worst(excess)
            case.fail("reference", "lmo", f"<g, lmo(g)> falls short of the known optimum -dual_norm(g) ({ref.source})"
                      + (f" by more than the declared delta = {delta}" if delta < 1 else ""),
                      **{"<g, lmo(g)>": float(value[i]), "optimum": float(-want[i]), "batch index": i})
    if ref.lmo is None or delta < 1 or slack > 0:
        return  # an inexact oracle is held to its declared bounds, not to the exact argmin
    want = np.broadcast_to(np.asarray(ref.lmo, dtype=np.float64), case.g64.shape)
    known = np.isfinite(want)
    err = np.max(np.where(known, np.abs(d64 - want), 0.0), axis=case.core_axes)
    peak = np.max(np.where(known, np.abs(want), 0.0), axis=case.core_axes)
    condition = _batch_array(case, ref.condition)
    allowed = (case.tol * condition + 2 * case.unit + ref.rtol) * np.maximum(peak, 1.0) + case.atol
    gap = err - allowed
    if np.any(gap > 0):
        i = case.worst(gap)
        case.fail("reference", "lmo", f"lmo(g) differs from the independently known argmin ({ref.source})",
                  **{"max |lmo(g) - reference|": float(err[i]), "allowed": float(allowed[i]), "batch index": i})


# -- the search for better points ---------------------------------------------------------------------------------
def _best_direction(case: _Case, d64: np.ndarray, rng: np.random.Generator,
                    exhaustive: bool) -> tuple[np.ndarray, np.ndarray]:
    """The most negative ``<g, x> / ||x||`` over candidate points x, per batch entry, and the point attaining it."""
    g = case.g64
    core = g.shape[g.ndim - case.norm.ndim:]
    n = case.size
    # candidates built from g are rescaled by a power of two to unit size, so that <g, x> cannot underflow
    peak = np.max(np.abs(g), axis=case.core_axes, keepdims=True)
    unit = np.ldexp(g, -np.floor(np.log2(np.where(peak > 0, peak, 1.0))).astype(int))
    cands = [-unit, -np.sign(g), d64, -unit + 0.1 * rng.standard_normal(g.shape)]
    cands += list(rng.standard_normal((8 if case.full else 1, *g.shape)))
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
    lengths = case.norm_of(xs, f"a batch of points of shape {xs.shape}")
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


# -- homogeneity, sharp, scales -----------------------------------------------------------------------------------
def _scaled_inputs(case: _Case) -> list[tuple[float, Any]]:
    """``(c, c g)`` for ``c = 2^-3, 2^5`` where ``c g`` is exact in the dtype (no subnormal or overflowing entries)."""
    out = []
    for c in (2.0**-3, 2.0**5):
        gc = case.on_backend(case.g64 * c)
        if np.array_equal(to_numpy(gc), case.g64 * c):
            out.append((c, gc))
    return out


def _check_degree_one(case: _Case, method: str, base: np.ndarray) -> None:
    """``method(c g) = c method(g)`` (norm, dual_norm)."""
    for c, gc in _scaled_inputs(case):
        got = to_numpy(case.call(method, gc, what=f"{c:g} * g"))
        gap = np.abs(got - c * base) - (case.tol + 4 * case.unit) * c * base - case.atol
        if np.any(gap > 0):
            i = case.worst(gap)
            case.fail("homogeneity", method, f"{method} must be positively homogeneous of degree 1",
                      **{f"{method}({c:g} g)": float(got[i]), f"{c:g} * {method}(g)": float(c * base[i]),
                         "batch index": i})


def _check_homogeneity(case: _Case, value: np.ndarray, scale: np.ndarray, sharp64: np.ndarray) -> None:
    """``lmo(c g)`` attains the value of ``lmo(g)`` (degree 0) and ``sharp(c g) = c sharp(g)`` (degree 1)."""
    inexact = 1.0 - float(case.norm.delta) + float(case.norm.slack)
    for c, gc in _scaled_inputs(case):
        d_c = to_numpy(case.call("lmo", gc, what=f"{c:g} * g"))
        value_c = case.inner(case.g64, d_c)
        gap = np.abs(value_c - value) - (case.tol + inexact + 4 * case.unit) * scale - case.atol
        if np.any(gap > 0):
            i = case.worst(gap)
            case.fail("homogeneity", "lmo", f"lmo must be positively homogeneous of degree 0: lmo({c:g} g) attains a "
                      "different value than lmo(g)", **{"<g, lmo(c g)>": float(value_c[i]),
                                                         "<g, lmo(g)>": float(value[i]), "batch index": i})
        if c < 1:  # sharp is homogeneous of degree 1: sharp(c g) = c sharp(g)
            s_c = to_numpy(case.call("sharp", gc, what=f"{c:g} * g"))
            err = np.max(np.abs(s_c - c * sharp64), axis=case.core_axes)
            peak = np.max(np.abs(sharp64), axis=case.core_axes) * c
            gap = err - (case.tol + inexact + 4 * case.unit) * peak * 2 - case.atol
            if np.any(gap > 0):
                i = case.worst(gap)
                case.fail("homogeneity", "sharp", f"sharp must be positively homogeneous of degree 1: sharp({c:g} g) "
                          f"differs from {c:g} sharp(g)", **{"max difference": float(err[i]), "batch index": i})


def _check_sharp(case: _Case, sharp64: np.ndarray, dual: np.ndarray, delta: float, slack: float) -> None:
    """``<g, sharp(g)> = ||g||_*^2`` and ``||sharp(g)|| = ||g||_*`` (sharp(g) = -||g||_* lmo(g)), compared on
    ``g / ||g||_*`` so that the squares cannot overflow; an inexact oracle is held to ``delta`` and ``slack``."""
    live = dual > 0
    safe = np.where(live, dual, 1.0)
    shape = (*case.batch_shape, *(1,) * case.norm.ndim)
    pairing = np.where(live, case.inner(case.g64 / safe.reshape(shape), sharp64) / safe, 1.0)
    length = case.norm_of(sharp64, "sharp(g)")
    ratio = np.where(live, length / safe, 1.0)
    # sharp's entries may be subnormal (tiny g): each is then exact only to the absolute atol
    absolute = np.sum(np.abs(case.g64), axis=case.core_axes) / safe
    tol = case.tol * 4 + 6 * case.unit + np.where(live, case.atol * (absolute + 1) / safe, 0.0)
    low = pairing - delta + tol
    high = pairing - 1 - tol
    if np.any(low < 0) or (delta == 1 and slack == 0 and np.any(high > 0)):
        i = case.worst(np.maximum(-low, high))
        case.fail("sharp", "sharp", "<g, sharp(g)> must equal dual_norm(g)^2 (sharp(g) = -dual_norm(g) lmo(g), the "
                  "steepest-descent step); a wrong sign or scale", **{"<g, sharp(g)> / dual_norm(g)^2":
                                                                      float(pairing[i]), "batch index": i})
    if np.any(ratio > 1 + slack + tol) or np.any(ratio < delta - tol):
        i = case.worst(np.abs(ratio - 1))
        case.fail("sharp", "sharp", "norm(sharp(g)) must equal dual_norm(g)", **{"norm(sharp(g)) / dual_norm(g)":
                                                                                 float(ratio[i]), "batch index": i})


def _check_scales(case: _Case) -> None:
    """Scale-robustness: at 2^(+-3/4 of the dtype's exponent range), and just below overflow (the largest power of
    two at which norm, dual_norm and sharp still fit the dtype), results stay finite and consistent."""
    peak = np.max(np.abs(case.g64), axis=case.core_axes, keepdims=True)
    if not np.any(peak > 0):
        return
    unit = np.where(peak > 0, case.g64 / np.where(peak > 0, peak, 1.0), 0.0)
    unit_backend = case.on_backend(unit)
    unit = to_numpy(unit_backend)
    what = "g / max|g|"
    base_lmo = to_numpy(case.call("lmo", unit_backend, what=what))
    base_value = case.inner(unit, base_lmo)
    base_dual = to_numpy(case.call("dual_norm", unit_backend, what=what))
    base_norm = to_numpy(case.call("norm", unit_backend, what=what))
    inexact = 1.0 - float(case.norm.delta) + float(case.norm.slack)
    hi, lo = _MAX_EXPONENT.get(case.dtype, 127), _MIN_EXPONENT.get(case.dtype, -126)
    largest = float(np.max(np.concatenate([np.ravel(base_dual), np.ravel(base_norm), [1.0]])))
    top = hi - 3 - math.ceil(math.log2(max(largest, 1.0)))  # results ~2^(hi - 3): within 8x of overflow
    for exponent in sorted({int(0.75 * hi), top, int(0.75 * lo)}, reverse=True):
        if exponent <= lo + 2 or exponent < int(0.75 * lo):
            continue
        s = 2.0**exponent
        gs = case.on_backend(unit * s)
        what = f"2^{exponent} * g / max|g|"
        d = to_numpy(case.call("lmo", gs, what=what))
        _require_finite(case, "lmo", f"lmo({what})", d)
        value_s = case.inner(unit, d)
        if np.any(np.abs(value_s - base_value) > (case.tol + inexact + 4 * case.unit) * base_dual + case.atol):
            case.fail("extreme scale", "lmo", f"lmo({what}) attains a different value than lmo(g / max|g|)",
                      **{"scaled": float(np.max(value_s)), "unscaled": float(np.max(base_value))})
        for method, base in (("dual_norm", base_dual), ("norm", base_norm)):
            got = to_numpy(case.call(method, gs, what=what)) / s
            # only where the exact result is a normal number of the dtype is it owed (a float16 norm of 1e5 is not)
            owed = (base * s < 2.0 ** (hi - 2)) & (base * s > 2.0 ** (lo + 2))
            _require_finite(case, method, f"{method}({what})", got[owed])
            if np.any(owed & (np.abs(got - base) > (case.tol + 4 * case.unit) * base + case.atol)):
                case.fail("extreme scale", method, f"{method}({what}) / 2^{exponent} differs from {method}(g / max|g|)",
                          **{"scaled": float(np.max(got)), "unscaled": float(np.max(base))})
        if exponent == top:
            sharp = to_numpy(case.call("sharp", gs, what=what))
            # sharp(g) = ||g||_* (-lmo(g)): its entries reach dual_norm times lmo's largest entry, which exceeds 1 for
            # a ball larger than the unit one (Scaled(l2, scale=1000): sharp is 1e6 g, beyond the dtype at 2^top)
            peak_lmo = np.max(np.abs(base_lmo), axis=case.core_axes) if base_lmo.size else np.zeros(case.batch_shape)
            owed = base_dual * np.maximum(peak_lmo, 1.0) < 2.0 ** (hi - 2) / s
            owed = owed.reshape(*case.batch_shape, *(1,) * case.norm.ndim)
            _require_finite(case, "sharp", f"sharp({what})", np.where(owed, sharp, 0.0))


# -- symmetry and separability ------------------------------------------------------------------------------------
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
    try:
        moved64 = _transform(symmetry, case.g64, case.norm.ndim, rng)
    except ValueError as err:
        case.fail("declaration", "symmetry", str(err))
    moved = case.on_backend(moved64)
    for method, base in (("norm", norm_g), ("dual_norm", dual)):
        got = to_numpy(case.call(method, moved, what=f"T g ({symmetry})"))
        # T g is rounded to the dtype again, so allow the rounding of every entry
        gap = np.abs(got - base) - (2 * case.tol + 6 * case.unit) * np.maximum(base, np.abs(got)) - case.atol
        if np.any(gap > 0):
            i = case.worst(gap)
            case.fail("symmetry", "symmetry", f"{method} is declared invariant under {symmetry!r} maps T, but "
                      f"{method}(T g) differs from {method}(g): the declaration (or {method}) is wrong",
                      **{f"{method}(T g)": float(got[i]), f"{method}(g)": float(base[i]), "batch index": i})


def _check_transposable(case: _Case, dual: np.ndarray, norm_g: np.ndarray) -> None:
    """The declared ``transposable`` (the optimizers may then stack a tall matrix with the wide transposes of others):
    ``norm``, ``dual_norm`` and ``lmo`` commute with the transpose of the trailing two axes."""
    if not getattr(case.norm, "transposable", False):
        return
    if case.norm.ndim != 2:
        case.fail("declaration", "transposable", f"transposable is declared by a norm of ndim={case.norm.ndim}; it "
                  "means ||G^T|| = ||G|| for matrices (ndim 2)")
    moved = case.on_backend(np.swapaxes(case.g64, -1, -2))
    for method, base in (("norm", norm_g), ("dual_norm", dual)):
        got = to_numpy(case.call(method, moved, what="G^T"))
        gap = np.abs(got - base) - (2 * case.tol + 6 * case.unit) * np.maximum(base, np.abs(got)) - case.atol
        if np.any(gap > 0):
            i = case.worst(gap)
            case.fail("transposable", "transposable", f"the norm is declared transposable, but {method}(G^T) differs "
                      f"from {method}(G): the declaration (or {method}) is wrong",
                      **{f"{method}(G^T)": float(got[i]), f"{method}(G)": float(base[i]), "batch index": i})
    # the argmin may be ill-conditioned (nearly equal singular values): lmo(G^T)^T is held to the optimum's value
    got = np.swapaxes(to_numpy(case.call("lmo", moved, what="G^T")).astype(np.float64), -1, -2)
    value = case.inner(case.g64, got)
    excess = value + float(case.norm.delta) * dual - (4 * case.tol + 6 * case.unit) * np.maximum(dual, 1.0) - case.atol
    if np.any(excess > 0):
        i = case.worst(excess)
        case.fail("transposable", "transposable", "the norm is declared transposable, but lmo(G^T)^T is not an "
                  "argmin for G: the declaration (or lmo) is wrong",
                  **{"<G, lmo(G^T)^T>": float(value[i]), "-delta dual_norm(G)": float(-case.norm.delta * dual[i]),
                     "batch index": i})


def _check_separable(case: _Case, d64: np.ndarray) -> None:
    """The declared ``separable_axes``: lmo of each block (cut along such an axis) is that block of lmo(g)."""
    axes = tuple(case.norm.separable_axes)
    for axis in axes:
        if not (isinstance(axis, int) and -case.norm.ndim <= axis < 0):
            case.fail("declaration", "separable_axes", f"separable_axes must hold negative core axes in "
                      f"[-{case.norm.ndim}, -1]; got {axes}")
        n = case.g64.shape[axis]
        if n < 2:
            continue
        cut = n // 2
        pieces = []
        for block in np.split(case.g64, [cut], axis=axis):
            pieces.append(to_numpy(case.call("lmo", case.on_backend(block), what=f"a block of g along axis {axis}")))
        joined = np.concatenate(pieces, axis=axis)
        err = float(np.max(np.abs(joined - d64))) if d64.size else 0.0
        if err > (case.tol + 2 * case.unit) * max(1.0, float(np.max(np.abs(d64)))) + case.atol:
            case.fail("separable", "lmo", f"the norm declares separable_axes={axes}, but lmo of the blocks of g cut "
                      f"along axis {axis} differs from lmo(g) cut the same way", **{"max difference": err, "cut": cut})
