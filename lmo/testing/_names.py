"""Short, readable names of norm instances for the kit's reports: the registry name and the non-default parameters."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lmo.norm import Norm

__all__ = ["short_name"]

_MAX = 56


def short_name(norm: Any, width: int = _MAX) -> str:
    """``spectral(scale='rms')``, ``lp(p=1.5)``, ``MyNorm()``: what a report row calls ``norm``, at most ``width``
    characters (longer ones end in an ellipsis)."""
    text = _name(norm)
    return text if len(text) <= width else text[: width - 1] + "…"


def _name(norm: Any) -> str:
    if not isinstance(norm, Norm):
        return getattr(norm, "__name__", None) or repr(norm)
    cls = type(norm)
    registered = getattr(cls, "name", None)
    from lmo.norm import _REGISTRY  # the registry name only if it is this class's own (not a subclass's heritage)

    label = registered if registered is not None and _REGISTRY.get(registered) is cls else cls.__name__
    params = []
    for field in dataclasses.fields(norm):
        if not field.init or not field.repr:
            continue
        value = getattr(norm, field.name)
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        if _same(value, default):
            continue
        params.append(f"{field.name}={_value(value)}")
    return f"{label}({', '.join(params)})"


def _same(value: Any, default: Any) -> bool:
    if default is dataclasses.MISSING:
        return False
    try:
        if isinstance(value, Norm) and isinstance(default, str):
            return _name(value) == f"{default}()"
        return bool(value == default)
    except Exception:  # an array-valued parameter: compare by repr
        return repr(value) == repr(default)


def _value(value: Any) -> str:
    if isinstance(value, Norm):
        return _name(value)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else repr(value)
    if isinstance(value, (tuple, list)):
        inner = [_value(v) for v in value]
        if len(inner) > 4:
            inner = inner[:3] + ["…"]
        text = ", ".join(inner)
        return f"({text},)" if isinstance(value, tuple) and len(value) == 1 else (
            f"({text})" if isinstance(value, tuple) else f"[{text}]")
    return repr(value)
