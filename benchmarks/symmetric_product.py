"""(g) Symmetric products by their upper block triangle vs the plain product, per shape, dtype and panel count.

The polar iteration forms two symmetric products a step, ``A = X X^T`` and ``c A + alpha A A``;
``lmo.geometries._torch.matmul(..., symmetric=True)`` forms a large one on a CPU by its upper block triangle (``k``
row panels, each against the columns from its diagonal on, the blocks below mirrored): ``(k + 1) / 2k`` of the
FLOPs, in ``k`` BLAS calls of thinner shapes plus ``k - 1`` transposed copies. This benchmark measures, interleaved,
the plain product against ``k`` = 2, 3, 4, 8 panels, and marks the panel count that ``SYMMETRIC_PANEL`` and
``SYMMETRIC_PANELS`` choose (``auto``), on ``X X^T`` of ``m x n`` matrices (``n = m`` and ``n = 4m``, the
shapes of a GPT's matrices) and on ``c A + alpha A A``; then on stacks (3-D, as the optimizers batch same-shape
matrices): the batched product against the panels matrix by matrix. ``max |diff|`` is the largest entry difference
from the plain product relative to its largest entry (0: bit for bit).

Usage: ``python benchmarks/symmetric_product.py [--quick] [--json PATH] [--threads N] [--repeats R]``.
"""

from __future__ import annotations

import os
import sys

import torch

from lmo.geometries import _torch as primitives

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved, parser, report, setup  # noqa: E402


def _cuts(m: int, k: int) -> list[int]:
    return [m * i // k for i in range(k + 1)]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    setup(args)
    sizes = [(256, 1)] if args.quick else [(256, 1), (256, 4), (384, 4), (512, 1), (512, 4), (1024, 1), (1024, 4)]
    dtypes = [torch.bfloat16] if args.quick else [torch.bfloat16, torch.float32]
    repeats = args.repeats or (2 if args.quick else 9)
    rows = []
    for dtype in dtypes:
        for m, aspect in sizes:
            x = torch.randn(m, aspect * m, device=args.device).to(dtype)
            a = primitives.matmul(torch, x, x.mT) / (aspect * m)
            for name, first, second, addend in (("X X^T", x, x.mT, None), ("c A + alpha A A", a, a, a)):
                out = torch.empty(m, m, dtype=dtype, device=args.device)

                def plain(first=first, second=second, addend=addend, out=out):
                    if addend is None:
                        return torch.mm(first, second, out=out)
                    return torch.addmm(addend, first, second, beta=1.5, alpha=-0.5, out=out)

                auto = primitives._panels(first)
                chosen_k = len(auto) - 1 if auto else 1
                fns = {"plain": plain}
                for k in sorted({2, 3, 4, 8, chosen_k} - {1}):
                    if m // k >= 32:
                        cuts = _cuts(m, k)
                        fns[f"{k} panels"] = (lambda cuts=cuts, first=first, second=second, addend=addend,
                                              out=out: primitives._upper_triangle(first, second, out, cuts, addend,
                                                                                  1.5, -0.5))
                times = interleaved(fns, repeats)
                reference = plain().float().clone()
                for label, fn in fns.items():
                    diff = (fn().float() - reference).abs().max() / reference.abs().max()
                    chosen = label == ("plain" if chosen_k == 1 else f"{chosen_k} panels")
                    rows.append([str(dtype).removeprefix("torch."), f"{m} x {aspect * m}", name, label,
                                 times[label] * 1e3, times[label] / times["plain"], float(diff),
                                 "auto" if chosen else ""])
    stacks = [(4, 256, 1)] if args.quick else [(16, 256, 1), (4, 256, 4), (16, 512, 1), (4, 512, 4), (4, 1024, 4)]
    for dtype in dtypes:
        for count, m, aspect in stacks:
            x = torch.randn(count, m, aspect * m, device=args.device).to(dtype)
            a = torch.bmm(x, x.mT) / (aspect * m)
            for name, first, second in (("X X^T", x, x.mT), ("A A", a, a)):
                out = torch.empty(count, m, m, dtype=dtype, device=args.device)
                cuts = primitives._panels(first[0])
                fns = {"plain": lambda first=first, second=second, out=out: torch.bmm(first, second, out=out)}
                if cuts is not None:
                    fns[f"{len(cuts) - 1} panels each"] = (
                        lambda first=first, second=second, out=out, cuts=cuts: [
                            primitives._upper_triangle(f, s, o, cuts) for f, s, o in zip(first, second, out)])
                chosen = primitives.matmul(torch, first, second, out=torch.empty_like(out), symmetric=True)
                times = interleaved(fns, repeats)
                reference = torch.bmm(first, second).float()
                for label, fn in fns.items():
                    fn()
                    diff = (out.float() - reference).abs().max() / reference.abs().max()
                    picked = torch.equal(chosen, out) and (label != "plain") == (
                        cuts is not None and len(cuts) > primitives.SYMMETRIC_STACK_PANELS)
                    rows.append([str(dtype).removeprefix("torch."), f"{count} x {m} x {aspect * m}", name, label,
                                 times[label] * 1e3, times[label] / times["plain"], float(diff),
                                 "auto" if picked else ""])
    report(args, "symmetric_product", ["dtype", "X", "product", "form", "ms", "vs plain", "max |diff|", "chosen"],
           rows, {"policy": f"SYMMETRIC_PANEL={primitives.SYMMETRIC_PANEL} (rows, entries by bytes per entry), "
                            f"SYMMETRIC_PANELS={primitives.SYMMETRIC_PANELS}, stacks matrix by matrix from "
                            f"SYMMETRIC_STACK_PANELS={primitives.SYMMETRIC_STACK_PANELS} panels; on a CPU only"})


if __name__ == "__main__":
    main()
