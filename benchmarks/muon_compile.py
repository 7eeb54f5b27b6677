"""(f) ``torch.compile(optimizer.step)`` with a tensor learning rate under an LR schedule: lmo.optimizers.Muon vs
torch.optim.Muon -- warm-up time, recompilations, steady step time, and agreement with the eager step.

The parameter set is the hidden matrices of a GPT-style stack of width d (per layer four ``d x d``, one ``4d x d``,
one ``d x 4d``; random gradients, a fresh set per step, the same for every configuration). Each configuration gets a
fresh ``torch._dynamo`` state and inductor's caches are disabled (``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``), so the
warm-up is a cold compile. Warm-up: the wall time of the first ``--warmup`` compiled steps (compilation included),
one configuration at a time. ``graphs`` counts the distinct graphs dynamo compiled, ``frames`` the frames it
compiled (a recompilation is a frame compiled again, with a graph or without one: a frame that breaks before any
tensor work has none); ``recompiles`` how many frames were compiled after the warm-up (the target is 0).
``--schedule``: ``lambda`` (``LambdaLR``: the tensor lr moves) or ``onecycle`` (``OneCycleLR`` with torch's
default ``cycle_momentum=True``: the momentum moves too, a new Python float in the group at every step).
``vs eager``: the largest relative difference between the compiled and the eager optimizer's parameters after the
same steps.

Steady: both configurations compiled side by side in one dynamo state, then their steps (each with its
``schedule.step()``) timed interleaved in a new random order every repeat (``_common.interleaved``, the process's CPU
time by default), the median per configuration: a load that changes during the run moves both alike (timed one
after the other, the same code measured 1.02 and 1.20x of torch's on this machine within an hour). ``eager ms``: the
eager steps, timed in the same interleaved rounds. The steady steps reuse the warm-up's last gradients (the compiled
code does not depend on their values).

``page faults / step``: the process's minor page faults per steady step. A compiled graph allocates its temporaries
at every call (inductor plans them; there are no kept buffers under compile). glibc's malloc serves a block above
its mmap threshold from a fresh mapping and returns the free top of its heap to the system beyond its trim
threshold; both start low (128 KiB) and rise with the largest mapped block freed so far, up to 32 MiB (the trim
threshold to twice that). In this benchmark's process nothing larger than the step's own 4 MiB temporaries was ever
freed, so a graph whose temporaries add up to more than 8 MiB has them trimmed and faults them in again at every
step. A training process has freed larger blocks (activations and their gradients: ``32 x 256`` tokens of width 256
in float32 are 8 MiB) and keeps them: ``--warm-allocator`` frees one 28 MiB block before anything else, as such a
process has. ``--memory-planning`` compiles both configurations with inductor's ``memory_planning`` option (one pool
for a graph's temporaries), which keeps them as well.

Usage: ``python benchmarks/muon_compile.py [--quick] [--json PATH] [--threads N] [--widths 64,256]
[--schedule lambda|onecycle] [--memory-planning] [--warm-allocator]``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch  # noqa: E402

import lmo.optimizers as lo  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved, parser, report, setup  # noqa: E402


def shapes(d: int, layers: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for _ in range(layers):
        out += [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)]
    return out


OPTIONS: dict[str, object] = {}  # inductor options of every torch.compile call (--memory-planning)
SCHEDULES = {
    "lambda": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + 0.1 * t)),
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=1000),
}
SCHEDULE = ["lambda"]  # --schedule


def optimizer(make, sizes) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer, Any]:
    """``(params, optimizer, schedule)``: fresh parameters of ``sizes`` (the same for every configuration), ``make``'s
    optimizer on them and its schedule (``--schedule``)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.02 * torch.randn(s, generator=gen)) for s in sizes]
    opt = make(params)
    return params, opt, SCHEDULES[SCHEDULE[0]](opt)


def run(make, sizes, grads, warmup: int, compiled: bool) -> tuple[float, int, int, int, list[torch.Tensor]]:
    """``(warm-up s, graphs, frames, recompiles, params)`` of ``len(grads)`` steps of ``make``'s optimizer, timed one
    at a time on the wall clock."""
    import torch._dynamo as dynamo

    params, opt, schedule = optimizer(make, sizes)
    dynamo.reset()
    dynamo.utils.counters.clear()
    step = torch.compile(opt.step, options=OPTIONS) if compiled else opt.step
    times = []
    frames_after_warmup = 0
    for t, gs in enumerate(grads):
        for p, g in zip(params, gs):
            p.grad = g
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        schedule.step()
        if t + 1 == warmup:
            frames_after_warmup = dynamo.utils.counters["frames"]["total"]
    frames = dynamo.utils.counters["frames"]["total"]
    graphs = dynamo.utils.counters["stats"]["unique_graphs"]
    return sum(times[:warmup]), graphs, frames, frames - frames_after_warmup, params


def steady_times(configs: dict, sizes: list[tuple[int, int]], grads: list[list[torch.Tensor]], warmup: int,
                 repeats: int, faults: dict[str, float]) -> dict[str, float]:
    """Median seconds of each configuration's compiled and eager step (keys ``name`` and ``name, eager``), all
    compiled first (one dynamo state), then timed interleaved; ``faults`` receives their minor page faults per
    step."""
    import torch._dynamo as dynamo

    dynamo.reset()
    fns = {}
    for name, make in configs.items():
        for compiled in (True, False):
            params, opt, schedule = optimizer(make, sizes)
            step = torch.compile(opt.step, options=OPTIONS) if compiled else opt.step
            for gs in grads[:warmup]:
                for p, g in zip(params, gs):
                    p.grad = g
                step()
                schedule.step()

            def fn(step=step, schedule=schedule) -> None:
                step()
                schedule.step()

            fns[name if compiled else f"{name}, eager"] = fn
    return interleaved(fns, repeats, faults=faults)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--widths", default=None, help="comma-separated widths d (default 64,256; quick: 16)")
    p.add_argument("--warmup", type=int, default=3, help="steps counted as warm-up (default 3)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="lambda",
                   help="the LR schedule: lambda (LambdaLR) or onecycle (OneCycleLR, cycling the momentum too)")
    p.add_argument("--memory-planning", action="store_true",
                   help="compile both with inductor's memory_planning option (one pool for a graph's temporaries)")
    p.add_argument("--warm-allocator", action="store_true",
                   help="free one 28 MiB block first, as a training process has (glibc's thresholds then at most)")
    args = p.parse_args()
    SCHEDULE[0] = args.schedule
    if args.memory_planning:
        OPTIONS["memory_planning"] = True
    if args.warm_allocator:
        block = torch.zeros(7 << 20, dtype=torch.float32)  # 28 MiB, from a mapping of its own
        del block
    setup(args)  # the warm-up is timed on the wall clock (compilation), the steady steps on args.clock
    widths = [int(w) for w in args.widths.split(",")] if args.widths else ([16] if args.quick else [64, 256])
    steps = 6 if args.quick else 15
    repeats = args.repeats or (3 if args.quick else 21)
    configs = {
        "torch.optim.Muon": lambda ps: torch.optim.Muon(ps, lr=torch.tensor(0.02)),
        "lmo Muon": lambda ps: lo.Muon(ps, lr=torch.tensor(0.02)),
    }
    rows = []
    for d in widths:
        sizes = shapes(d, 1 if args.quick else 4)
        gen = torch.Generator().manual_seed(1)
        grads = [[torch.randn(s, generator=gen) for s in sizes] for _ in range(args.warmup + steps)]
        results = {}
        for name, make in configs.items():
            warm, graphs, frames, recompiles, compiled = run(make, sizes, grads, args.warmup, True)
            _, _, _, _, eager = run(make, sizes, grads, args.warmup, False)
            diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(compiled, eager))
            results[name] = [warm, None, graphs, frames, recompiles, None, diff, None]
        faults: dict[str, float] = {}
        times = steady_times(configs, sizes, grads, args.warmup, repeats, faults)
        for name, r in results.items():
            r[1], r[5], r[7] = times[name], times[f"{name}, eager"], faults[name]
        base = results["torch.optim.Muon"]
        for name, (warm, steady, graphs, frames, recompiles, eager_steady, diff, fault) in results.items():
            rows.append([d, name, round(warm, 2), warm / base[0], steady * 1e3, steady / base[1], round(fault),
                         graphs, frames, recompiles, eager_steady * 1e3, f"{diff:.1e}"])
    headers = ["d", "optimizer", "warm-up s", "warm-up vs torch", "steady ms", "steady vs torch", "page faults / step",
               "graphs", "frames", "recompiles after warm-up", "eager ms", "vs eager"]
    report(args, "muon_compile", headers, rows,
           {"schedule": args.schedule,
            "targets": "warm-up <= 2x torch.optim.Muon's, steady <= 1x torch's compiled step, 0 recompiles after "
                       "warm-up, results equal to eager"})


if __name__ == "__main__":
    main()
