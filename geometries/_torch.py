"""The torch-specific pieces of the polar-factor solvers (optional): ``torch.compile``, and one fused primitive.

``scaled_add_matmul(xp, c, x, b)`` is ``c X + B X``: for torch tensors one ``addmm``/``baddbmm`` call, which adds
``c X`` inside the product's epilogue (one rounding to the iterate dtype, no element-wise pass over ``X``: the form
of torch.optim.Muon's own iteration); for every other namespace the array-API expression.

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

__all__ = ["compiled", "scaled_add_matmul"]


def scaled_add_matmul(xp: Any, c: float, x: Any, b: Any) -> Any:
    """``c * x + b @ x`` (``b`` square, same batch shape as ``x``)."""
    if "torch" in getattr(xp, "__name__", "") and x.ndim >= 2:
        import torch

        if x.ndim == 2:
            return torch.addmm(x, b, x, beta=c)
        batch = x.shape[:-2]
        x3 = x.reshape(-1, *x.shape[-2:])
        out = torch.baddbmm(x3, b.reshape(-1, *b.shape[-2:]), x3, beta=c)
        return out.reshape(*batch, *out.shape[-2:])
    return c * x + xp.matmul(b, x)


def compiled(xp: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` through ``torch.compile`` if ``xp`` is torch's namespace, else ``fn`` itself."""
    if "torch" not in getattr(xp, "__name__", ""):
        return fn
    return _torch_compiled(fn)


@functools.cache
def _torch_compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    import torch

    return torch.compile(fn, dynamic=None, fullgraph=False)
