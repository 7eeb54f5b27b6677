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

__all__ = ["compiled", "scaled_add_matmul", "add_diagonal", "combine", "frobenius_normalized"]


def _is_torch(xp: Any) -> bool:
    return "torch" in getattr(xp, "__name__", "")


def scaled_add_matmul(xp: Any, c: float, x: Any, b: Any, alpha: float = 1.0) -> Any:
    """``c * x + alpha * (b @ x)`` (``b`` square, same batch shape as ``x``)."""
    if _is_torch(xp) and x.ndim >= 2:
        import torch

        if x.ndim == 2:
            return torch.addmm(x, b, x, beta=c, alpha=alpha)
        if x.ndim == 3:
            return torch.baddbmm(x, b, x, beta=c, alpha=alpha)
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


def combine(xp: Any, a: Any, alpha: Any, b: Any, beta: Any) -> Any:
    """``alpha a + beta b`` with per-matrix factors (shape ``(..., 1, 1)``); torch: two passes, in place on ``b``,
    which the caller owns."""
    if _is_torch(xp):
        return b.mul_(beta).addcmul_(a, alpha)
    return a * alpha + b * beta


def _device(a: Any) -> Any:
    from lmo.backend import device

    return device(a)


_TINY = 2.0**-126  # float32's smallest normal number


def frobenius_normalized(xp: Any, x: Any, work: Any) -> Any | None:
    """``x / ||x||_F`` (0 for a zero matrix, per matrix of a batch) in the dtype ``work``, for a float32 torch
    ``x``; ``None`` for anything else (the caller takes the generic path).

    In ``x``'s own memory layout (a transposed view stays one, as torch.optim.Muon keeps it): the largest magnitude
    ``p`` (two read-only reductions), one multiplication by ``1 / p`` that writes the work dtype, the norm of that
    copy (its entries are at most 1: no square overflows, and the largest is 1, so the sum does not underflow), and
    one division in place (two roundings to the work dtype, as in torch.optim.Muon's prelude). Every scale from
    subnormal (``p < 2^-126`` is multiplied by ``2^126``) to float32's largest number gives the start of a
    unit-scale input, and a zero matrix stays zero. A float32 sum of squares of ``x`` itself would overflow beyond
    ~1e19 and underflow below ~1e-19; a float64 one is exact but costs 3x the whole prelude on a CPU.
    """
    if not _is_torch(xp) or x.dtype != xp.float32:
        return None
    import torch

    flip = not x.is_contiguous() and x.mT.is_contiguous()  # a transposed view: work on its storage's layout
    if flip:
        x = x.mT
    high = torch.amax(x, dim=(-2, -1), keepdim=True)
    low = torch.amin(x, dim=(-2, -1), keepdim=True)
    scale = torch.maximum(high, low.neg_()).clamp_(min=_TINY).reciprocal_()
    out = torch.empty(x.shape, dtype=work, device=x.device)
    torch.mul(x, scale, out=out)
    # the norm in the work dtype (accumulated in float32, rounded once): a float32 divisor would send the in-place
    # division down torch's mixed-dtype path, 5x slower on a CPU
    out.div_(torch.linalg.vector_norm(out, dim=(-2, -1), keepdim=True).clamp_(min=torch.finfo(work).tiny))
    return out.mT if flip else out


def compiled(xp: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` through ``torch.compile`` if ``xp`` is torch's namespace, else ``fn`` itself."""
    if not _is_torch(xp):
        return fn
    return _torch_compiled(fn)


@functools.cache
def _torch_compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    import torch

    return torch.compile(fn, dynamic=None, fullgraph=False)
