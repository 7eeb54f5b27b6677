"""torch.optim adapters: ``torch.optim.Optimizer`` subclasses over the one :class:`~lmo.optimizers.Driver`.

The classes here do bookkeeping only: param groups and their hyperparameters, per-parameter state (so
``state_dict()``/``load_state_dict()`` work as in torch.optim), closures, LR schedulers (``lr`` lives in each param
group), validation of gradients. Each step builds the group's ``Driver`` from the group's hyperparameters and hands
it the parameters, gradients and state: the update itself is computed by the driver and nowhere else.

Guarantees (all classes):

- ``p.grad`` is never modified, and no state tensor shares storage with a gradient (the momentum is a new tensor).
- The step writes into the parameters and their momentum buffers in place, as torch.optim does (no new tensors
  per step; the driver's ``apply(..., inplace=True)``), and steps a group's matrices one oracle group at a time,
  so that its transient memory is about one group's estimates and directions; a driver with a hook after the
  estimator (error feedback, schedule-free, ...) takes the pure step and its results are copied in.
- Sparse and complex gradients (and complex parameters) raise ``ValueError`` naming the parameter.
- Non-finite gradients: ``nonfinite="raise"`` (default) raises :class:`~lmo.optimizers.NonFiniteGradientError`
  naming the parameter before anything is changed (in any group); ``"skip"`` leaves a group with a non-finite
  gradient unchanged for that step; ``"ignore"`` skips the check (no host synchronisation).
- Parameters of a group whose oracle inputs share a shape are orthogonalised in one batched call.
- ``process_group=`` (every class): ``None`` is one process; a ``ProcessGroup`` or 1-D ``DeviceMesh`` shares the
  oracle's work across its ranks (DDP), and DTensor parameters (FSDP2) are handled through their mesh; the step is
  the single-process step (:mod:`lmo.optimizers.distributed`, docs/distributed.md).
- ``param_groups`` may carry ``param_names`` (``Optimizer(model.named_parameters())``); geometry rules then see the
  real parameter names, else ``"<group>.<index>"``.

``state_dict()`` holds, per parameter, ``"step"`` (an int) and the driver's slots (``"momentum_buffer"`` as in
torch.optim.Muon, and hooks' slots). Hyperparameters in ``param_groups`` are numbers, strings and tuples for the
named classes, so ``torch.load(..., weights_only=True)`` reads their checkpoints; ``LMOOptimizer`` groups hold a
geometry (a ``Norm`` or rule) that ``weights_only=True`` does not unpickle: load those with ``weights_only=False``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .configs import NS_COEFFICIENTS, ScionGeometry, lion, muon, sign_sgd, signum
from .distributed import Distribution
from .driver import Driver, NonFiniteGradientError, StepInfo, _hook_slots

__all__ = [
    "LMOOptimizer",
    "Muon",
    "SignSGD",
    "Signum",
    "Lion",
    "Scion",
    "muon_with_adamw",
    "split_muon_params",
    "OptimizerInputs",
]

_ITERATE = "iterate"  # state key of the base iterate when a driver has a gradient-point hook


@dataclasses.dataclass(frozen=True)
class OptimizerInputs:
    """What the generic test suite runs an optimizer class on (declared beside the class, as ``inputs``).

    ``cases``: constructor keywords that must reduce the suite's quadratic (a case may list the norms it needs under
    the key ``"needs"``); ``bad``: ``(keywords, text)`` pairs whose construction must raise ``ValueError`` with
    ``text`` in the message; ``shapes``: the quadratic's parameter shapes.
    """

    cases: tuple[dict[str, Any], ...]
    bad: tuple[tuple[dict[str, Any], str], ...]
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=lambda: {"w": (6, 4), "b": (5,)})


_MATRICES = {"w": (6, 4), "v": (3, 5), "e": (2, 3, 3)}


def _float(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must have one element; got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number; got {name}={value!r}")
    return float(value)


class _DriverOptimizer(torch.optim.Optimizer):
    """Bookkeeping shared by every adapter; a subclass defines ``_driver(group) -> Driver``."""

    def __init__(self, params: Any, defaults: dict[str, Any], process_group: Any = None) -> None:
        # distributed: who shares the oracle's work (lmo.optimizers.distributed); None is one process
        self._distribution = Distribution(process_group)
        super().__init__(params, defaults)
        if any(self._driver(group).point is not None for group in self.param_groups):
            self._init_points()

    # -- what a subclass defines ---------------------------------------------------------------------------------
    def _driver(self, group: dict[str, Any]) -> Driver:
        raise NotImplementedError

    @property
    def distribution(self) -> Distribution:
        """Who shares the oracle's work (from ``process_group=``); ``.last`` records this rank's part of the last
        step (:class:`lmo.optimizers.distributed.StepRecord`)."""
        return self._distribution

    def _gradient(self, p: torch.Tensor) -> torch.Tensor | None:
        """The gradient that a step hands the driver for ``p`` (``None``: ``p`` sits this step out); ``p.grad`` here,
        the privatised gradient in :class:`lmo.optimizers.DPOptimizer`."""
        return p.grad

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as torch.optim does); its hyperparameters and geometry are checked now (``ValueError``)."""
        super().add_param_group(param_group)
        gi = len(self.param_groups) - 1
        group = self.param_groups[gi]
        try:
            driver = self._driver(group)  # rejects bad hyperparameters, with ValueError naming them
            for name, p in zip(self._names(gi, group), group["params"]):
                if torch.is_complex(p):
                    raise ValueError(f"parameter {name!r} is complex; {type(self).__name__} supports real parameters")
                driver.geometry_for(name, tuple(p.shape))  # rejects a geometry that does not fit the parameter
        except Exception:
            self.param_groups.pop()
            raise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state (ours, or e.g. a ``torch.optim.Muon`` checkpoint): hyperparameters that the saved groups lack
        (options of ours that torch's optimizer does not have) keep this optimizer's values for them."""
        current = [{k: v for k, v in group.items() if k != "params"} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, values in zip(self.param_groups, current):
            for key, value in values.items():
                group.setdefault(key, value)

    @staticmethod
    def _names(gi: int, group: dict[str, Any]) -> list[str]:
        names = group.get("param_names")
        if names is not None and len(names) == len(group["params"]):
            return list(names)
        return [f"{gi}.{j}" for j in range(len(group["params"]))]

    def _init_points(self) -> None:
        """With a gradient-point hook, the parameters hold the point ``y`` and the state holds the iterate ``x``."""
        with torch.no_grad():
            for gi, group in enumerate(self.param_groups):
                driver = self._driver(group)
                if driver.point is None:
                    continue
                names, params = self._names(gi, group), list(group["params"])
                slots = []
                for name, p in zip(names, params):
                    state = self.state[p]
                    if not state:
                        state.update(driver.init_slots(name, p))
                        state["step"] = 0
                        state[_ITERATE] = p.detach().clone()
                    slots.append(state)
                step = int(self.state[params[0]]["step"]) if params else 0
                xs = [s[_ITERATE] for s in slots]
                for p, y in zip(params, driver.point_list(names, xs, [_slots(s) for s in slots], step)):
                    p.copy_(y)

    @torch.no_grad()
    def _place(self, evaluation: bool) -> None:
        """Put into the parameters the evaluation points (``eval()``) or the gradient points (``train()``)."""
        for gi, group in enumerate(self.param_groups):
            driver = self._driver(group)
            names, params = self._names(gi, group), list(group["params"])
            live = [(n, p) for n, p in zip(names, params) if _ITERATE in self.state.get(p, {})]
            if driver.point is None or not live:
                continue
            for step in sorted({int(self.state[p]["step"]) for _, p in live}):
                sub = [(n, p) for n, p in live if int(self.state[p]["step"]) == step]
                xs = [self.state[p][_ITERATE] for _, p in sub]
                slots = [_slots(self.state[p]) for _, p in sub]
                sub_names = [n for n, _ in sub]
                if evaluation:
                    info = StepInfo(step, driver.learning_rate(step), tuple(sub_names))
                    ys = driver.point.evaluation_point(xs, _hook_slots(slots, "point"), info)
                else:
                    ys = driver.point_list(sub_names, xs, slots, step)
                for (_, p), y in zip(sub, ys):
                    p.copy_(y)

    def eval(self) -> None:
        """Evaluation mode (as schedule-free optimizers have): with a gradient-point hook (IGT, schedule-free) the
        parameters hold the points at which gradients are taken; ``eval()`` puts the evaluation points there instead
        (the iterate; schedule-free: its average) until :meth:`train`. A no-op for other drivers."""
        if not getattr(self, "_evaluating", False):
            self._place(True)
            self._evaluating = True

    def train(self) -> None:
        """Back to training mode after :meth:`eval`: the parameters hold the gradient points again."""
        if getattr(self, "_evaluating", False):
            self._place(False)
            self._evaluating = False

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of every param group; returns the closure's loss if a closure is given."""
        if getattr(self, "_evaluating", False):
            raise RuntimeError("the optimizer is in eval() mode; call optimizer.train() before step()")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        plans = []
        for gi, group in enumerate(self.param_groups):
            driver = self._driver(group)
            names, params, grads = [], [], []
            for name, p in zip(self._names(gi, group), group["params"]):
                g = self._gradient(p)
                if g is None:
                    continue
                if g.is_sparse:
                    raise ValueError(f"parameter {name!r} has a sparse gradient; {type(self).__name__} needs dense")
                if torch.is_complex(g) or torch.is_complex(p):
                    raise ValueError(f"parameter {name!r} has a complex gradient; {type(self).__name__} needs real")
                names.append(name)
                params.append(p)
                grads.append(g)
            if not params:
                continue
            if driver.nonfinite != "ignore":
                bad = self._distribution.nonfinite(names, grads)  # the same answer on every rank
                if bad is not None:
                    if driver.nonfinite == "skip":
                        continue
                    raise NonFiniteGradientError(
                        f"gradient of parameter {bad!r} (param group {gi}) holds NaN or Inf; nothing was changed "
                        f"(nonfinite='skip' skips such steps)"
                    )
            plans.append((driver, names, params, grads))

        for driver, names, params, grads in plans:
            self._apply(driver.replace(nonfinite="ignore"), names, params, grads)
        return loss

    def _apply(self, driver: Driver, names: list[str], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        fresh = {}
        for name, p in zip(names, params):
            if not self.state[p]:
                slots = driver.init_slots(name, p)
                slots["step"] = 0
                if driver.point is not None:
                    slots[_ITERATE] = p.detach().clone()
                fresh[p] = slots
        by_step: dict[int, list[int]] = {}
        for i, p in enumerate(params):
            state = fresh.get(p, self.state[p])
            by_step.setdefault(int(state.get("step", 0)), []).append(i)
        for step, idx in by_step.items():
            sub_names = [names[i] for i in idx]
            sub_params = [params[i] for i in idx]
            states = [fresh.get(p, self.state[p]) for p in sub_params]
            if driver.stateful:
                for p, s in zip(sub_params, states):
                    if "momentum_buffer" not in s:  # e.g. a state saved with momentum 0, loaded with momentum > 0
                        s["momentum_buffer"] = torch.zeros_like(p)
            xs = [s[_ITERATE] for s in states] if driver.point is not None else sub_params
            # the parameters (or iterates) and momenta are the optimizer's own: the driver may step them in place
            # (it does unless a hook needs the pure step); then y is p and there is nothing to copy
            new_xs, new_slots, _ = driver.apply(
                sub_names, xs, [grads[i] for i in idx], [_slots(s) for s in states], step,
                oracle=self._distribution.oracle(driver, sub_params),  # None: one process, the driver's own
                inplace=True,
            )
            ys = driver.point_list(sub_names, new_xs, new_slots, step + 1) if driver.point is not None else new_xs
            for p, s, x, y, slots in zip(sub_params, states, new_xs, ys, new_slots):
                if y is not p:
                    p.copy_(y)
                state = self.state[p]
                state.update(s)
                state.update(slots)
                state["step"] = step + 1
                if driver.point is not None:
                    state[_ITERATE] = x


def _slots(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in ("step", _ITERATE)}


# ---------------------------------------------------------------------------------------------------------------
# The generic adapter
# ---------------------------------------------------------------------------------------------------------------
_GROUP_FIELDS = ("lr", "beta1", "beta2", "rule", "decay", "radius", "geometry", "nonfinite")


class LMOOptimizer(_DriverOptimizer):
    """Any :class:`~lmo.optimizers.Driver` as a ``torch.optim.Optimizer``.

    ``LMOOptimizer(params, driver)``; param groups may override the driver's ``lr``, ``beta1``, ``beta2``,
    ``rule``, ``decay``, ``radius``, ``geometry`` (a ``Norm``, registry name, ``ParamGeometry`` or rule) and
    ``nonfinite`` by those names. A driver whose ``lr`` is a schedule keeps it (then ``lr`` in the groups is that
    callable and torch's LR schedulers do not apply; give a number to use them).

    >>> import torch, lmo.optimizers as lo
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = lo.LMOOptimizer([w], lo.signum(lr=0.1))
    >>> w.grad = torch.tensor([1.0, -2.0, 0.0]); _ = opt.step()
    >>> w.detach()
    tensor([0.9000, 1.1000, 1.0000])
    """

    def __init__(self, params: Any, driver: Driver, *, process_group: Any = None, **overrides: Any) -> None:
        if not isinstance(driver, Driver):
            raise ValueError(f"LMOOptimizer needs a Driver; got driver={driver!r}")
        if driver.per_example:
            raise ValueError(
                "LMOOptimizer: this driver privatises per-example gradients (its grad_transform is per-example); "
                "use lmo.optimizers.DPOptimizer, which privatises all param groups jointly and accounts for privacy"
            )
        unknown = sorted(set(overrides) - set(_GROUP_FIELDS))
        if unknown:
            raise ValueError(f"LMOOptimizer: unknown hyperparameter(s) {unknown}; groups may set {_GROUP_FIELDS}")
        self.driver = driver
        defaults = {f: getattr(driver, f) for f in _GROUP_FIELDS}
        defaults.update(overrides)
        super().__init__(params, defaults, process_group)

    def _driver(self, group: dict[str, Any]) -> Driver:
        changes = {}
        for f in _GROUP_FIELDS:
            value = group[f]
            if f == "lr" and isinstance(value, torch.Tensor):
                value = _float("lr", value)
            if value is not getattr(self.driver, f):
                changes[f] = value
        return self.driver.replace(**changes) if changes else self.driver


# ---------------------------------------------------------------------------------------------------------------
# Named optimizers
# ---------------------------------------------------------------------------------------------------------------
class Muon(_DriverOptimizer):
    """Muon, a drop-in for ``torch.optim.Muon``: same arguments, same meaning, same trajectory.

    Per parameter (an ``A x B`` matrix) and step, with ``mu = momentum``::

        B <- mu B + (1 - mu) g                         (torch: buf.lerp_(g, 1 - mu))
        C  = mu B + (1 - mu) g   if nesterov else B    (torch: g.lerp(buf, mu))
        W <- (1 - lr wd) W - lr * adjust(A, B) * NS(C) = (1 - lr wd) W + lr * adjust(A, B) * lmo(C)

    ``NS`` is ``ns_steps`` Newton-Schulz iterations with ``ns_coefficients`` after dividing by
    ``max(||C||_F, eps)`` (the spectral geometry's ``method="newton_schulz"``), and ``adjust`` is
    ``adjust_lr_fn``: ``None``/``"original"`` ``sqrt(max(1, A / B))``, ``"match_rms_adamw"`` ``0.2 sqrt(max(A, B))``.
    This is :func:`lmo.optimizers.muon` (the driver with Nesterov's ``(beta1, beta2) = (mu^2, mu)``).

    Rounding: torch.optim.Muon always iterates in bf16. Ours iterates in bf16 where bf16 matrix products are fast
    (CUDA, CPUs with AVX512-BF16/AMX) and in fp32 elsewhere; ``ns_dtype="float32"`` (or ``"bfloat16"``) pins it. With
    ``ns_dtype="float32"`` the trajectory is torch's algorithm in fp32, so it differs from torch.optim.Muon's by
    exactly torch's own bf16-vs-fp32 rounding (tested); a torch.optim.Muon checkpoint loads and continues.

    Beyond torch.optim.Muon (extra keywords ``ns_dtype`` and ``view``, see :class:`lmo.optimizers.MuonGeometry`):

    - ``(E, A, B)`` parameters are ``E`` matrices, each orthogonalised (``view="auto"`` or ``"batch"``);
    - conv kernels ``(O, I, kh, kw)`` are flattened to ``(O, I kh kw)``; ``adjust`` uses that matrix's shape;
      Conv1d kernels ``(O, I, k)`` need ``view="flatten"`` in their group (:func:`muon_with_adamw` does this);
    - same-shape matrices of a group are orthogonalised in one batched call; ``p.grad`` is never modified; a
      non-finite gradient raises (``nonfinite="skip"`` skips the step instead);
    - ``process_group``: DDP's group or the FSDP2 mesh; each rank orthogonalises about ``1 / world`` of the
      matrices (:mod:`lmo.optimizers.distributed`).

    Vectors, embeddings and the output layer belong to AdamW: :func:`muon_with_adamw` splits a model.
    The state (``"momentum_buffer"`` per parameter) has torch.optim.Muon's key.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        ns_dtype: str | None = None,
        view: str = "auto",
        nonfinite: str = "raise",
        process_group: Any = None,
    ) -> None:
        lr_value = _float("lr", lr)
        if not 0.0 <= lr_value:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if adjust_lr_fn is not None and adjust_lr_fn not in ("original", "match_rms_adamw"):
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients),
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            ns_dtype=ns_dtype,
            view=view,
            nonfinite=nonfinite,
        )
        super().__init__(params, defaults, process_group)

    def _driver(self, group: dict[str, Any]) -> Driver:
        momentum, weight_decay = group["momentum"], group["weight_decay"]
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum should be in [0, 1) but is: {momentum!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not 0 <= weight_decay:
            raise ValueError(f"weight decay should be >= 0 but is: {weight_decay!r}")
        return muon(
            lr=_float("lr", group["lr"]),
            beta=group["momentum"],
            nesterov=bool(group["nesterov"]),
            weight_decay=group["weight_decay"],
            ns_coefficients=tuple(group["ns_coefficients"]),
            ns_steps=group["ns_steps"],
            eps=group["eps"],
            adjust_lr=group["adjust_lr_fn"],
            ns_dtype=group["ns_dtype"],
            view=group["view"],
            nonfinite=group["nonfinite"],
        )


Muon.inputs = OptimizerInputs(
    cases=(
        {"lr": 0.1, "weight_decay": 0.0, "needs": ("spectral",)},
        {"lr": 0.1, "nesterov": False, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.01,
         "needs": ("spectral",)},
    ),
    bad=(
        ({"lr": -1.0}, "Learning rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -0.1}, "weight decay"),
        ({"adjust_lr_fn": "bogus"}, "bogus"),
        ({"view": "sideways"}, "view"),
    ),
    shapes=_MATRICES,
)


class SignSGD(_DriverOptimizer):
    """SignSGD: ``p <- (1 - lr wd) p - lr sign(g)`` (:func:`lmo.optimizers.sign_sgd`)."""

    def __init__(
        self, params: Any, lr: float = 1e-3, weight_decay: float = 0.0, *, nonfinite: str = "raise",
        process_group: Any = None,
    ) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, nonfinite=nonfinite), process_group)

    def _driver(self, group: dict[str, Any]) -> Driver:
        return sign_sgd(_float("lr", group["lr"]), weight_decay=group["weight_decay"], nonfinite=group["nonfinite"])


SignSGD.inputs = OptimizerInputs(
    cases=({"lr": 0.05}, {"lr": 0.05, "weight_decay": 0.01}),
    bad=(({"lr": -1.0}, "lr"), ({"weight_decay": -1.0}, "decay"), ({"nonfinite": "maybe"}, "nonfinite")),
)


class Signum(_DriverOptimizer):
    """Signum: ``m <- mu m + (1 - mu) g``, ``p <- (1 - lr wd) p - lr sign(m)`` (:func:`lmo.optimizers.signum`).

    ``momentum`` is the usual factor ``mu`` (default 0.9)."""

    def __init__(
        self, params: Any, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0, *,
        nonfinite: str = "raise", process_group: Any = None,
    ) -> None:
        super().__init__(
            params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nonfinite=nonfinite), process_group
        )

    def _driver(self, group: dict[str, Any]) -> Driver:
        return signum(
            _float("lr", group["lr"]), beta=group["momentum"], weight_decay=group["weight_decay"],
            nonfinite=group["nonfinite"],
        )


Signum.inputs = OptimizerInputs(
    cases=({"lr": 0.05}, {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.01}),
    bad=(({"momentum": 1.0}, "beta"), ({"lr": float("inf")}, "lr")),
)


class Lion(_DriverOptimizer):
    """Lion (Chen et al., 2023): ``c = b1 m + (1 - b1) g``, ``p <- (1 - lr wd) p - lr sign(c)``,
    ``m <- b2 m + (1 - b2) g`` (:func:`lmo.optimizers.lion`). Weight decay is decoupled and multiplied by ``lr``,
    as in the paper and lion-pytorch."""

    def __init__(
        self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, *,
        nonfinite: str = "raise", process_group: Any = None,
    ) -> None:
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, nonfinite=nonfinite), process_group
        )

    def _driver(self, group: dict[str, Any]) -> Driver:
        return lion(
            _float("lr", group["lr"]), betas=tuple(group["betas"]), weight_decay=group["weight_decay"],
            nonfinite=group["nonfinite"],
        )


Lion.inputs = OptimizerInputs(
    cases=({"lr": 0.05}, {"lr": 0.05, "betas": (0.95, 0.98), "weight_decay": 0.1}),
    bad=(({"betas": (0.9, 1.0)}, "beta2"), ({"betas": (-0.1, 0.9)}, "beta1"), ({"weight_decay": -1.0}, "decay")),
)


class Scion(_DriverOptimizer):
    """Scion, a drop-in for the reference implementation (LIONS-EPFL/scion): same constructor, same group keys.

    .. warning::
       ``momentum`` is **one minus** the usual momentum factor, as in the reference: ``momentum=0.1`` means
       ``m <- 0.9 m + 0.1 g``. The default ``momentum=1.0`` means no momentum (``m = g``).

    Per parameter, with ``a = momentum`` and ``rho = scale * (the norm's shape factor)``::

        m <- (1 - a) m + a g
        p <- (1 - lr) p + lr * rho * lmo(m)      (unconstrained=False: a Frank-Wolfe step, needs lr <= 1)
        p <- p + lr * rho * lmo(m)               (unconstrained=True)

    ``norm``: a Scion name (``Spectral``, ``Sign``, ``ColNorm``, ``RowNorm``, ``BiasRMS``, ``SpectralConv``,
    ``Auto``) with ``norm_kwargs`` as in the reference (see :data:`lmo.optimizers.SCION_NORMS`), or one of our
    registry names (with ``norm_kwargs`` as its parameters) or a ``Norm`` instance. ``scale``: the radius.
    The reference's ``init()`` (weight initialisation) is not provided: initialise the model yourself.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 1.0,
        norm: Any = "Auto",
        norm_kwargs: dict[str, Any] | None = None,
        scale: float = 1.0,
        unconstrained: bool = False,
        *,
        nonfinite: str = "raise",
        process_group: Any = None,
    ) -> None:
        if _float("lr", lr) < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        defaults = dict(
            lr=lr, momentum=momentum, norm=norm, norm_kwargs=dict(norm_kwargs or {}), scale=scale,
            unconstrained=unconstrained, nonfinite=nonfinite,
        )
        super().__init__(params, defaults, process_group)

    def _driver(self, group: dict[str, Any]) -> Driver:
        momentum = group["momentum"]
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ValueError(
                f"momentum must be in (0, 1]: Scion's momentum is ONE MINUS the usual factor (0.1 means beta 0.9; "
                f"1 means none); got momentum={momentum!r}"
            )
        beta = 1.0 - float(momentum)
        geometry = ScionGeometry(group["norm"], dict(group["norm_kwargs"] or {}), group["scale"])
        return Driver(
            geometry=geometry,
            lr=_float("lr", group["lr"]),
            beta1=beta,
            beta2=beta,
            decay=0.0 if group["unconstrained"] else 1.0,
            nonfinite=group["nonfinite"],
        )


Scion.inputs = OptimizerInputs(
    cases=(
        {"lr": 0.1, "momentum": 0.1, "scale": 10.0, "needs": ("spectral",)},
        {"lr": 0.1, "momentum": 0.5, "norm": "RowNorm", "scale": 10.0},
        {"lr": 0.1, "momentum": 0.5, "norm": "ColNorm", "scale": 10.0},
        {"lr": 0.1, "momentum": 1.0, "norm": "Sign", "norm_kwargs": {"normalized": False}, "unconstrained": True},
        {"lr": 0.1, "momentum": 0.1, "norm": "sign", "unconstrained": True},
    ),
    bad=(
        ({"momentum": 0.0}, "ONE MINUS"),
        ({"momentum": 1.5}, "momentum"),
        ({"lr": 2.0}, "lr"),
        ({"norm": "Frobenius"}, "Frobenius"),
        ({"norm": "Sign", "norm_kwargs": {"steps": 3}}, "steps"),
        ({"scale": 0.0}, "scale"),
    ),
    shapes={"w": (6, 4), "v": (3, 5)},
)


# ---------------------------------------------------------------------------------------------------------------
# Muon for the hidden matrices, AdamW for the rest
# ---------------------------------------------------------------------------------------------------------------
_OUTPUT_NAMES = ("lm_head", "head", "output", "classifier", "fc_out")


def split_muon_params(
    model: torch.nn.Module, *, output: Iterable[str] | None = None
) -> tuple[list[tuple[str, torch.nn.Parameter]], list[tuple[str, torch.nn.Parameter]],
           list[tuple[str, torch.nn.Parameter]]]:
    """Split a model's trainable parameters into ``(muon, muon_conv1d, adamw)`` lists of ``(name, parameter)``.

    To AdamW: every parameter with fewer than 2 axes (biases, norms' gains, scalars), every parameter of an
    ``nn.Embedding`` / ``nn.EmbeddingBag``, and the output layer's parameters. The output layer is the modules named
    in ``output`` (module names as in ``model.named_modules()``); by default, the modules whose last name component
    contains one of ``lm_head``, ``head``, ``output``, ``classifier``, ``fc_out``, or, if none does, the last
    ``nn.Linear`` of the model. A parameter tied to an embedding or the output (the same tensor) goes to AdamW.
    To Muon: all other parameters (matrices, batches of matrices, conv kernels); Conv1d kernels are listed apart
    (they need ``view="flatten"``).
    """
    embed_types = (torch.nn.Embedding, torch.nn.EmbeddingBag)
    modules = dict(model.named_modules())
    if output is None:
        out_names = [n for n in modules if n and any(k in n.split(".")[-1] for k in _OUTPUT_NAMES)]
        if not out_names:
            linears = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear)]
            out_names = linears[-1:]
    else:
        out_names = list(output)
        missing = [n for n in out_names if n not in modules]
        if missing:
            raise ValueError(f"output names {missing} are not modules of the model")
    to_adamw: set[int] = set()
    conv1d: set[int] = set()
    for name, module in modules.items():
        if isinstance(module, embed_types) or name in out_names:
            to_adamw.update(id(p) for p in module.parameters(recurse=True))
        if isinstance(module, torch.nn.Conv1d):
            conv1d.update(id(p) for p in module.parameters(recurse=False))
    muon_params, conv_params, adamw_params = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in to_adamw:
            adamw_params.append((name, p))
        elif id(p) in conv1d:
            conv_params.append((name, p))
        else:
            muon_params.append((name, p))
    return muon_params, conv_params, adamw_params


def muon_with_adamw(
    model: torch.nn.Module,
    *,
    lr: float = 0.02,
    weight_decay: float = 0.1,
    adamw_lr: float = 3e-4,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    adamw_weight_decay: float = 0.01,
    output: Iterable[str] | None = None,
    **muon_kwargs: Any,
) -> tuple[Muon, torch.optim.AdamW]:
    """Two optimizers for ``model``: :class:`Muon` for its hidden matrices and ``torch.optim.AdamW`` for the rest.

    The split is :func:`split_muon_params` (vectors, embeddings and the output layer to AdamW). Step, zero and
    schedule both optimizers (``for opt in optimizers: opt.step()``); each has its own ``state_dict``. Parameter
    names are passed to both (``param_names`` in their groups). ``muon_kwargs`` go to :class:`Muon`.

    >>> muon_opt, adamw_opt = muon_with_adamw(model, lr=0.02, adamw_lr=3e-4)      # doctest: +SKIP
    """
    muon_params, conv1d_params, adamw_params = split_muon_params(model, output=output)
    groups: list[dict[str, Any]] = []
    if muon_params:
        groups.append({"params": [p for _, p in muon_params], "param_names": [n for n, _ in muon_params]})
    if conv1d_params:
        groups.append(
            {"params": [p for _, p in conv1d_params], "param_names": [n for n, _ in conv1d_params], "view": "flatten"}
        )
    if not groups:
        raise ValueError("the model has no parameter for Muon (no matrices outside embeddings and the output layer)")
    muon_opt = Muon(groups, lr=lr, weight_decay=weight_decay, **muon_kwargs)
    if not adamw_params:
        raise ValueError("the model has no parameter for AdamW; use Muon alone")
    adamw_opt = torch.optim.AdamW(
        [{"params": [p for _, p in adamw_params], "param_names": [n for n, _ in adamw_params]}],
        lr=adamw_lr,
        betas=adamw_betas,
        weight_decay=adamw_weight_decay,
    )
    return muon_opt, adamw_opt
