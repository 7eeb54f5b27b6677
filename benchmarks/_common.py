"""Shared plumbing of the benchmark scripts: the command line, interleaved timing, the machine, tables and JSON.

Timing rule (the machine may be shared): every configuration of a benchmark is timed in the same run, the repeats are
interleaved (round r times configuration 1, 2, ..., then round r + 1), and each configuration's median is reported;
ratios are ratios of those medians. Absolute times are printed for reference only. The clock is ``--clock``: the
process's CPU time (default: what one torch thread computes, which other processes on a shared machine inflate far
less than wall time; with ``--threads 1`` it equals the thread's own work) or ``wall`` (for GPU runs, where the
host waits on the device).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke test, not a measurement")
    p.add_argument("--json", metavar="PATH", help="also write the table and the machine as JSON to PATH")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per configuration (interleaved)")
    p.add_argument("--device", default="cpu", help="torch device of the benchmark's tensors (cpu, cuda; default cpu)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="cpu: process CPU time (default; robust on a shared machine with --threads 1); wall: "
                        "wall-clock time (GPU runs)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared machine multi-threaded BLAS timings are "
                        "dominated by other processes; the ratios are per core)")
    return p


_CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
_clock = time.process_time
_sync: Callable[[], Any] = lambda: None  # noqa: E731  (torch.cuda.synchronize on a GPU: time what the device did)


def setup(args: argparse.Namespace) -> None:
    import torch

    global _clock, _sync
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    device = getattr(args, "device", "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {device}: this torch ({torch.__version__}) sees no CUDA device")
        args.clock = "wall"  # the host's CPU time says nothing of the device's work
        _sync = torch.cuda.synchronize
    _clock = _CLOCK[getattr(args, "clock", "cpu")]


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version, threads used."""
    import torch

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "clock": "wall" if _clock is time.perf_counter else "cpu",
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                faults: dict[str, float] | None = None) -> dict[str, float]:
    """Median seconds of each callable, the repeats interleaved across callables, each repeat in a new order (a
    seeded shuffle), so that every callable follows each other one about equally often: a step that follows
    another one finds the caches holding that one's memory (a fixed or rotated order keeps the same predecessor,
    and at d = 64 in muon_step.py that alone moved a ratio by 0.05). ``faults``: a dict that receives each
    callable's mean count of minor page faults per call (the process's, ``getrusage``; where available): fresh
    memory mappings faulted in, which a call that allocates large temporaries pays every time."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    counted: dict[str, int] = {k: 0 for k in fns}
    names = list(fns)
    order = random.Random(0)
    for _ in range(repeats):
        order.shuffle(names)
        for name in names:
            fn = fns[name]
            before = _minor_faults()
            t0 = _clock()
            fn()
            _sync()
            times[name].append(_clock() - t0)
            counted[name] += _minor_faults() - before
    if faults is not None:
        faults.update({k: v / repeats for k, v in counted.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not on this platform
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def report(args: argparse.Namespace, name: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
           notes: dict[str, Any] | None = None) -> None:
    """Print the table (and the machine) and write JSON if asked."""
    info = machine()
    print(f"# {name}  ({info['cpu']}, {info['cores']} cores, {info['threads']} thread(s), torch {info['torch']}, "
          f"{info['clock']} clock, load {info['load_average']}{', quick' if args.quick else ''})")
    print(table(headers, rows))
    for k, v in (notes or {}).items():
        print(f"{k}: {v}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"benchmark": name, "machine": info, "quick": bool(args.quick), "headers": list(headers),
                       "rows": [list(r) for r in rows], "notes": notes or {}}, f, indent=1, default=str)
