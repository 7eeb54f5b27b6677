"""``check_plugin``: the whole property suite on a norm class or instance, over every installed backend."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings

from lmo.norm import Norm, get_norm

from ._backends import Backend, available_backends, to_numpy
from ._checks import ContractViolation, Measured, check_norm, tolerance
from ._strategies import hard_inputs, numpy_inputs

__all__ = ["Failure", "Report", "check_plugin", "instances_of"]

_HALF = ("float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Failure:
    """One broken property: where (norm, backend, dtype), which property, and the kit's explanation."""

    norm: str
    backend: str
    dtype: str
    property: str
    message: str


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the report: a norm instance on one backend (or the cross-backend parity check)."""

    norm: str
    backend: str
    dtypes: tuple[str, ...]
    cases: int
    seconds: float
    failure: Failure | None = None


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
            (r.norm, r.backend, ",".join(r.dtypes), str(r.cases), f"{r.seconds:.1f}s",
             "ok" if r.failure is None else f"FAIL [{r.failure.property}]")
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


def instances_of(obj: Any) -> list[Norm]:
    """The norm instances to check for ``obj``: a ``Norm`` instance, a ``Norm`` subclass (its ``examples()``),
    or a registry name."""
    if isinstance(obj, str):
        obj = type(get_norm(obj)) if obj in _registry_names() else None
        if obj is None:
            raise ValueError("check_plugin takes a Norm class, instance or registry name")
    if isinstance(obj, Norm):
        return [obj]
    if isinstance(obj, type) and issubclass(obj, Norm):
        found = list(obj.examples())
        bad = [x for x in found if not isinstance(x, obj)]
        if not found or bad:
            raise TypeError(f"{obj.__qualname__}.examples() must return instances of {obj.__qualname__}; got {found!r}")
        return found
    raise TypeError(f"check_plugin takes a Norm subclass or instance; got {obj!r} of type {type(obj).__name__}")


def _registry_names() -> list[str]:
    from lmo.norm import norms

    return list(norms())


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


def _run(label: str, backend: str, dtypes: Iterable[str], body: Callable[[], int]) -> Row:
    start = time.perf_counter()
    dtypes = tuple(dtypes)
    try:
        cases = body()
        failure = None
    except ContractViolation as err:
        cases = 0
        failure = Failure(label, backend, err.dtype, err.property, str(err))
    except Exception as err:  # a crash of the plugin or of its examples() is reported, not raised
        cases = 0
        failure = Failure(label, backend, ",".join(dtypes), "crash", f"{type(err).__name__}: {err}")
    return Row(label, backend, dtypes, cases, time.perf_counter() - start, failure)


def check_backend(norm: Norm, backend: Backend, *, max_examples: int = 50) -> int:
    """Run the contract on ``backend`` for every dtype it has: hard inputs, then a hypothesis search.

    Raises ``ContractViolation`` (for the shrunk, smallest failing input) on the first broken property;
    returns the number of cases checked.
    """
    cases = 0
    for dtype in backend.dtypes:
        for _, g in hard_inputs(norm):
            check_norm(norm, backend.asarray(g, dtype))
            cases += 1
        cases += _search(norm, backend, dtype, max_examples if dtype not in _HALF else max(5, max_examples // 5))
    return cases


def _search(norm: Norm, backend: Backend, dtype: str, max_examples: int) -> int:
    cases = 0

    @_settings(max_examples)
    @given(numpy_inputs(norm, dtype=dtype))
    def search(g: np.ndarray) -> None:
        nonlocal cases
        check_norm(norm, backend.asarray(g, dtype))
        cases += 1

    search()
    return cases


def check_parity(norm: Norm, backends: Sequence[Backend], *, max_examples: int = 50) -> int:
    """Backend parity: on the same float64 input, every backend attains the same ``<g, lmo(g)>``, dual norm and
    norm as numpy (argmins may differ where they are set-valued; the attained value may not)."""
    reference, *others = backends
    cases = 0

    @_settings(max_examples)
    @given(numpy_inputs(norm, dtype="float32"))
    def search(g: np.ndarray) -> None:
        nonlocal cases
        base = _measure(norm, reference.asarray(g))
        for other in others:
            got = _measure(norm, other.asarray(g))
            tol = tolerance("float64", g.size) + 1.0 - float(norm.delta) + float(norm.slack)
            for label in ("value", "dual", "norm"):
                a, b = getattr(base, label), getattr(got, label)
                gap = np.abs(a - b) - tol * np.maximum(np.abs(a), np.abs(b))
                if np.any(gap > 0):
                    i = int(np.argmax(gap))
                    raise ContractViolation(
                        "backend parity", f"{other.name} and {reference.name} disagree on {label}",
                        norm=norm, g=g, backend=other.name, dtype="float64",
                        numbers={reference.name: float(np.ravel(a)[i]), other.name: float(np.ravel(b)[i])},
                    )
        cases += 1

    search()
    return cases


def _measure(norm: Norm, g: Any) -> Measured:
    value = np.sum(to_numpy(g) * to_numpy(norm.lmo(g)), axis=tuple(range(-norm.ndim, 0)))
    return Measured(value=value, dual=to_numpy(norm.dual_norm(g)), norm=to_numpy(norm.norm(g)))


def check_plugin(obj: Any, *, backends: Sequence[str] | None = None, max_examples: int = 50) -> Report:
    """Run the whole property suite on a ``Norm`` subclass (each of its ``examples()``), an instance, or a
    registry name, on every installed backend (or the named ``backends``), and return a ``Report``.

    Nothing is raised for a broken property: ``report.ok`` is False and ``report.failures`` says what broke, with
    the smallest failing input hypothesis found. ``max_examples`` is the hypothesis budget per backend and dtype.
    """
    selected = _select(backends)
    report = Report()
    try:
        instances = instances_of(obj)
    except Exception as err:
        name = getattr(obj, "__qualname__", repr(obj))
        report.rows.append(Row(name, "-", (), 0, 0.0, Failure(name, "-", "-", "examples", f"{err}")))
        return report
    for norm in instances:
        label = repr(norm)
        for backend in selected:
            report.rows.append(_run(label, backend.name, backend.dtypes,
                                    lambda b=backend, n=norm: check_backend(n, b, max_examples=max_examples)))
        if len(selected) > 1:
            report.rows.append(_run(label, "parity: " + ",".join(b.name for b in selected), ("float64",),
                                    lambda n=norm: check_parity(n, selected, max_examples=max_examples)))
    return report
