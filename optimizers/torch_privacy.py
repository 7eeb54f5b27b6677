"""Private torch optimizers: :class:`DPOptimizer` (any private driver) and :class:`DPMuon`.

A step reads every parameter's per-example gradients from ``p.grad_sample`` (shape ``(B, *p.shape)``, filled by
:func:`lmo.privacy.per_sample_grads` or by Opacus's ``GradSampleModule``), privatises them *jointly over all param
groups* with the drivers' :class:`~lmo.optimizers.privacy.Privatize` hook (clipping, one noise calibrated to the
sensitivity of all parameters together, division by the expected batch size), then runs each group's driver on the
privatised gradients. ``p.grad`` is ignored: every trainable parameter -- matrices, biases, norm gains, embeddings
-- is trained from its privatised gradient. Each ``step()`` is one release, counted for :meth:`Privacy.epsilon`.

The optimizers hold their privacy by composition: a :class:`Privacy` (the privatisation of the whole parameter set,
the accountant, the record that checkpoints carry), and groups whose drivers are ``private(...)`` configurations
(:func:`lmo.optimizers.private`) sharing its :class:`Privatize`.

With ``process_group=`` (DDP's group, or the 1-D mesh of FSDP2 DTensor parameters, which is also used when no group
is given), ``p.grad_sample`` holds the per-example gradients of this rank's examples (of the whole parameter, also
for a DTensor parameter); each rank clips its own, the clipped sums are added over the group (``all_reduce``), and
rank 0 alone adds the noise before that sum, so that it is drawn once per parameter, from rank 0's generator::

    g = (sum_ranks sum_{x on rank} clip(g(x)) + N(0, (sigma S)^2 I)) / expected_batch_size

``expected_batch_size`` and ``sample_rate`` are global (the whole group's lot). The result is the single-process
step on the union of the ranks' examples; a DTensor parameter gets its shard of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from . import validation
from .accounting import ACCOUNTANTS, PrivacyAccountant
from .configs import vector_geometry
from .distributed import DTensor, distribute_tensor
from .driver import Driver, NonFiniteGradientError, first_nonfinite
from .privacy import Privatize, private
from .torch import DriverOptimizer, LMOOptimizer, Muon, untraced

__all__ = ["DPOptimizer", "DPMuon", "Privacy"]

_PRIVACY_KEY = "privacy"


class Privacy:
    """The privacy of a private optimizer: its one :class:`Privatize` (for all its parameters together), the
    sampling rate and accountant for :meth:`epsilon`, and the steps taken (releases).

    ``privatise(names, params, group)`` reads the per-example gradients and returns the privatised gradients of
    these parameters (checked first: a refusal raises before anything is changed, and under a process group every
    rank refuses together).
    """

    def __init__(self, privatizer: Privatize, sample_rate: float | None, accountant: str) -> None:
        if sample_rate is not None:
            sample_rate = validation.real("sample_rate", sample_rate, 0.0, 1.0, low_open=True)
        self.privatizer = privatizer
        self.sample_rate = sample_rate
        self.accountant = validation.choice("accountant", accountant, ACCOUNTANTS)
        self.steps = 0

    def noise_std(self, names: Sequence[str]) -> float:
        """The std per entry of the noise in each privatised gradient of the parameters ``names`` (privatised
        together): ``noise_multiplier * S / expected_batch_size``."""
        return self.privatizer.gradient_noise_std(names)

    def accountant_now(self) -> PrivacyAccountant:
        """A :class:`lmo.optimizers.accounting.PrivacyAccountant` holding the steps taken so far."""
        if self.sample_rate is None:
            raise ValueError("epsilon needs the sampling rate: construct the optimizer with sample_rate=q (the "
                             "Poisson sampling probability of each example per step)")
        return PrivacyAccountant(self.privatizer.noise_multiplier, self.sample_rate, accountant=self.accountant,
                                 steps=self.steps)

    def epsilon(self, delta: float) -> float:
        """The privacy spent so far: epsilon at ``delta`` for the steps taken (dp-accounting's accountant)."""
        return self.accountant_now().epsilon(delta)

    # -- the release -------------------------------------------------------------------------------------------
    def privatise(self, names: list[str], params: list[torch.Tensor], group: Any) -> dict[Any, torch.Tensor]:
        """The privatised gradient of each parameter, from its ``grad_sample`` (this rank's examples): clipped and
        summed here, summed over ``group`` (a process group or None), noised once, divided by the expected batch
        size."""
        if not params:
            raise ValueError("the optimizer has no trainable parameter")
        samples, problem = _per_example(names, params)
        if group is not None:
            problem = _agree(problem, group, params[0].device)
        if problem is not None:
            raise problem
        privatizer = self.privatizer
        sums = privatizer.clipped_sums(samples, names)
        if group is None:
            return dict(zip(params, privatizer.finish(privatizer.add_noise(sums, names), params)))
        # data-parallel: every rank clips its own examples; the noise enters once, on rank 0 before the sum
        if dist.get_rank(group) == 0:
            sums = privatizer.add_noise(sums, names)
        _all_reduce_sum(sums, group)
        return {p: _like(p, g) for p, g in zip(params, privatizer.finish(sums, params))}

    # -- checkpoints -------------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """What a checkpoint carries: the steps taken and the privacy parameters (numbers and strings)."""
        c = self.privatizer.max_grad_norm
        return {
            "steps": self.steps,
            "noise_multiplier": self.privatizer.noise_multiplier,
            "sample_rate": self.sample_rate,
            "expected_batch_size": self.privatizer.expected_batch_size,
            "clipping": self.privatizer.clipping,
            "max_grad_norm": dict(c) if isinstance(c, dict) else (list(c) if isinstance(c, tuple) else c),
            "accountant": self.accountant,
        }

    def check(self, record: Mapping[str, Any] | None) -> int:
        """The steps of a saved ``record`` (``ValueError`` if there is none, or if it was saved with other privacy
        parameters: its accounting would be wrong)."""
        if record is None:
            raise ValueError("this state dict holds no privacy record (steps taken); it was not saved by a private "
                             "optimizer, and loading it would lose the privacy spent")
        mine = self.record()
        for key in ("noise_multiplier", "sample_rate", "expected_batch_size", "clipping", "max_grad_norm",
                    "accountant"):
            if record.get(key) != mine[key]:
                raise ValueError(f"the state was saved with {key}={record.get(key)!r}, this optimizer has "
                                 f"{key}={mine[key]!r}")
        return validation.integer("steps", record.get("steps"), 0)


class _Private(DriverOptimizer):
    """What :class:`DPOptimizer` and :class:`DPMuon` add to their adapter: the joint privatisation before the
    groups' steps (``step`` here, then the adapter's step on the privatised gradients), ``grad_sample`` clearing,
    and the privacy record in checkpoints. ``privacy`` is set before the adapter is constructed."""

    privacy: Privacy
    accepts_private_drivers = True
    _released: dict[Any, torch.Tensor] | None = None
    _released_std: float | None = None

    # -- the private optimizers' own surface -------------------------------------------------------------------
    @property
    def noise_std(self) -> float:
        """The std per entry of the noise in each privatised gradient (all trainable parameters together)."""
        return self.privacy.noise_std(self._trainable()[0])

    @property
    def steps(self) -> int:
        return self.privacy.steps

    @property
    def sample_rate(self) -> float | None:
        return self.privacy.sample_rate

    @property
    def privatizer(self) -> Privatize:
        return self.privacy.privatizer

    def epsilon(self, delta: float) -> float:
        """The privacy spent so far: epsilon at ``delta`` for the steps taken (dp-accounting's accountant)."""
        return self.privacy.epsilon(delta)

    def accountant_now(self) -> PrivacyAccountant:
        """A :class:`lmo.optimizers.accounting.PrivacyAccountant` holding the steps taken so far."""
        return self.privacy.accountant_now()

    # -- the step ----------------------------------------------------------------------------------------------
    def _trainable(self) -> tuple[list[str], list[torch.Tensor]]:
        names, params = [], []
        for gi, group in enumerate(self.param_groups):
            for name, p in zip(self._names(gi, group), group["params"]):
                if p.requires_grad:
                    names.append(name)
                    params.append(p)
        self.privacy.privatizer.thresholds(names)  # one threshold per parameter, by name or position
        return names, params

    def _check_private_groups(self) -> None:
        for gi, group in enumerate(self.param_groups):
            if group.get("nonfinite", "raise") != "raise":
                raise ValueError(
                    f"param group {gi}: a private optimizer needs nonfinite='raise' (skipping a step, or letting NaN "
                    "through, depends on single examples and is not covered by the privacy analysis)"
                )
        self._trainable()

    def _transformed(self) -> tuple[bool, float | None]:
        return True, self._released_std  # the groups' Privatize ran once, for all of them

    def _gradient(self, p: torch.Tensor) -> torch.Tensor | None:
        """The privatised gradient of ``p`` in a private step (``None``: a frozen parameter sits out)."""
        if self._released is None:
            raise RuntimeError("a private optimizer's gradients exist only inside step()")
        return self._released.get(p)

    # not traced by torch.compile (``torch.compile(opt.step)`` runs it as written): the noise is drawn from the
    # privacy layer's own generator, which a compiled graph would not use, and the privatisation tests the
    # per-example gradients on the host
    @untraced
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One private step: privatise the per-example gradients (``p.grad_sample``) of all groups together, then
        each group's step on them. Returns the closure's loss if given (the closure must fill ``p.grad_sample``).
        Under ``torch.compile`` it runs untraced (the noise comes from the privacy layer's generator)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        names, params = self._trainable()
        self._released = self.privacy.privatise(names, params, self._data_parallel_group(params))
        self._released_std = self.privacy.noise_std(names)
        try:
            super().step()
        finally:
            self._released = None
        self.privacy.steps += 1
        return loss

    def _data_parallel_group(self, params: list[torch.Tensor]) -> Any:
        """The ranks whose examples make up the lot: the optimizer's ``process_group``, else the 1-D mesh of DTensor
        parameters (FSDP2), else None (one process)."""
        group = self.distribution.group
        meshes = {id(p.device_mesh): p.device_mesh for p in params if isinstance(p, DTensor)}
        if group is None and meshes:
            if len(meshes) > 1 or next(iter(meshes.values())).ndim != 1:
                raise ValueError(
                    "a private optimizer over DTensor parameters needs one 1-D device mesh (the data-parallel "
                    "ranks) or an explicit process_group=; got parameters on "
                    f"{len(meshes)} mesh(es) of dimensions {sorted(m.ndim for m in meshes.values())}"
                )
            group = next(iter(meshes.values())).get_group()
        if group is not None and dist.get_world_size(group) == 1:
            return None
        return group

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear ``p.grad`` (as torch does) and ``p.grad_sample`` (the per-example gradients)."""
        super().zero_grad(set_to_none=set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                if hasattr(p, "grad_sample"):
                    p.grad_sample = None

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"privacy"``: the steps taken and the privacy parameters (numbers and strings)."""
        state = super().state_dict()
        state[_PRIVACY_KEY] = self.privacy.record()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state; the steps taken are restored (so ``epsilon`` counts them). A state saved with other privacy
        parameters (noise, sampling rate, clipping) is refused: its accounting would be wrong."""
        state_dict = dict(state_dict)
        steps = self.privacy.check(state_dict.pop(_PRIVACY_KEY, None))
        super().load_state_dict(state_dict)
        self.privacy.steps = steps


class DPOptimizer(_Private, LMOOptimizer):
    """Any private driver (``dp_sgd``, ``dp_sign_sgd``, ``dp_muon``, ``dp_scion``, or ``private(driver, ...)``) as
    a ``torch.optim.Optimizer``.

    ``DPOptimizer(params, driver, *, sample_rate=None, accountant="rdp", **group_overrides)``: param groups may
    override the driver's ``lr``, ``beta1``, ``beta2``, ``rule``, ``decay``, ``radius`` and ``geometry`` (as in
    :class:`~lmo.optimizers.LMOOptimizer`); the privacy parameters are the driver's, one for all groups.
    ``sample_rate``: the Poisson sampling rate, for :meth:`epsilon`.

    >>> import torch, lmo.optimizers as lo
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = lo.DPOptimizer([w], lo.dp_sgd(lr=1.0, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=2))
    >>> w.grad_sample = torch.tensor([[3.0, 4.0], [0.3, 0.4]]); _ = opt.step()  # example 1 clipped to norm 1
    >>> w.detach()
    tensor([-0.4500, -0.6000])
    """

    def __init__(self, params: Any, driver: Driver, *, sample_rate: float | None = None, accountant: str = "rdp",
                 **overrides: Any) -> None:
        if not isinstance(driver, Driver) or not isinstance(driver.grad_transform, Privatize):
            raise ValueError("DPOptimizer needs a private driver (one whose grad_transform is a Privatize hook, e.g. "
                             f"lmo.optimizers.dp_sgd(...)); got driver={driver!r}")
        if "nonfinite" in overrides:
            raise ValueError("a private optimizer keeps nonfinite='raise'")
        self.privacy = Privacy(driver.grad_transform, sample_rate, accountant)
        self._released = None
        super().__init__(params, driver, **overrides)
        self._check_private_groups()


class DPMuon(_Private, Muon):
    """DP-Muon (Kim & Fan, 2026) for torch: :class:`~lmo.optimizers.Muon` on privatised gradients.

    ``DPMuon(params, lr=1e-3, *, noise_multiplier, max_grad_norm, expected_batch_size, sample_rate=None,
    clipping="per_matrix", generator=None, bias_correction=False, max_correction=1.0, accountant="rdp",
    vectors=None, **muon_arguments)``

    Per step: every example's gradient of every parameter is clipped to its threshold ``C_W`` (``max_grad_norm``: one
    float, one per parameter in order, or a ``{name: C_W}`` mapping with ``param_names``); the clipped sum gets
    Gaussian noise of std ``noise_multiplier * sqrt(sum_W C_W^2)`` and is divided by ``expected_batch_size``;
    ``clipping="flat"`` clips each example's whole gradient to ``max_grad_norm`` instead (noise std
    ``noise_multiplier * max_grad_norm``). Then Muon's step (``muon_arguments``: ``weight_decay``, ``momentum``,
    ``nesterov``, ``ns_coefficients``, ``eps``, ``ns_steps``, ``adjust_lr_fn``, ``method``, ``view``, as in
    :class:`~lmo.optimizers.Muon`). ``bias_correction=True`` is DP-MuonBC
    (:class:`~lmo.optimizers.privacy.BiasCorrection`).

    Every trainable parameter is trained privately: matrices (conv kernels, batches of matrices, embeddings) by
    Muon, and vectors -- biases, ``LayerNorm``/``GroupNorm`` gains, scalars -- by the geometry ``vectors`` (default
    :func:`lmo.optimizers.vector_geometry`: each vector's step of RMS ``lr``; a ``Norm``, registry name or
    ``ParamGeometry`` for another). No parameter is stepped from ``p.grad``. BatchNorm mixes the examples of a
    batch, so per-example gradients (and privacy) are undefined for it: :func:`lmo.privacy.per_sample_grads` and
    Opacus refuse a model with BatchNorm in training mode (use GroupNorm).

    ``generator``: the noise's generator (``None``: fresh OS entropy; an ``int`` seed; a ``torch.Generator``).
    ``sample_rate``: the Poisson sampling rate (``poisson_loader``), for ``epsilon(delta)``, the privacy spent so far.
    The per-example gradients are read from ``p.grad_sample`` (:func:`lmo.privacy.per_sample_grads`).
    ``process_group``: data-parallel training (DDP or FSDP2; see the module docstring): each rank's examples are
    clipped there, the clipped sums added over the ranks, and the noise drawn once, on rank 0.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        *,
        noise_multiplier: float,
        max_grad_norm: Any,
        expected_batch_size: float,
        sample_rate: float | None = None,
        clipping: str = "per_matrix",
        generator: Any = None,
        bias_correction: bool = False,
        max_correction: float = 1.0,
        accountant: str = "rdp",
        vectors: Any = None,
        **muon_arguments: Any,
    ) -> None:
        self.bias_correction = validation.boolean("bias_correction", bias_correction)
        self.max_correction = validation.real("max_correction", max_correction, 0.0, low_open=True)
        self.privacy = Privacy(Privatize(noise_multiplier, max_grad_norm, expected_batch_size, clipping, generator),
                               sample_rate, accountant)
        self._released = None
        vectors = vector_geometry() if vectors is None else vectors
        super().__init__(params, lr, vectors=vectors, **muon_arguments)
        self._check_private_groups()

    def _scheduled_numbers_suffice(self) -> bool:
        # DP-MuonBC's correction (BiasCorrection) is made from the betas: a new momentum is a new configuration
        return not self.bias_correction and super()._scheduled_numbers_suffice()

    def configure(self, group: Mapping[str, Any]) -> Driver:
        """The group's driver: :func:`lmo.optimizers.dp_muon`'s, i.e. ``private(muon(...))`` with this optimizer's
        :class:`Privatize` (shared by all groups) and, with ``bias_correction``, DP-MuonBC's correction."""
        return private(super().configure(group), self.privacy.privatizer, bias_correction=self.bias_correction,
                       max_correction=self.max_correction)

    def dp_driver(self, group: int = 0) -> Driver:
        """The configuration that this optimizer computes for param group ``group``."""
        return self.configure(self.param_groups[group])


# ---------------------------------------------------------------------------------------------------------------
# per-example gradients and the data-parallel sum
# ---------------------------------------------------------------------------------------------------------------
def _per_example(names: list[str], params: list[torch.Tensor]) -> tuple[list[Any], Exception | None]:
    """Each parameter's per-example gradients ``(B, *p.shape)`` (this rank's examples), or the error that refuses
    them (returned, not raised: under a process group every rank must learn of it first)."""
    samples = []
    for name, p in zip(names, params):
        gs = getattr(p, "grad_sample", None)
        if isinstance(gs, list):
            gs = torch.cat(gs, dim=0)
        if gs is None:
            return [], ValueError(
                f"parameter {name!r} has no per-example gradient (p.grad_sample is None): compute them with "
                "lmo.privacy.per_sample_grads (or Opacus's GradSampleModule), or freeze the parameter "
                "(requires_grad=False)"
            )
        if isinstance(gs, DTensor):
            return [], ValueError(
                f"parameter {name!r}: grad_sample is a DTensor; give this rank's per-example gradients of the "
                f"whole parameter as a plain tensor of shape (B, *{tuple(p.shape)})"
            )
        samples.append(gs)
    batch = samples[0].shape[0]
    for name, p, gs in zip(names, params, samples):
        if tuple(gs.shape) != (batch, *p.shape):
            return [], ValueError(
                f"parameter {name!r}: grad_sample has shape {tuple(gs.shape)}; expected "
                f"({batch}, *{tuple(p.shape)}) (one batch size for all parameters)"
            )
    bad = first_nonfinite(names, samples)
    if bad is not None:
        return [], NonFiniteGradientError(
            f"per-example gradient of parameter {bad!r} holds NaN or Inf; nothing was changed"
        )
    return samples, None


def _agree(problem: Exception | None, group: Any, device: torch.device) -> Exception | None:
    """The same verdict on every rank of ``group``: this rank's own error, or one saying that another rank
    refused its per-example gradients (so that no rank waits forever in the sum that follows)."""
    kinds = (None, ValueError, NonFiniteGradientError)
    code = 0 if problem is None else (2 if isinstance(problem, NonFiniteGradientError) else 1)
    # NCCL reduces device tensors only; gloo takes host ones
    flag = torch.tensor([code], dtype=torch.int32, device=device if dist.get_backend(group) == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    worst = int(flag.item())
    if problem is not None or worst == 0:
        return problem
    return kinds[worst](
        "another rank of the process group refused its per-example gradients (see its error); nothing was changed"
    )


def _all_reduce_sum(tensors: list[torch.Tensor], group: Any) -> None:
    """Sum ``tensors`` over ``group`` in place, one collective per dtype and device (a flat buffer each)."""
    buckets: dict[tuple[Any, Any], list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.dtype, t.device), []).append(i)
    for idx in buckets.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in idx])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for i in idx:
            n = tensors[i].numel()
            tensors[i] = flat[offset : offset + n].view(tensors[i].shape)
            offset += n


def _like(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The gradient ``g`` (the whole parameter's, equal on every rank) laid out like ``p``: a DTensor parameter
    gets its own shard of it, with no communication."""
    if isinstance(p, DTensor):
        return distribute_tensor(g, p.device_mesh, p.placements, src_data_rank=None)
    return g
