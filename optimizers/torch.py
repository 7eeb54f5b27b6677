"""torch.optim adapters: ``torch.optim.Optimizer`` subclasses over the one :class:`~lmo.optimizers.Driver`.

The classes here do bookkeeping only: param groups and their hyperparameters, per-parameter state (so
``state_dict()``/``load_state_dict()`` work as in torch.optim), closures, LR schedulers (``lr`` lives in each param
group), validation of gradients. A named class is a table from its torch arguments to a configuration
(``arguments``, e.g. ``momentum -> beta``): :meth:`~DriverOptimizer.configure` builds the group's driver from it.

Resolve once, step simply: each param group's :class:`~lmo.optimizers.step.Plan` (each parameter's geometry, view
and radius, the same-shape batches, the validated hyperparameters) is made when the group is added and kept until
a hyperparameter that it resolves changes (or the group's parameters do; a new momentum or weight decay only
replaces its driver: ``Driver.plans_like``); each step first checks the groups' hyperparameters against their
plans (a step traced by ``torch.compile`` reads the numbers a scheduler moves from the group: ``scheduled``).
``step()`` reads each group's ``lr`` -- a number, or a one-element tensor that schedulers update in place and
that is never read on the host (taken as a 0-d view; whatever was set in ``param_groups`` is checked before
anything is written) -- checks all gradients at once, then runs :func:`lmo.optimizers.step.run_step` per group::

    Optimizer.step -> DriverOptimizer._step_group -> run_step (estimator, one batched oracle, update)

Guarantees (all classes):

- ``p.grad`` is never modified, and no state tensor shares storage with a gradient (the momentum is a new tensor).
- A step writes into the parameters and their momentum buffers in place, as torch.optim does (no new tensors per
  step), one oracle batch at a time (the transient memory of torch.optim.Muon's per-parameter loop); a driver with
  a hook after the estimator (error feedback, schedule-free, ...) takes the pure step and its results are copied in.
- A step either completes for every parameter or changes nothing: gradients and momenta are checked (sparse,
  complex, shape, finiteness -- one test on the device for all of them, in all groups, read once) before the first
  write. Complex parameters and sparse gradients raise :class:`UnsupportedParameterError` (a ``ValueError`` and the
  ``RuntimeError`` torch.optim raises) at the step, as torch.optim does; ``load_state_dict`` refuses a state that
  does not fit (see there).
- Non-finite gradients: ``nonfinite="raise"`` (default) raises :class:`~lmo.optimizers.NonFiniteGradientError`
  naming the parameter; ``"skip"`` skips the whole step (every group); ``"ignore"`` skips the check.
- ``process_group=`` (every class): ``None`` is one process; a ``ProcessGroup`` or 1-D ``DeviceMesh`` shares the
  oracle's work across its ranks (DDP), and DTensor parameters (FSDP2) are handled through their mesh; the step is
  the single-process step (:mod:`lmo.optimizers.distributed`, docs/distributed.md).
- ``param_groups`` may carry ``param_names`` (``Optimizer(model.named_parameters())``); geometry rules then see the
  real parameter names, else ``"<group>.<index>"``.
- ``torch.compile(optimizer.step)`` with a tensor ``lr`` compiles once under an LR scheduler, and once more, on the
  second step, under one that also cycles the momentum (where torch.optim.Muon's step recompiles for every new
  momentum); with ``nonfinite="ignore"`` the step is one graph (``fullgraph=True``; docs/optimizers.md).

``state_dict()`` holds, per parameter, ``"step"`` (a 0-d float32 tensor, as torch.optim.Adam's) and the driver's
slots (``"momentum_buffer"`` as in torch.optim.Muon, and hooks' slots). Hyperparameters in ``param_groups`` are
numbers, strings and tuples for the named classes, so ``torch.load(..., weights_only=True)`` reads their checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch

from . import _foreach, validation
from .configs import NS_COEFFICIENTS, ScionGeometry, lion, muon, muon_betas, scion, sign_sgd, signum, uscion
from .distributed import Distribution
from .driver import MOMENTUM, Driver, NonFiniteGradientError, StepInfo, checked_step_numbers, hook_slots
from .step import Plan, build_plan, run_step
from .validation import renamed

__all__ = [
    "DriverOptimizer",
    "LMOOptimizer",
    "Muon",
    "SignSGD",
    "Signum",
    "Lion",
    "Scion",
    "muon_with_adamw",
    "split_muon_params",
    "OptimizerInputs",
    "UnsupportedParameterError",
]

ITERATE = "iterate"  # state key of the base iterate when a driver has a gradient-point hook
_NOT_HYPERPARAMETERS = ("params", "param_names", "lr")  # what does not make a group's plan stale


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


MATRIX_SHAPES = {"w": (6, 4), "v": (3, 5), "e": (2, 3, 3)}


@dataclasses.dataclass(eq=False)
class _GroupPlan:
    """A group's plan and what it was made from (the hyperparameters other than lr, the parameters)."""

    hyperparameters: dict[str, Any]
    params: tuple[int, ...]
    plan: Plan
    bound: bool = False  # its geometry rule was bound to all the optimizer's parameters (Driver.for_parameters)


@dataclasses.dataclass(eq=False)
class _GroupStep:
    """One group's part of a step, gathered and checked before anything is written."""

    index: int
    group: dict[str, Any]
    plan: Plan
    names: list[str]
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    lr: Any  # the group's lr as the step uses it (_step_lr)


class UnsupportedParameterError(ValueError, RuntimeError):
    """A complex parameter or a sparse gradient: a ``ValueError`` (this library's refusals) and the
    ``RuntimeError`` that torch.optim raises for them, at the step."""


#: ``fn`` never traced by ``torch.compile`` (its calls run as written); the compiler is imported on the first call
untraced = getattr(torch, "_disable_dynamo", None) or torch.compiler.disable


def _configured_lr(lr: Any) -> Any:
    """The lr a group's driver is remade with once the group's lr was checked: a tensor lr is not read again (a
    host sync per step under a momentum schedule; the step reads the tensor itself), so 0.0 stands in for it."""
    return 0.0 if isinstance(lr, torch.Tensor) else lr


def _arguments(table: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, Any]:
    """The group defaults of a named class: its constructor's values of the torch arguments in ``table``."""
    return {name: values[name] for name in table}


class DriverOptimizer(torch.optim.Optimizer):
    """Bookkeeping shared by every adapter.

    A named class gives ``configuration`` (a factory of :mod:`lmo.optimizers.configs`) and ``arguments``, a table
    from its torch argument names (the param-group keys) to the configuration's keywords; ``messages`` may give
    torch's own wording of an error by torch name (``"{name}"``, ``"{value}"``). Hyperparameters are validated by
    the configuration (the one place), and its errors name the torch argument.
    """

    configuration: ClassVar[Callable[..., Driver]]
    arguments: ClassVar[Mapping[str, str]] = {}
    messages: ClassVar[Mapping[str, str]] = {}
    #: torch names whose ``messages`` compare numbers ("... should be >= 0 but is: ..."): that wording is used for
    #: numbers and tensors, and any other value (a string, None) gets this library's message, which says what is
    #: expected (torch itself raises a bare TypeError there)
    compared: ClassVar[frozenset[str]] = frozenset()
    accepts_private_drivers: ClassVar[bool] = False  # drivers that take per-example gradients: the DP classes
    #: the group keys of the numbers that the step reads at every step besides ``lr`` (what schedulers move:
    #: torch's ``OneCycleLR`` and ``CyclicLR`` cycle ``momentum`` or ``betas[0]``), which :meth:`step_numbers` maps
    #: to the driver's; empty: none known (see :meth:`step`)
    scheduled: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: Any, defaults: dict[str, Any], process_group: Any = None) -> None:
        # distributed: who shares the oracle's work (lmo.optimizers.distributed); None is one process
        self._distribution = Distribution(process_group)
        self._plans: dict[int, _GroupPlan] = {}
        # the momenta as the last step left them: id -> (weak reference, torch's version counter); see _finite
        self._written: dict[int, tuple[weakref.ref, int]] = {}
        lr = defaults.get("lr")
        if lr is not None and not callable(lr):  # first, as torch.optim does (its errors come in this order)
            with renamed({"lr": ("lr", lr, self._wording("lr", lr))}):
                validation.learning_rate("lr", lr)
        super().__init__(params, defaults)
        if any(self.configure(group).point is not None for group in self.param_groups):
            self._init_points()

    # -- copies ----------------------------------------------------------------------------------------------------
    _TRANSIENT: ClassVar[tuple[str, ...]] = ("_plans", "_written")  # rebuilt by the next step

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the plans and the record of the last step's momenta: ``copy.deepcopy`` and ``pickle``
        give an optimizer that steps as this one (torch.optim's own state, ``defaults``, ``state`` and
        ``param_groups``, leaves out what the constructor built, such as the distribution)."""
        return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for name in self._TRANSIENT:  # both are dicts, empty until the next step
            setattr(self, name, {})

    # -- the configuration ---------------------------------------------------------------------------------------
    def configure(self, group: Mapping[str, Any]) -> Driver:
        """The driver that this optimizer computes for the param group ``group`` (its hyperparameters validated:
        ``ValueError`` naming the torch argument)."""
        kwargs = {keyword: group[name] for name, keyword in self.arguments.items()}
        names = {keyword: (name, group[name], self._wording(name, group[name]))
                 for name, keyword in self.arguments.items()}
        with renamed(names):
            return type(self).configuration(**kwargs)

    def step_numbers(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The driver's ``beta1``, ``beta2`` and ``decay`` from the group's :attr:`scheduled` values, for a step
        traced by ``torch.compile`` (arithmetic only: a value that a scheduler moves is a graph input there)."""
        raise NotImplementedError(f"{type(self).__name__} declares no scheduled numbers")

    def _wording(self, name: str, value: Any) -> str | None:
        """torch's wording of an error in the torch argument ``name`` (``messages``), if it fits ``value``."""
        message = self.messages.get(name)
        if name in self.compared and not (validation.is_number(value) or hasattr(value, "shape")):
            return None
        return message

    @property
    def distribution(self) -> Distribution:
        """Who shares the oracle's work (from ``process_group=``); ``.last`` records this rank's part of the last
        step (:class:`lmo.optimizers.distributed.StepRecord`)."""
        return self._distribution

    def _gradient(self, p: torch.Tensor) -> torch.Tensor | None:
        """The gradient that a step hands the driver for ``p`` (``None``: ``p`` sits this step out); ``p.grad`` here,
        the privatised gradient in the private optimizers."""
        return p.grad

    def _transformed(self) -> tuple[bool, float | None]:
        """Whether :meth:`_gradient` gives gradients that passed the drivers' ``grad_transform`` already, and the
        noise std it released (the private optimizers privatise all groups together); here, no."""
        return False, None

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as torch.optim does); its hyperparameters and geometry are checked now (``ValueError``)."""
        super().add_param_group(param_group)
        gi = len(self.param_groups) - 1
        group = self.param_groups[gi]
        try:
            self._plan(gi, group, self._names(gi, group), list(group["params"]))  # rejects an unfit geometry
        except Exception:
            self.param_groups.pop()
            self._plans.pop(gi, None)
            raise
        for j, kept in list(self._plans.items()):  # a rule that sees all parameters now sees the new ones too
            if j != gi and kept.bound:
                del self._plans[j]
                self._plan(j, self.param_groups[j], self._names(j, self.param_groups[j]),
                           list(self.param_groups[j]["params"]))

    # -- checkpoints -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, plus ``"optimizer"``: the class that saved it (a checkpoint of another optimizer is
        refused by :meth:`load_state_dict`). Every value is a tensor, number, string or tuple: ``torch.load(...,
        weights_only=True)`` reads it; what a constructor builds (drivers, geometries, hooks) is not saved."""
        state = super().state_dict()
        state["param_groups"] = [{k: v for k, v in group.items() if _saved(k, v)} for group in state["param_groups"]]
        state["optimizer"] = type(self).__name__
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state (ours, or a ``torch.optim.Muon`` checkpoint into :class:`Muon`), after checking, before
        changing anything, that it fits this optimizer and its parameters: the optimizer it was saved by, the
        groups' hyperparameters (as the constructor checks them), every state key, and each buffer's shape, dtype
        (floating) and finiteness, and the step counts. A refusal is a ``ValueError`` naming the group, the
        parameter (index and name), the key and the shapes; the optimizer is then exactly as it was.
        Hyperparameters that the saved groups lack (options of ours that torch's optimizer does not have) keep this
        optimizer's values for them."""
        state_dict = dict(state_dict)
        kind = state_dict.pop("optimizer", None)
        self._check_state_dict(kind, state_dict)
        current = [{k: v for k, v in group.items() if k != "params"} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, values in zip(self.param_groups, current):
            for key, value in values.items():
                group.setdefault(key, value)
        for state in self.state.values():  # a step saved as a number (older checkpoints) becomes a counter
            if not isinstance(state.get("step"), torch.Tensor) and "step" in state:
                state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
        self._plans.clear()
        self._written.clear()

    def _check_state_dict(self, kind: Any, state_dict: Mapping[str, Any]) -> None:
        me = type(self).__name__
        if kind is not None and kind != me:
            raise ValueError(f"this state was saved by {kind}; a {me} loads only its own state"
                             + (" (or torch.optim.Muon's)" if isinstance(self, Muon) else ""))
        groups, state = state_dict.get("param_groups"), state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(state, Mapping):
            raise ValueError("a state dict has 'param_groups' (a list) and 'state' (a dict); got keys "
                             f"{sorted(state_dict)}")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state has {len(groups)} param groups; this {me} has {len(self.param_groups)}")
        known = set(self.defaults) | {"params", "param_names"} | _SCHEDULER_KEYS
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            params = list(group["params"])
            if len(saved.get("params", ())) != len(params):
                raise ValueError(f"param group {gi}: the state holds {len(saved.get('params', ()))} parameters, this "
                                 f"group {len(params)}")
            foreign = sorted(set(saved) - known)
            if foreign:
                raise ValueError(f"param group {gi}: {foreign} are not hyperparameters of {me}: the state of another "
                                 f"optimizer (its keys: {sorted(saved)})")
            merged = {**group, **{k: v for k, v in saved.items() if k not in ("params", "param_names")}}
            driver = self.configure(merged)  # the hyperparameters as the constructor checks them
            names = self._names(gi, group)
            for j, (pid, p, name) in enumerate(zip(saved["params"], params, names)):
                if pid in state:
                    _check_param_state(f"param group {gi}, parameter {j} ({name!r})", state[pid], p, driver, name)

    @staticmethod
    def _names(gi: int, group: Mapping[str, Any]) -> list[str]:
        names = group.get("param_names")
        if names is not None and len(names) == len(group["params"]):
            return list(names)
        return [f"{gi}.{j}" for j in range(len(group["params"]))]

    def _hyperparameters(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """What a group's plan is made from besides its parameters: the constructor's hyperparameters other than lr
        (not what LR schedulers add to a group, "initial_lr", ...)."""
        return {k: group[k] for k in self.defaults if k not in _NOT_HYPERPARAMETERS and k in group}

    def _scheduled_numbers_suffice(self) -> bool:
        """Whether a group whose :attr:`scheduled` numbers alone changed is served by its kept driver with the new
        numbers (:meth:`step_numbers`): the class declares them, and its ``configure`` derives nothing else from
        them (a class whose configuration builds a hook from them says no, see :class:`DPMuon`)."""
        return bool(self.scheduled)

    def _reads_scheduled(self) -> bool:
        """Whether this step reads the :attr:`scheduled` numbers from the groups (:meth:`step_numbers`): traced by
        ``torch.compile``, for a class whose scheduled numbers suffice."""
        return self._scheduled_numbers_suffice() and _foreach.compiling()

    def _structure(self, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        """The hyperparameters that a traced step compares with its plan's: all but the :attr:`scheduled` ones."""
        return {k: v for k, v in hyperparameters.items() if k not in self.scheduled}

    def _driver(self, group: Mapping[str, Any], checked_lr: bool) -> tuple[Driver, bool]:
        """The group's driver, bound to all of this optimizer's parameters (a rule that sees the whole parameter
        list, to find the last layer, sees all of them in order, not only this group's, nor only the ones with a
        gradient now), and whether it was bound so. ``checked_lr``: the group's lr was checked when the group was
        made (:func:`_configured_lr`)."""
        if checked_lr:
            group = {**group, "lr": _configured_lr(group["lr"])}
        driver = self.configure(group)
        bound = driver.for_parameters([n for j, g in enumerate(self.param_groups) for n in self._names(j, g)],
                                      [p.shape for g in self.param_groups for p in g["params"]])
        return bound, bound is not driver

    def _refresh(self) -> None:
        """Bring each kept plan up to date with its group's hyperparameters, before a step reads or writes anything
        (a bad value set in ``param_groups`` is refused here): when only numbers that the step reads changed (a
        momentum schedule: ``Driver.plans_like``) the plan, its memory included, serves with the new driver;
        otherwise it is dropped, and :meth:`_plan` makes a new one. Host work on Python values: traced by
        ``torch.compile``, every new momentum would recompile the step. A traced step of a class that declares its
        :attr:`scheduled` numbers reads those from the group instead (:meth:`step_numbers`, no graph break:
        ``fullgraph=True`` works) and :meth:`_plan` compares the rest; any other class runs this untraced."""
        for gi, group in enumerate(self.param_groups):
            kept = self._plans.get(gi)
            if kept is None:
                continue
            hyperparameters = self._hyperparameters(group)
            if kept.hyperparameters == hyperparameters:
                continue
            driver = self._rescheduled(kept.plan.driver, kept.hyperparameters, hyperparameters, group)
            if driver is None:
                driver, _ = self._driver(group, checked_lr=True)
            if driver.plans_like(kept.plan.driver):
                plan = dataclasses.replace(kept.plan, driver=driver)
                self._plans[gi] = _GroupPlan(hyperparameters, kept.params, plan, kept.bound)
            else:
                del self._plans[gi]

    def _rescheduled(self, driver: Driver, before: Mapping[str, Any], hyperparameters: Mapping[str, Any],
                     group: Mapping[str, Any]) -> Driver | None:
        """``driver`` (made from the hyperparameters ``before``) with the group's :attr:`scheduled` numbers
        (:meth:`step_numbers`), when nothing else changed and the numbers pass the driver's checks
        (``Driver.replace`` validates as a new driver): what :meth:`configure` makes of the group, without remaking
        its geometry (under ``OneCycleLR``, which moves the momentum at every step, configuring took 0.21 ms of a
        3.5 ms eager step at width 64; this 0.09 ms). ``None`` otherwise: the caller configures the group, and a bad
        value gets its message worded for the torch argument."""
        if not self._scheduled_numbers_suffice() or self._structure(before) != self._structure(hyperparameters):
            return None
        try:
            return driver.replace(lr=_configured_lr(group["lr"]), **self.step_numbers(group))
        except validation.HyperparameterError:
            return None

    # torch.compiler.disable, made on the first call: importing the compiler costs a second, which an optimizer
    # that is never compiled does not pay (torch.optim.Optimizer's own untraced methods are made so)
    _refresh_untraced = untraced(_refresh)

    def _plan(self, gi: int, group: Mapping[str, Any], names: list[str], params: list[torch.Tensor]) -> Plan:
        """The group's plan for these parameters: kept while its parameters stay the same and its hyperparameters
        (which :meth:`_refresh` sees to; a traced step compares those but the scheduled ones itself)."""
        ids = tuple(map(id, params))
        kept = self._plans.get(gi)
        stale = kept is not None and self._reads_scheduled() \
            and self._structure(kept.hyperparameters) != self._structure(self._hyperparameters(group))
        if kept is None or kept.params != ids or stale:
            driver, bound = self._driver(group, checked_lr=kept is not None)
            plan = build_plan(driver, names, params, complex_later=True)  # refused at the step (_gather)
            kept = _GroupPlan(self._hyperparameters(group), ids, plan, bound)
            self._plans[gi] = kept
        return kept.plan

    # -- gradient points (IGT, schedule-free) --------------------------------------------------------------------
    def _init_points(self) -> None:
        """With a gradient-point hook, the parameters hold the point ``y`` and the state holds the iterate ``x``."""
        with torch.no_grad():
            for gi, group in enumerate(self.param_groups):
                driver = self.configure(group)
                if driver.point is None:
                    continue
                names, params = self._names(gi, group), list(group["params"])
                for name, p in zip(names, params):
                    state = self.state[p]
                    if not state:
                        state.update(driver.init_slots(name, p))
                        state["step"] = _step_counter()
                        state[ITERATE] = p.detach().clone()
                step = int(self.state[params[0]]["step"]) if params else 0
                xs = [self.state[p][ITERATE] for p in params]
                for p, y in zip(params, driver.point_list(names, xs, [self.state[p] for p in params], step)):
                    p.copy_(y)

    @torch.no_grad()
    def _place(self, evaluation: bool) -> None:
        """Put into the parameters the evaluation points (``eval()``) or the gradient points (``train()``)."""
        for gi, group in enumerate(self.param_groups):
            driver = self.configure(group)
            names, params = self._names(gi, group), list(group["params"])
            live = [(n, p) for n, p in zip(names, params) if ITERATE in self.state.get(p, {})]
            if driver.point is None or not live:
                continue
            for step in sorted({int(self.state[p]["step"]) for _, p in live}):
                sub = [(n, p) for n, p in live if int(self.state[p]["step"]) == step]
                xs = [self.state[p][ITERATE] for _, p in sub]
                states = [self.state[p] for _, p in sub]
                sub_names = [n for n, _ in sub]
                if evaluation:
                    info = StepInfo(step, driver.learning_rate(step), tuple(sub_names))
                    ys = driver.point.evaluation_point(xs, hook_slots(states, "point"), info)
                else:
                    ys = driver.point_list(sub_names, xs, states, step)
                for (_, p), y in zip(sub, ys):
                    p.copy_(y)

    def kept_nbytes(self) -> int:
        """Bytes the optimizer keeps between steps besides its state: per param group, the stacked estimates and the
        oracle's workspace (:attr:`lmo.optimizers.step.Plan.kept_nbytes`), allocated on the first step so that no
        step maps fresh memory (benchmarks/optimizer_memory.py)."""
        return sum(kept.plan.kept_nbytes for kept in self._plans.values())

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

    # -- the step ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of every param group; returns the closure's loss if a closure is given."""
        if getattr(self, "_evaluating", False):
            raise RuntimeError("the optimizer is in eval() mode; call optimizer.train() before step()")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not _foreach.compiling():
            self._refresh()
        elif not self._scheduled_numbers_suffice():  # the numbers that move are unknown, or not all: a graph break
            self._refresh_untraced()
        # indices, not enumerate(): traced, a refusal raised in _gather is a graph break, at which dynamo saves the
        # live iterator, and its walk of enumerate's generator (a polyfill, with its module's globals) exceeded
        # Python's recursion limit in a test process with many modules loaded
        work = []
        for gi in range(len(self.param_groups)):
            w = self._gather(gi, self.param_groups[gi])
            if w is not None:
                work.append(w)
        if self._finite(work):
            for w in work:
                self._step_group(w)
        return loss

    def _gather(self, gi: int, group: dict[str, Any]) -> _GroupStep | None:
        """The group's parameters with a gradient, their gradients (checked) and its plan; nothing is written."""
        names, params, grads = [], [], []
        states = self.state
        for name, p in zip(self._names(gi, group), group["params"]):
            g = self._gradient(p)
            if g is None:
                continue
            if torch.is_complex(p) or torch.is_complex(g):
                raise UnsupportedParameterError(f"{type(self).__name__} does not support complex parameters: "
                                                f"parameter {name!r} is {p.dtype}")
            if g.is_sparse:
                raise UnsupportedParameterError(f"{type(self).__name__} does not support sparse gradients: "
                                                f"parameter {name!r} has one")
            if g.shape != p.shape:
                raise ValueError(f"parameter {name!r}: gradient shape {tuple(g.shape)} != shape {tuple(p.shape)}")
            state = states.get(p)  # not states[p]: a defaultdict would add an empty state
            m = state.get(MOMENTUM) if state else None
            if m is not None and m.shape != p.shape:
                raise ValueError(f"parameter {name!r}: momentum_buffer has shape {tuple(m.shape)} != shape "
                                 f"{tuple(p.shape)}")
            names.append(name)
            params.append(p)
            grads.append(g)
        if not params:
            return None
        plan = self._plan(gi, group, names, params)
        if self._reads_scheduled():
            self._check_scheduled(gi, group)  # now; read again after the graph break (not carried over it)
        return _GroupStep(gi, group, plan, names, params, grads, _step_lr(gi, group["lr"], plan.driver))

    def _check_scheduled(self, index: int, group: Mapping[str, Any]) -> None:
        """Check a traced step's scheduled numbers (:meth:`step_numbers`) before anything is written
        (``checked_step_numbers``: guards on symbolic floats; a bad value is a ``ValueError`` naming the group's
        values)."""
        try:
            checked_step_numbers(self.step_numbers(group))  # its floats unused: float() of a symbolic one specialises
        except validation.HyperparameterError as err:
            given = ", ".join(f"{key}={group[key]!r}" for key in sorted(self.scheduled))
            raise ValueError(f"param group {index}: {given}: {err}") from None

    def _finite(self, work: list[_GroupStep]) -> bool:
        """Whether every checked gradient is finite (one test for all groups, read once); raises
        :class:`NonFiniteGradientError` for a group with ``nonfinite="raise"``, returns False to skip the step.

        Besides the gradients the step reads the momenta, which may have been set or edited by hand since the last
        step (a loaded state is checked when it is loaded). A momentum that is still the tensor the last step wrote,
        at the version it left it (torch's counter of in-place writes, shared with every view), was computed from
        finite gradients and momenta and is not read again; any other is. Only edits that bypass that counter
        (through ``.data`` or a NumPy view) go unseen."""
        checked = [w for w in work if w.plan.driver.nonfinite != "ignore"]
        names = [n for w in checked for n in w.names]
        arrays = [g for w in checked for g in w.grads]
        every = _foreach.compiling()  # traced: no weak references or version counters in the graph
        states = self.state
        for w in checked:
            for name, p in zip(w.names, w.params):
                state = states.get(p)
                m = state.get(MOMENTUM) if state else None
                if m is not None and (every or not self._as_written(m)):
                    names.append(f"{name}.momentum_buffer")
                    arrays.append(m)
        if not arrays:
            return True
        bad = self._distribution.nonfinite(names, arrays)  # the same answer on every rank
        if bad is None:
            return True
        buffer = bad.endswith(".momentum_buffer")
        param = bad[: -len(".momentum_buffer")] if buffer else bad
        owner = next(w for w in checked if param in w.names)
        if owner.plan.driver.nonfinite == "skip":
            return False
        what = f"momentum_buffer of parameter {param!r}" if buffer else f"gradient of parameter {param!r}"
        raise NonFiniteGradientError(
            f"{what} (param group {owner.index}) holds NaN or Inf; nothing was changed (nonfinite='skip' skips "
            "such steps)"
        )

    def _as_written(self, m: torch.Tensor) -> bool:
        """Whether ``m`` is a momentum exactly as the last step left it (see :meth:`_finite`)."""
        entry = self._written.get(id(m))
        return entry is not None and entry[0]() is m and entry[1] == m._version

    def _record_written(self, driver: Driver, states: list[dict[str, Any]]) -> None:
        """Remember the momenta of ``states`` as this step leaves them, if their gradients were tested (not
        ``nonfinite="ignore"``): plain tensors of one process (a sharded momentum, or ranks that must test the same
        list, are always tested), not under ``torch.compile``, and not inference tensors (a step under
        ``torch.inference_mode`` makes its new momenta such tensors)."""
        if driver.nonfinite == "ignore" or _foreach.compiling() or self._distribution.group is not None:
            return
        for state in states:
            m = state.get(MOMENTUM)
            if type(m) is torch.Tensor and not m.is_inference():  # an inference tensor has no version counter
                self._written[id(m)] = (weakref.ref(m), m._version)

    def _step_group(self, w: _GroupStep) -> None:
        driver = w.plan.driver
        states = [self.state[p] for p in w.params]
        for name, p, state in zip(w.names, w.params, states):
            if not state:
                state.update(driver.init_slots(name, p))
                state["step"] = _step_counter()
                if driver.point is not None:
                    state[ITERATE] = p.detach().clone()
            else:
                if "step" not in state:  # a torch.optim.Muon checkpoint counts no steps
                    state["step"] = _step_counter()
                if driver.has_momentum and MOMENTUM not in state:  # e.g. saved with momentum 0, loaded with > 0
                    state[MOMENTUM] = torch.zeros_like(p)
        if not _needs_step(w.plan):  # nothing reads the step index: its count is bookkeeping only
            self._run(w, states, states[0]["step"])
            return
        steps = [int(s["step"]) for s in states]
        for index in sorted(set(steps)):  # parameters that sat out steps: one run per step index
            part = [j for j, t in enumerate(steps) if t == index]
            if len(part) == len(states):
                self._run(w, states, index)
                break
            names, params = [w.names[j] for j in part], [w.params[j] for j in part]
            sub = _GroupStep(w.index, w.group, build_plan(driver, names, params), names, params,
                             [w.grads[j] for j in part], w.lr)
            self._run(sub, [states[j] for j in part], index)

    def _run(self, w: _GroupStep, states: list[dict[str, Any]], step: Any) -> None:
        driver = w.plan.driver
        lr = driver.learning_rate(step) if callable(driver.lr) else w.lr
        xs = [s[ITERATE] for s in states] if driver.point is not None else w.params
        # the parameters (or iterates) and momenta are the optimizer's own: the step writes into them unless a hook
        # needs the pure step; the states are the slots (run_step sets the new momentum and hook slots there)
        transformed, noise = self._transformed()
        # traced: the scheduled numbers from the group, as graph inputs (the plan's driver has the first step's)
        numbers = self.step_numbers(w.group) if self._reads_scheduled() else None
        new = run_step(w.plan, xs, w.grads, states, lr, step, inplace=True,
                       executor=self._distribution.executor(w.params), transformed=transformed,
                       gradient_noise_std=noise, numbers=numbers)
        if driver.point is not None:
            ys = driver.point_list(w.names, new, states, step + 1)
            for p, state, x, y in zip(w.params, states, new, ys):
                p.copy_(y)
                state[ITERATE] = x
        else:
            for p, x in zip(w.params, new):
                if x is not p:
                    p.copy_(x)
        _foreach.increment([state["step"] for state in states])
        self._record_written(driver, states)


def _step_lr(index: int, lr: Any, driver: Driver) -> Any:
    """The lr of param group ``index`` as the step uses it, checked before anything is written (it may have been
    set in ``param_groups`` since the group was made): a number ``>= 0`` with ``lr * decay <= 1``, as a float (NumPy
    scalars and one-element arrays too: host values, as torch.optim takes them); a one-element real torch tensor, as
    a 0-d view of itself (its value is not read, which would be a host sync per step: it was checked when the group
    was made); a schedule (``callable``), which the driver evaluates per step. Anything else is a ``ValueError``
    naming the group."""
    try:
        if isinstance(lr, torch.Tensor):
            return validation.tensor_learning_rate("lr", lr)
        if callable(lr):
            return lr
        if not isinstance(lr, (int, float)) and getattr(lr, "size", None) == 1 and hasattr(lr, "item"):
            lr = lr.item()  # a NumPy scalar or one-element array (a bool stays a bool, refused by the check)
        return driver.check_lr(lr)
    except validation.HyperparameterError as err:
        raise validation.HyperparameterError("lr", lr, err.requirement, f"param group {index}: {err}") from None


def _step_counter() -> torch.Tensor:
    """A parameter's step count: a 0-d float32 CPU tensor, as torch.optim's Adam keeps it (so that
    ``torch.compile`` sees one tensor, not a new Python number each step, and ``torch.load(weights_only=True)``
    reads it)."""
    return torch.zeros((), dtype=torch.float32)


_SCHEDULER_KEYS = {"initial_lr", "base_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"}  # schedulers add


def _saved(key: str, value: Any) -> bool:
    """Whether a group's value goes into a checkpoint: plain data, not what the constructor builds (a geometry, a
    schedule)."""
    if key == "geometry" or callable(value):
        return False
    plain = (type(None), bool, int, float, str, torch.Tensor)
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, plain) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and isinstance(v, plain) for k, v in value.items())
    return isinstance(value, plain)


def _check_param_state(where: str, saved: Mapping[str, Any], p: torch.Tensor, driver: Driver, name: str) -> None:
    """The saved state of one parameter fits it: known keys, buffers of the parameter's slots' shapes, floating,
    finite; a step count that is a non-negative integer."""
    expected = {k: tuple(v.shape) for k, v in driver.init_slots(name, p).items()}
    expected.setdefault(MOMENTUM, tuple(p.shape))  # saved with momentum, loaded without: kept, unused
    if driver.point is not None:
        expected[ITERATE] = tuple(p.shape)
    for key, value in saved.items():
        if key == "step":
            _check_step(where, value)
            continue
        if key not in expected:
            raise ValueError(f"{where}: state key {key!r} is not one of {sorted(expected) + ['step']}: the state of "
                             "another optimizer")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ValueError(f"{where}: {key!r} must be a floating tensor; got {type(value).__name__}"
                             f"{'' if not isinstance(value, torch.Tensor) else ' of dtype ' + str(value.dtype)}")
        if tuple(value.shape) != expected[key]:
            raise ValueError(f"{where}: {key!r} has shape {tuple(value.shape)}; the parameter of shape "
                             f"{tuple(p.shape)} needs {expected[key]}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: {key!r} holds NaN or Inf")


def _check_step(where: str, value: Any) -> None:
    number = value
    if isinstance(value, torch.Tensor):
        number = float(value) if value.numel() == 1 and not value.is_complex() else None
    ok = isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number)
    if not ok or number < 0 or number != int(number):
        raise ValueError(f"{where}: 'step' must be a non-negative integer count (a number or a one-element tensor); "
                         f"got {value!r:.80}")


def _needs_step(plan: Plan) -> bool:
    """Whether the step reads the step index: a learning-rate schedule, a hook or a stateful oracle."""
    d = plan.driver
    return callable(d.lr) or plan.hooked or d.grad_transform is not None


# ---------------------------------------------------------------------------------------------------------------
# The generic adapter
# ---------------------------------------------------------------------------------------------------------------
_GROUP_FIELDS = ("lr", "beta1", "beta2", "rule", "decay", "radius", "geometry", "nonfinite")


class LMOOptimizer(DriverOptimizer):
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
        if driver.per_example and not self.accepts_private_drivers:
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

    scheduled = frozenset({"beta1", "beta2", "decay"})

    def configure(self, group: Mapping[str, Any]) -> Driver:
        changes = {f: group[f] for f in _GROUP_FIELDS if group[f] is not getattr(self.driver, f)}
        return self.driver.replace(**changes) if changes else self.driver

    def step_numbers(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {f: group[f] for f in self.scheduled}


# ---------------------------------------------------------------------------------------------------------------
# Named optimizers: a table from the torch arguments to a configuration
# ---------------------------------------------------------------------------------------------------------------
class Muon(DriverOptimizer):
    """Muon, a drop-in for ``torch.optim.Muon``: same arguments, same defaults, same meaning, same trajectory.

    Per parameter (an ``A x B`` matrix) and step, with ``mu = momentum``::

        B <- mu B + (1 - mu) g                         (torch: buf.lerp_(g, 1 - mu))
        C  = mu B + (1 - mu) g   if nesterov else B    (torch: g.lerp(buf, mu))
        W <- (1 - lr wd) W - lr * adjust(A, B) * NS(C) = (1 - lr wd) W + lr * adjust(A, B) * lmo(C)

    ``NS`` is ``ns_steps`` Newton-Schulz iterations with ``ns_coefficients`` after dividing by ``||C||_F``
    (the spectral geometry's ``method="newton_schulz"``), and ``adjust`` is ``adjust_lr_fn``:
    ``None``/``"original"`` ``sqrt(max(1, A / B))``, ``"match_rms_adamw"`` ``0.2 sqrt(max(A, B))``. This is
    :func:`lmo.optimizers.muon` (the driver with Nesterov's ``(beta1, beta2) = (mu^2, mu)``).

    Defaults are torch.optim.Muon's (``lr=1e-3`` among them; the library's own :func:`muon_with_adamw` and the
    README use ``lr=0.02``, which is what trains: 0.969 vs 0.868 test accuracy on the digits CNN of
    docs/optimizers.md, "Defaults and recipes"). Rounding: torch.optim.Muon always
    iterates in bf16; ours iterates in bf16 where bf16 matrix products are fast (CUDA, CPUs with AVX512-BF16/AMX)
    and in fp32 elsewhere; ``ns_dtype="float32"`` (or ``"bfloat16"``) pins it. With ``ns_dtype="float32"`` the
    trajectory is torch's algorithm in fp32, so it differs from torch.optim.Muon's by exactly torch's own
    bf16-vs-fp32 rounding (tested); a torch.optim.Muon checkpoint loads and continues.

    Beyond torch.optim.Muon (extra keywords, accepted on purpose):

    - ``vectors``: a geometry for parameters with fewer than 2 axes (e.g. ``"rms"``), so that one optimizer
      trains a whole model; ``None`` (default) refuses them, as torch.optim.Muon does;
    - ``method``: any spectral method (``"newton_schulz"``, ``"auto"`` -- the fastest solver whose update is at
      least as orthogonal as the default Keller 5-step one --, ``"polar_express"``, ``"svd"``, ...);
    - ``(E, A, B)`` parameters are ``E`` matrices, each orthogonalised (``view="auto"`` or ``"batch"``); conv
      kernels ``(O, I, kh, kw)`` are flattened to ``(O, I kh kw)``; Conv1d kernels need ``view="flatten"``
      (:func:`muon_with_adamw` does this); torch.optim.Muon refuses both;
    - same-shape matrices of a group are orthogonalised in one batched call; ``p.grad`` is never modified; a
      non-finite gradient raises (``nonfinite="skip"`` skips the step instead);
    - ``process_group``: DDP's group or the FSDP2 mesh (:mod:`lmo.optimizers.distributed`).

    Vectors, embeddings and the output layer belong to AdamW: :func:`muon_with_adamw` splits a model.
    The state (``"momentum_buffer"`` per parameter) has torch.optim.Muon's key.
    """

    configuration = staticmethod(muon)
    arguments = {"lr": "lr", "weight_decay": "weight_decay", "momentum": "beta", "nesterov": "nesterov",
                 "ns_coefficients": "ns_coefficients", "eps": "eps", "ns_steps": "ns_steps",
                 "adjust_lr_fn": "adjust_lr", "method": "method", "ns_dtype": "ns_dtype", "view": "view",
                 "vectors": "vectors", "nonfinite": "nonfinite"}
    messages = {"lr": "Learning rate should be >= 0 but is: {value}",
                "weight_decay": "weight decay should be >= 0 but is: {value}",
                "adjust_lr_fn": "Adjust learning rate function {value} is not supported"}
    compared = frozenset({"lr", "weight_decay"})
    scheduled = frozenset({"momentum", "weight_decay"})

    def step_numbers(self, group: Mapping[str, Any]) -> dict[str, Any]:
        beta1, beta2 = muon_betas(group["momentum"], group["nesterov"])
        return {"beta1": beta1, "beta2": beta2, "decay": group["weight_decay"]}

    def configure(self, group: Mapping[str, Any]) -> Driver:
        driver = super().configure(group)
        # refusals of vectors name this class, whose keyword is the same (muon()'s message names muon())
        return driver.replace(geometry=dataclasses.replace(driver.geometry, label=type(self).__name__))

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
        method: str = "newton_schulz",
        ns_dtype: str | None = None,
        view: str = "auto",
        vectors: Any = None,
        nonfinite: str = "raise",
        process_group: Any = None,
    ) -> None:
        super().__init__(params, _arguments(self.arguments, locals()), process_group)


Muon.inputs = OptimizerInputs(
    cases=(
        {"lr": 0.1, "weight_decay": 0.0, "needs": ("spectral",)},
        {"lr": 0.1, "nesterov": False, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.01,
         "needs": ("spectral",)},
        {"lr": 0.1, "weight_decay": 0.0, "method": "auto", "needs": ("spectral",)},
    ),
    bad=(
        ({"lr": -1.0}, "Learning rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -0.1}, "weight decay"),
        ({"adjust_lr_fn": "bogus"}, "bogus"),
        ({"view": "sideways"}, "view"),
        ({"nesterov": "no"}, "nesterov"),
        ({"ns_coefficients": (1.0, 2.0)}, "ns_coefficients"),
        ({"ns_steps": 2.5}, "ns_steps"),
        ({"method": "qr"}, "method"),
        ({"method": "auto", "ns_steps": 7}, "ns_steps would be ignored with method='auto'"),
    ),
    shapes=MATRIX_SHAPES,
)


class SignSGD(DriverOptimizer):
    """SignSGD: ``p <- (1 - lr wd) p - lr sign(g)`` (:func:`lmo.optimizers.sign_sgd`; its default ``lr=3e-3`` and
    the measured range that works are documented there)."""

    configuration = staticmethod(sign_sgd)
    arguments = {"lr": "lr", "weight_decay": "weight_decay", "nonfinite": "nonfinite"}
    scheduled = frozenset({"weight_decay"})

    def step_numbers(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {"decay": group["weight_decay"]}

    def __init__(self, params: Any, lr: float = 3e-3, weight_decay: float = 0.0, *, nonfinite: str = "raise",
                 process_group: Any = None) -> None:
        super().__init__(params, _arguments(self.arguments, locals()), process_group)


SignSGD.inputs = OptimizerInputs(
    cases=({"lr": 0.05}, {"lr": 0.05, "weight_decay": 0.01}),
    bad=(({"lr": -1.0}, "lr"), ({"weight_decay": -1.0}, "decay"), ({"nonfinite": "maybe"}, "nonfinite")),
)


class Signum(DriverOptimizer):
    """Signum: ``m <- mu m + (1 - mu) g``, ``p <- (1 - lr wd) p - lr sign(m)`` (:func:`lmo.optimizers.signum`).

    ``momentum`` is the usual factor ``mu`` (default 0.9); default ``lr=3e-3`` as :func:`lmo.optimizers.signum`
    (the measured range is documented there)."""

    configuration = staticmethod(signum)
    arguments = {"lr": "lr", "momentum": "beta", "weight_decay": "weight_decay", "nonfinite": "nonfinite"}
    scheduled = frozenset({"momentum", "weight_decay"})

    def step_numbers(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {"beta1": group["momentum"], "beta2": group["momentum"], "decay": group["weight_decay"]}

    def __init__(self, params: Any, lr: float = 3e-3, momentum: float = 0.9, weight_decay: float = 0.0, *,
                 nonfinite: str = "raise", process_group: Any = None) -> None:
        super().__init__(params, _arguments(self.arguments, locals()), process_group)


Signum.inputs = OptimizerInputs(
    cases=({"lr": 0.05}, {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.01}),
    bad=(({"momentum": 1.0}, "momentum"), ({"lr": float("inf")}, "lr")),
)


class Lion(DriverOptimizer):
    """Lion (Chen et al., 2023): ``c = b1 m + (1 - b1) g``, ``p <- (1 - lr wd) p - lr sign(c)``,
    ``m <- b2 m + (1 - b2) g`` (:func:`lmo.optimizers.lion`). Weight decay is decoupled and multiplied by ``lr``,
    as in the paper and lion-pytorch, whose defaults these are: a drop-in keeps them (``lr=1e-4`` reaches 0.870 on
    the digits CNN of docs/optimizers.md, where :func:`lmo.optimizers.lion`'s ``3e-3`` reaches 0.961)."""

    configuration = staticmethod(lion)
    arguments = {"lr": "lr", "betas": "betas", "weight_decay": "weight_decay", "nonfinite": "nonfinite"}
    scheduled = frozenset({"betas", "weight_decay"})

    def step_numbers(self, group: Mapping[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {"beta1": beta1, "beta2": beta2, "decay": group["weight_decay"]}

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, nonfinite: str = "raise", process_group: Any = None) -> None:
        super().__init__(params, _arguments(self.arguments, locals()), process_group)


Lion.inputs = OptimizerInputs(
    cases=({"lr": 0.05}, {"lr": 0.05, "betas": (0.95, 0.98), "weight_decay": 0.1}),
    bad=(({"betas": (0.9, 1.0)}, "beta2"), ({"betas": (-0.1, 0.9)}, "beta1"), ({"weight_decay": -1.0}, "decay")),
)


class Scion(DriverOptimizer):
    """Scion, a drop-in for the reference implementation (LIONS-EPFL/scion): same constructor, same group keys,
    same defaults.

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
    The reference's defaults (radius 1, no momentum) do not train a network well: use the recipe
    (:func:`lmo.optimizers.scion` with :class:`~lmo.optimizers.ScionRecipe`; docs/optimizers.md).
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
        defaults = dict(lr=lr, momentum=momentum, norm=norm, norm_kwargs=dict(norm_kwargs or {}), scale=scale,
                        unconstrained=unconstrained, nonfinite=nonfinite)
        super().__init__(params, defaults, process_group)

    scheduled = frozenset({"momentum"})

    def step_numbers(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {"beta1": 1.0 - group["momentum"], "beta2": 1.0 - group["momentum"]}

    def configure(self, group: Mapping[str, Any]) -> Driver:
        momentum = group["momentum"]
        one_minus = ("momentum must be a number in (0, 1]: Scion's momentum is ONE MINUS the usual factor (0.1 "
                     "means beta 0.9; 1 means none); got momentum={value!r}")
        beta = self.step_numbers(group)["beta1"] if validation.is_number(momentum) else momentum
        with renamed({"beta": ("momentum", momentum, one_minus), "radius": ("scale", group["scale"])}):
            geometry = ScionGeometry(group["norm"], dict(group["norm_kwargs"] or {}), group["scale"])
            factory = uscion if validation.boolean("unconstrained", group["unconstrained"]) else scion
            return factory(group["lr"], beta=beta, geometry=geometry, nonfinite=group["nonfinite"])


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
