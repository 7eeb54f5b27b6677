"""The torch-specific pieces of the polar-factor solvers (optional): ``torch.compile`` and three fused primitives.

- ``scaled_add_matmul(xp, c, x, b, alpha)`` is ``c X + alpha B X``: for torch tensors one ``addmm``/``baddbmm``
  call, which adds ``c X`` inside the product's epilogue (one rounding to the iterate dtype, no element-wise pass
  over ``X``: the form of torch.optim.Muon's own iteration, used for every step of the polynomial, its Horner
  tail included); for every other namespace the array-API expression.
- ``add_diagonal(xp, a, c)``: ``a + c I``, in place for torch (no identity matrix is formed).
- ``frobenius_normalized(xp, x, work)``: the iteration's start ``x / ||x||_F`` in the iterate dtype, for float32
  torch inputs, in one scaling pass (see its docstring); other inputs take the generic path.

``PolarSolver(..., compile=True)`` (and ``get_norm("spectral", ..., compile=True)``) runs the generic iteration of
:mod:`lmo.geometries.polar_solvers` -- the same function, written against the array API -- through
``torch.compile`` when the input is a torch tensor; for every other namespace (numpy, CuPy, array-api-strict) the
flag changes nothing. The compiled function is made once per iteration function and cached; torch re-specialises
it per shape and dtype (``dynamic=None``: after a second shape it compiles a shape-generic version).

What compiling buys is measured by ``benchmarks/polar_roofline.py``: on a CPU the iteration is a chain of large matrix
products that already run at the BLAS rate, so compiling only fuses the small element-wise parts (``c0 X + ...``,
the identity shift); on CUDA it also removes kernel launches. The first call pays the compilation (seconds to a
minute). A machine without a working compiler toolchain raises torch's own error at that first call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["compiled", "scaled_add_matmul", "add_diagonal", "frobenius_normalized"]


def _is_torch(xp: Any) -> bool:
    return "torch" in getattr(xp, "__name__", "")


def scaled_add_matmul(xp: Any, c: float, x: Any, b: Any, alpha: float = 1.0) -> Any:
    """``c * x + alpha * (b @ x)`` (``b`` square, same batch shape as ``x``)."""
    if _is_torch(xp) and x.ndim >= 2:
        import torch

        if x.ndim == 2:
            return torch.addmm(x, b, x, beta=c, alpha=alpha)
        batch = x.shape[:-2]
        x3 = x.reshape(-1, *x.shape[-2:])
        out = torch.baddbmm(x3, b.reshape(-1, *b.shape[-2:]), x3, beta=c, alpha=alpha)
        return out.reshape(*batch, *out.shape[-2:])
    product = xp.matmul(b, x)
    return c * x + (product if alpha == 1.0 else alpha * product)


def add_diagonal(xp: Any, a: Any, c: Any) -> Any:
    """``a + c I`` over the trailing two axes; ``c`` a number or one per matrix (shape ``(..., 1, 1)``). torch: in
    place on ``a``, which the caller owns."""
    if _is_torch(xp):
        a.diagonal(dim1=-2, dim2=-1).add_(c[..., 0] if getattr(c, "ndim", 0) >= 2 else c)
        return a
    return a + c * xp.eye(a.shape[-1], dtype=a.dtype, device=_device(a))


def _device(a: Any) -> Any:
    from lmo.backend import device

    return device(a)


_SAFE = 2.0**126  # the largest power of two whose reciprocal is a normal float32


def frobenius_normalized(xp: Any, x: Any, work: Any) -> Any | None:
    """``x / ||x||_F`` (0 for a zero matrix, per matrix of a batch) in the dtype ``work``, for a float32 torch
    ``x``; ``None`` for anything else (the caller takes the generic path).

    Two reads of ``x`` and one write: the norm accumulated in float64 (squares of float32 values neither overflow
    nor underflow there, so every scale from subnormal to near-overflow is exact), then one multiplication that
    writes the work dtype directly (one rounding). A scale beyond float32's range (``||x||_F < 2^-126``: every
    entry subnormal) is applied in two factors, the second on the work-dtype copy (it is exactly 1 otherwise).
    """
    if not _is_torch(xp) or x.dtype != xp.float32:
        return None
    import torch

    norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True, dtype=torch.float64)
    scale = torch.where(norm > 0, 1.0 / norm, torch.zeros_like(norm))
    high = scale.clamp(max=_SAFE)
    low = torch.where(high > 0, scale / high, torch.ones_like(scale))
    out = torch.empty(x.shape, dtype=work, device=x.device)
    torch.mul(x, high.to(torch.float32), out=out)
    return out.mul_(low.to(work))


def compiled(xp: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` through ``torch.compile`` if ``xp`` is torch's namespace, else ``fn`` itself."""
    if not _is_torch(xp):
        return fn
    return _torch_compiled(fn)


@functools.cache
def _torch_compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    import torch

    return torch.compile(fn, dynamic=None, fullgraph=False)
