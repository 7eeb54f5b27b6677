"""The array backends the property kit can run a norm on, and conversions from and to numpy for the harness.

The kit draws its inputs in numpy float64 and moves them to each backend; the oracle under test then runs on the
backend's own arrays. Only the harness converts through numpy, never the library's code paths.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

__all__ = ["Backend", "available_backends", "backend_for", "to_numpy"]


@dataclasses.dataclass(frozen=True)
class Backend:
    """An array library as the kit uses it: its namespace, how to build arrays from numpy, and its dtypes."""

    name: str
    xp: Any
    from_numpy: Callable[[np.ndarray, str], Any]  # (array, dtype name) -> array of this backend
    dtypes: tuple[str, ...]  # the dtypes that the kit checks on this backend, widest first

    def asarray(self, array: np.ndarray, dtype: str = "float64") -> Any:
        return self.from_numpy(np.asarray(array, dtype=np.float64), dtype)


def _numpy() -> Backend:
    return Backend("numpy", np, lambda a, dt: a.astype(dt), ("float64", "float32", "float16"))


def _torch(device: str) -> Backend:
    import torch

    def make(a: np.ndarray, dt: str) -> Any:
        return torch.asarray(a, dtype=torch.float64).to(device=device, dtype=getattr(torch, dt))

    dtypes = ("float64", "float32", "bfloat16", "float16") if device == "cpu" else ("float32", "bfloat16")
    name = "torch" if device == "cpu" else f"torch-{device}"
    return Backend(name, array_api_compat.array_namespace(torch.zeros(1)), make, dtypes)


def _array_api_strict() -> Backend:
    import array_api_strict as xp

    return Backend("array_api_strict", xp, lambda a, dt: xp.asarray(a, dtype=getattr(xp, dt)), ("float64", "float32"))


def _cupy() -> Backend:
    import cupy

    return Backend("cupy", cupy, lambda a, dt: cupy.asarray(a, dtype=dt), ("float64", "float32", "float16"))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends() -> dict[str, Backend]:
    """The backends installed here, by name: ``numpy``, ``torch``, ``torch-cuda``, ``array_api_strict``, ``cupy``.

    A backend whose library is installed but unusable (CuPy without a GPU, say) is left out.
    """
    found = {"numpy": _numpy()}
    if _installed("torch"):
        found["torch"] = _torch("cpu")
        import torch

        if torch.cuda.is_available():
            found["torch-cuda"] = _torch("cuda")
    if _installed("array_api_strict"):
        found["array_api_strict"] = _array_api_strict()
    if _installed("cupy"):
        try:
            backend = _cupy()
            backend.asarray(np.zeros(1))
            found["cupy"] = backend
        except Exception:  # CuPy installed without a usable CUDA device
            pass
    return found


def backend_for(xp: Any) -> Backend:
    """The backend of a namespace, a backend name, or an array."""
    backends = available_backends()
    if isinstance(xp, str):
        if xp not in backends:
            raise ValueError(f"backend {xp!r} is not available here; available: {', '.join(backends)}")
        return backends[xp]
    if array_api_compat.is_array_api_obj(xp):
        xp = array_api_compat.array_namespace(xp)
    for backend in backends.values():
        if xp is backend.xp or getattr(xp, "__name__", None) == getattr(backend.xp, "__name__", ""):
            return backend
    if array_api_compat.is_numpy_namespace(xp):
        return backends["numpy"]
    if array_api_compat.is_torch_namespace(xp):
        return backends["torch"]
    raise ValueError(f"no property-kit backend for namespace {xp!r}; available: {', '.join(backends)}")


def to_numpy(x: Any) -> np.ndarray:
    """A float64 numpy copy (never a view) of any backend's array: the harness's record of a value."""
    if isinstance(x, np.ndarray | np.generic):
        return np.array(x, dtype=np.float64, copy=True)
    if array_api_compat.is_torch_array(x):
        return x.detach().to(device="cpu", dtype=importlib.import_module("torch").float64).numpy().copy()
    if array_api_compat.is_cupy_array(x):
        return np.array(x.get(), dtype=np.float64, copy=True)
    xp = array_api_compat.array_namespace(x)
    if "float" in str(x.dtype) and xp.finfo(x.dtype).bits < 32:
        x = xp.astype(x, xp.float32)
    return np.array(np.from_dlpack(x), dtype=np.float64, copy=True)
