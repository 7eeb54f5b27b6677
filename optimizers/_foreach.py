"""The driver's element-wise list operations, with torch's ``_foreach`` kernels where they apply.

The element-wise work of a step -- the two-beta estimator, the update ``(1 - lr decay) x + a d`` and the finiteness
test of the gradients -- is a handful of passes over every parameter. For torch tensors these run as
``torch._foreach_*`` calls or fused in-place kernels (one dispatch for a whole list, and on CUDA multi-tensor
kernels); every other namespace uses the generic array-API expressions. This is the only torch-specific code of the
driver.

A learning rate, and every coefficient made from it, is a number or a 0-d tensor (torch's idiom under LR schedulers
and ``torch.compile``): a tensor coefficient is applied with ``addcmul_`` / ``_foreach_mul_``, never read on the
host. Results are new arrays (the driver is pure) unless ``inplace=True``: then the first list (the momenta, the
parameters) is overwritten and returned, with the same values bit for bit as the pure call (the same kernels,
writing into the inputs). ``inplace=True`` needs torch lists of one device and dtype (:func:`can_write`) and raises
``ValueError`` otherwise: the generic path has no in-place form.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["compiling", "can_write", "estimator", "stack_shape", "stack_rows", "shrink_factor", "shrink_add",
           "shrink_add_scaled", "all_finite", "increment"]

Array = Any


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # imported already if x is a tensor; never imported here
    return torch is not None and isinstance(x, torch.Tensor)


def _torch_list(*lists: Sequence[Array]) -> bool:
    """Non-empty lists of dense torch tensors (torch's ``_foreach`` kernels take mixed dtypes and devices, and run
    the tensors they cannot fuse one by one)."""
    torch = sys.modules.get("torch")
    if torch is None or not lists or not lists[0]:
        return False
    tensor = torch.Tensor
    return all(type(t) is tensor or (isinstance(t, tensor) and not t.is_sparse) for lst in lists for t in lst)


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing the caller (it plans the memory of what it compiles: kept buffers that
    alias each other would only be its inputs)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def can_write(*lists: Sequence[Array]) -> bool:
    """Whether the ``inplace=True`` forms accept these lists: non-empty torch lists of one device and dtype (what a
    plan decides once per part; the step writes into the parameters and momenta of such a part)."""
    if not _torch_list(*lists):
        return False
    first = lists[0][0]
    dev, dt = first.device, first.dtype
    return all(t.device == dev and t.dtype == dt for lst in lists for t in lst)


def _check_inplace(function: str, first: Sequence[Array], torch_lists: bool) -> None:
    """``inplace=True`` on ``first`` (the list written into) needs torch lists (``torch_lists``, checked once by
    the caller)."""
    if first and not torch_lists:
        raise ValueError(
            f"{function}: inplace=True needs torch tensors (the generic array-API path is pure); got "
            f"{type(first[0]).__name__} arrays"
        )


def estimator(
    moments: Sequence[Array], grads: Sequence[Array], b1: float, b2: float, *, inplace: bool = False,
    out: Sequence[Array] | None = None,
) -> tuple[list, list]:
    """``(c, m')`` with ``c = b1 m + (1 - b1) g`` and ``m' = b2 m + (1 - b2) g``, for each pair.

    torch: two lerps, ``m' = m.lerp(g, 1 - b2)`` and ``c = g.lerp(m', b1 / b2)`` (``= g + b1 (m - g)``), which for
    Nesterov's ``(b^2, b)`` is exactly torch.optim.Muon's ``buf.lerp_(g, 1 - b); g.lerp(buf, b)``, and for
    ``b1 = b2`` is one lerp (``c = m'``). Other namespaces: the expressions above as written.

    ``inplace``: ``m'`` is written into ``moments`` (``lerp_``; ``copy_`` of ``g`` when ``b2 = 0``), which are
    returned as ``m'``; ``c`` is then ``moments`` itself when ``b1 = b2``. torch lists only. ``out``: tensors
    (torch, ``b1 != b2``) that receive ``c`` (the rows of a stacked oracle input: no stacking copy later).

    Traced by ``torch.compile``: the lerps' arithmetic, ``m' = m + (1 - b2) (g - m)`` and ``c = m' + (1 - b1 / b2)
    (g - m')`` (the lerp's own formula for weights below 1/2; the compiled code rounds as it fuses anyway). A
    momentum that a scheduler moves is a new Python number at every step; as a lerp's weight the compiler
    specialises the graph on its value (a recompilation per step, as torch.optim.Muon's step under ``OneCycleLR``),
    as a factor of a product it makes it a graph input.
    """
    torch_lists = _torch_list(moments, grads)
    if inplace:
        _check_inplace("estimator", moments, torch_lists)
    if torch_lists and compiling():
        return _traced_estimator(list(moments), list(grads), b1, b2, inplace)
    if torch_lists:
        import torch

        moments, grads = list(moments), list(grads)
        if b2 > 0:
            if inplace:
                torch._foreach_lerp_(moments, grads, 1.0 - b2)
                new = moments
            else:
                new = list(torch._foreach_lerp(moments, grads, 1.0 - b2))
            if b1 == b2:
                est = new
            elif out is not None:
                # a transposed row (a tall matrix in a stack of wide ones): the lerp in the gradient's own layout,
                # then one transposed copy (12 against 21 us at 256 x 64: a lerp writing across its inputs'
                # layout reads both of them strided)
                w = b1 / b2
                est = [torch.lerp(g, m, w, out=o) if o.is_contiguous() else o.copy_(torch.lerp(g, m, w))
                       for g, m, o in zip(grads, new, out)]
            else:
                est = list(torch._foreach_lerp(grads, new, b1 / b2))
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


def _traced_estimator(moments: list[Array], grads: list[Array], b1: Any, b2: Any,
                      inplace: bool) -> tuple[list, list]:
    """:func:`estimator` as ``torch.compile`` traces it (see there)."""
    if b2 > 0:
        steps = [(g - m) * (1.0 - b2) for m, g in zip(moments, grads)]
        new = [m.add_(s) if inplace else m + s for m, s in zip(moments, steps)]
        if b1 == b2:
            return new, new
        w = 1.0 - b1 / b2
        return [n + (g - n) * w for n, g in zip(new, grads)], new
    est = [g + (m - g) * b1 for m, g in zip(moments, grads)]  # m' = g; c reads the old m first
    return est, [m.copy_(g) if inplace else g.clone() for m, g in zip(moments, grads)]


def stack_shape(views: Sequence[tuple[int, ...]], core: tuple[int, ...]) -> tuple[int, ...]:
    """``(sum of the batch sizes, *core)``: the shape of the stack of arrays of shapes ``views``."""
    return (sum(math.prod(view[: len(view) - len(core)]) for view in views), *core)


def stack_rows(buffer: Array, views: Sequence[tuple[int, ...]], transposed: Sequence[bool],
               core: tuple[int, ...]) -> tuple[Array, list[Array]]:
    """``buffer`` (a torch tensor of :func:`stack_shape`) and its rows as views of each shape in ``views``
    (``(*batch, *core)``), with the trailing two axes swapped back where ``transposed``: the estimator writes the
    parameters' estimates into them (``out=``), so that a stacked oracle call reads the buffer without a stacking
    copy."""
    counts = [math.prod(view[: len(view) - len(core)]) for view in views]
    rows, start = [], 0
    for view, flip, count in zip(views, transposed, counts):
        row = buffer[start : start + count].view(view)
        rows.append(row.mT if flip else row)
        start += count
    return buffer, rows


def shrink_factor(lr: Any, decay: float) -> Any:
    """``1 - lr * decay``: a number, or a 0-d tensor for a tensor ``lr``; exactly ``1.0`` without decay."""
    return 1.0 if decay == 0 else 1 - lr * decay


def _shrunk(xs: Sequence[Array], shrink: Any, inplace: bool) -> list[Array]:
    """torch: ``shrink * x`` into new tensors, or into ``xs`` (``inplace``); ``shrink = 1`` is a copy or nothing."""
    import torch

    xs = list(xs)
    unit = isinstance(shrink, float) and shrink == 1.0
    if unit:
        return xs if inplace else [x.clone() for x in xs]
    shrink = _cpu_factor(shrink, xs[0])
    if not isinstance(shrink, float) and type(xs[0]) not in (torch.Tensor, torch.nn.Parameter):
        # DTensors and a tensor factor (a tensor lr): tensor by tensor, as _add_scaled_ adds them, since DTensor
        # replicates a plain 0-d operand of a foreach op on the first tensor's mesh only (a group may hold several)
        return [x.mul_(shrink) for x in xs] if inplace else [x * shrink for x in xs]
    if inplace:
        torch._foreach_mul_(xs, shrink)
        return xs
    return list(torch._foreach_mul(xs, shrink))


def _cpu_factor(factor: Any, like: Array) -> Any:
    """A number ``factor`` as a 0-d float32 tensor (float64 for a float64 list), for eager CPU lists of plain
    tensors; anything else is returned as it is. torch's in-place CPU ``_foreach_mul_`` with a number wraps it
    into a tensor of the list's dtype once per tensor: three more dispatches each (27 against 9 us for 16 matrices
    of 64 x 64), and for bfloat16 and float16 a factor rounded to that dtype (a weight-decay shrink of 0.99787 became
    0.99609 in bfloat16). With the tensor the product is ``x.mul_(factor)``'s, bit for bit, in every floating dtype
    (a DTensor list would need a tensor of its mesh)."""
    import torch

    plain = type(like) in (torch.Tensor, torch.nn.Parameter)  # a DTensor parameter's type is DTensor
    if (not isinstance(factor, float) or not plain or like.device.type != "cpu" or not like.is_floating_point()
            or compiling()):
        return factor
    return torch.full((), factor, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)


def increment(counters: Sequence[Array]) -> None:
    """``t += 1`` for each 0-d torch tensor of ``counters`` (the step counts): with a list of one CPU tensor ``1``,
    which torch's CPU ``_foreach_add_`` adds tensor by tensor without wrapping a number each time (13 against 34 us for
    24 counters); a CPU 0-d tensor is added as a number to a counter on any device."""
    import torch

    counters = list(counters)
    if not counters:
        return
    if compiling():
        torch._foreach_add_(counters, 1.0)
    else:
        torch._foreach_add_(counters, [torch.ones((), dtype=torch.float32)] * len(counters))


def _add_scaled_(out: Any, d: Any, coefficient: Any) -> None:
    """``out += coefficient * d`` in one pass: ``add_`` for a number, ``addcmul_`` for a 0-d tensor (no host read);
    ``d`` may have another dtype (a bfloat16 direction into a float32 parameter)."""
    if isinstance(coefficient, (int, float)):
        out.add_(d, alpha=coefficient)
    else:
        out.addcmul_(d, coefficient)


def shrink_add(xs: Sequence[Array], shrink: Any, updates: Sequence[Array], *, inplace: bool = False) -> list[Array]:
    """``[shrink * x + u]`` (``x + u`` when ``shrink == 1``); ``inplace``: written into ``xs`` (torch lists only)."""
    torch_lists = _torch_list(xs, updates)
    if inplace:
        _check_inplace("shrink_add", xs, torch_lists)
    if torch_lists:
        import torch

        out = _shrunk(xs, shrink, inplace)
        torch._foreach_add_(out, list(updates))
        return out
    return [(x if isinstance(shrink, float) and shrink == 1.0 else x * shrink) + u for x, u in zip(xs, updates)]


def shrink_add_scaled(
    xs: Sequence[Array], shrink: Any, ds: Sequence[Array], coefficients: Sequence[Any], *, inplace: bool = False,
    staging: Sequence[Array] | None = None,
) -> list[Array]:
    """``[shrink * x + a * d]`` with ``a`` a number or a 0-d tensor per array. torch: ``a * d`` is added in one
    pass into the new array, or into ``xs`` itself with ``inplace`` (``xs`` one device and dtype; ``ds`` may be of
    another floating dtype). Other namespaces: ``d`` is cast to ``x``'s dtype, then the expression.

    ``staging`` (torch): tensors of ``xs``' shapes and dtype that may be overwritten (a large matrix's estimate,
    once the oracle has read it), into which a ``d`` of another dtype is cast first: torch's mixed-dtype add
    converts ``d`` into fresh memory, a fresh memory mapping on a CPU for a large matrix (page faults at every
    step)."""
    torch_xs = _torch_list(xs)
    if inplace:
        _check_inplace("shrink_add_scaled", xs, torch_xs)
    if torch_xs and all(_is_torch(d) for d in ds):
        import torch

        if staging is not None and any(d.dtype != x.dtype for d, x in zip(ds, xs)):
            ds = [s.copy_(d) for s, d in zip(staging, ds)]
        out = _shrunk(xs, shrink, inplace)
        first = coefficients[0]
        if isinstance(first, float) and all(a == first for a in coefficients) and _torch_list(ds):
            torch._foreach_add_(out, list(ds), alpha=first)  # one coefficient (a batch of same-shape matrices)
            return out
        for o, d, a in zip(out, ds, coefficients):
            _add_scaled_(o, d, a)
        return out
    out = []
    for x, d, a in zip(xs, ds, coefficients):
        if d.dtype != x.dtype:
            from lmo.backend import namespace

            d = namespace(x).astype(d, x.dtype)
        out.append((x if isinstance(shrink, float) and shrink == 1.0 else shrink * x) + a * d)
    return out


def all_finite(arrays: Sequence[Array]) -> Any:
    """A 0-d boolean array, computed on the arrays' device and read once by the caller: True when every entry of
    every array is finite. False may be a false alarm (the caller confirms with an exact test, see
    :func:`lmo.optimizers.driver.first_nonfinite`). torch, per dtype and device: on an accelerator and under
    ``torch.compile`` one ``_foreach_norm`` (a fused multi-tensor kernel; NaN or inf exactly when an entry is, or
    when the sum of squares overflows, entries beyond ~1e19 in float32); in eager code on a CPU, where that kernel
    runs tensor by tensor anyway, one sum per tensor (at least float32; 0.69 against 0.84 ms for a GPT's 48 tensors
    of 6.3M entries, 79 against 144 us at 0.4M; it overflows only beyond ~1e38 / entries). ``None`` for an empty
    list."""
    if not arrays:
        return None
    if all(_is_torch(a) for a in arrays):
        import torch

        buckets: dict[tuple[Any, Any], list[Any]] = {}
        for a in arrays:
            buckets.setdefault((a.dtype, a.device), []).append(a)
        flags = []
        for (dtype, dev), bucket in buckets.items():
            if dev.type == "cpu" and not compiling():  # compiled: the fused form, as traced
                wide = torch.float32 if dtype.itemsize < 4 else dtype
                flags.append(torch.stack([a.sum(dtype=wide) for a in bucket]).isfinite().all())
            else:
                flags.append(torch.stack(torch._foreach_norm(bucket)).isfinite().all())
        return flags[0] if len(flags) == 1 else torch.stack([f.to(flags[0].device) for f in flags]).all()
    from lmo.backend import namespace

    flags = []
    for a in arrays:
        xp = namespace(a)
        flags.append(xp.all(xp.isfinite(a)))
    try:
        xp = namespace(flags[0])
        return xp.all(xp.stack(flags))
    except Exception:  # flags of different libraries or devices
        return all(bool(f) for f in flags)
