"""``check_nonfinite``: the policy for NaN and infinite inputs, the same for every geometry (plugins included).

NaN anywhere in a batch entry: ``lmo``, ``sharp`` (every entry), ``dual_norm`` and ``norm`` of that batch entry are
NaN; the other batch entries are unaffected. Never a finite direction, never an exception.

+-inf (and no NaN) in a batch entry, by the geometry's declaration ``infinite_input``:

``"limit"``
    ``lmo`` is the finite limit of ``lmo(g_t)``, ``g_t`` with +-inf replaced by +-t, as t grows (compared with the
    geometry's own ``lmo(g_t)`` at ``t = 2^(3/4 of the widest dtype's exponent range)``), and feasible;
    ``dual_norm`` and ``norm`` are ``inf``.
``"nan"`` (the default)
    ``lmo`` of that batch entry is NaN in every entry (the step is refused downstream); ``dual_norm`` and ``norm``
    are not finite.
"""

from __future__ import annotations

import math

import numpy as np

from lmo.norm import Norm

from ._backends import Backend, single_threaded, to_numpy
from ._checks import _MAX_EXPONENT, _Case, _check_outputs, tolerance

__all__ = ["check_nonfinite", "nonfinite_inputs"]

_PROP = "non-finite input"


def _core(norm: Norm) -> tuple[int, ...]:
    fixed = norm.core_shape()
    if fixed is not None:
        return tuple(fixed)
    return (5,) if norm.ndim == 1 else (4, 3) if norm.ndim == 2 else (3, 2) + (2,) * (norm.ndim - 2)


#: The batch entries of :func:`nonfinite_inputs` that stay finite.
FINITE_ROWS = np.array([False, True, False, True, False])


def nonfinite_inputs(norm: Norm, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(clean, with_nan, with_inf)``: a batch of five entries (entry 2 zero), and the same batch with one NaN in
    entries 0 and 2 and a NaN next to an inf in entry 4, or with +inf in entry 0, -inf in entry 2 and both in entry
    4; entries 1 and 3 stay finite."""
    rng = np.random.default_rng(seed)
    core = _core(norm)
    clean = rng.standard_normal((5, *core))
    clean[2] = 0.0
    size = math.prod(core)
    first, last = np.unravel_index(size // 2, core), np.unravel_index(size - 1, core)
    with_nan, with_inf = clean.copy(), clean.copy()
    for row, value in ((0, np.inf), (2, -np.inf), (4, np.inf)):
        with_nan[(row, *first)] = np.nan
        with_inf[(row, *first)] = value
    if size > 1:
        with_nan[(4, *last)] = np.inf
        with_inf[(4, *last)] = -np.inf
    return clean, with_nan, with_inf


@single_threaded()
def check_nonfinite(norm: Norm, backend: Backend, dtype: str = "float64", *, seed: int = 0) -> int:
    """Check the non-finite input policy (module docstring) on ``backend`` in ``dtype``; raise ``ContractViolation``
    (property ``"non-finite input"``, naming the method) on a breach. Returns the number of inputs checked."""
    policy = getattr(norm, "infinite_input", "nan")
    clean, with_nan, with_inf = nonfinite_inputs(norm, seed=seed)
    finite_rows = FINITE_ROWS
    # the clean entries on their own: what the non-finite batches must leave unaffected
    base = _Case(norm, backend.asarray(clean[finite_rows], dtype), None)
    expected = {m: to_numpy(base.call(m, base.g)) for m in ("lmo", "dual_norm", "norm")}
    for label, g64 in (("NaN", with_nan), ("inf", with_inf)):
        case = _Case(norm, backend.asarray(g64, dtype), None)
        outs = {}
        for method in ("lmo", "dual_norm", "norm", "sharp"):
            try:
                with np.errstate(all="ignore"):
                    outs[method] = getattr(norm, method)(case.g)
            except Exception as err:
                case.fail(_PROP, method, f"{method}(g) raised {type(err).__name__} on an input with {label} in some "
                          f"batch entries: {err}. The policy: a NaN gives NaN, +-inf gives the limit or NaN "
                          f"(infinite_input = {policy!r}), never an exception")
        _check_outputs(case, outs)
        got = {m: to_numpy(v) for m, v in outs.items()}
        _unaffected(case, label, got, expected, finite_rows)
        bad = ~finite_rows
        if label == "NaN":
            for method in ("lmo", "sharp"):
                rows = got[method][bad].reshape(int(bad.sum()), -1)
                if not np.all(np.isnan(rows)):
                    finite = int(np.sum(~np.isnan(rows)))
                    case.fail(_PROP, method, f"{method}(g) must be NaN in every entry of a batch entry that holds a "
                              f"NaN; got {finite} entries that are not NaN (a NaN input must never give a "
                              "direction, not even a zero one)", **{"batch entries with NaN": "0, 2, 4"})
            for method in ("dual_norm", "norm"):
                if not np.all(np.isnan(got[method][bad])):
                    case.fail(_PROP, method, f"{method}(g) must be NaN for a batch entry that holds a NaN",
                              **{f"{method}(g)": got[method][bad].tolist(), "batch entries with NaN": "0, 2"})
        else:
            _infinite(case, policy, got, bad, g64, backend)
    return 2


def _unaffected(case: _Case, label: str, got: dict[str, np.ndarray], expected: dict[str, np.ndarray],
                rows: np.ndarray) -> None:
    """The finite batch entries get the same results as when they are computed alone."""
    g_rows = case.g64[rows]
    for method in ("dual_norm", "norm"):
        a, b = got[method][rows], expected[method]
        if not np.all(np.abs(a - b) <= case.tol * 4 * np.abs(b) + case.atol + 4 * case.unit * np.abs(b)):
            case.fail(_PROP, method, f"a batch entry with {label} changed {method} of the finite batch entries "
                      "(each batch entry must be computed on its own)", **{"got": a.tolist(), "alone": b.tolist()})
    value = np.sum(g_rows * got["lmo"][rows], axis=case.core_axes)
    alone = np.sum(g_rows * expected["lmo"], axis=case.core_axes)
    scale = np.maximum(np.abs(alone), expected["dual_norm"])
    if not np.all(np.isfinite(value)) or np.any(np.abs(value - alone) > (case.tol * 4 + 8 * case.unit) * scale
                                                + case.atol):
        case.fail(_PROP, "lmo", f"a batch entry with {label} changed lmo of the finite batch entries (each batch entry "
                  "must be computed on its own)", **{"<g, lmo(g)> in the batch": value.tolist(),
                                                     "alone": alone.tolist()})


def _infinite(case: _Case, policy: str, got: dict[str, np.ndarray], bad: np.ndarray, g64: np.ndarray,
              backend: Backend) -> None:
    d = got["lmo"][bad]
    if policy == "nan":
        rows = d.reshape(int(bad.sum()), -1)
        if not np.all(np.isnan(rows)):
            case.fail(_PROP, "lmo", "infinite_input = 'nan': lmo(g) must be NaN in every entry of a batch entry that "
                      f"holds +-inf (the step is refused); got {int(np.sum(~np.isnan(rows)))} entries that are not "
                      "NaN. Declare infinite_input = 'limit' if the oracle returns the limit direction")
        for method in ("dual_norm", "norm"):
            if np.any(np.isfinite(got[method][bad])):
                case.fail(_PROP, method, f"{method}(g) is finite for a batch entry that holds +-inf",
                          **{f"{method}(g)": got[method][bad].tolist()})
        return
    if np.any(~np.isfinite(d)):
        nan = int(np.sum(np.isnan(d)))
        case.fail(_PROP, "lmo", "infinite_input = 'limit': lmo(g) of a batch entry with +-inf must be the finite "
                  f"limit direction; got {nan} NaN and {int(np.sum(np.isinf(d)))} infinite entries")
    for method in ("dual_norm", "norm"):
        if not np.all(got[method][bad] == np.inf):
            case.fail(_PROP, method, f"infinite_input = 'limit': {method}(g) must be inf for a batch entry with +-inf",
                      **{f"{method}(g)": got[method][bad].tolist()})
    # the limit: lmo(g_t) with +-inf replaced by +-t, at a t so large that the finite entries do not count
    wide = "float64" if "float64" in backend.dtypes else case.dtype
    t = 2.0 ** int(0.75 * _MAX_EXPONENT[wide])
    g_t = np.where(np.isinf(g64), np.sign(g64) * t, g64)[bad]
    limit = to_numpy(case.call("lmo", backend.asarray(g_t, wide), what="g with +-inf replaced by +-t"))
    pattern = g_t / t
    value, want = (np.sum(pattern * x, axis=case.core_axes) for x in (d, limit))
    inexact = 1.0 - float(case.norm.delta) + float(case.norm.slack)
    tol = tolerance(case.dtype, case.size) * 4 + inexact + 8 * case.unit
    if np.any(np.abs(value - want) > tol * np.maximum(np.abs(want), 1e-30)):
        case.fail(_PROP, "lmo", "infinite_input = 'limit': lmo(g) with +-inf is not the limit of lmo(g_t) with +-inf "
                  "replaced by +-t (t -> inf)", **{"<sign pattern, lmo(g)>": value.tolist(),
                                                   "<sign pattern, lmo(g_t)>": want.tolist(), "t": t})
    lengths = to_numpy(case.call("norm", backend.asarray(d, wide), what="lmo(g) of an input with +-inf"))
    if np.any(lengths > 1 + float(case.norm.slack) + tol):
        case.fail(_PROP, "lmo", "infinite_input = 'limit': lmo(g) with +-inf is outside the unit ball",
                  **{"norm(lmo(g))": lengths.tolist()})
