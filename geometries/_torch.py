"""The torch-specific pieces of the polar-factor solvers (optional): ``torch.compile``, a workspace, and the
primitives the generic iteration calls.

- ``scaled_add_matmul(xp, c, x, b, alpha)`` is ``c X + alpha B X`` (``right=True``: ``c X + alpha X B``, for an
  iterate stored transposed): for torch tensors one ``addmm``/``baddbmm`` call, which adds ``c X`` inside the
  product's epilogue (one rounding to the iterate dtype, no element-wise pass over ``X``: the form of
  torch.optim.Muon's own iteration, used for every step of the polynomial, its Horner tail included); for every
  other namespace the array-API expression.
- ``matmul(xp, a, b, out)`` and ``cast(xp, a, dtype, out)``: the product and the cast, into a buffer if given.
  ``symmetric=True`` (on both product primitives): the result is known symmetric (``X X^T``, ``A A``), and a large
  one on a CPU is formed by its upper block triangle, about 3/4 of the work (``benchmarks/symmetric_product.py``).
- ``add_diagonal(xp, a, c)``: ``a + c I``, in place for torch (no identity matrix is formed).
- ``frobenius_normalized(xp, x, work)``: the iteration's start ``x / ||x||_F`` in the iterate dtype, for float32
  torch inputs, in one scaling pass (see its docstring); other inputs take the generic path.

A :class:`Workspace` is memory a caller keeps between calls of an iteration: given one, the primitives write their
results into its buffers (``out=``) instead of fresh tensors. On a CPU a fresh tensor of a stacked iteration
(megabytes) is a fresh memory mapping that the C allocator returns to the system when it is freed, so that every
step pays thousands of page faults (benchmarks/muon_step.py counts them); the optimizers give the oracle of each
stacked batch a workspace (:class:`lmo.optimizers.step.Plan`). Every other namespace, and code being traced by
``torch.compile`` (which plans its own memory), ignores it.

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
import math
from collections.abc import Callable
from typing import Any

__all__ = ["compiled", "scaled_add_matmul", "matmul", "symmetrized", "cast", "add_diagonal", "scaled", "combine",
           "power_of_two_below", "frobenius_normalized", "Workspace", "usable", "buffer"]


def _is_torch(xp: Any) -> bool:
    return "torch" in getattr(xp, "__name__", "")


class Workspace:
    """Buffers kept between calls of an iteration: one flat buffer per ``(role, dtype, device)``, as large as the
    largest request, of which each request gets a view of its shape.

    A result written into a buffer is valid until the next request of its role: the caller consumes it first (the
    optimizer's update reads the oracle's direction before the next batch is evaluated). Requests of different
    shapes share a role's memory, so the batches of a plan that alternate between shapes neither reallocate nor hold
    a buffer per shape: the memory kept is the largest batch's, per role.

    An iteration's input that lives in the workspace's own memory (:meth:`holds`: the optimizer writes its estimates
    into the buffer ``"c"``) is the caller's scratch, which the iteration may overwrite; once it has read it, the
    iteration may :meth:`lend` that memory to its own temporaries (:meth:`take_spare`), which then need no buffers.
    """

    __slots__ = ("_buffers", "_views", "_storages", "_lent", "_lent_used")

    def __init__(self) -> None:
        self._buffers: dict[tuple, Any] = {}
        self._views: dict[tuple, Any] = {}  # the view handed out per request, made once (a slice costs microseconds)
        self._storages: set[int] = set()  # the buffers' storage addresses, for holds()
        self._lent: Any = None  # the flat buffer lent to this call's first requests of take_spare (lend)
        self._lent_used = 0

    def take(self, role: str, shape: tuple[int, ...], dtype: Any, device: Any, *, reserve: int = 0) -> Any:
        """A tensor of ``shape`` and ``dtype`` on ``device``: a view of the role's buffer, which grows to
        ``max(prod(shape), reserve)`` entries if it is smaller (the size known to be needed later)."""
        request = (role, shape, dtype, device)
        view = self._views.get(request)
        if view is not None:
            return view
        n = math.prod(shape)
        key = (role, dtype, device)
        flat = self._buffers.get(key)
        if flat is None or flat.numel() < n:
            import torch

            if flat is not None:
                self._storages.discard(flat.untyped_storage().data_ptr())
            flat = self._buffers[key] = torch.empty(max(n, reserve), dtype=dtype, device=device)
            self._storages.add(flat.untyped_storage().data_ptr())
            # the views of the old buffer, and of any lent one (it may have been this one)
            self._views = {r: v for r, v in self._views.items() if (r[0], r[2], r[3]) != key and len(r) == 4}
        view = self._views[request] = flat[:n].view(shape)
        return view

    def holds(self, x: Any) -> bool:
        """Whether the tensor ``x`` is (a view of) one of the workspace's buffers."""
        return x.untyped_storage().data_ptr() in self._storages

    def lend(self, x: Any) -> None:
        """Lend the buffer that holds ``x`` (the caller's scratch, read already: see :meth:`holds`) to this call's
        :meth:`take_spare` requests, until the next ``lend`` (``None``: lend nothing)."""
        ptr = None if x is None else x.untyped_storage().data_ptr()
        self._lent = next((b for b in self._buffers.values() if b.untyped_storage().data_ptr() == ptr), None)
        self._lent_used = 0

    def take_spare(self, role: str, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        """As :meth:`take`, from the lent buffer while it has room of ``dtype`` on ``device`` left (requests in
        turn, in the order made: no two share memory), else the role's own buffer; a temporary of the call that
        does not outlive the lent memory's owner reading it again."""
        lent, n = self._lent, math.prod(shape)
        if lent is not None and lent.dtype == dtype and lent.device == device \
                and self._lent_used + n <= lent.numel():
            start, self._lent_used = self._lent_used, self._lent_used + n
            request = (role, shape, dtype, device, lent.untyped_storage().data_ptr(), start)
            view = self._views.get(request)
            if view is None:
                view = self._views[request] = lent[start : start + n].view(shape)
            return view
        return self.take(role, shape, dtype, device)

    def __len__(self) -> int:
        return len(self._buffers)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


def _traced() -> bool:
    """Whether ``torch.compile`` is tracing the caller (torch is imported: the caller holds a tensor)."""
    import torch

    return torch.compiler.is_compiling()


def usable(xp: Any, ws: Workspace | None) -> Workspace | None:
    """``ws`` where the primitives can write into it (torch tensors, not traced by ``torch.compile``, which plans
    its own memory), else ``None``: decided once per call of an iteration."""
    if ws is None or not _is_torch(xp) or _traced():
        return None
    return ws


def buffer(xp: Any, ws: Workspace | None, role: str, shape: Any, dtype: Any, like: Any, *, spare: bool = False
           ) -> Any:
    """The buffer ``role`` of ``shape`` and ``dtype`` on ``like``'s device from ``ws`` (one that :func:`usable`
    let through), or ``None`` without one: then the primitive allocates its result. ``spare``: from the memory lent
    to the call if it has room (:meth:`Workspace.take_spare`)."""
    if ws is None:
        return None
    return (ws.take_spare if spare else ws.take)(role, tuple(shape), dtype, like.device)


def scaled_add_matmul(xp: Any, c: float, x: Any, b: Any, alpha: float = 1.0, out: Any = None, *,
                      right: bool = False, symmetric: bool = False) -> Any:
    """``c * x + alpha * (b @ x)`` (``b`` square, same batch shape as ``x``), or with ``right`` ``c * x + alpha *
    (x @ b)``; ``out``: a torch buffer of the result's shape (not ``x`` or ``b``) that receives it. ``symmetric``:
    the caller knows the result to be symmetric (``c A + alpha A A`` for a symmetric ``A``), so that a large one may
    be formed by its upper block triangle (see :func:`matmul`)."""
    if _is_torch(xp) and x.ndim >= 2:
        import torch

        first, second = (x, b) if right else (b, x)
        if x.ndim == 2:
            cuts = _panels(first) if symmetric else None
            if cuts is not None:
                return _upper_triangle(first, second, out, cuts, x, c, alpha)
            return torch.addmm(x, first, second, beta=c, alpha=alpha, out=out)
        if x.ndim == 3:
            return torch.baddbmm(x, first, second, beta=c, alpha=alpha, out=out)
        batch = x.shape[:-2]
        x3, b3 = x.reshape(-1, *x.shape[-2:]), b.reshape(-1, *b.shape[-2:])
        res = torch.baddbmm(x3, *((x3, b3) if right else (b3, x3)), beta=c, alpha=alpha)
        return res.reshape(*batch, *res.shape[-2:])
    product = xp.matmul(x, b) if right else xp.matmul(b, x)
    return c * x + (product if alpha == 1.0 else alpha * product)


def matmul(xp: Any, a: Any, b: Any, out: Any = None, *, symmetric: bool = False) -> Any:
    """``a @ b``; ``out``: a torch buffer of the result's shape that receives it.

    ``symmetric``: the caller knows the product to be symmetric (``X X^T``, or ``A A`` for a symmetric ``A``). On a
    CPU a large one (at least two panels of :data:`SYMMETRIC_PANEL`'s size) is then formed by its upper block
    triangle: each row panel times the columns from its diagonal block on, one product per panel, and the blocks
    below the diagonal mirrored, so that ``k`` panels cost ``(k + 1) / 2k`` of the product (torch's BLAS calls
    offer no symmetric rank-k update for these dtypes). Every entry computed is a dot product of the full
    product's (in bfloat16 bit for bit the same on this project's CPU; in float32 within the BLAS's rounding, whose
    summation order depends on the shape), and the blocks below the diagonal are the transposes of those above: so
    only products symmetric as formed (``Y Y^T``; ``A A`` of an exactly symmetric ``A``) should say so.

    A stack (3-D) whose matrices take at least :data:`SYMMETRIC_STACK_PANELS` panels is formed matrix by matrix so:
    a batched product has no panel form (into a strided result torch's ``bmm`` copies through a temporary: two
    panels took 1.6x the plain product), and against one batched call the loop pays only where the panels save
    much (``benchmarks/symmetric_product.py``, stacks)."""
    if symmetric and _is_torch(xp) and a.ndim in (2, 3) and b.ndim == a.ndim:
        cuts = _panels(a)
        if cuts is not None and a.ndim == 2:
            return _upper_triangle(a, b, out, cuts)
        if cuts is not None and len(cuts) > SYMMETRIC_STACK_PANELS and a.shape[0] == b.shape[0]:
            if out is None:
                import torch

                out = torch.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=a.dtype, device=a.device)
            for o, first, second in zip(out, a, b):
                _upper_triangle(first, second, o, cuts)
            return out
    if out is not None and _is_torch(xp) and a.ndim <= 3:
        import torch

        if a.ndim == b.ndim == 3 and a.shape[0] == b.shape[0]:  # matmul's broadcasting and reshapes skipped
            return torch.bmm(a, b, out=out)
        if a.ndim == b.ndim == 2:
            return torch.mm(a, b, out=out)
        return torch.matmul(a, b, out=out)
    return xp.matmul(a, b)


#: A symmetric product on a CPU is formed by its upper block triangle in panels of at least this many rows and this
#: many entries of its left operand (rows x inner dimension), by bytes per entry: thinner panels lose more BLAS speed
#: than the skipped blocks save (``benchmarks/symmetric_product.py``: in bfloat16 a 256 x 256 ``A A`` in two panels
#: takes 1.35x the plain product, a 512 x 512 one 0.89x, a 512 x 2048 ``X X^T`` in four 0.75x)
SYMMETRIC_PANEL = {2: (128, 2**17), 4: (64, 2**14), 8: (64, 2**14)}
#: At most this many panels (``(k + 1) / 2k`` of the work: more gain little and call the BLAS more often)
SYMMETRIC_PANELS = 8
#: A stack is formed matrix by matrix by panels only if each matrix takes at least this many (interleaved, bfloat16,
#: one thread: four 256 x 1024 ``X X^T`` in two panels each took 1.2x the batched product, four 512 x 2048 in four
#: 0.85x; sixteen 512 x 512 in two 1.0x)
SYMMETRIC_STACK_PANELS = 4


def _panels(a: Any) -> list[int] | None:
    """The row cuts of the upper-block-triangle product of a torch CPU left operand ``a`` (``m x inner``, or a stack
    of such: each matrix's), or ``None`` for the plain product (fewer than two panels of :data:`SYMMETRIC_PANEL`'s
    size, an accelerator -- not measured there --, or code traced by ``torch.compile``)."""
    least = SYMMETRIC_PANEL.get(a.element_size())
    if least is None or a.device.type != "cpu":
        return None
    m, inner = a.shape[-2:]
    k = min(SYMMETRIC_PANELS, m // least[0], m * inner // least[1])
    if k < 2 or _traced():
        return None
    return [m * i // k for i in range(k + 1)]


def _upper_triangle(first: Any, second: Any, out: Any, cuts: list[int], addend: Any = None, c: float = 0.0,
                    alpha: float = 1.0) -> Any:
    """The symmetric ``c * addend + alpha * first @ second`` by its upper block triangle (row panels ``cuts``): the
    panel ``[lo, hi)`` against the columns ``[lo, m)``, then each block below the diagonal as the transpose of its
    mirror image."""
    import torch

    m = first.shape[0]
    if out is None:
        out = torch.empty((m, m), dtype=first.dtype, device=first.device)
    for lo, hi in zip(cuts, cuts[1:]):
        if addend is None:
            torch.mm(first[lo:hi], second[:, lo:], out=out[lo:hi, lo:])
        else:
            torch.addmm(addend[lo:hi, lo:], first[lo:hi], second[:, lo:], beta=c, alpha=alpha, out=out[lo:hi, lo:])
    for lo, hi in zip(cuts[1:], cuts[2:]):
        out[lo:hi, :lo].copy_(out[:lo, lo:hi].mT)
    return out


def symmetrized(xp: Any, r: Any, out: Any = None) -> Any:
    """``(R + R^T) / 2`` (``out``: a torch buffer that is not ``R``, written as ``lerp(R, R^T, 1/2)``).

    On a CPU, for a contiguous ``R``, ``R^T`` is first copied into ``out`` matrix by matrix, then the lerp reads both
    contiguously, in place on ``out``: torch copies a transposed 2-D matrix in cache-sized blocks but a transposed
    stack element by element, and a lerp reading one operand transposed is as slow (a stack of four 256 x 256
    bfloat16 matrices: 153 against 366 us). The same values bit for bit."""
    if out is not None and _is_torch(xp):
        import torch

        if r.device.type == "cpu" and r.is_contiguous() and r.ndim >= 2 and out.is_contiguous():
            for o, m in zip(out.view(-1, *out.shape[-2:]), r.view(-1, *r.shape[-2:])):
                o.copy_(m.mT)
            return torch.lerp(r, out, 0.5, out=out)
        return torch.lerp(r, xp.matrix_transpose(r), 0.5, out=out)
    return 0.5 * (r + xp.matrix_transpose(r))


def cast(xp: Any, a: Any, dtype: Any, out: Any = None) -> Any:
    """``a`` in ``dtype`` (``out``: a torch buffer of ``a``'s shape in ``dtype`` that receives it)."""
    if out is not None and _is_torch(xp):
        return out.copy_(a)
    return xp.astype(a, dtype)


def add_diagonal(xp: Any, a: Any, c: Any) -> Any:
    """``a + c I`` over the trailing two axes; ``c`` a number or one per matrix (shape ``(..., 1, 1)``). torch: in
    place on ``a``, which the caller owns."""
    if _is_torch(xp):
        a.diagonal(dim1=-2, dim2=-1).add_(c[..., 0] if getattr(c, "ndim", 0) >= 2 else c)
        return a
    return a + c * xp.eye(a.shape[-1], dtype=a.dtype, device=_device(a))


def scaled(xp: Any, a: Any, factor: Any) -> Any:
    """``factor a`` (``factor`` a number or one per matrix, shape ``(..., 1, 1)``); torch: in place on ``a``, which
    the caller owns."""
    if _is_torch(xp):
        return a.mul_(factor)
    return a * factor


def combine(xp: Any, a: Any, alpha: Any, b: Any, beta: Any) -> Any:
    """``alpha a + beta b`` with per-matrix factors (shape ``(..., 1, 1)``); torch: two passes, in place on ``b``,
    which the caller owns."""
    if _is_torch(xp):
        return b.mul_(beta).addcmul_(a, alpha)
    return a * alpha + b * beta


def _device(a: Any) -> Any:
    from lmo.backend import device

    return device(a)


def power_of_two_below(xp: Any, peak: Any, top: float = 2.0**127) -> Any:
    """``2^floor(log2 peak)`` per entry, kept within ``[2^-126, top]`` (a zero or subnormal ``peak`` gives
    ``2^-126``): a normal power of two, which scales exactly. float32 torch input: from its exponent bits."""
    if _is_torch(xp) and peak.dtype == xp.float32:
        import torch

        power = (peak.view(torch.int32) & 0x7F800000).view(torch.float32)  # 0 below normal
        return power.clamp_(min=2.0**-126, max=top)
    inside = xp.minimum(xp.maximum(peak, xp.full_like(peak, 2.0**-126)), xp.full_like(peak, top))
    return 2.0 ** xp.floor(xp.log2(inside))


def frobenius_normalized(xp: Any, x: Any, work: Any, ws: Workspace | None = None, *, unit: bool = True) -> Any | None:
    """``x / ||x||_F`` (0 for a zero matrix, per matrix of a batch) in the dtype ``work``, for a float32 torch
    ``x``; ``None`` for anything else (the caller takes the generic path).

    In ``x``'s own memory layout (a transposed view stays one, as torch.optim.Muon keeps it): the largest magnitude
    ``p`` (two read-only reductions), one multiplication by the power of two ``2^-k`` that takes ``p`` into
    ``[1/2, 1)``, writing the work dtype, the norm of that copy (no square overflows, and the largest entry is at
    least 1/2, so the sum does not underflow), and one division in place. A power of two is exact: the result is
    torch.optim.Muon's prelude ``X = G.bfloat16(); X / X.norm()`` bit for bit (two roundings to the work dtype),
    wherever that prelude's own float32 sum of squares neither overflows nor underflows (beyond ~1e19, below
    ~1e-19), and every scale from subnormal (``p < 2^-126`` is multiplied by ``2^125``) to float32's largest number
    gives the start of a unit-scale input; a zero matrix stays zero. A float64 sum of squares would be exact but
    costs 3x the whole prelude on a CPU.
    ``ws``: the result is written into its buffer ``"x0"``, and on a CPU an ``x`` it holds (scratch) is scaled in
    place (in float32: torch's CPU bfloat16 arithmetic is 2.5-3.5x slower than its float32 arithmetic, and a cast
    first with the scaling and the largest magnitude taken on it made the start 1.6x slower).
    ``unit=False``: ``x * 2^-k`` only (the last two passes skipped: for the scalings that bound the spectral norm
    from the Gram matrix, which are invariant to the start's scale).
    """
    if not _is_torch(xp) or x.dtype != xp.float32:
        return None
    import torch

    flip = not x.is_contiguous() and x.mT.is_contiguous()  # a transposed view: work on its storage's layout
    if flip:
        x = x.mT
    high = torch.amax(x, dim=(-2, -1), keepdim=True)
    low = torch.amin(x, dim=(-2, -1), keepdim=True)
    # 2^-k with the largest magnitude p in [1/2, 1) (2^k within [2^-126, 2^125]: a subnormal p is multiplied by
    # 2^125, the factor itself stays normal)
    scale = power_of_two_below(xp, torch.maximum(high, low.neg_()), top=2.0**124).mul_(2).reciprocal_()
    out = buffer(xp, ws, "x0", x.shape, work, x)
    if out is None:
        out = torch.empty(x.shape, dtype=work, device=x.device)
    if out.dtype != x.dtype and x.device.type == "cpu" and ws is not None and ws.holds(x):
        # torch's CPU kernels multiply into a float32 temporary before they cast (a fresh memory mapping per call for
        # a large matrix, whose page faults cost more than the product; CUDA casts inside the kernel): scratch input
        # is scaled in place, then cast
        out.copy_(x.mul_(scale))
    else:
        torch.mul(x, scale, out=out)
    if not unit:
        return out.mT if flip else out
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
