"""The oracle stage of a driver step, split across the ranks of a torch.distributed process group.

Everything but the oracle is element-wise (estimator, weight decay, update), so every rank runs it on what it holds:
the full tensors under DDP, its shards under FSDP2. The oracle is where the work is and where a matrix must be seen
whole. :class:`Distribution` is an executor of a plan's oracle stage (``executor=`` of
:func:`lmo.optimizers.step.run_step`, the other one being :func:`lmo.optimizers.step.evaluate`): it evaluates the
same oracle on the same batches, only splitting the work:

- **replicated** parameters (DDP; a ``Replicate`` DTensor): the matrices whose norm needs the whole matrix are
  dealt out to the ranks, balanced by the oracle's cost (``batch * m * n * min(m, n)`` flops, greedy
  largest-first); each rank evaluates its share, same-shape matrices in one batched call, and the directions are
  all-gathered, one asynchronous collective per shape so that communication overlaps the next shape's compute.
- **sharded** parameters (FSDP2: a DTensor with one ``Shard(dim)`` placement on a 1-D mesh): if the sharded axis
  is a batch axis of the oracle's view, or a core axis the norm declares separable (:attr:`lmo.Norm.
  separable_axes`, rule ``"lmo"``), each rank applies the oracle to its own shard, with no communication.
  Otherwise each matrix gets an owner rank (balanced by cost); the shards are sent to their owners with one
  ``all_to_all_single`` per shape, the owner evaluates the whole matrices (batched) and a second all-to-all sends
  each rank its shard of the directions. All gathers are started before any compute, and each scatter overlaps
  the next shape's compute.
- other layouts (2-D meshes, ``Partial``, several ``Shard`` placements): every rank evaluates the full matrix
  (``full_tensor()``) and keeps its part: correct, not faster.
- cheap oracles (vector norms, entry-wise matrix norms) of replicated parameters run on every rank: sending
  ``m n`` numbers costs more than computing them.

The result is the single-process step: the owner runs the same oracle on the same input (up to the order of the
floating-point additions in the reduction of the gradients, which DDP and FSDP2 perform).
With the ``"sharp"`` rule the dual norm of each gathered matrix travels back with its direction.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from .driver import ParamGeometry, find_nonfinite, first_nonfinite
from .step import Direction, Plan, evaluate, oracle_directions

__all__ = ["Distribution", "StepRecord", "balance", "chunk_sizes"]

if dist.is_available():
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
else:  # a torch build without torch.distributed: one process, no DTensors

    class _Absent:
        pass

    DeviceMesh = DTensor = Replicate = Shard = _Absent  # type: ignore[misc,assignment]
    distribute_tensor = None

LOCAL, OWNER, GATHER, FULL = "local", "owner", "gather", "full"


# ---------------------------------------------------------------------------------------------------------------
# small pure pieces
# ---------------------------------------------------------------------------------------------------------------
def balance(costs: Sequence[float], world: int) -> list[int]:
    """Owner rank of each item: greedy largest-cost-first onto the least-loaded rank (ties: lowest rank, then
    the earlier item). Deterministic, so every rank computes the same assignment; the most loaded rank carries
    at most ``sum / world + max(costs)``."""
    loads = [0.0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        owners[i] = r
        loads[r] += costs[i]
    return owners


def chunk_sizes(n: int, world: int) -> tuple[int, ...]:
    """Sizes of the ``world`` shards of an axis of length ``n`` under ``Shard``: ``torch.chunk``'s layout
    (``ceil(n / world)`` each, the last non-empty shard the remainder, then empty ones)."""
    size = -(-n // world) if n else 0
    return tuple(max(0, min(size, n - r * size)) for r in range(world))


def _view_axis(shape: tuple[int, ...], view: tuple[int, ...] | None, dim: int) -> int | None:
    """The axis of ``view`` that axis ``dim`` of ``shape`` becomes under the reshape, or None if it is merged/split."""
    if view is None:
        return dim
    before, after = math.prod(shape[:dim]), math.prod(shape[dim + 1 :])
    for j, v in enumerate(view):
        if v == shape[dim] and math.prod(view[:j]) == before and math.prod(view[j + 1 :]) == after:
            return j
    return None


def _oracle_cost(geo: ParamGeometry, shape: tuple[int, ...]) -> float:
    view = geo.view or shape
    k = geo.norm.ndim
    core = view[len(view) - k :]
    work = float(math.prod(view))
    return work * min(core[-2:]) if k >= 2 else work


def _needs_whole(geo: ParamGeometry) -> bool:
    """Whether the oracle couples the entries of a matrix (so that splitting it across ranks pays)."""
    return geo.norm.ndim >= 2 and set(geo.norm.separable_axes) != set(range(-geo.norm.ndim, 0))


def _group_of(process_group: Any) -> Any:
    if process_group is None:
        return None
    if isinstance(process_group, DeviceMesh):
        if process_group.ndim != 1:
            raise ValueError(
                f"process_group: a DeviceMesh must be 1-D (the ranks that share the work); got a "
                f"{process_group.ndim}-D mesh. For HSDP pass the shard sub-mesh, e.g. mesh['shard']"
            )
        return process_group.get_group()
    if not dist.is_available():
        raise ValueError("process_group was given, but this torch build has no torch.distributed")
    if isinstance(process_group, dist.ProcessGroup):
        return process_group
    raise ValueError(
        f"process_group must be None, a torch.distributed ProcessGroup or a DeviceMesh; got {process_group!r}"
    )


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """What one rank did in the oracle stage of the last step, per parameter of the step (in order).

    ``paths``: ``"local"`` (evaluated here with no communication), ``"owner"`` (a replicated matrix evaluated by
    its owner and all-gathered), ``"gather"`` (a sharded matrix gathered to its owner and scattered back) or
    ``"full"`` (gathered on every rank); ``owners``: the owner rank of each ``"owner"``/``"gather"`` matrix (-1
    otherwise); ``computed``: how many matrices (batch entries of the oracle view) this rank evaluated;
    ``sent``: elements this rank sent in the stage's collectives.
    """

    paths: tuple[str, ...]
    owners: tuple[int, ...]
    computed: int
    sent: int


# ---------------------------------------------------------------------------------------------------------------
# the distribution
# ---------------------------------------------------------------------------------------------------------------
class Distribution:
    """How an optimizer shares the oracle's work: ``Distribution(process_group)``.

    ``process_group``: ``None`` (one process; DTensor parameters are still recognised, through their own mesh), a
    ``torch.distributed.ProcessGroup`` or a 1-D ``DeviceMesh``: the ranks that hold the same replicated parameters
    and gradients (DDP's group) and share the work on them. DTensor parameters always use their own mesh.
    The torch adapters build one from their ``process_group=`` argument.
    """

    def __init__(self, process_group: Any = None) -> None:
        self.group = _group_of(process_group)
        self.last: StepRecord | None = None

    @property
    def world(self) -> int:
        return 1 if self.group is None else dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return 0 if self.group is None else dist.get_rank(self.group)

    def active(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether a step on ``tensors`` needs this module (more than one rank, or DTensors)."""
        return self.world > 1 or any(isinstance(t, DTensor) for t in tensors)

    def executor(self, params: Sequence[torch.Tensor]) -> Callable[..., dict[int, Direction]] | None:
        """The oracle stage for a step on ``params``: this distribution's (``None``: one process, the plan's own)."""
        return self.evaluate if self.active(params) else None

    def nonfinite(self, names: Sequence[str], grads: Sequence[torch.Tensor]) -> str | None:
        """The first parameter with a non-finite gradient on any rank holding a shard of it (the same answer on
        every rank, so that all of them raise or skip together), or None. One test on the device for all gradients
        (read once) when nothing is sharded."""
        groups: dict[int, Any] = {}
        for g in grads:
            if isinstance(g, DTensor):
                for i in range(g.device_mesh.ndim):
                    pg = g.device_mesh.get_group(i)
                    groups.setdefault(id(pg), pg)
        if not groups:
            return find_nonfinite(names, grads)
        held = [(i, g.to_local() if isinstance(g, DTensor) else g) for i, g in enumerate(grads)]
        held = [(i, t) for i, t in held if t.numel()]
        bad = first_nonfinite([names[i] for i, _ in held], [t for _, t in held])
        device = grads[0].to_local().device if isinstance(grads[0], DTensor) else grads[0].device
        index = torch.tensor([names.index(bad) if bad is not None else len(names)], device=device)
        for pg in groups.values():
            dist.all_reduce(index, op=dist.ReduceOp.MIN, group=pg)
        i = int(index.item())
        return names[i] if i < len(names) else None

    # -- the oracle stage ----------------------------------------------------------------------------------------
    def evaluate(
        self,
        plan: Plan,
        batches: Sequence[int],
        estimates: dict[int, torch.Tensor],
        params: dict[int, torch.Tensor],
        slots: dict[int, dict[str, Any]],
        step: int,
        stacked: dict[int, torch.Tensor] | None = None,
    ) -> dict[int, Direction]:
        """The oracle stage of ``batches`` of ``plan``, shared across the ranks (same signature and values as
        :func:`lmo.optimizers.step.evaluate`; ``stacked`` is not used: the ranks stack their own shares). A
        stateful oracle runs where its state is: on every rank."""
        stateful = [j for j in batches if plan.batches[j].stateful]
        found = evaluate(plan, stateful, estimates, params, slots, step) if stateful else {}
        members = [i for j in batches if not plan.batches[j].stateful for i in plan.batches[j].members]
        if members:
            ds, duals = self._oracle(plan, [plan.entries[i].geometry for i in members],
                                     [estimates[i] for i in members])
            for i, d, dual in zip(members, ds, duals):
                found[i] = Direction(d, 1.0, dual)
        return found

    def _oracle(
        self, plan: Plan, geometries: list[ParamGeometry], estimates: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        rule, batch = plan.driver.rule, plan.driver.batch
        sharp = rule == "sharp"
        n = len(estimates)
        out: list[Any] = [None] * n  # (direction, dual) on what this rank holds
        items = [self._classify(rule, i, g, c) for i, (g, c) in enumerate(zip(geometries, estimates))]
        stats = {"computed": 0, "sent": 0}

        def compute(pairs: list[tuple[ParamGeometry, torch.Tensor]]) -> list[tuple[torch.Tensor, Any]]:
            """The plan's oracle on whole tensors: ``(direction, dual broadcast to the tensor or None)``, the
            direction in the tensor's dtype (what travels between the ranks)."""
            results: list[Any] = [None] * len(pairs)
            todo = [j for j, (_, t) in enumerate(pairs) if t.numel()]
            for j, (_, t) in enumerate(pairs):
                if not t.numel():
                    results[j] = (torch.zeros_like(t), torch.zeros_like(t) if sharp else None)
            if todo:
                found = oracle_directions([pairs[j][0] for j in todo], [pairs[j][1] for j in todo], rule, batch)
                for j, dr in zip(todo, found):
                    t = pairs[j][1]
                    results[j] = (dr.full(t), None if dr.dual is None else torch.broadcast_to(dr.dual, t.shape))
                    view = pairs[j][0].view or tuple(t.shape)
                    stats["computed"] += math.prod(view[: len(view) - pairs[j][0].norm.ndim])
            return results

        # 1. layouts without a plan: every rank evaluates the whole matrix (collective, so first and in order)
        for it in items:
            if it.path == FULL:
                full = it.dt.full_tensor()
                d, dual = compute([(it.geo, full)])[0]
                mesh, placements = it.dt.device_mesh, it.dt.placements
                out[it.index] = tuple(
                    None if x is None else distribute_tensor(x, mesh, placements, src_data_rank=None)
                    for x in (d, dual)
                )

        # 2. owners, balanced by cost within each group of ranks
        by_group: dict[int, list[_Item]] = {}
        for it in items:
            if it.path in (OWNER, GATHER):
                by_group.setdefault(id(it.group), []).append(it)
        for members in by_group.values():
            for it, owner in zip(members, balance([m.cost for m in members], members[0].world)):
                it.owner = owner
        buckets: dict[Any, list[_Item]] = {}
        for it in items:
            if it.path in (OWNER, GATHER):
                core = (it.geo.view or it.shape)[-it.geo.norm.ndim :]
                key = (it.path, id(it.group), it.geo.norm, core, it.local.dtype, it.local.device)
                buckets.setdefault(key, []).append(it)

        # 3. start every gather of shards to their owners
        gathers = {key: self._start_gather(b, stats) for key, b in buckets.items() if b[0].path == GATHER}

        # 4. what needs no communication, while the gathers run
        local = [it for it in items if it.path == LOCAL]
        for it, res in zip(local, compute([(it.local_geo, it.local) for it in local])):
            out[it.index] = res

        # 5. per shape: evaluate this rank's share, send it on asynchronously, go on to the next shape
        pending = []
        k = 2 if sharp else 1
        for key, bucket in buckets.items():
            me = bucket[0].rank
            if bucket[0].path == OWNER:
                mine = [it for it in bucket if it.owner == me]
                results = compute([(it.geo, it.local) for it in mine])
                pending.append(self._start_allgather(bucket, results, k, stats))
            else:
                mine, wholes = self._finish_gather(bucket, *gathers[key])
                results = compute([(it.geo, w) for it, w in zip(mine, wholes)])
                pending.append(self._start_scatter(bucket, results, k, stats))
        for finish in pending:
            for it, res in finish():
                out[it.index] = res

        directions, duals = [], []
        for it, (d, dual) in zip(items, out):
            if it.dt is not None and it.path != FULL:
                d, dual = (None if x is None else it.wrap(x) for x in (d, dual))
            directions.append(d)
            duals.append(dual)
        self.last = StepRecord(
            paths=tuple(it.path for it in items),
            owners=tuple(it.owner for it in items),
            computed=stats["computed"],
            sent=stats["sent"],
        )
        return directions, duals

    def _classify(self, rule: str, index: int, geo: ParamGeometry, c: torch.Tensor) -> _Item:
        if not isinstance(c, DTensor):
            path = OWNER if self.world > 1 and _needs_whole(geo) else LOCAL
            return _Item(index, geo, c, path, group=self.group, world=self.world, rank=self.rank,
                         shape=tuple(c.shape), cost=_oracle_cost(geo, tuple(c.shape)))
        mesh, placements, shape = c.device_mesh, tuple(c.placements), tuple(c.shape)
        local = c.to_local()
        item = _Item(index, geo, local, FULL, dt=c, shape=shape, cost=_oracle_cost(geo, shape))
        if all(isinstance(p, Replicate) for p in placements):
            if mesh.ndim == 1 and mesh.size() > 1 and _needs_whole(geo):
                pg = mesh.get_group()
                item.path, item.group, item.world, item.rank = OWNER, pg, mesh.size(), mesh.get_local_rank()
            else:
                item.path = LOCAL
            return item
        if mesh.ndim != 1 or type(placements[0]) is not Shard:  # (a _StridedShard has another layout)
            return item  # FULL
        dim = placements[0].dim % len(shape)
        world, rank = mesh.size(), mesh.get_local_rank()
        sizes = chunk_sizes(shape[dim], world)
        if tuple(local.shape) != shape[:dim] + (sizes[rank],) + shape[dim + 1 :]:
            return item  # not torch.chunk's layout: FULL
        item.dim, item.sizes, item.world, item.rank, item.group = dim, sizes, world, rank, mesh.get_group()
        local_geo = _local_geometry(geo, shape, dim, sizes[rank], rule)
        if local_geo is not None:
            item.path, item.local_geo = LOCAL, local_geo
        else:
            item.path = GATHER
        return item

    # -- DDP: owners evaluate, everyone gathers ------------------------------------------------------------------
    def _start_allgather(self, bucket: list[_Item], results: list[Any], k: int, stats: dict[str, int]) -> Callable:
        world, group = bucket[0].world, bucket[0].group
        sizes = [sum(k * it.local.numel() for it in bucket if it.owner == r) for r in range(world)]
        width = max(sizes)
        ref = bucket[0].local
        send = torch.zeros(width, dtype=ref.dtype, device=ref.device)
        if results:
            flat = torch.cat([x.reshape(-1) for res in results for x in res if x is not None])
            send[: flat.numel()] = flat
        recv = [torch.empty_like(send) for _ in range(world)]
        work = dist.all_gather(recv, send, group=group, async_op=True)
        stats["sent"] += width * (world - 1)

        def finish() -> list[tuple[_Item, Any]]:
            work.wait()
            done = []
            for r in range(world):
                offset = 0
                for it in (it for it in bucket if it.owner == r):
                    parts = []
                    for _ in range(k):
                        m = it.local.numel()
                        parts.append(recv[r][offset : offset + m].view(it.local.shape))
                        offset += m
                    done.append((it, (parts[0], parts[1] if k == 2 else None)))
            return done

        return finish

    # -- FSDP2: shards to owners, whole matrices back to shards --------------------------------------------------
    def _start_gather(self, bucket: list[_Item], stats: dict[str, int]) -> tuple[Any, torch.Tensor, list[int]]:
        me, world, group = bucket[0].rank, bucket[0].world, bucket[0].group
        send = torch.cat([it.local.reshape(-1) for r in range(world) for it in bucket if it.owner == r])
        in_splits = [sum(it.numel_on(me) for it in bucket if it.owner == r) for r in range(world)]
        out_splits = [sum(it.numel_on(s) for it in bucket if it.owner == me) for s in range(world)]
        recv = send.new_empty(sum(out_splits))
        work = dist.all_to_all_single(recv, send, out_splits, in_splits, group=group, async_op=True)
        stats["sent"] += sum(in_splits) - in_splits[me]
        return work, recv, out_splits

    def _finish_gather(
        self, bucket: list[_Item], work: Any, recv: torch.Tensor, out_splits: list[int]
    ) -> tuple[list[_Item], list[torch.Tensor]]:
        work.wait()
        me, world = bucket[0].rank, bucket[0].world
        mine = [it for it in bucket if it.owner == me]
        pieces: list[list[torch.Tensor]] = [[] for _ in mine]
        offset = 0
        for s in range(world):
            for j, it in enumerate(mine):
                m = it.numel_on(s)
                pieces[j].append(recv[offset : offset + m].view(it.shape_on(s)))
                offset += m
        return mine, [torch.cat(p, dim=it.dim) for it, p in zip(mine, pieces)]

    def _start_scatter(self, bucket: list[_Item], results: list[Any], k: int, stats: dict[str, int]) -> Callable:
        me, world, group = bucket[0].rank, bucket[0].world, bucket[0].group
        mine = [it for it in bucket if it.owner == me]
        chunks = []
        for s in range(world):
            for it, res in zip(mine, results):
                start = sum(it.sizes[:s])
                for x in res[:k]:
                    chunks.append(x.narrow(it.dim, start, it.sizes[s]).reshape(-1))
        ref = bucket[0].local
        send = torch.cat(chunks) if chunks else ref.new_empty(0)
        in_splits = [k * sum(it.numel_on(s) for it in mine) for s in range(world)]
        out_splits = [k * sum(it.numel_on(me) for it in bucket if it.owner == o) for o in range(world)]
        recv = ref.new_empty(sum(out_splits))
        work = dist.all_to_all_single(recv, send, out_splits, in_splits, group=group, async_op=True)
        stats["sent"] += sum(in_splits) - in_splits[me]

        def finish() -> list[tuple[_Item, Any]]:
            work.wait()
            done, offset = [], 0
            for o in range(world):
                for it in (it for it in bucket if it.owner == o):
                    parts = []
                    for _ in range(k):
                        m = it.local.numel()
                        parts.append(recv[offset : offset + m].view(it.local.shape))
                        offset += m
                    done.append((it, (parts[0], parts[1] if k == 2 else None)))
            return done

        return finish


@dataclasses.dataclass(eq=False)
class _Item:
    """One parameter's oracle input as this rank holds it, and the plan for it."""

    index: int
    geo: ParamGeometry
    local: torch.Tensor  # the plain tensor, or the DTensor's local shard
    path: str
    dt: DTensor | None = None
    group: Any = None
    world: int = 1
    rank: int = 0
    shape: tuple[int, ...] = ()  # global shape
    cost: float = 0.0
    dim: int | None = None  # the sharded axis
    sizes: tuple[int, ...] = ()  # the shards' lengths along it
    owner: int = -1
    local_geo: ParamGeometry | None = None

    def __post_init__(self) -> None:
        if self.local_geo is None:
            self.local_geo = self.geo

    def shape_on(self, rank: int) -> tuple[int, ...]:
        return self.shape[: self.dim] + (self.sizes[rank],) + self.shape[self.dim + 1 :]

    def numel_on(self, rank: int) -> int:
        return math.prod(self.shape_on(rank))

    def wrap(self, local: torch.Tensor) -> DTensor:
        dt = self.dt
        return DTensor.from_local(
            local.contiguous(), dt.device_mesh, dt.placements, run_check=False, shape=dt.shape, stride=dt.stride()
        )


def _local_geometry(
    geo: ParamGeometry, shape: tuple[int, ...], dim: int, size: int, rule: str
) -> ParamGeometry | None:
    """The geometry under which the oracle of a shard (``size`` entries along ``dim``) is the shard of the oracle of
    the whole, or None if the shard alone does not determine it."""
    j = _view_axis(shape, geo.view, dim)
    if j is None:
        return None
    rank = len(geo.view) if geo.view is not None else len(shape)
    oracle_axis = (2 * rank - 3 - j) if geo.transpose and j >= rank - 2 else j
    k = geo.norm.ndim
    if oracle_axis >= rank - k and not (rule == "lmo" and oracle_axis - rank in geo.norm.separable_axes):
        return None
    if size == 0:
        return geo  # an empty shard: nothing to evaluate
    if geo.view is None:
        return geo
    view = list(geo.view)
    view[j] = size
    return dataclasses.replace(geo, view=tuple(view))
