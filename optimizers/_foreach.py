"""The driver's element-wise list operations, with torch's ``_foreach`` kernels where they apply.

The driver's element-wise work per step -- the two-beta estimator and the update ``(1 - lr decay) x + s d`` -- is
a handful of passes over every parameter. For torch tensors of one device and dtype these run as ``torch._foreach_*``
calls (one dispatch for the whole list instead of one per parameter and operation, and fused multi-tensor kernels on
CUDA); every other namespace, and mixed lists, use the generic array-API expressions. This is the only torch-specific
code of the driver.

Results are new arrays (the driver is pure) unless ``inplace=True``: then the first list (the momenta, the
parameters) is overwritten with the result and returned, with the same values bit for bit as the pure call (the
same kernels, writing into the inputs instead of new arrays). ``inplace=True`` needs torch lists of one device and
dtype (:func:`can_write`) and raises ``ValueError`` otherwise: the generic path has no in-place form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["can_write", "estimator", "scale", "shrink_add", "shrink_add_scaled"]

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


def can_write(*lists: Sequence[Array]) -> bool:
    """Whether the ``inplace=True`` forms accept these lists: non-empty torch lists of one device and dtype."""
    return _torch_list(*lists)


def _check_inplace(function: str, *lists: Sequence[Array]) -> None:
    if lists[0] and not _torch_list(*lists):
        raise ValueError(
            f"{function}: inplace=True needs torch tensors of one device and dtype (the generic array-API path is "
            f"pure); got {type(lists[0][0]).__name__} arrays"
        )


def estimator(
    moments: Sequence[Array], grads: Sequence[Array], b1: float, b2: float, *, inplace: bool = False
) -> tuple[list, list]:
    """``(c, m')`` with ``c = b1 m + (1 - b1) g`` and ``m' = b2 m + (1 - b2) g``, for each pair.

    torch: two lerps, ``m' = m.lerp(g, 1 - b2)`` and ``c = g.lerp(m', b1 / b2)`` (``= g + b1 (m - g)``), which for
    Nesterov's ``(b^2, b)`` is exactly torch.optim.Muon's ``buf.lerp_(g, 1 - b); g.lerp(buf, b)``, and for
    ``b1 = b2`` is one lerp (``c = m'``). Other namespaces: the expressions above as written.

    ``inplace``: ``m'`` is written into ``moments`` (``lerp_``; ``copy_`` of ``g`` when ``b2 = 0``), which are
    returned as ``m'``; ``c`` is then ``moments`` itself when ``b1 = b2``. torch lists only.
    """
    if inplace:
        _check_inplace("estimator", moments, grads)
    if moments and _torch_list(moments, grads):
        import torch

        moments, grads = list(moments), list(grads)
        if b2 > 0:
            if inplace:
                torch._foreach_lerp_(moments, grads, 1.0 - b2)
                new = moments
            else:
                new = list(torch._foreach_lerp(moments, grads, 1.0 - b2))
            est = new if b1 == b2 else list(torch._foreach_lerp(grads, new, b1 / b2))
        else:  # m' = g; c reads the old m, so it is formed first
            est = list(torch._foreach_lerp(grads, moments, b1))
            if inplace:
                torch._foreach_copy_(moments, grads)
                new = moments
            else:  # a copy: the state must not share storage with a gradient (the caller may zero it in place)
                new = [g.clone() for g in grads]
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


def _shrunk(xs: Sequence[Array], shrink: float, inplace: bool) -> list[Array]:
    """torch: ``shrink * x`` into new tensors, or into ``xs`` (``inplace``); ``shrink = 1`` is a copy or nothing."""
    import torch

    xs = list(xs)
    if inplace:
        if shrink != 1:
            torch._foreach_mul_(xs, float(shrink))
        return xs
    return list(torch._foreach_mul(xs, float(shrink))) if shrink != 1 else [x.clone() for x in xs]


def shrink_add(xs: Sequence[Array], shrink: float, updates: Sequence[Array], *, inplace: bool = False) -> list[Array]:
    """``[shrink * x + u]`` (``x + u`` when ``shrink == 1``); ``inplace``: written into ``xs`` (torch lists only)."""
    if inplace:
        _check_inplace("shrink_add", xs, updates)
    if xs and _torch_list(xs, updates):
        import torch

        out = _shrunk(xs, shrink, inplace)
        torch._foreach_add_(out, list(updates))
        return out
    return [(x * shrink if shrink != 1 else x) + u for x, u in zip(xs, updates)]


def shrink_add_scaled(
    xs: Sequence[Array], shrink: float, ds: Sequence[Array], factors: Sequence[Any], *, inplace: bool = False
) -> list[Array]:
    """``[shrink * x + f * d]``; for torch with number factors, ``f * d`` is added in place (``add_(d, alpha=f)``)
    into the new array, or into ``xs`` itself with ``inplace`` (torch lists only)."""
    if inplace:
        _check_inplace("shrink_add_scaled", xs, ds)
    if xs and all(isinstance(f, float) for f in factors) and _torch_list(xs, ds):
        out = _shrunk(xs, shrink, inplace)
        for o, d, f in zip(out, ds, factors):
            o.add_(d, alpha=f)
        return out
    return shrink_add(xs, shrink, scale(ds, factors), inplace=inplace)
