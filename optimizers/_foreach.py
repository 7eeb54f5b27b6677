"""The driver's element-wise list operations, with torch's ``_foreach`` kernels where they apply.

The driver's element-wise work per step -- the two-beta estimator and the update ``(1 - lr decay) x + s d`` -- is
a handful of passes over every parameter. For torch tensors of one device and dtype these run as ``torch._foreach_*``
calls (one dispatch for the whole list instead of one per parameter and operation, and fused multi-tensor kernels on
CUDA); every other namespace, and mixed lists, use the generic array-API expressions. Results are new arrays: the
driver stays pure. This is the only torch-specific code of the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["estimator", "scale", "shrink_add", "shrink_add_scaled"]

Array = Any


def _torch_list(*lists: Sequence[Array]) -> bool:
    first = lists[0][0] if lists and lists[0] else None
    if first is None or type(first).__module__.split(".")[0] != "torch":
        return False
    import torch

    dev, dt = first.device, first.dtype
    return all(
        isinstance(t, torch.Tensor) and t.device == dev and t.dtype == dt and not t.is_sparse
        for lst in lists for t in lst
    )


def estimator(moments: Sequence[Array], grads: Sequence[Array], b1: float, b2: float) -> tuple[list, list]:
    """``(c, m')`` with ``c = b1 m + (1 - b1) g`` and ``m' = b2 m + (1 - b2) g``, for each pair.

    torch: two lerps, ``m' = m.lerp(g, 1 - b2)`` and ``c = g.lerp(m', b1 / b2)`` (``= g + b1 (m - g)``), which for
    Nesterov's ``(b^2, b)`` is exactly torch.optim.Muon's ``buf.lerp_(g, 1 - b); g.lerp(buf, b)``, and for
    ``b1 = b2`` is one lerp (``c = m'``). Other namespaces: the expressions above as written.
    """
    if moments and _torch_list(moments, grads):
        import torch

        if b2 > 0:
            new = list(torch._foreach_lerp(list(moments), list(grads), 1.0 - b2))
            est = new if b1 == b2 else list(torch._foreach_lerp(list(grads), new, b1 / b2))
        else:
            est = list(torch._foreach_lerp(list(grads), list(moments), b1))
            new = list(grads)
        return est, new
    est = [b1 * m + (1 - b1) * g for m, g in zip(moments, grads)]
    new = est if b1 == b2 else [b2 * m + (1 - b2) * g for m, g in zip(moments, grads)]
    return est, new


def scale(arrays: Sequence[Array], factors: Sequence[Any]) -> list[Array]:
    """``[f * a]``; a factor is a number or an array that broadcasts against ``a``."""
    if arrays and all(isinstance(f, float) for f in factors) and _torch_list(arrays):
        import torch

        return list(torch._foreach_mul(list(arrays), list(factors)))
    return [f * a for a, f in zip(arrays, factors)]


def shrink_add(xs: Sequence[Array], shrink: float, updates: Sequence[Array]) -> list[Array]:
    """``[shrink * x + u]`` (``x + u`` when ``shrink == 1``)."""
    if xs and _torch_list(xs, updates):
        import torch

        out = torch._foreach_mul(list(xs), float(shrink)) if shrink != 1 else torch._foreach_add(list(xs), 0.0)
        torch._foreach_add_(out, list(updates))
        return list(out)
    return [(x * shrink if shrink != 1 else x) + u for x, u in zip(xs, updates)]


def shrink_add_scaled(xs: Sequence[Array], shrink: float, ds: Sequence[Array], factors: Sequence[Any]) -> list[Array]:
    """``[shrink * x + f * d]``; for torch with number factors, ``f * d`` is added in place into the new array."""
    if xs and all(isinstance(f, float) for f in factors) and _torch_list(xs, ds):
        import torch

        out = torch._foreach_mul(list(xs), float(shrink)) if shrink != 1 else [x.clone() for x in xs]
        for o, d, f in zip(out, ds, factors):
            o.add_(d, alpha=f)
        return out
    return shrink_add(xs, shrink, scale(ds, factors))
