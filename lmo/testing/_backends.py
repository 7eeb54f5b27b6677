"""The array backends the property kit can run a norm on, and conversions from and to numpy for the harness.

The kit draws its inputs in numpy float64 and moves them to each backend; the oracle under test then runs on the
backend's own arrays. Only the harness converts through numpy, never the library's code paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from typing import Any

import array_api_compat
import numpy as np

__all__ = ["Backend", "LAYOUTS", "available_backends", "backend_for", "single_threaded", "to_numpy"]


#: Memory layouts of the same values: ``"contiguous"``, and the strided views a torch user passes without noticing
#: (``W.T`` of a stored transpose, a slice ``x[..., ::2]``, ``channels_last`` convolution weights).
LAYOUTS = ("contiguous", "transposed", "strided", "channels_last")


@dataclasses.dataclass(frozen=True)
class Backend:
    """An array library as the kit uses it: its namespace, how to build arrays from numpy, its dtypes and the
    memory layouts it can give an array (``layouts``: ``"contiguous"`` first; torch also has strided views)."""

    name: str
    xp: Any
    from_numpy: Callable[[np.ndarray, str], Any]  # (array, dtype name) -> array of this backend
    dtypes: tuple[str, ...]  # the dtypes that the kit checks on this backend, widest first
    layouts: tuple[str, ...] = ("contiguous",)
    relayout: Callable[[Any, str], Any] | None = None  # (array, layout) -> the same values in that layout

    def asarray(self, array: np.ndarray, dtype: str = "float64", layout: str = "contiguous") -> Any:
        """``array`` as this backend's array of ``dtype``, stored in ``layout`` (one of ``layouts``)."""
        out = self.from_numpy(np.array(array, dtype=np.float64), dtype)  # a copy: the input may be read-only
        if layout == "contiguous":
            return out
        if layout not in self.layouts or self.relayout is None:
            raise ValueError(f"backend {self.name} has no layout {layout!r}; it has {', '.join(self.layouts)}")
        return self.relayout(out, layout)


def _numpy() -> Backend:
    return Backend("numpy", np, lambda a, dt: a.astype(dt), ("float64", "float32", "float16"))


def _torch_relayout(x: Any, layout: str) -> Any:
    """The values of ``x`` in a non-contiguous layout (a copy; ``x`` itself is left alone).

    ``transposed``: the transpose of a contiguous transpose (``.mT``; for 1-D inputs a strided view);
    ``strided``: every other element of a buffer twice as long in the last axis; ``channels_last``: a 4-D tensor
    in channels-last memory order (other ranks of at least 2: column-major order). Inputs whose layout cannot
    differ (fewer than two entries on the axes involved) come back as they are.
    """
    import torch

    if layout == "transposed" and x.ndim >= 2:
        return x.mT.contiguous().mT
    if layout in ("strided", "transposed"):
        wide = torch.zeros((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "channels_last":
        if x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        if x.ndim >= 2:
            order = tuple(range(x.ndim - 1, -1, -1))
            return x.permute(order).contiguous().permute(order)
        return x
    raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")


def _torch(device: str) -> Backend:
    import torch

    def make(a: np.ndarray, dt: str) -> Any:
        return torch.asarray(a, dtype=torch.float64).to(device=device, dtype=getattr(torch, dt))

    dtypes = ("float64", "float32", "bfloat16", "float16") if device == "cpu" else ("float32", "bfloat16")
    name = "torch" if device == "cpu" else f"torch-{device}"
    return Backend(name, array_api_compat.array_namespace(torch.zeros(1)), make, dtypes, LAYOUTS, _torch_relayout)


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
    return dict(_available())


@functools.lru_cache(maxsize=1)
def _available() -> tuple[tuple[str, Backend], ...]:
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
    return tuple(found.items())


def backend_for(xp: Any) -> Backend:
    """The backend of a namespace, a backend name, or an array."""
    backends = dict(_available())
    if isinstance(xp, str):
        if xp not in backends:
            raise ValueError(f"backend {xp!r} is not available here; available: {', '.join(backends)}")
        return backends[xp]
    if array_api_compat.is_torch_array(xp) and xp.device.type == "cuda" and "torch-cuda" in backends:
        return backends["torch-cuda"]  # the same namespace as CPU tensors: told apart by the device
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


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch, BLAS and OpenMP with one thread inside (the previous settings are restored after).

    The kit's inputs are small: extra threads only wait on each other, and on a busy machine an SVD of a 64 x 48
    matrix takes up to 100x longer with two threads than with one. BLAS and OpenMP are limited with threadpoolctl
    (a dependency of the kit extra) where it is installed; a torch that is already imported is set directly.
    """
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else 1
    controller = _controller(torch is not None)
    limit = controller.limit(limits=1) if controller is not None else contextlib.nullcontext()
    with limit:
        if before == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


@functools.lru_cache(maxsize=2)
def _controller(with_torch: bool) -> Any:
    """threadpoolctl's controller of the thread pools loaded so far (made again once torch has loaded its own)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()
