"""(e) Memory of the optimizer: its state, and the peak extra memory of one step, vs torch.optim.Muon and AdamW.

On the GPT-shaped parameter set of ``muon_step.py`` (the hidden matrices of a 4-layer transformer of width d):

- state: the bytes of every tensor in ``optimizer.state`` after a step (Muon: one momentum buffer per matrix,
  AdamW: two moments);
- kept: the memory the optimizer keeps between steps besides its state (lmo: ``kept_nbytes()``, the stacked
  estimates and the oracle iteration's workspace, allocated on the first step so that no later step maps fresh
  memory; torch.optim keeps none);
- step peak: the growth of the process's peak resident memory during one step (Linux: ``VmHWM`` after resetting it
  through ``/proc/self/clear_refs``), i.e. the temporaries of the step; ``-`` where that is unavailable. With glibc
  the mmap threshold is pinned to 128 KiB first (``mallopt(M_MMAP_THRESHOLD)``, as ``MALLOC_MMAP_THRESHOLD_``
  does): every tensor of that size is mapped at allocation and unmapped when freed, so the high-water mark counts
  the step's live temporaries rather than whatever freed memory the heap happened to keep and reuse (without it
  the number depends on the heap's history and varied by 2x between runs).

Usage: ``python benchmarks/optimizer_memory.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys

import torch

import lmo.optimizers as lo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parser, report, setup  # noqa: E402
from muon_step import gpt_gradients  # noqa: E402


def _status(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _pin_mmap_threshold() -> bool:
    """glibc: serve allocations of 128 KiB and more by mmap, returned to the system when freed (a fixed threshold
    also turns off glibc's dynamic raising of it); False where that is unavailable."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    pinned = _pin_mmap_threshold()
    widths = (64,) if args.quick else (256, 768)
    makers = {
        "torch.optim.Muon": lambda ps: torch.optim.Muon(ps, lr=0.02),
        "lmo Muon": lambda ps: lo.Muon(ps, lr=0.02),
        'lmo Muon, method="auto"': lambda ps: lo.Muon(ps, lr=0.02, method="auto"),
        "torch.optim.AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3),
    }
    rows = []
    for d in widths:
        triples = gpt_gradients(d, layers=2 if args.quick else 4)
        param_bytes = sum(w.numel() * w.element_size() for _, w, _ in triples)
        for name, make in makers.items():
            params = [torch.nn.Parameter(w.clone()) for _, w, _ in triples]
            for p, (_, _, g) in zip(params, triples):
                p.grad = g.clone()
            opt = make(params)
            opt.step()  # state allocated; the next step is measured
            gc.collect()
            peak = None
            if _reset_peak():
                before = _status("VmRSS")
                opt.step()
                after = _status("VmHWM")
                peak = (after - before) if before is not None and after is not None else None
            kept = opt.kept_nbytes() if hasattr(opt, "kept_nbytes") else 0
            rows.append([d, name, round(param_bytes / 2**20, 2), round(state_bytes(opt) / 2**20, 2),
                         round(state_bytes(opt) / param_bytes, 2), round(kept / 2**20, 1),
                         round(peak / 2**20, 1) if peak is not None else "-"])
            del opt, params
            gc.collect()
    report(args, "optimizer_memory", ["d", "optimizer", "params MiB", "state MiB", "state / params",
                                      "kept MiB", "step peak extra MiB"], rows,
           {"mmap threshold": "pinned to 128 KiB (glibc mallopt)" if pinned else "allocator default"})


if __name__ == "__main__":
    main()
