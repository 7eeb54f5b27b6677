"""Muon (hidden matrices) + AdamW (the rest) on DDP or FSDP2, or differentially private DP-Scion on several
ranks, launched with torchrun.

One GPU per process with NCCL when CUDA is present, else CPU processes with gloo::

    torchrun --standalone --nproc-per-node 2 examples/distributed_muon.py --mode fsdp2
    torchrun --standalone --nproc-per-node 8 examples/distributed_muon.py --mode ddp --steps 200
    torchrun --standalone --nproc-per-node 2 examples/distributed_muon.py --mode private --vocab 8 --batch 256

    # two nodes, 8 GPUs each: run on every node (HOST = node 0's address)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id job1 \\
        examples/distributed_muon.py --mode fsdp2 --checkpoint /shared/ckpt

The only change from a single-process Muon run is ``process_group=``: the DDP group, or the FSDP2 mesh. Each rank
then orthogonalises about ``1 / world`` of the matrices and the update is the single-process one.
``--mode private``: every rank computes per-example gradients of its own examples; ``DPOptimizer`` clips them there,
adds the clipped sums over the ranks and draws the noise once (on rank 0), then takes DP-Scion's step.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

import lmo.optimizers as lo


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


class TinyLM(nn.Module):
    """Embedding, residual MLP blocks, output layer: next-token prediction on a context of 4 tokens."""

    def __init__(self, vocab: int, dim: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(4 * dim, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.mix(self.embed(tokens).flatten(1))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(x)


def batch(step: int, rank: int, size: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic data with a rule to learn (the next token is a fixed function of the context); a different batch
    on every rank and step."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    tokens = torch.randint(0, vocab, (size, 4), generator=g)
    target = (tokens[:, 0] + tokens[:, 3]) % vocab
    return tokens.to(device), target.to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description="Muon + AdamW with DDP or FSDP2")
    ap.add_argument("--mode", choices=["ddp", "fsdp2", "private"], default="fsdp2")
    ap.add_argument("--noise", type=float, default=0.5, help="noise multiplier of --mode private")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64, help="per rank")
    ap.add_argument("--checkpoint", default=None, help="a directory (shared by all nodes) for the final DCP save")
    args = ap.parse_args()

    # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device.type, (world,))

    torch.manual_seed(0)  # the same initial model on every rank
    model = TinyLM(args.vocab, args.dim, args.layers).to(device)
    if args.mode == "private":
        return train_private(model, args, rank, world, device)
    if args.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
        group = dist.group.WORLD  # DDP's group: replicated parameters, all-reduced gradients
    else:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        forward = fully_shard(model, mesh=mesh)  # parameters become DTensors sharded on dim 0
        group = mesh
    # the one extra argument: who shares the orthogonalisation work
    optimizers = lo.muon_with_adamw(model, lr=0.02, weight_decay=0.01, adamw_lr=3e-3, process_group=group)

    for step in range(args.steps):
        tokens, target = batch(step, rank, args.batch, args.vocab, device)
        loss = nn.functional.cross_entropy(forward(tokens), target)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            mean = loss.detach().clone()
            dist.all_reduce(mean, op=dist.ReduceOp.AVG if device.type == "cuda" else dist.ReduceOp.SUM)
            if device.type != "cuda":
                mean /= world
            if rank == 0:
                print(f"step {step:4d}  loss {mean.item():.4f}", flush=True)

    if args.checkpoint:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(model, optimizers)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=args.checkpoint)
        dist.barrier()
        if rank == 0:
            print(f"saved {args.checkpoint}", flush=True)


def train_private(model: nn.Module, args: argparse.Namespace, rank: int, world: int, device: torch.device) -> None:
    """DP-Scion over every parameter. No DDP wrapper: the gradient that matters is the private one, which the
    optimizer reduces itself (per-example gradients never touch ``p.grad``)."""
    from lmo.privacy import per_sample_grads

    recipe = lo.ScionRecipe(radius=3.0, output_radius=30.0, bias_radius=1.0)
    driver = lo.dp_scion(0.02, beta=0.9, geometry=recipe, noise_multiplier=args.noise, max_grad_norm=1.0,
                         expected_batch_size=args.batch * world,  # global: the whole group's lot
                         generator=1234)  # only rank 0 draws noise
    opt = lo.DPOptimizer(model.named_parameters(), driver, process_group=dist.group.WORLD)
    if rank == 0:
        print(f"noise std per entry of the private gradient: {opt.noise_std:.4g}", flush=True)
    for step in range(args.steps):
        tokens, target = batch(step, rank, args.batch, args.vocab, device)
        losses = per_sample_grads(model, nn.functional.cross_entropy, tokens, target)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            mean = losses.mean()
            dist.all_reduce(mean, op=dist.ReduceOp.SUM)
            if rank == 0:
                print(f"step {step:4d}  loss {(mean / world).item():.4f}", flush=True)


if __name__ == "__main__":
    main()
    # the model, its FSDP2 state and the optimizers are garbage now; free them while the process group is alive
    gc.collect()
    dist.destroy_process_group()
