"""Communication volume and per-rank work of the distributed Muon step, measured against the model on paper.

    python benchmarks/distributed_scaling.py --worlds 1 2 3 4 --matrices 12 --dim 64 --steps 5

For each world size ``w`` it launches ``w`` CPU processes (gloo) and takes Muon steps on ``N`` matrices of
shape ``(d, d)`` held two ways: replicated (DDP: plain tensors, ``process_group=WORLD``) and sharded (FSDP2:
DTensors ``Shard(0)`` on a 1-D mesh). It reports, per rank, the matrices that rank orthogonalised and the elements
it sent in the optimizer's collectives (both read from ``Distribution.last``, exact), the model's prediction of
both, and the median wall time of a step (noisy on a shared machine; the counts are not).

Model (``N`` matrices of ``m x n`` entries, ``w`` ranks, ``N_r`` of them owned by rank ``r``, LPT balance):
- compute per rank: ``N_r`` oracles, ``N_r <= ceil(N / w)`` for equal costs;
- DDP: one all-gather per shape of the owners' directions, padded to ``max_r N_r``: each rank sends
  ``(w - 1) * max_r N_r * m n`` elements (``~ N m n (w - 1) / w``: flat in ``w``, like all-gathering the update);
- FSDP2: the rows of each matrix go to its owner and come back: each rank sends its ``m n / w`` shard of the
  ``N - N_r`` matrices owned by others, then ``(w - 1) / w`` of each of its ``N_r`` results:
  ``(N - N_r) m n / w + N_r m n (w - 1) / w`` (``~ 2 N m n (w - 1) / w^2``: falls like ``1 / w``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time


def _worker(rank: int, world: int, init: str, out: str, n: int, dim: int, steps: int) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import lmo.optimizers as lo

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    full = [torch.randn(dim, dim) for _ in range(n)]
    grads = [torch.randn(dim, dim) for _ in range(n)]
    rows = []
    for mode in ("ddp", "fsdp2"):
        if mode == "ddp":
            params = [torch.nn.Parameter(x.clone()) for x in full]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            group = dist.group.WORLD
        else:
            params = [torch.nn.Parameter(distribute_tensor(x, mesh, [Shard(0)])) for x in full]
            for p, g in zip(params, grads):
                p.grad = distribute_tensor(g, mesh, [Shard(0)])
            group = mesh
        opt = lo.Muon(params, lr=0.01, process_group=group)
        times = []
        for _ in range(steps):
            dist.barrier()
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        rec = opt.distribution.last
        owned = sum(1 for o in rec.owners if o == rank) if world > 1 else n
        rows.append({"mode": mode, "world": world, "rank": rank, "computed": rec.computed if rec else n,
                     "owned": owned, "sent": rec.sent if rec else 0, "step_ms": 1e3 * statistics.median(times[1:]),
                     "owners": list(rec.owners) if rec else []})
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump(rows, f)
    dist.destroy_process_group()


def predicted(mode: str, world: int, n: int, dim: int, owners: list[int], rank: int) -> tuple[int, int]:
    """``(matrices computed, elements sent)`` by ``rank`` according to the model of the module docstring."""
    if world == 1:
        return n, 0
    counts = [sum(1 for o in owners if o == r) for r in range(world)]
    mine = counts[rank]
    mn = dim * dim
    if mode == "ddp":
        return mine, (world - 1) * max(counts) * mn
    shard = math.ceil(dim / world)  # torch.chunk rows; rows of rank r: chunk size or remainder
    sizes = [max(0, min(shard, dim - r * shard)) for r in range(world)]
    gather = (n - mine) * sizes[rank] * dim
    scatter = mine * (dim - sizes[rank]) * dim
    return mine, gather + scatter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--matrices", type=int, default=12)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    import torch.multiprocessing as mp

    print(f"N = {args.matrices} matrices of {args.dim} x {args.dim}, Muon (Newton-Schulz, 5 steps), gloo on CPU\n")
    print("| mode | w | rank | matrices (model) | matrices (measured) | elements sent (model) | elements sent "
          "(measured) | step ms |")
    print("|---|---|---|---|---|---|---|---|")
    for world in args.worlds:
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_worker, args=(world, os.path.join(tmp, "rdv"), tmp, args.matrices, args.dim, args.steps),
                     nprocs=world, join=True)
            rows = []
            for r in range(world):
                with open(os.path.join(tmp, f"{r}.json")) as f:
                    rows += json.load(f)
        for row in sorted(rows, key=lambda r: (r["mode"], r["rank"])):
            comp, sent = predicted(row["mode"], world, args.matrices, args.dim, row["owners"], row["rank"])
            ok = "" if (comp, sent) == (row["computed"], row["sent"]) else " MISMATCH"
            print(f"| {row['mode']} | {world} | {row['rank']} | {comp} | {row['computed']} | {sent} | "
                  f"{row['sent']}{ok} | {row['step_ms']:.1f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
