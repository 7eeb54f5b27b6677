r"""The step of :class:`~lmo.optimizers.Driver`: a plan made once, then estimator -> oracle -> update.

A :class:`Plan` is what can be decided before the first step and holds until the parameters or the driver
change: each parameter's :class:`~lmo.optimizers.ParamGeometry` (the driver's geometry rule runs once per
parameter), the shape its oracle sees, its radius, and the :class:`Batch` es -- the groups of parameters whose
oracle is evaluated in one call (same-shape matrices stacked into one batched call). :func:`run_step` is the
whole step for one plan, per parameter ``x`` with gradient ``g``, momentum ``m`` and oracle radius ``rho``::

    c  = beta1 m + (1 - beta1) g;        m <- beta2 m + (1 - beta2) g          (estimator)
    d  = lmo(c)                                                                (oracle, one call per batch)
    x <- (1 - lr decay) x + lr rho d           (rule "lmo")
    x <- (1 - lr decay) x + lr rho ||c||_* d   (rule "sharp")

with the driver's hooks, where it has them, at their places (see :class:`~lmo.optimizers.Driver`).

The oracle stage has one route, :func:`evaluate` (``executor`` of :func:`run_step`): it evaluates a plan's
batches on this process; :class:`lmo.optimizers.distributed.Distribution` is the other executor, which deals the
same batches out to the ranks of a process group. An oracle returns a :class:`Direction`: the direction as the
geometry computed it (``Norm.lmo_factored``: for the spectral norm, the polar factor in the iterate's dtype, e.g.
bfloat16) and the number it is multiplied by, so that the update reads it once, with ``lr * rho * factor`` as its
coefficient, instead of casting and scaling it in separate passes.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from lmo.backend import Array, device, namespace
from lmo.geometries import Workspace
from lmo.geometries.precision import fast_bf16
from lmo.norm import Norm

from . import _foreach
from .driver import GEOMETRY, MOMENTUM, ParamGeometry, StepInfo, hook_slots, set_hook_slots, stateful_oracle

if TYPE_CHECKING:
    from .driver import Driver

__all__ = ["Plan", "Entry", "Batch", "Direction", "build_plan", "evaluate", "oracle_directions", "oracle_call",
           "run_step",
           "group_for_oracle", "Executor", "CPU_BATCH_LIMIT", "CPU_TRANSPOSE_LIMIT", "STACK_ENTRIES"]

#: entries per matrix above which ``batch="auto"`` runs same-shape matrices one by one on a CPU without fast
#: bfloat16 products (there one stacked float32 chain is no faster than one chain per matrix; with bfloat16 iterates,
#: and on accelerators, the batched product is measured faster: benchmarks/muon_step.py)
CPU_BATCH_LIMIT = 256 * 256
CPU_STACK_SIDE = 256
#: entries of a tall matrix up to which a CPU stacks it, transposed, with the wide matrices of its transposed shape
#: (see ``_wide``)
CPU_TRANSPOSE_LIMIT = 256 * 256
#: entries of one stacked oracle call at most: larger stacks, and the iteration's temporaries of their size, are
#: fresh memory-mapped allocations that the allocator returns to the system each step (24,000 page faults per
#: step for sixteen 512 x 512 matrices on a CPU, 1.3x the time of one chain per matrix; benchmarks/muon_step.py)
STACK_ENTRIES = 2**20


@dataclasses.dataclass(frozen=True, eq=False)
class Entry:
    """One parameter of a plan: its name, shape, geometry (the driver's rule's answer) and the radius
    ``rho = driver.radius * geometry.radius`` of its step. ``oracle``: the geometry the oracle stage uses, which is
    ``geometry`` with the trailing axes swapped for a tall matrix of a :attr:`~lmo.Norm.transposable` norm (then it
    is stacked with the wide matrices of its transposed shape: the same arithmetic, one call fewer); ``view``: the
    shape its oracle sees."""

    name: str
    shape: tuple[int, ...]
    geometry: ParamGeometry
    radius: float
    view: tuple[int, ...]
    stateful: bool
    oracle: ParamGeometry


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """Parameters (``members``, indices into :attr:`Plan.entries`) whose oracle is one call of ``norm``: same-shape
    matrices stacked along a new leading axis (``stacked``), or one parameter. A stateful oracle is always alone.
    ``workspace``: the oracle writes into the plan's :attr:`Plan.scratch` (the batch is alone in its part, so its
    direction is consumed before another oracle runs, and the norm's ``lmo_factored`` takes a workspace)."""

    norm: Norm
    members: tuple[int, ...]
    core: tuple[int, ...]
    stacked: bool
    stateful: bool
    workspace: bool = False


class Direction(NamedTuple):
    """The oracle's answer for one parameter: ``lmo(c) = factor * direction`` in the parameter's shape.

    ``direction`` may be in the oracle's working dtype (bfloat16 for a bf16 polar iteration) and strided (a
    transposed view); ``dual`` (rule ``"sharp"``) is ``||c||_*``, broadcastable to the parameter's shape."""

    direction: Array
    factor: float = 1.0
    dual: Array | None = None

    def full(self, like: Array) -> Array:
        """``factor * direction`` in ``like``'s dtype (what ``lmo`` returns; the sharp rule's ``dual`` is not
        applied)."""
        d = self.direction
        if d.dtype != like.dtype:
            d = namespace(like).astype(d, like.dtype)
        return d if self.factor == 1.0 else self.factor * d


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """A driver resolved for a list of parameters (see the module docstring); made by :func:`build_plan`.

    ``parts``: the batches stepped together. Without a hook after the estimator each matrix batch is its own part
    and all vector batches one more, so that only one part's estimates and directions exist at a time (the
    memory of torch.optim.Muon's per-parameter loop); with such a hook, one part holds everything, as the hooks
    see all parameters at once.
    """

    driver: Driver
    entries: tuple[Entry, ...]
    batches: tuple[Batch, ...]
    parts: tuple[tuple[int, ...], ...]  # batch indices
    names: tuple[str, ...]
    hooked: bool  # a hook after the estimator, or a stateful oracle: the step is pure, in one part
    writable: tuple[bool, ...]  # per part: torch parameters of one dtype and device, which a step may write into
    # the oracle's inputs are known finite: the step tests gradients and momenta first (nonfinite != "ignore") and
    # the estimate is a convex combination of them (no hook in between), so the oracle skips its own guard
    finite: bool = False
    # entries of the largest matrix batch: the size of the one buffer (the scratch's "c") that the parts' estimates
    # are written into in turn
    estimate_entries: int = 0
    # per stacked batch: the stack its estimates are written into and its rows (views of the scratch's "c", made
    # on the first step and kept: a fresh stack per step is a fresh memory mapping, thousands of page faults a step)
    stacks: dict[int, tuple[Array, list[Array]]] = dataclasses.field(default_factory=dict)
    # stacked batches whose directions are cast into their rows before the update: on a CPU, where torch's
    # mixed-dtype add converts its addend into a temporary (from 128 KiB, glibc's mmap threshold, a fresh mapping:
    # 150 page faults a step at d = 256 in benchmarks/muon_step.py) and runs one dispatch per member, against one
    # cast of the whole stack and a same-dtype foreach add
    staged: frozenset[int] = frozenset()
    # the estimates' stack, the oracle iterations' temporaries and directions (for batches with ``workspace``): one
    # buffer per role, shared by the parts in turn
    scratch: Workspace = dataclasses.field(default_factory=Workspace)

    @property
    def kept_nbytes(self) -> int:
        """Bytes this plan keeps between steps (:attr:`scratch`: allocated on the first step, per role the size of
        the largest batch)."""
        return self.scratch.nbytes


def build_plan(driver: Driver, names: Sequence[str], params: Sequence[Array], *, complex_later: bool = False
               ) -> Plan:
    """Resolve ``driver`` for these parameters: geometries (the rule runs once per parameter), views, radii,
    batches and parts. Raises ``ValueError`` naming a parameter whose geometry does not fit its shape, or that is
    not of a real floating dtype (an integer, bool or complex array; ``complex_later``: complex parameters pass, for
    the torch classes, which refuse them at the step, as torch.optim does)."""
    names = tuple(names)
    entries = []
    allowed = ("real floating", "complex floating") if complex_later else "real floating"
    for name, x in zip(names, params):
        shape = tuple(x.shape)
        xp = namespace(x)
        if not xp.isdtype(x.dtype, allowed):
            hint = (" (the geometries act on real arrays: give its real and imaginary parts as two parameters)"
                    if xp.isdtype(x.dtype, "complex floating") else "")
            raise ValueError(f"parameter {name!r} of shape {shape} has dtype {x.dtype}; a step needs parameters of a "
                             f"real floating dtype{hint}")
        geo = driver.geometry_for(name, shape)
        stateful = stateful_oracle(geo.norm)
        oracle = geo if stateful else _wide(geo, shape, x)
        entries.append(Entry(name, shape, geo, driver.radius * geo.radius, oracle.oracle_shape(shape), stateful,
                             oracle))
    groups = group_for_oracle([e.oracle for e in entries], [e.view for e in entries], params, driver.batch,
                              stateful=[e.stateful for e in entries])
    batches = []
    for members in groups:
        first = entries[members[0]]
        k = first.geometry.norm.ndim
        batches.append(Batch(first.geometry.norm, tuple(members), first.view[len(first.view) - k:],
                             len(members) > 1, first.stateful))
    hooks = (driver.point, driver.direction_transform, driver.error_feedback, driver.retraction)
    hooked = any(h is not None for h in hooks) or any(e.stateful for e in entries)
    if hooked:
        parts = (tuple(range(len(batches))),)
    else:
        matrices = tuple((j,) for j, b in enumerate(batches) if b.norm.ndim >= 2)
        vectors = tuple(j for j, b in enumerate(batches) if b.norm.ndim < 2)
        parts = matrices + ((vectors,) if vectors else ())
        for (j,) in matrices:
            if not batches[j].stateful and _takes_workspace(batches[j].norm):
                batches[j] = dataclasses.replace(batches[j], workspace=True)
    writable = tuple(_foreach.can_write([params[i] for j in part for i in batches[j].members]) for part in parts)
    finite = driver.nonfinite != "ignore" and not hooked and driver.grad_transform is None
    estimate_entries = max((sum(math.prod(entries[i].shape) for i in b.members) for b in batches
                            if b.norm.ndim >= 2), default=0)
    staged = frozenset(j for j, b in enumerate(batches) if b.stacked and _on_cpu(params[b.members[0]]))
    return Plan(driver, tuple(entries), tuple(batches), parts, names, hooked, writable, finite=finite,
                estimate_entries=estimate_entries, staged=staged)


def _takes_workspace(norm: Norm) -> bool:
    return "workspace" in inspect.signature(type(norm).lmo_factored).parameters


def _wide(geo: ParamGeometry, shape: tuple[int, ...], x: Array) -> ParamGeometry:
    """``geo``, or ``geo`` with the oracle's trailing axes swapped where its view is a tall matrix of a transposable
    norm (``lmo(X^T) = lmo(X)^T``), so that it is stacked with the wide matrices of its transposed shape: one
    stacked call fewer. That pays on accelerators and for small matrices (at most :data:`CPU_TRANSPOSE_LIMIT`
    entries) on a CPU, where the calls' fixed cost dominates. A larger tall matrix on a CPU is stacked with tall
    ones in its own layout (the iteration reads it transposed): writing its estimate as the transposed row of a wide
    stack is a strided pass 5x the time of a contiguous one (an A/B of benchmarks/muon_step.py's step at d = 256:
    1.09x against 1.18x torch.optim.Muon's)."""
    view = geo.oracle_shape(shape)
    if geo.norm.ndim == 2 and view[-2] > view[-1] and geo.norm.transposable:
        if not _on_cpu(x) or view[-2] * view[-1] <= CPU_TRANSPOSE_LIMIT:
            return dataclasses.replace(geo, transpose=not geo.transpose)
    return geo


def _on_cpu(x: Array) -> bool:
    name = str(getattr(device(x), "type", device(x)))
    return name == "cpu" or "CPU_DEVICE" in name  # numpy and torch; array-api-strict's Device('CPU_DEVICE')


def group_for_oracle(
    geometries: Sequence[ParamGeometry],
    views: Sequence[tuple[int, ...]],
    arrays: Sequence[Array],
    batch: bool | str,
    *,
    stateful: Sequence[bool] | None = None,
) -> list[list[int]]:
    """The indices evaluated in one oracle call, in order of first appearance: matrices (``norm.ndim >= 2``) with the
    same norm, core shape, dtype, device and array type are stacked when ``batch`` is True, or ``"auto"`` and
    stacking pays (:data:`CPU_BATCH_LIMIT`); everything else is alone."""
    groups: dict[Hashable, list[int]] = {}
    for i, (geo, view, x) in enumerate(zip(geometries, views, arrays)):
        k = geo.norm.ndim
        core = tuple(view[len(view) - k:])
        alone = k < 2 or (stateful is not None and stateful[i]) or batch is False
        if not alone and batch == "auto":
            alone = not _stacking_pays(x, core)
        if alone:
            groups[("alone", i)] = [i]
        else:
            key = (geo.norm, core, str(x.dtype), str(device(x)), type(x))
            groups.setdefault(key, []).append(i)
    out = []
    for members in groups.values():  # stacks of at most STACK_ENTRIES entries (one matrix at least)
        chunk, entries = [], 0
        for i in members:
            size = math.prod(views[i])
            if chunk and entries + size > STACK_ENTRIES:
                out.append(chunk)
                chunk, entries = [], 0
            chunk.append(i)
            entries += size
        out.append(chunk)
    return out


def _stacking_pays(x: Array, core: tuple[int, ...]) -> bool:
    if math.prod(core) <= CPU_BATCH_LIMIT:
        return True
    if not _on_cpu(x):
        return True
    # a CPU with fast bfloat16 products: a batched product pays while its small side is at most 256
    return min(core) <= CPU_STACK_SIDE and fast_bf16(namespace(x), x)


# ---------------------------------------------------------------------------------------------------------------
# the oracle stage
# ---------------------------------------------------------------------------------------------------------------
Executor = Callable[..., dict[int, Direction]]
"""``executor(plan, batches, estimates, params, slots, step, stacked=None) -> {index: Direction}``: the oracle stage
of the batches ``batches`` (indices into ``plan.batches``), given the estimates, parameters and slots by parameter
index; ``stacked`` may give a batch's estimates already stacked (batch index -> array), which an executor may use."""


def evaluate(
    plan: Plan,
    batches: Sequence[int],
    estimates: dict[int, Array],
    params: dict[int, Array],
    slots: dict[int, dict[str, Array]],
    step: int,
    stacked: dict[int, Array] | None = None,
) -> dict[int, Direction]:
    """The oracle of each of ``batches`` on this process: one call per batch (stacked members in one call, from
    ``stacked[j]`` if given); a stateful oracle reads and updates its state in ``slots`` (``"geometry.<key>"``)."""
    sharp = plan.driver.rule == "sharp"
    out: dict[int, Direction] = {}
    for j in batches:
        batch = plan.batches[j]
        if batch.stateful:
            i = batch.members[0]
            entry = plan.entries[i]
            out[i] = _stateful(entry, params[i], estimates[i], slots[i], step, sharp)
            continue
        geometries = [plan.entries[i].oracle for i in batch.members]
        arrays = [estimates[i] for i in batch.members]
        stack = None if stacked is None else stacked.get(j)
        kept = plan.stacks.get(j)
        found = oracle_call(batch.norm, geometries, arrays, batch.core, sharp, stack, finite=plan.finite,
                            workspace=plan.scratch if batch.workspace else None,
                            stage=stack is not None and j in plan.staged,
                            rows=kept[1] if kept is not None and kept[0] is stack else None)
        for i, direction in zip(batch.members, found):
            out[i] = direction
    return out


def oracle_directions(geometries: Sequence[ParamGeometry], estimates: Sequence[Array], rule: str,
                      batch: bool | str = "auto", *, finite: bool = False) -> list[Direction]:
    """The oracle of each estimate in its geometry, grouped for batched calls as a plan would group them (for
    arrays that no plan holds: the distributed executor's gathered matrices and shards); ``finite`` as in
    :func:`oracle_call`."""
    views = [geo.oracle_shape(tuple(c.shape)) for geo, c in zip(geometries, estimates)]
    out: list[Direction | None] = [None] * len(estimates)
    for members in group_for_oracle(geometries, views, estimates, batch):
        norm = geometries[members[0]].norm
        core = views[members[0]][len(views[members[0]]) - norm.ndim:]
        found = oracle_call(norm, [geometries[i] for i in members], [estimates[i] for i in members], core,
                            rule == "sharp", finite=finite)
        for i, d in zip(members, found):
            out[i] = d
    return [d for d in out if d is not None]


def oracle_call(norm: Norm, geometries: Sequence[ParamGeometry], estimates: Sequence[Array],
                core: tuple[int, ...], sharp: bool, stacked: Array | None = None, *,
                finite: bool = False, workspace: Workspace | None = None, stage: bool = False,
                rows: Sequence[Array] | None = None) -> list[Direction]:
    """One call of ``norm``'s oracle on the estimates (in their geometries' views), stacked along a new leading
    axis when there are several (``stacked``: that stack, if the estimates are its rows already); the directions
    back in the estimates' shapes. ``finite``: the estimates are known finite (:attr:`Plan.finite`), and
    ``workspace`` the buffers the directions may live in until the next call (:attr:`Batch.workspace`), passed on
    to :meth:`Norm.lmo_factored`. ``stage`` (with ``stacked``, which the caller no longer needs once the oracle has
    read it): the directions are cast into ``stacked`` in one pass and returned as views of it, in the estimates'
    dtype (:attr:`Plan.staged`); ``rows``: the views of ``stacked`` in the estimates' shapes (:attr:`Plan.stacks`,
    made once), which those directions then are."""
    k = norm.ndim
    extra = {} if workspace is None else {"workspace": workspace}
    # the sharp rule's dual norm is read first: an oracle with a workspace may overwrite an estimate that lives in
    # the workspace's memory (its scratch: the polar start scales it in place)
    if len(estimates) == 1:
        view = geometries[0].to_oracle(estimates[0])
        duals = [norm.dual_norm(view)] if sharp else [None]
        d, factor = norm.lmo_factored(view, finite=finite, **extra)
        ds = [d]
        shapes = [tuple(view.shape)]
    else:
        xp = namespace(estimates[0])
        shapes = [geo.oracle_shape(tuple(c.shape)) for geo, c in zip(geometries, estimates)]
        if stacked is None:
            stacked = xp.concat([xp.reshape(geo.to_oracle(c), (-1, *core)) for geo, c in zip(geometries, estimates)],
                                axis=0)
        dual_all = norm.dual_norm(stacked) if sharp else None
        d_all, factor = norm.lmo_factored(stacked, finite=finite, **extra)
        if stage and d_all.dtype != stacked.dtype:
            d_all = stacked.copy_(d_all)
            if rows is not None and dual_all is None:  # the kept rows are these directions, in place
                return [Direction(row, factor, None) for row in rows]
        if all(len(shape) == k for shape in shapes):  # one matrix each (the common case): one split, no reshapes
            ds = list(xp.unstack(d_all))
            duals = [None] * len(ds) if dual_all is None else list(xp.unstack(dual_all))
        else:
            ds, duals, start = [], [], 0
            for shape in shapes:
                batch = shape[: len(shape) - k]
                count = math.prod(batch)
                ds.append(xp.reshape(d_all[start : start + count, ...], shape))
                duals.append(None if dual_all is None else xp.reshape(dual_all[start : start + count], batch))
                start += count
    out = []
    for geo, c, shape, d, dual in zip(geometries, estimates, shapes, ds, duals):
        if dual is not None:
            xp = namespace(c)
            dual = xp.reshape(dual, tuple(dual.shape) + (1,) * k)
            if geo.view is not None or geo.transpose:
                dual = geo.from_oracle(dual * xp.ones(shape, dtype=c.dtype, device=device(c)), c)
        out.append(Direction(geo.from_oracle(d, c), factor, dual))
    return out


def _stateful(entry: Entry, x: Array, c: Array, slots: dict[str, Array], step: int, sharp: bool) -> Direction:
    geo = entry.geometry
    xv, cv = geo.to_oracle(x), geo.to_oracle(c)
    state = hook_slots([slots], GEOMETRY)[0] or geo.norm.init_state(entry.name, xv)
    d, state = geo.norm.lmo_stateful(xv, cv, dict(state), step)
    set_hook_slots([slots], GEOMETRY, [state])
    dual = None
    if sharp:
        xp = namespace(c)
        dual = geo.norm.dual_norm(cv)
        dual = geo.from_oracle(xp.reshape(dual, tuple(dual.shape) + (1,) * geo.norm.ndim) * xp.ones_like(cv), c)
    return Direction(geo.from_oracle(d, c), 1.0, dual)


# ---------------------------------------------------------------------------------------------------------------
# the step
# ---------------------------------------------------------------------------------------------------------------
def run_step(
    plan: Plan,
    params: list[Array],
    grads: list[Array],
    slots: list[dict[str, Array]],
    lr: Any,
    step: int,
    *,
    inplace: bool = False,
    executor: Executor | None = None,
    transformed: bool = False,
    gradient_noise_std: float | None = None,
    numbers: Mapping[str, Any] | None = None,
) -> list[Array]:
    """One step of ``plan.driver`` (the module docstring's update) on aligned lists; returns the new parameters.

    ``slots`` (one dict per parameter, owned by the caller) receive the new state: the momentum under
    ``"momentum_buffer"``, hooks' and stateful oracles' slots under ``"<stage>.<key>"``. ``lr``: the learning rate
    of this step, a number or a 0-d tensor (never read on the host). ``inplace``: the parameters and momenta
    handed in may be overwritten (torch tensors of one dtype and device per part; otherwise, and whenever a hook
    after the estimator is present, the step is pure and the new arrays are returned). Gradients are only read.

    ``transformed``: the gradients have been through the driver's ``grad_transform`` already (the private torch
    optimizers privatise all their groups' gradients together, then step each group), with
    ``gradient_noise_std`` the noise it released. ``numbers``: this step's ``beta1``, ``beta2`` and ``decay`` in
    place of the driver's (a step traced by ``torch.compile`` under a momentum schedule: graph inputs, with the
    plan's estimator structure).
    """
    driver = plan.driver
    executor = evaluate if executor is None else executor
    info = StepInfo(step, lr, plan.names, gradient_noise_std=gradient_noise_std)
    if driver.grad_transform is not None and not transformed:
        grads, hs = driver.grad_transform(grads, hook_slots(slots, "grad_transform"), params, info)
        set_hook_slots(slots, "grad_transform", hs)
        grads = list(grads)
        info = dataclasses.replace(info, gradient_noise_std=driver.grad_transform.gradient_noise_std(plan.names))
    new_params = list(params)
    if executor is evaluate:
        parts, writable = plan.parts, plan.writable
    else:  # another executor (the distributed one) deals out all batches at once: one part
        parts = (tuple(range(len(plan.batches))),)
        writable = (all(plan.writable) and _foreach.can_write(params),)
    for part, part_writable in zip(parts, writable):
        idx = [i for j in part for i in plan.batches[j].members]
        xs, gs, ss = [params[i] for i in idx], [grads[i] for i in idx], [slots[i] for i in idx]
        # decided per part when the plan was made (gradients and momenta have their parameters' dtype and device)
        write = inplace and not plan.hooked and part_writable
        stepped = _step_part(plan, part, idx, xs, gs, ss, info, write, executor, numbers or {})
        for i, x in zip(idx, stepped):
            new_params[i] = x
    return new_params


def _step_part(plan: Plan, part: tuple[int, ...], idx: list[int], xs: list[Array], gs: list[Array],
               ss: list[dict[str, Array]], info: StepInfo, write: bool, executor: Executor,
               numbers: Mapping[str, Any]) -> list[Array]:
    driver, lr = plan.driver, info.lr
    beta1, beta2 = numbers.get("beta1", driver.beta1), numbers.get("beta2", driver.beta2)
    stacked: dict[int, Array] = {}
    rows: list[Array] | None = None  # the estimates' kept memory (free once the oracle has read it)
    if driver.has_momentum:  # the two-beta estimator
        # c straight into the oracle's stack, or for a matrix alone into the plan's scratch (this process's
        # executor only: the distributed one stacks what it gathers, and DTensor estimates cannot be written into a
        # plain tensor); kept memory, not a fresh mapping per step (not under torch.compile, which plans memory)
        keep = write and executor is evaluate and driver.beta1 != driver.beta2 and not _foreach.compiling()
        if keep and _rows_stack(plan, part):
            batch = plan.batches[part[0]]
            kept = plan.stacks.get(part[0])
            if kept is None:  # the rows of the plan's one stack buffer, sized for its largest stack
                views = [plan.entries[i].view for i in idx]
                buffer = plan.scratch.take("c", _foreach.stack_shape(views, batch.core), xs[0].dtype,
                                           xs[0].device, reserve=plan.estimate_entries)
                kept = plan.stacks[part[0]] = _foreach.stack_rows(
                    buffer, views, [plan.entries[i].oracle.transpose for i in idx], batch.core)
            stacked[part[0]], rows = kept
        elif keep and len(idx) == 1 and plan.batches[part[0]].workspace:  # a matrix alone
            rows = [plan.scratch.take("c", tuple(xs[0].shape), xs[0].dtype, xs[0].device,
                                      reserve=plan.estimate_entries)]
        estimates, moments = _foreach.estimator([s[MOMENTUM] for s in ss], gs, beta1, beta2, inplace=write,
                                                out=rows)
        for s, m in zip(ss, moments):
            s[MOMENTUM] = m
    else:
        estimates = gs
    if driver.error_feedback is not None:
        estimates = driver.error_feedback.before(estimates, hook_slots(ss, "error_feedback"), info)

    found = executor(plan, part, dict(zip(idx, estimates)), dict(zip(idx, xs)), dict(zip(idx, ss)), info.step,
                     stacked=stacked or None)
    directions = [found[i] for i in idx]
    radii = [plan.entries[i].radius for i in idx]
    shrink = _foreach.shrink_factor(lr, numbers.get("decay", driver.decay))
    if driver.direction_transform is not None:
        full = [dr.full(c) for dr, c in zip(directions, estimates)]
        seen = dataclasses.replace(info, estimates=tuple(estimates),
                                   geometries=tuple(plan.entries[i].geometry for i in idx))
        full, hs = driver.direction_transform(full, hook_slots(ss, "direction_transform"), xs, seen)
        set_hook_slots(ss, "direction_transform", hs)
        directions = [dr._replace(direction=d, factor=1.0) for dr, d in zip(directions, full)]

    if driver.error_feedback is not None:
        updates = [(lr * r) * _sharp(dr.full(c), dr.dual) for dr, r, c in zip(directions, radii, estimates)]
        geos = [plan.entries[i].geometry for i in idx]
        full = [dr.full(c) for dr, c in zip(directions, estimates)]
        updates = list(driver.error_feedback.compress(estimates, full, updates, geos, info))
        hs = driver.error_feedback.after(estimates, updates, hook_slots(ss, "error_feedback"), info)
        set_hook_slots(ss, "error_feedback", hs)
        new_xs = _foreach.shrink_add(xs, shrink, updates)
    else:  # x' = shrink x + (lr rho factor) d: the oracle's output is read once, in its own dtype
        ds = [_sharp(dr.direction, dr.dual) for dr in directions]
        coefficients = [lr * (r * dr.factor) for dr, r in zip(directions, radii)]
        # a matrix alone has its direction cast into its estimate's kept memory (a staged stack's oracle did so)
        staging = None if stacked else rows
        new_xs = _foreach.shrink_add_scaled(xs, shrink, ds, coefficients, inplace=write, staging=staging)

    if driver.retraction is not None:
        new_xs = list(driver.retraction(new_xs, [plan.entries[i].geometry for i in idx], info))
    if driver.point is not None:
        hs = driver.point.update(new_xs, hook_slots(ss, "point"), info)
        set_hook_slots(ss, "point", hs)
    return new_xs


def _rows_stack(plan: Plan, part: tuple[int, ...]) -> bool:
    """Whether the part is one stacked batch whose members the oracle sees without a reshape (as they are, or
    transposed): then their estimates can be written as the rows of the stack (transposed rows for the latter)."""
    if len(part) != 1 or not plan.batches[part[0]].stacked:
        return False
    return all(plan.entries[i].oracle.view is None for i in plan.batches[part[0]].members)


def _sharp(d: Array, dual: Array | None) -> Array:
    return d if dual is None else dual * d
