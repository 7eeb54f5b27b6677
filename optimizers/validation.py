"""The one place where hyperparameters are checked: small validators and the error they raise.

Each hyperparameter is validated once, by the layer that owns it (the driver validates ``beta1``, ``beta2``,
``decay``, ...; a configuration validates its own options such as ``ns_steps``; a torch class validates nothing
that a lower layer validates). A layer that renames a hyperparameter on the way down wraps the call in
:func:`renamed`, so that an error raised below names the hyperparameter as the caller wrote it::

    with renamed({"beta2": ("momentum", momentum)}):       # torch's name and value
        driver = muon(lr, beta=momentum, ...)               # muon renames beta -> beta1, beta2 the same way

``Muon(momentum=1.5)`` then reads "momentum must be a number in [0, 1); got momentum=1.5" although the check
that fired is the driver's check of ``beta2``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "HyperparameterError",
    "renamed",
    "real",
    "integer",
    "boolean",
    "choice",
    "probability",
    "learning_rate",
    "tensor_learning_rate",
    "scalar",
    "is_number",
]


class HyperparameterError(ValueError):
    """A hyperparameter outside its domain: ``name`` (as the caller wrote it), its ``value`` and the
    ``requirement`` it breaks; the message is ``"{name} must be {requirement}; got {name}={value!r}"`` unless a
    full ``message`` is given (torch's own wording, for the drop-in classes)."""

    def __init__(self, name: str, value: Any, requirement: str, message: str | None = None) -> None:
        self.name, self.value, self.requirement, self.worded = name, value, requirement, message is not None
        super().__init__(message or f"{name} must be {requirement}; got {name}={value!r}")


Renaming = Mapping[str, "tuple[str, Any] | tuple[str, Any, str | None]"]


@contextlib.contextmanager
def renamed(names: Renaming) -> Iterator[None]:
    """Re-raise a :class:`HyperparameterError` from the block under the caller's name for the hyperparameter.

    ``names`` maps an inner name to ``(outer_name, outer_value)`` or ``(outer_name, outer_value, message)``;
    ``message`` (a format string with ``{name}`` and ``{value}``) replaces the generic wording. Errors about
    names not in the map, and errors worded for the user already (torch's own messages), pass unchanged.
    """
    try:
        yield
    except HyperparameterError as err:
        if err.name not in names or err.worded:
            raise
        outer = names[err.name]
        name, value = outer[0], outer[1]
        message = outer[2] if len(outer) > 2 else None
        text = None if message is None else message.format(name=name, value=value)
        raise HyperparameterError(name, value, err.requirement, text) from None


def is_number(value: Any) -> bool:
    """A real Python number (``bool`` is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def real(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float, checked to be a finite number in the interval ``low .. high`` (closed unless
    ``low_open``/``high_open``; an infinite end is always open)."""
    # finite by comparisons, not math.isfinite: the same for every float, no OverflowError for a huge int, and
    # traceable by torch.compile, where a scheduled momentum is a symbolic float (guards, no graph break)
    ok = is_number(value) and -math.inf < value < math.inf
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        raise HyperparameterError(name, value, _interval(low, high, low_open, high_open))
    return float(value)


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if low == -math.inf and high == math.inf:
        return "a finite number"
    if high == math.inf:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if low == -math.inf:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def probability(name: str, value: Any) -> float:
    """A factor in ``[0, 1)``: a momentum, an EMA's beta."""
    return real(name, value, 0.0, 1.0, high_open=True)


def integer(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` checked to be a Python ``int`` (not a ``bool``) in ``low .. high`` (both closed)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            rule = f"an int in [{low}, {high}]"
        elif low is not None:
            rule = f"an int >= {low}"
        else:
            rule = "an int"
        raise HyperparameterError(name, value, rule)
    return int(value)


def boolean(name: str, value: Any) -> bool:
    """``value`` checked to be a ``bool`` (``"no"`` or ``0`` are refused: they would read as a truth value)."""
    if not isinstance(value, bool):
        raise HyperparameterError(name, value, "a bool (True or False)")
    return value


def choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    """``value`` checked to be one of ``options``."""
    if not any(value is o or (type(value) is type(o) and value == o) for o in options):
        raise HyperparameterError(name, value, "one of " + ", ".join(repr(o) for o in options))
    return value


def learning_rate(name: str, value: Any) -> Any:
    """A learning rate: a finite number ``>= 0`` (returned as a float; a NumPy scalar is one) or a one-element
    tensor of any library (:func:`tensor_learning_rate`: as it is when 0-d, else a 0-d view of itself).

    The tensor's value is checked once, here: it is read on the host, so this runs when a param group is made,
    not at every step.
    """
    if isinstance(value, np.generic) and isinstance(value, (np.integer, np.floating)):
        value = value.item()  # a host number (a NumPy bool or complex scalar is refused below)
    if is_number(value):
        return real(name, value, 0.0)
    value = tensor_learning_rate(name, value)
    number = scalar(value)
    if not (math.isfinite(number) and number >= 0):
        raise HyperparameterError(name, value, "a finite number >= 0")
    return value


def tensor_learning_rate(name: str, value: Any) -> Any:
    """The checks of a tensor learning rate that read no value, so that a step may make them (a tensor set in a
    param group after the group was made): one element, of a real dtype (not bool or complex). Returns it as it
    is when it is 0-d, else as a 0-d view of itself (a view: a scheduler's in-place updates stay visible)."""
    shape = getattr(value, "shape", None)
    if shape is None:
        raise HyperparameterError(name, value, "a finite number >= 0 or a one-element tensor")
    shape = tuple(shape)
    if math.prod(shape) != 1:
        raise HyperparameterError(name, value, "a one-element tensor",
                                  f"Tensor {name} must be 1-element; got shape {shape}")
    kind = str(getattr(value, "dtype", ""))
    if "bool" in kind or "complex" in kind:
        raise HyperparameterError(name, value, f"a one-element tensor of a real dtype (not {kind})")
    return value if not shape else value.reshape(())


def scalar(value: Any) -> float:
    """The number a learning rate stands for: a number, or the value of a one-element tensor or array of any shape
    (read on the host: for checks made once, not per step)."""
    return float(value.reshape(()) if hasattr(value, "reshape") else value)
