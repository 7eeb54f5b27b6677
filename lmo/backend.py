"""Array-backend helpers: the one place that knows about array namespaces.

Every geometry and driver is written once against the Python array API standard::

    xp = namespace(g)          # numpy, torch, CuPy, array-api-strict, ...
    ... only xp.* from here on ...

This module holds the few helpers that the standard leaves to each library: finding the namespace and device of an
array, widening half-precision inputs for computation, and scale-safe reductions used by several norms.
No backend is imported here; array-api-compat imports the one that the array comes from.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import array_api_compat

Array = Any  # an array of any array-API namespace
Namespace = Any

__all__ = [
    "Array",
    "namespace",
    "device",
    "is_floating",
    "widen",
    "vdot",
    "safe_divide",
]


def namespace(*arrays: Array) -> Namespace:
    """The array-API namespace of ``arrays`` (numpy, torch, cupy, array_api_strict, ...).

    torch tensors are recognised first (the optimizers' hot path, and what ``torch.compile`` traces): their
    namespace is array-api-compat's torch module, the answer ``array_namespace`` gives after its general checks."""
    torch = sys.modules.get("torch")
    if torch is not None and arrays and all(isinstance(a, torch.Tensor) for a in arrays):
        return _torch_namespace()
    return array_api_compat.array_namespace(*arrays)


def _torch_namespace() -> Namespace:
    global _TORCH
    if _TORCH is None:
        import array_api_compat.torch as compat_torch

        _TORCH = compat_torch
    return _TORCH


_TORCH: Namespace = None


def device(x: Array) -> Any:
    """The device that ``x`` lives on, in its own library's terms."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.device
    return array_api_compat.device(x)


def is_floating(xp: Namespace, x: Array) -> bool:
    """Whether ``x`` has a real floating dtype."""
    return bool(xp.isdtype(x.dtype, "real floating"))


def widen(xp: Namespace, x: Array, *, name: str = "x", where: Any = "") -> tuple[Array, Callable[[Array], Array]]:
    """Return ``(x_wide, narrow)``: ``x`` in a dtype fit for computation and a function that casts results back.

    Half precision (float16, bfloat16) has too few exponent or mantissa bits for sums of squares and powers, so it
    is computed in float32 and cast back to the input dtype. Other real floating dtypes pass through unchanged.
    Integer, boolean and complex inputs raise ``ValueError`` naming the parameter, its shape and dtype.
    """
    if not is_floating(xp, x):
        prefix = where if isinstance(where, str) else f"{where!r}: "  # an object (a norm) is formatted on error only
        raise ValueError(
            f"{prefix}{name} must have a real floating dtype; got dtype {x.dtype} with shape {tuple(x.shape)}"
        )
    if xp.finfo(x.dtype).bits >= 32:
        return x, _identity
    dtype = x.dtype
    return xp.astype(x, xp.float32), lambda y: xp.astype(y, dtype)


def _identity(y: Array) -> Array:
    return y


def vdot(xp: Namespace, a: Array, b: Array, ndim: int) -> Array:
    """``<a, b>`` over the trailing ``ndim`` axes, one value per batch entry."""
    return xp.sum(a * b, axis=tuple(range(-ndim, 0)))


def safe_divide(xp: Namespace, num: Array, den: Array) -> Array:
    """``num / den`` where ``den > 0``, else 0: the convention ``lmo(0) = 0`` without NaN."""
    positive = den > 0
    return xp.where(positive, num / xp.where(positive, den, xp.ones_like(den)), xp.zeros_like(num))
