"""``check_plugin``: the whole property suite on a norm class or instance, over every installed backend."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmo.norm import Norm, Reference

from ._backends import Backend, available_backends, single_threaded, to_numpy
from ._checks import ContractViolation, Measured, _Case, check_norm, tolerance
from ._manifold import ShapeRefused, check_manifold, is_manifold, manifold_inputs
from ._names import short_name
from ._nonfinite import check_nonfinite
from ._strategies import hard_inputs, large_inputs, numpy_inputs

__all__ = ["Failure", "Report", "Profile", "PROFILES", "check_backend", "check_bounds", "check_hard_inputs",
           "check_parity", "check_plugin", "check_references", "instances_of"]

_HALF = ("float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Profile:
    """How hard ``check_plugin`` looks.

    ``max_examples`` hypothesis examples per backend and full-precision dtype (``half_examples`` per half-precision
    one); ``layouts``: the hard inputs checked in every non-contiguous layout of the backend (``"all"``, or only
    those with ``"some"`` in their use: the small Gaussian, the batch and the first real-size input);
    ``large_sides``: sides of :func:`large_inputs` (hard spectra) checked by :func:`check_bounds`, on inexact oracles
    only unless ``large_exact``.
    """

    name: str
    max_examples: int
    half_examples: int
    layouts: str = "some"
    large_sides: tuple[int, ...] = (256,)
    large_exact: bool = False


PROFILES = {
    "default": Profile("default", max_examples=15, half_examples=3),
    "thorough": Profile("thorough", max_examples=200, half_examples=40, layouts="all", large_sides=(256, 512),
                        large_exact=True),
}


@dataclasses.dataclass(frozen=True)
class Failure:
    """One broken property: where (norm, backend, dtype), which property of which method, and the explanation."""

    norm: str
    backend: str
    dtype: str
    property: str
    message: str
    method: str | None = None


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the report: a norm instance on one backend (or the cross-backend parity check)."""

    norm: str
    backend: str
    dtypes: tuple[str, ...]
    cases: int
    seconds: float
    failure: Failure | None = None


_SHORT_DTYPES = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}


@dataclasses.dataclass
class Report:
    """What ``check_plugin`` found: ``ok``, ``failures`` and a printable table (``str(report)``)."""

    rows: list[Row] = dataclasses.field(default_factory=list)

    @property
    def failures(self) -> list[Failure]:
        return [r.failure for r in self.rows if r.failure is not None]

    @property
    def ok(self) -> bool:
        return bool(self.rows) and not self.failures

    def table(self) -> str:
        header = ("norm", "backend", "dtypes", "cases", "time", "result")
        body = [
            (r.norm, r.backend, " ".join(_SHORT_DTYPES.get(d, d) for d in r.dtypes), str(r.cases), f"{r.seconds:.1f}s",
             "ok" if r.failure is None else f"FAIL {_what(r.failure)} after {r.cases} cases")
            for r in self.rows
        ]
        widths = [max(len(line[k]) for line in [header, *body]) for k in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in [header, *body]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        for f in self.failures:
            lines += ["", f"{f.norm} on {f.backend} ({f.dtype}):", f.message]
        verdict = "all properties hold" if self.ok else f"{len(self.failures)} failing row(s)"
        lines += ["", f"{len(self.rows)} rows, {sum(r.cases for r in self.rows)} cases: {verdict}"]
        return "\n".join(lines)

    __str__ = table


def _what(failure: Failure) -> str:
    return f"[{failure.method}: {failure.property}]" if failure.method else f"[{failure.property}]"


def instances_of(obj: Any) -> list[Norm]:
    """The norm instances to check for ``obj``: a ``Norm`` instance, a ``Norm`` subclass (its ``examples()``),
    or a registry name."""
    if isinstance(obj, str):
        from lmo.norm import norms

        known = norms()
        if obj not in known:
            raise ValueError(f"check_plugin takes a Norm class, instance or registry name; {obj!r} is not registered "
                             f"(known: {', '.join(known)})")
        obj = known[obj]
    if isinstance(obj, Norm):
        return [obj]
    if isinstance(obj, type) and issubclass(obj, Norm):
        found = list(obj.examples())
        bad = [x for x in found if not isinstance(x, obj)]
        if not found or bad:
            raise TypeError(f"{obj.__qualname__}.examples() must return instances of {obj.__qualname__}; got {found!r}")
        return found
    raise TypeError(f"check_plugin takes a Norm subclass or instance; got {obj!r} of type {type(obj).__name__}")


def _settings(max_examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )


def _select(backends: Sequence[str] | None) -> list[Backend]:
    found = available_backends()
    if backends is None:
        return list(found.values())
    unknown = [b for b in backends if b not in found]
    if unknown:
        raise ValueError(f"backends {unknown} are not available here; available: {', '.join(found)}")
    return [found[b] for b in backends]


def _profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    return PROFILES[profile]


class _Counter:
    """Cases checked so far (kept when a check fails, so that a failing row says how many ran)."""

    def __init__(self) -> None:
        self.n = 0


def _run(label: str, backend: str, dtypes: Iterable[str], body: Callable[[_Counter], Any]) -> Row:
    start = time.perf_counter()
    dtypes = tuple(dtypes)
    counter = _Counter()
    try:
        body(counter)
        failure = None
    except ContractViolation as err:
        failure = Failure(label, backend, err.dtype, err.property, str(err), err.method)
    except Exception as err:  # a crash of the plugin or of its examples() is reported, not raised
        failure = Failure(label, backend, ",".join(dtypes), "crash", f"{type(err).__name__}: {err}")
    return Row(label, backend, dtypes, counter.n, time.perf_counter() - start, failure)


def _inexact(norm: Norm) -> bool:
    return float(norm.delta) < 1 or float(norm.slack) > 0


@single_threaded()
def check_backend(norm: Norm, backend: Backend, *, max_examples: int | None = None,
                  profile: str | Profile = "default", counter: _Counter | None = None) -> int:
    """Run the contract on ``backend`` for every dtype it has; raise ``ContractViolation`` (for the shrunk, smallest
    failing input) on the first broken property; return the number of cases checked.

    In order, per dtype: the hard inputs (:func:`hard_inputs`; on torch also as transposed, strided and
    channels-last views) and the declared :meth:`~lmo.Norm.reference_cases`; for manifold geometries
    :func:`check_manifold` (float32 and float64); hard spectra at real sizes (:func:`check_bounds`; inexact oracles
    only, unless the profile says otherwise); a hypothesis search of ``max_examples`` inputs (default: the
    profile's); and last the NaN/inf policy (:func:`check_nonfinite`).
    """
    prof = _profile(profile)
    counter = counter or _Counter()
    references = list(norm.reference_cases())
    full = [dt for dt in backend.dtypes if dt not in _HALF]
    check_hard_inputs(norm, backend, profile=prof, counter=counter)
    for dtype in backend.dtypes:
        counter.n += check_references(norm, backend, dtype, references, manifold=False)
    if is_manifold(norm):
        for dtype in full:
            _manifold(norm, backend, dtype, counter)
            counter.n += check_references(norm, backend, dtype, references, manifold=True)
    if prof.large_exact or _inexact(norm):
        for dtype in full:
            for side in prof.large_sides:
                for g, ref in _large_references(norm, side):
                    check_bounds(norm, backend.asarray(g, dtype), reference=ref)
                    counter.n += 1
    for dtype in backend.dtypes:
        half = dtype in _HALF
        if max_examples is None:
            budget = prof.half_examples if half else prof.max_examples
        else:
            budget = max(1, max_examples // 5) if half else max_examples
        counter.n += _search(norm, backend, dtype, budget)
    # last: a geometry that breaks the NaN/inf policy still gets every other property checked
    for dtype in backend.dtypes:
        counter.n += check_nonfinite(norm, backend, dtype)
    return counter.n


@single_threaded()
def check_hard_inputs(norm: Norm, backend: Backend, *, profile: str | Profile = "default",
                      counter: _Counter | None = None) -> int:
    """:func:`check_norm` on every hard input (:func:`hard_inputs`) in every dtype of ``backend``; on torch also as
    transposed, strided and channels-last views (the small Gaussian, the batch and the real-size inputs; every
    input under the thorough profile). Returns the number of cases checked."""
    prof = _profile(profile)
    counter = counter or _Counter()
    for dtype in backend.dtypes:
        for label, g in hard_inputs(norm, dtype=dtype):
            for layout in _layouts(backend, label, prof, g, dtype):
                check_norm(norm, backend.asarray(g, dtype, layout))
                counter.n += 1
    return counter.n


@functools.lru_cache(maxsize=16)
def _large_references(norm: Norm, side: int) -> tuple[tuple[np.ndarray, Reference | None], ...]:
    """The large inputs with the norm's reference for each (computed once: an SVD of a 256 x 256 stack is not free)."""
    return tuple((g, norm.reference(np.array(g))) for _, g in large_inputs(norm, side=side))


def _layouts(backend: Backend, label: str, prof: Profile, g: np.ndarray, dtype: str) -> tuple[str, ...]:
    if len(backend.layouts) == 1 or g.ndim < 2:
        return ("contiguous",)
    if prof.layouts == "all" or label in ("gaussian", "batch 6 x 5"):
        return backend.layouts
    if label[:1].isdigit() and dtype == "float32":  # the real sizes, in one dtype
        return backend.layouts
    return ("contiguous",)


def _manifold(norm: Norm, backend: Backend, dtype: str, counter: _Counter) -> None:
    checked = 0
    refused = []
    for label, x0, g in manifold_inputs(norm):
        try:
            check_manifold(norm, backend.asarray(x0, dtype), backend.asarray(g, dtype))
            checked += 1
        except ShapeRefused as err:
            refused.append(f"{label}: {err}")
    if not checked:
        case = _Case(norm, backend.asarray(manifold_inputs(norm)[0][2], dtype), None)
        case.fail("project", "project", "project refused every shape the kit tried (" + "; ".join(refused) + ")")
    counter.n += checked


def check_references(norm: Norm, backend: Backend, dtype: str = "float64",
                     references: Iterable[Reference] | None = None, *, manifold: bool | None = None) -> int:
    """Check the declared :meth:`~lmo.Norm.reference_cases` (or ``references``) on ``backend``: plain ones with
    :func:`check_norm`, manifold ones (with a ``point`` or a ``project``) with :func:`check_manifold` and a
    comparison of ``project``. ``manifold``: only the manifold ones (True) or only the plain ones (False).
    Returns the number checked."""
    count = 0
    for ref in norm.reference_cases() if references is None else references:
        is_point = ref.point is not None or ref.project is not None
        if manifold is not None and is_point != manifold:
            continue
        if ref.point is not None:
            check_manifold(norm, backend.asarray(ref.point, dtype), backend.asarray(ref.g, dtype), reference=ref)
        elif ref.project is not None:
            _check_project(norm, backend.asarray(ref.g, dtype), ref)
        else:
            check_norm(norm, backend.asarray(ref.g, dtype), reference=ref)
        count += 1
    return count


def _check_project(norm: Norm, y: Any, ref: Reference) -> None:
    case = _Case(norm, y, None)
    got = to_numpy(case.call("project", y, what="y"))
    want = np.asarray(ref.project, dtype=np.float64)
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    if got.shape != want.shape or err > 1e3 * case.tol * max(1.0, float(np.max(np.abs(want)))):
        case.fail("reference", "project", f"project(y) differs from the known nearest point ({ref.source})",
                  **{"max difference": err})


@single_threaded()
def check_bounds(norm: Norm, g: Any, *, reference: Reference | None = None) -> None:
    """The declared ``delta`` and ``slack`` on one (large) input: feasibility ``||lmo(g)|| <= 1 + slack``, tightness
    and optimality ``<g, lmo(g)> <= -delta ||g||_*`` (against ``reference``'s dual norm where given), and the
    output's finiteness; the cheap subset of :func:`check_norm` for matrices of side 256 and more."""
    case = _Case(norm, g, None)
    d = to_numpy(case.call_on_input("lmo"))
    dual = to_numpy(case.call("dual_norm", g))
    if np.any(~np.isfinite(d)) or np.any(~np.isfinite(dual)):
        case.fail("finite", "lmo", "lmo(g) or dual_norm(g) is not finite on a large input")
    if reference is not None and reference.dual_norm is not None:
        want = np.broadcast_to(np.asarray(reference.dual_norm, dtype=np.float64), dual.shape)
        if np.any(np.abs(dual - want) > (case.tol + case.unit) * want + case.atol):
            case.fail("reference", "dual_norm", f"dual_norm(g) differs from the known value ({reference.source})",
                      **{"dual_norm(g)": float(np.max(dual)), "reference": float(np.max(want))})
    delta, slack = float(norm.delta), float(norm.slack)
    length = case.norm_of(d, "lmo(g)")
    value = case.inner(case.g64, d)
    if np.any(length > 1 + slack + case.tol):
        case.fail("feasibility", "lmo", f"lmo(g) is outside the unit ball at size {case.size}: norm(lmo(g)) exceeds "
                  f"1 + slack (slack = {slack} is declared)", **{"norm(lmo(g))": float(np.max(length))})
    if np.any(length < delta - case.tol):
        case.fail("tightness", "lmo", f"norm(lmo(g)) < delta = {delta} at size {case.size}",
                  **{"norm(lmo(g))": float(np.min(length))})
    ratio = -value / np.where(dual > 0, dual, 1.0)
    if np.any(ratio < delta - case.tol * 4):
        case.fail("optimality", "lmo", f"<g, lmo(g)> / -dual_norm(g) falls below the declared delta = {delta} at size "
                  f"{case.size} (the declared bound must hold for every input)",
                  **{"<g, lmo(g)> / -dual_norm(g)": float(np.min(ratio))})


def _search(norm: Norm, backend: Backend, dtype: str, max_examples: int) -> int:
    cases = 0
    layouts = st.sampled_from(backend.layouts)

    @_settings(max_examples)
    @given(numpy_inputs(norm, dtype=dtype), layouts)
    def search(g: np.ndarray, layout: str) -> None:
        nonlocal cases
        check_norm(norm, backend.asarray(g, dtype, layout if g.ndim >= 2 else "contiguous"))
        cases += 1

    search()
    return cases


@single_threaded()
def check_parity(norm: Norm, backends: Sequence[Backend], *, max_examples: int = 50,
                 counter: _Counter | None = None) -> int:
    """Backend parity: on the same float64 input, every backend attains the same ``<g, lmo(g)>``, dual norm and
    norm as numpy (argmins may differ where they are set-valued; the attained value may not)."""
    reference, *others = backends
    counter = counter or _Counter()

    @_settings(max_examples)
    @given(numpy_inputs(norm, dtype="float32"))
    def search(g: np.ndarray) -> None:
        base = _measure(norm, reference.asarray(g))
        for other in others:
            got = _measure(norm, other.asarray(g))
            tol = tolerance("float64", g.size) + 1.0 - float(norm.delta) + float(norm.slack)
            for label in ("norm", "dual", "value"):
                a, b = getattr(base, label), getattr(got, label)
                gap = np.abs(a - b) - tol * np.maximum(np.abs(a), np.abs(b))
                if np.any(gap > 0):
                    i = int(np.argmax(gap))
                    method = {"value": "lmo", "dual": "dual_norm", "norm": "norm"}[label]
                    raise ContractViolation(
                        "backend parity", f"{other.name} and {reference.name} disagree on {label}",
                        norm=norm, g=g, backend=other.name, dtype="float64", method=method,
                        numbers={reference.name: float(np.ravel(a)[i]), other.name: float(np.ravel(b)[i])},
                    )
        counter.n += 1

    search()
    return counter.n


def _measure(norm: Norm, g: Any) -> Measured:
    value = np.sum(to_numpy(g) * to_numpy(norm.lmo(g)), axis=tuple(range(-norm.ndim, 0)))
    return Measured(value=value, dual=to_numpy(norm.dual_norm(g)), norm=to_numpy(norm.norm(g)))


@single_threaded()
def check_plugin(obj: Any, *, backends: Sequence[str] | None = None, max_examples: int | None = None,
                 profile: str | Profile = "default", progress: Callable[[Row], None] | None = None) -> Report:
    """Run the whole property suite on a ``Norm`` subclass (each of its ``examples()``), an instance, or a
    registry name, on every installed backend (or the named ``backends``), and return a ``Report``.

    Nothing is raised for a broken property: ``report.ok`` is False and ``report.failures`` says what broke (and in
    which method), with the smallest failing input hypothesis found. ``profile``: ``"default"`` or ``"thorough"``
    (more examples, every input in every layout, large sizes for exact oracles too; see :data:`PROFILES`);
    ``max_examples`` overrides its hypothesis budget per backend and dtype. ``progress`` is called with each row as
    it is done.
    """
    prof = _profile(profile)
    selected = _select(backends)
    report = Report()
    try:
        instances = instances_of(obj)
    except Exception as err:
        name = getattr(obj, "__qualname__", repr(obj))
        report.rows.append(Row(name, "-", (), 0, 0.0, Failure(name, "-", "-", "examples", f"{err}")))
        return report
    parity_examples = max(5, (max_examples if max_examples is not None else prof.max_examples) // 2)
    for norm in instances:
        label = short_name(norm)
        jobs = [(backend.name, backend.dtypes,
                 lambda c, b=backend, n=norm: check_backend(n, b, max_examples=max_examples, profile=prof, counter=c))
                for backend in selected]
        if len(selected) > 1:
            jobs.append(("parity", ("float64",),
                         lambda c, n=norm: check_parity(n, selected, max_examples=parity_examples, counter=c)))
        for backend_name, dtypes, body in jobs:
            row = _run(label, backend_name, dtypes, body)
            report.rows.append(row)
            if progress is not None:
                progress(row)
    return report
