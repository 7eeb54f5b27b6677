"""Scenarios that tests/test_distributed.py runs in 2 and 3 CPU processes (gloo); not part of the library.

Each scenario runs on every rank, computes the single-process reference in the same process (the same model, the
same seed, the whole batch, no process group) and asserts that the distributed run matches it. ``run`` records
``"ok"`` or the traceback of each scenario in ``<out>/<rank>.json``; the test reads them back.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
from torch import nn

import lmo.optimizers as lo
from lmo.optimizers.distributed import DTensor

BATCH = 12  # divisible by 2 and 3: every rank's mean loss has the same weight, so the averaged gradient is the batch's
STEPS = 4
ATOL = 2e-5


class Net(nn.Module):
    """Mixed shapes: 4 linear maps (one tall, one wide), a batch of 2 square matrices, an embedding-like table,
    biases, and an output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.inp = nn.Linear(6, 8)
        self.h1 = nn.Linear(8, 8)
        self.h2 = nn.Linear(8, 8, bias=False)
        self.h3 = nn.Linear(8, 12)
        self.mix = nn.Parameter(torch.randn(2, 12, 12) / 4)
        self.lm_head = nn.Linear(12, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).mean(1)
        x = torch.tanh(self.inp(x))
        x = torch.tanh(self.h1(x)) + self.h2(x)
        x = torch.tanh(self.h3(x))
        x = x @ self.mix[0] + torch.tanh(x @ self.mix[1])
        return self.lm_head(x)


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, 10, (BATCH, 3), generator=g), torch.randint(0, 5, (BATCH,), generator=g)


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _train(model: nn.Module, optimizers: list, steps: range, rank: int, world: int) -> None:
    for t in steps:
        tokens, labels = _data(t)
        if world > 1:
            tokens, labels = tokens[rank::world], labels[rank::world]
        loss = nn.functional.cross_entropy(model(tokens), labels)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()


def _full(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if isinstance(p, DTensor) else p


def _assert_same(model: nn.Module, reference: nn.Module, what: str) -> None:
    ref = dict(reference.named_parameters())
    moved = 0.0
    for name, p in model.named_parameters():
        name = name.replace("module.", "")
        x, y = _full(p.detach()), ref[name].detach()
        err = float((x - y).abs().max())
        assert err <= ATOL, f"{what}: parameter {name} differs from the single-process run by {err:.3g}"
        moved = max(moved, float((y - _net().get_parameter(name).detach()).abs().max()))
    assert moved > 1e-3, f"{what}: the parameters did not move ({moved}); the comparison would prove nothing"


def _muon_adamw(model: nn.Module, **kw):
    return list(lo.muon_with_adamw(model, lr=0.05, weight_decay=0.1, adamw_lr=1e-2, output=["lm_head"], **kw))


def _reference(make) -> nn.Module:
    model = _net()
    _train(model, make(model), range(STEPS), 0, 1)
    return model


def _sum(value: int) -> int:
    t = torch.tensor([value])
    dist.all_reduce(t)
    return int(t.item())


def _fsdp(model: nn.Module, mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for m in (model.embed, model.inp, model.h1, model.h2, model.h3, model.lm_head):
        fully_shard(m, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _mesh(world: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world,))


# ---------------------------------------------------------------------------------------------------------------
def ddp_muon(rank: int, world: int, out: str) -> None:
    """DDP + Muon on 6 matrices of 5 shapes (3D included) with process_group; biases, embedding, head to AdamW."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = _net()
    ddp = DDP(model)
    opts = _muon_adamw(model, process_group=dist.group.WORLD)
    _train(ddp, opts, range(STEPS), rank, world)
    _assert_same(model, _reference(_muon_adamw), "DDP Muon")
    record = opts[0].distribution.last
    assert set(record.paths) == {"owner"}, record
    assert record.computed >= 1, f"rank {rank} orthogonalised nothing: {record}"
    assert _sum(record.computed) == 6, f"the ranks evaluated {_sum(record.computed)} matrices, not 6 once each"


def ddp_sharp_and_scion(rank: int, world: int, out: str) -> None:
    """DDP with the sharp rule (spectral descent: duals travel with directions) and Scion's mixed norms."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    def sharp(model, **kw):
        return [lo.LMOOptimizer(model.parameters(), lo.spectral_descent(lr=0.02, beta=0.5)
                                .replace(geometry=_sharp_geometry), **kw)]

    def scion(model, **kw):
        recipe = lo.ScionRecipe(radius=3.0, output_radius=20.0, bias_radius=1.0, embedding="embed")
        return [lo.LMOOptimizer(model.named_parameters(), lo.scion(lr=0.05, beta=0.9, geometry=recipe), **kw)]

    for make in (sharp, scion):
        model = _net()
        ddp = DDP(model)
        opts = make(model, process_group=dist.group.WORLD)
        _train(ddp, opts, range(STEPS), rank, world)
        _assert_same(model, _reference(make), f"DDP {make.__name__}")


def _sharp_geometry(name: str, shape: tuple) -> lo.ParamGeometry:
    if len(shape) >= 2:
        return lo.ParamGeometry(lmo_norm("spectral", method="svd"), 1.0)
    return lo.ParamGeometry(lmo_norm("l2"), 1.0)


def lmo_norm(name: str, **kw):
    import lmo

    return lmo.get_norm(name, **kw)


def fsdp_muon(rank: int, world: int, out: str) -> None:
    """FSDP2 (uneven shards, an empty shard at world 3) + Muon with the mesh; AdamW on the DTensor rest."""
    mesh = _mesh(world)
    model = _fsdp(_net(), mesh)
    opts = _muon_adamw(model, process_group=mesh)
    _train(model, opts, range(STEPS), rank, world)
    _assert_same(model, _reference(_muon_adamw), "FSDP2 Muon")
    muon_opt = opts[0]
    names = [n for g in muon_opt.param_groups for n in g["param_names"]]
    paths = dict(zip(names, muon_opt.distribution.last.paths))
    assert paths["mix"] == "local", paths  # sharded along its batch axis: no communication
    assert {paths[n] for n in ("inp.weight", "h1.weight", "h2.weight", "h3.weight")} == {"gather"}, paths
    for group in muon_opt.param_groups:
        for p in group["params"]:
            m = muon_opt.state[p]["momentum_buffer"]
            assert isinstance(m, DTensor) and m.placements == p.placements, "momentum must stay sharded like p"
            assert m.to_local().shape == p.to_local().shape


def fsdp_scion_and_sharp(rank: int, world: int, out: str) -> None:
    """FSDP2 + Scion's recipe (embedding and head evaluated on their shards, hidden layers gathered) and the sharp
    rule (duals scattered back with the directions)."""
    mesh = _mesh(world)

    def scion(model, **kw):
        recipe = lo.ScionRecipe(radius=3.0, output_radius=20.0, bias_radius=1.0, embedding="embed")
        return [lo.LMOOptimizer(model.named_parameters(), lo.scion(lr=0.05, beta=0.9, geometry=recipe), **kw)]

    def sharp(model, **kw):
        return [lo.LMOOptimizer(model.parameters(), lo.spectral_descent(lr=0.02, beta=0.5)
                                .replace(geometry=_sharp_geometry), **kw)]

    for make in (scion, sharp):
        model = _fsdp(_net(), mesh)
        opts = make(model, process_group=mesh)
        _train(model, opts, range(STEPS), rank, world)
        _assert_same(model, _reference(make), f"FSDP2 {make.__name__}")
        if make is scion:
            names = [n for g in opts[0].param_groups for n in g["param_names"]]
            paths = dict(zip(names, opts[0].distribution.last.paths))
            assert paths["embed.weight"] == "local" and paths["lm_head.weight"] == "local", paths
            assert paths["h1.weight"] == "gather", paths


def fsdp_checkpoint(rank: int, world: int, out: str) -> None:
    """torch.distributed.checkpoint of the sharded optimizer state: 2 steps, save, fresh model and optimizers,
    load, 2 more steps == 4 uninterrupted steps. Also state_dict() / load_state_dict() on the same ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    mesh = _mesh(world)
    path = os.path.join(out, "ckpt")
    model = _fsdp(_net(), mesh)
    opts = _muon_adamw(model, process_group=mesh)
    _train(model, opts, range(2), rank, world)
    model_sd, optim_sd = get_state_dict(model, opts)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    plain = opts[0].state_dict()  # the local (DTensor) state, the torch.optim way

    model2 = _fsdp(_net(), mesh)
    opts2 = _muon_adamw(model2, process_group=mesh)
    model_sd, optim_sd = get_state_dict(model2, opts2)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model2, opts2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for p, q in zip(opts[0].param_groups[0]["params"], opts2[0].param_groups[0]["params"]):
        a, b = opts[0].state[p]["momentum_buffer"], opts2[0].state[q]["momentum_buffer"]
        assert isinstance(b, DTensor) and torch.equal(a.to_local(), b.to_local())
    _train(model2, opts2, range(2, STEPS), rank, world)
    _assert_same(model2, _reference(_muon_adamw), "FSDP2 Muon resumed from torch.distributed.checkpoint")

    model3 = _fsdp(_net(), mesh)
    opts3 = _muon_adamw(model3, process_group=mesh)
    model3.load_state_dict(model.state_dict())
    opts3[0].load_state_dict(plain)
    opts3[1].load_state_dict(opts[1].state_dict())
    _train(model3, opts3, range(2, STEPS), rank, world)
    _assert_same(model3, _reference(_muon_adamw), "FSDP2 Muon resumed from state_dict()")


def fsdp_nonfinite(rank: int, world: int, out: str) -> None:
    """A NaN in one rank's shard: every rank skips (nonfinite='skip') or raises (default), never only some."""
    mesh = _mesh(world)
    model = _fsdp(_net(), mesh)
    skip = lo.Muon([model.h1.weight], lr=0.1, nonfinite="skip", process_group=mesh)
    before = model.h1.weight.full_tensor().clone()
    loss = model(_data(0)[0]).sum()
    loss.backward()
    if rank == world - 1:
        model.h1.weight.grad.to_local()[0, 0] = float("nan")
    skip.step()
    assert torch.equal(model.h1.weight.full_tensor(), before), "a rank stepped although another saw a NaN"
    strict = lo.Muon([model.h1.weight], lr=0.1, process_group=mesh)
    try:
        strict.step()
    except lo.NonFiniteGradientError as err:
        assert "h1" in str(err) or "0.0" in str(err)
    else:
        raise AssertionError(f"rank {rank} did not raise on a NaN that rank {world - 1} holds")


def dtensor_layouts(rank: int, world: int, out: str) -> None:
    """DTensors beyond FSDP2's dim-0 sharding: Shard(1) (columns, gathered along dim 1), Replicate (work dealt out
    over the mesh), and a 2-D mesh (Replicate, Shard(0)) (every rank evaluates the whole matrix); with a float and
    with a tensor lr, under a schedule."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh1 = _mesh(world)
    mesh2 = init_device_mesh("cpu", (1, world), mesh_dim_names=("rep", "shard"))
    layouts = [(mesh1, [Shard(1)]), (mesh1, [Shard(1)]), (mesh1, [Replicate()]), (mesh1, [Replicate()]),
               (mesh2, [Replicate(), Shard(0)])]
    torch.manual_seed(1)
    shapes = [(6, 7), (6, 7), (5, 4), (5, 4), (7, 5)]
    init = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(STEPS)]
    for lr in (0.1, torch.tensor(0.1)):  # a tensor lr under a schedule too: its factors meet DTensors of two meshes
        ref = [nn.Parameter(x.clone()) for x in init]
        ref_opt = lo.Muon(ref, lr=0.1, weight_decay=0.1)
        params = [nn.Parameter(distribute_tensor(x.clone(), m, p)) for x, (m, p) in zip(init, layouts)]
        opt = lo.Muon(params, lr=lr, weight_decay=0.1, process_group=mesh1)
        schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t)) for o in (ref_opt, opt)]
        for t in range(STEPS):
            for p, q, g, (m, pl) in zip(ref, params, grads[t], layouts):
                p.grad = g.clone()
                q.grad = distribute_tensor(g.clone(), m, pl)
            ref_opt.step()
            opt.step()
            for s in schedules:
                s.step()
        assert opt.distribution.last.paths == ("gather", "gather", "owner", "owner", "full"), opt.distribution.last
        for i, (p, q) in enumerate(zip(ref, params)):
            assert q.placements == tuple(layouts[i][1])
            err = float((q.detach().full_tensor() - p.detach()).abs().max())
            assert err <= ATOL, f"DTensor layout {layouts[i][1]}, lr {lr!r}: differs from one process by {err:.3g}"


def _dp_muon(model: nn.Module, **kw):
    """DP-Muon on the matrices; the vectors are frozen (Muon takes matrices only, and a private optimizer must
    privatise every trainable parameter)."""
    for p in model.parameters():
        p.requires_grad_(p.ndim >= 2)
    kw.setdefault("generator", 7)
    return [lo.DPMuon([(n, p) for n, p in model.named_parameters() if p.ndim >= 2], lr=0.05, weight_decay=0.1,
                      noise_multiplier=0.7, max_grad_norm=0.5, expected_batch_size=BATCH, **kw)]


def _dp_scion(model: nn.Module, **kw):
    """DP-Scion over every parameter (mixed shapes: biases, embedding, a batch of matrices, head)."""
    recipe = lo.ScionRecipe(radius=3.0, output_radius=20.0, bias_radius=1.0)
    driver = lo.dp_scion(0.05, beta=0.9, geometry=recipe, noise_multiplier=0.7, max_grad_norm=[0.5] * 11,
                         expected_batch_size=BATCH, generator=kw.pop("generator", 7))
    return [lo.DPOptimizer(model.named_parameters(), driver, **kw)]


def _dp_batch(model: nn.Module, rank: int, world: int, step: int) -> None:
    """``p.grad_sample`` of this rank's examples of the batch of ``step``. The batch is split unevenly, and at world
    3 the last rank gets no example (as Poisson sampling can give it)."""
    from lmo.privacy import per_sample_grads

    bounds = {1: (0, BATCH), 2: (0, 7, BATCH), 3: (0, 7, BATCH, BATCH)}[world]
    tokens, labels = _data(step)
    tokens, labels = tokens[bounds[rank] : bounds[rank + 1]], labels[bounds[rank] : bounds[rank + 1]]
    if len(labels):
        per_sample_grads(model, nn.functional.cross_entropy, tokens, labels)
    else:
        for p in model.parameters():
            p.grad_sample = torch.zeros((0, *p.shape))


def _dp_train(model: nn.Module, optimizers: list, rank: int, world: int) -> None:
    for t in range(STEPS):
        _dp_batch(model, rank, world, t)
        for opt in optimizers:
            opt.step()
            opt.zero_grad()


def ddp_dp_muon(rank: int, world: int, out: str) -> None:
    """DP-Muon and DP-Scion with process_group: each rank clips its own examples, the clipped sums are added over
    the ranks and the noise is drawn once (by rank 0, whose generator alone is used): the single-process run with
    the same generator on the whole batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    for make in (_dp_muon, _dp_scion):
        reference = _net()
        _dp_train(reference, make(reference), 0, 1)
        model = _net()
        opts = make(model, process_group=dist.group.WORLD, generator=7 if rank == 0 else 1000 + rank)
        DDP(model)  # broadcasts rank 0's initial parameters, as a DP-with-DDP script would
        _dp_train(model, opts, rank, world)
        _assert_same(model, reference, f"DDP {make.__name__}")
        assert opts[0].steps == STEPS


def ddp_dp_refusal(rank: int, world: int, out: str) -> None:
    """A NaN or a missing per-example gradient on one rank: every rank raises, none waits or steps."""
    model = _net()
    opt = _dp_muon(model, process_group=dist.group.WORLD)[0]
    before = [p.detach().clone() for p in model.parameters()]
    for fault in ("nan", "missing"):
        for p in model.parameters():
            p.grad_sample = torch.zeros((2, *p.shape))
        if rank == world - 1:
            if fault == "nan":
                model.h1.weight.grad_sample[1, 0, 0] = float("nan")
            else:
                model.h2.weight.grad_sample = None
        expected = lo.NonFiniteGradientError if fault == "nan" else ValueError
        try:
            opt.step()
        except expected as err:
            mine = "h1.weight" if fault == "nan" else "h2.weight"
            assert (mine in str(err)) == (rank == world - 1), f"rank {rank}: {err}"
        else:
            raise AssertionError(f"rank {rank} stepped although rank {world - 1} had a {fault} per-example gradient")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)), "a refused step changed parameters"
    assert opt.steps == 0 and not opt.state


def fsdp_dp_muon(rank: int, world: int, out: str) -> None:
    """DP-Muon over FSDP2 (DTensor) parameters: grad_sample holds this rank's per-example gradients of the whole
    parameters (plain tensors); the private gradient is sharded like each parameter, then the distributed Muon step."""
    mesh = _mesh(world)
    reference = _net()
    _dp_train(reference, _dp_muon(reference), 0, 1)
    model = _fsdp(_net(), mesh)
    opts = _dp_muon(model)  # no process_group: the DTensors' mesh is the data-parallel group
    whole = _net()  # a plain replica that computes the per-example gradients of this rank's examples
    for t in range(STEPS):
        with torch.no_grad():
            for q, p in zip(whole.parameters(), model.parameters()):
                q.copy_(p.full_tensor())
        _dp_batch(whole, rank, world, t)
        for q, p in zip(whole.parameters(), model.parameters()):
            p.grad_sample = q.grad_sample
        opts[0].step()
        opts[0].zero_grad()
    _assert_same(model, reference, "FSDP2 DP-Muon")
    for p in opts[0].param_groups[0]["params"]:
        m = opts[0].state[p]["momentum_buffer"]
        assert isinstance(m, DTensor) and m.placements == p.placements, "momentum must stay sharded like p"
    assert "gather" in opts[0].distribution.last.paths, opts[0].distribution.last


SCENARIOS = {f.__name__: f for f in (ddp_muon, ddp_sharp_and_scion, fsdp_muon, fsdp_scion_and_sharp, fsdp_checkpoint,
                                     fsdp_nonfinite, dtensor_layouts, ddp_dp_muon, ddp_dp_refusal, fsdp_dp_muon)}


def run(rank: int, world: int, init: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    results = {}
    for name, scenario in SCENARIOS.items():
        try:
            scenario(rank, world, out)
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
            print(f"[rank {rank}] {name} failed:\n{results[name]}", file=sys.stderr)
        dist.barrier()
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump(results, f)
    # Free the models (FSDP2 state holds reference cycles) while the interpreter and the process groups are alive,
    # then leave without interpreter finalization: gloo's worker threads can still hold tensors there, and
    # destroying them then aborts the process (SIGABRT, "terminate called without an active exception"; an
    # upstream teardown problem, pytorch/pytorch PR 179291). The results are on disk by now.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
