"""The generic stochastic LMO driver: one implementation behind every optimizer of this package.

For each parameter ``x`` with gradient ``g``, one step of :class:`Driver` computes (all operations per parameter,
``lr = lr(t)`` for step index ``t = 0, 1, ...``)::

    g  <- grad_transform(g)                          # hook, optional (gradient clipping; DP: per-example g -> g)
    c  =  beta1 * m + (1 - beta1) * g                # the estimator that the oracle sees
    m  <- beta2 * m + (1 - beta2) * g                # the state that is carried
    c  <- error_feedback.before(c)                   # hook, optional (c + e)
    d  =  lmo(c) = argmin_{||d|| <= 1} <c, d>        # the geometry of this parameter (batched over same shapes)
    d  <- direction_transform(d)                     # hook, optional (row normalisation, DP bias correction)
    u  =  lr * rho * d                               # rule "lmo"   (rho = radius of this parameter)
    u  =  lr * rho * ||c||_* * d                     # rule "sharp" (steepest descent: sharp(c) = -||c||_* lmo(c))
    e  <- error_feedback.after(c, u)                 # hook, optional
    x  <- (1 - lr * decay) * x + u                   # decoupled weight decay / Frank-Wolfe
    x  <- retraction(x)                              # hook, optional (manifolds)

A geometry may be a stateful or point-dependent oracle (:func:`stateful_oracle`: low-rank bases, random seeds,
the tangent space at ``x``): ``d, s = geometry.lmo_stateful(x, c, s, t)``, with its state ``s`` kept in the slots.
An error-feedback hook may replace the rule's update by its own (``error_feedback.compress``: a compressor).

Choices of ``(beta1, beta2)``: ``(0, 0)`` plain (no state), ``(b, b)`` an exponential moving average (Signum,
Scion, Muon without Nesterov), ``(b**2, b)`` Nesterov's EMA exactly as torch.optim.Muon computes it
(``buf.lerp_(g, 1 - b)``; ``g.lerp(buf, b) = b**2 m + (1 - b**2) g``), ``(0.9, 0.99)`` Lion.

With ``decay = 0`` the method is unconstrained (Muon, uScion, SignSGD). With ``decay = 1`` and ``lr <= 1`` the
step is a Frank-Wolfe step ``x <- (1 - lr) x + lr * rho * d`` onto the ball ``{||x|| <= rho}``: an iterate that
starts in the ball stays in it (constrained Scion). Other ``decay`` values are decoupled weight decay
(AdamW/Muon convention: the factor is ``1 - lr * decay``, with the *unadjusted* ``lr``).

The driver is pure: :meth:`Driver.init` returns a state and :meth:`Driver.step` returns new parameters and a new
state, leaving its inputs untouched, over any array-API namespace (numpy, torch, CuPy, array-api-strict). The torch
adapters, which own their parameters and momenta, call :meth:`Driver.apply` with ``inplace=True``: the same step
written into those tensors (``lerp_``, ``mul_``, ``add_``), bit for bit the pure step's values, where no hook needs
the pure form (the rule is in :meth:`Driver.apply`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from lmo.backend import Array, device, namespace
from lmo.norm import Norm, get_norm

from . import _foreach

__all__ = [
    "Driver",
    "ParamGeometry",
    "StepInfo",
    "Hook",
    "GradientPoint",
    "GradientTransform",
    "DirectionTransform",
    "ErrorFeedback",
    "Retraction",
    "NonFiniteGradientError",
    "flatten_tree",
    "stateful_oracle",
]


class NonFiniteGradientError(ValueError):
    """A gradient held NaN or Inf and the driver's policy is ``nonfinite="raise"``; nothing was changed."""


# ---------------------------------------------------------------------------------------------------------------
# Per-parameter geometry
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ParamGeometry:
    """The geometry given to one parameter: its norm, its radius ``rho`` and the shape the oracle sees.

    ``view``: the shape the parameter (and its estimator) is reshaped to before the oracle, and reshaped back from
    after it; ``None`` keeps the parameter's own shape. A conv kernel ``(O, I, kh, kw)`` is given
    ``view=(O, I * kh * kw)`` for a matrix norm. Leading axes of the view are batch axes of the norm (a norm with
    ``ndim = 2`` treats a ``(E, A, B)`` view as ``E`` matrices, each with its own oracle).

    ``transpose``: swap the trailing two axes of the view before the oracle (and back after it), so that a norm of
    rows acts on columns (Scion's ``ColNorm`` is the ``rms`` vector norm with ``transpose=True``).

    ``radius``: the per-parameter radius factor ``rho`` (multiplied by the driver's ``radius``).
    """

    norm: Norm
    radius: float = 1.0
    view: tuple[int, ...] | None = None
    transpose: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", get_norm(self.norm))
        if isinstance(self.radius, bool) or not isinstance(self.radius, (int, float)) or not (
            0 < self.radius < math.inf
        ):
            raise ValueError(f"ParamGeometry: radius must be a finite number > 0; got radius={self.radius!r}")
        object.__setattr__(self, "radius", float(self.radius))
        if self.view is not None:
            view = tuple(self.view)
            if not view or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in view):
                raise ValueError(f"ParamGeometry: view must be a tuple of positive ints; got view={self.view!r}")
            object.__setattr__(self, "view", view)
        if not isinstance(self.transpose, bool):
            raise ValueError(f"ParamGeometry: transpose must be a bool; got transpose={self.transpose!r}")


GeometryRule = Callable[[str, tuple[int, ...]], Norm | str | ParamGeometry]
"""A rule assigning a geometry to each parameter from its name (dotted path) and shape."""


# ---------------------------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What a hook learns about the step in progress.

    ``estimates`` and ``geometries`` are set only for the :class:`DirectionTransform`: the oracle's inputs ``c`` (after
    error feedback, in the parameters' shapes) and the parameters' :class:`ParamGeometry`, so that a post-LMO
    transform can use what the oracle saw (DP-MuonBC's bias correction needs the singular values of ``c``).
    """

    step: int  # 0-based index of the step being taken
    lr: float  # the learning rate of this step
    names: tuple[str, ...]  # parameter names, aligned with every list a hook receives
    estimates: tuple[Array, ...] | None = None  # the oracle's inputs c (direction_transform only)
    geometries: tuple[ParamGeometry, ...] | None = None  # the parameters' geometries (direction_transform only)


class Hook:
    """Base of the driver's hooks. A hook may keep per-parameter state ("slots").

    ``init(name, param)`` returns the hook's slots for one parameter: a dict of arrays (default: none). The driver
    stores them with the parameter's other state under the keys ``"<stage>.<key>"`` (so torch's ``state_dict``
    saves them) and hands each hook its own slots back as a list of dicts aligned with the parameters.
    Every list a hook returns must keep that alignment. Hooks must not modify their inputs in place.
    """

    def init(self, name: str, param: Array) -> dict[str, Array]:
        return {}


class GradientPoint(Hook):
    """Where gradients are taken (IGT, schedule-free, lookahead): ``g = grad f(point(x))``.

    ``point(params, slots, info)`` returns the points at which the next gradients are evaluated; ``update(params,
    slots, info)`` runs after each step with the new parameters and returns the new slots.
    """

    def point(self, params: list[Array], slots: list[dict[str, Array]], info: StepInfo) -> list[Array]:
        raise NotImplementedError(f"{type(self).__name__} must define point(params, slots, info)")

    def update(
        self, params: list[Array], slots: list[dict[str, Array]], info: StepInfo
    ) -> list[dict[str, Array]]:
        return slots

    def evaluation_point(self, params: list[Array], slots: list[dict[str, Array]], info: StepInfo) -> list[Array]:
        """The points at which to evaluate the model (``optimizer.eval()``): the iterates themselves by default;
        schedule-free returns its average."""
        return list(params)


class GradientTransform(Hook):
    """A transform of the gradients before the estimator (DP clipping and noise, gradient clipping, ...):
    ``__call__(grads, slots, params, info) -> (grads, slots)``.

    ``per_example = True`` declares a transform of per-example gradients (differential privacy): it receives one
    array of shape ``(B, *param.shape)`` per parameter (the same ``B`` for all) and returns gradients of the
    parameters' shapes. The driver checks both shapes.
    """

    per_example: ClassVar[bool] = False

    def __call__(
        self, grads: list[Array], slots: list[dict[str, Array]], params: list[Array], info: StepInfo
    ) -> tuple[list[Array], list[dict[str, Array]]]:
        raise NotImplementedError(f"{type(self).__name__} must define __call__(grads, slots, params, info)")


class DirectionTransform(Hook):
    """A transform of the oracle's directions ``d`` before they are scaled (row normalisation, NorMuon, ...):
    ``__call__(directions, slots, params, info) -> (directions, slots)``."""

    def __call__(
        self, directions: list[Array], slots: list[dict[str, Array]], params: list[Array], info: StepInfo
    ) -> tuple[list[Array], list[dict[str, Array]]]:
        raise NotImplementedError(f"{type(self).__name__} must define __call__(directions, slots, params, info)")


class ErrorFeedback(Hook):
    """Error feedback around the oracle: ``before(c, slots, info)`` returns the oracle's input (e.g. ``c + e``);
    ``after(inputs, updates, slots, info)`` sees that input and the update ``u`` that is added to the parameters and
    returns the new slots (e.g. ``e <- lr * inputs - u`` in EF-SignSGD's form)."""

    def before(self, estimates: list[Array], slots: list[dict[str, Array]], info: StepInfo) -> list[Array]:
        raise NotImplementedError(f"{type(self).__name__} must define before(estimates, slots, info)")

    def after(
        self, inputs: list[Array], updates: list[Array], slots: list[dict[str, Array]], info: StepInfo
    ) -> list[dict[str, Array]]:
        raise NotImplementedError(f"{type(self).__name__} must define after(inputs, updates, slots, info)")

    def compress(
        self,
        inputs: list[Array],
        directions: list[Array],
        updates: list[Array],
        geometries: list[ParamGeometry],
        info: StepInfo,
    ) -> list[Array]:
        """The updates actually added to the parameters, from the oracle's ``inputs``, its ``directions``, the
        rule's ``updates`` and the parameters' geometries (default: the rule's updates). Runs before :meth:`after`,
        which sees its result."""
        return updates


class Retraction(Hook):
    """A map applied to the new parameters after each step (e.g. back onto a manifold):
    ``__call__(params, geometries, info) -> params``; ``geometries`` are the parameters' :class:`ParamGeometry`."""

    def __call__(self, params: list[Array], geometries: list[ParamGeometry], info: StepInfo) -> list[Array]:
        raise NotImplementedError(f"{type(self).__name__} must define __call__(params, geometries, info)")


_HOOKS: dict[str, type[Hook]] = {
    "point": GradientPoint,
    "grad_transform": GradientTransform,
    "direction_transform": DirectionTransform,
    "error_feedback": ErrorFeedback,
    "retraction": Retraction,
}

GEOMETRY = "geometry"  # the slot prefix of a stateful geometry's state ("geometry.<key>")


def stateful_oracle(norm: Norm) -> bool:
    """Whether ``norm`` is a stateful (or point-dependent) oracle: it defines ``init_state(name, x)`` and
    ``lmo_stateful(x, g, state, step) -> (d, state)``.

    The driver calls such a geometry once per parameter (not batched), with the parameter ``x`` and the estimator
    ``g`` in the oracle's view, its state (the slots ``"geometry.<key>"``, created by ``init_state``) and the step
    index; it stores the returned state. Low-rank oracles keep their bases there (Dion), randomized ones their seed,
    manifold oracles use ``x`` (the tangent space at the parameter).
    """
    return callable(getattr(norm, "lmo_stateful", None)) and callable(getattr(norm, "init_state", None))


MOMENTUM = "momentum_buffer"  # the slot name of the estimator state (the same key as torch.optim.Muon/SGD)
_NONFINITE = ("raise", "skip", "ignore")


# ---------------------------------------------------------------------------------------------------------------
# Trees of parameters
# ---------------------------------------------------------------------------------------------------------------
def flatten_tree(tree: Any) -> tuple[list[str], list[Array], Callable[[list[Any]], Any]]:
    """``(names, leaves, rebuild)`` for a parameter tree.

    A tree is an array, or a (nested) mapping with string keys, list or tuple of trees. Names are dotted paths
    (``"layers.0.weight"``; a bare array is named ``""``). ``rebuild(leaves)`` builds a tree of the same structure.
    """
    names: list[str] = []
    leaves: list[Array] = []

    def walk(node: Any, prefix: str) -> Callable[[Any], Any]:
        if isinstance(node, Mapping):
            keys = list(node.keys())
            builders = [walk(node[k], f"{prefix}.{k}" if prefix else str(k)) for k in keys]
            cls = type(node) if type(node) in (dict,) else dict
            return lambda it: cls((k, b(it)) for k, b in zip(keys, builders))
        if isinstance(node, (list, tuple)):
            builders = [walk(v, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(node)]
            kind = type(node)
            if kind not in (list, tuple):  # a namedtuple
                return lambda it: kind(*(b(it) for b in builders))
            return lambda it: kind(b(it) for b in builders)
        names.append(prefix)
        leaves.append(node)
        return lambda it: next(it)

    build = walk(tree, "")

    def rebuild(values: list[Any]) -> Any:
        if len(values) != len(leaves):
            raise ValueError(f"rebuild expected {len(leaves)} leaves; got {len(values)}")
        return build(iter(values))

    return names, leaves, rebuild


# ---------------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Driver:
    r"""The stochastic LMO method; every optimizer of this package is a configuration of it.

    One step, per parameter ``x`` with gradient ``g``, state ``m`` and step index ``t`` (0-based)::

        c  = beta1 * m + (1 - beta1) * g
        m <- beta2 * m + (1 - beta2) * g
        d  = lmo(c) = argmin_{||d|| <= 1} <c, d>
        x <- (1 - lr(t) * decay) * x + lr(t) * rho * d                 (rule="lmo")
        x <- (1 - lr(t) * decay) * x + lr(t) * rho * ||c||_* * d       (rule="sharp")

    with ``rho = radius * ParamGeometry.radius`` and the optional hooks of the module docstring around these lines.

    Fields
    ------
    geometry
        A :class:`~lmo.Norm` (or registry name, or :class:`ParamGeometry`) for every parameter, or a rule
        ``rule(name, shape) -> Norm | str | ParamGeometry`` that assigns one per parameter from its dotted name and
        shape. A rule is called once per parameter and step; it should be cheap and deterministic.
    lr
        The learning rate: a number ``>= 0`` or a schedule ``lr(t)`` of the 0-based step index.
    beta1, beta2
        The two-beta estimator, each in ``[0, 1)``. ``beta1 = 0`` needs no state (``c = g``).
    rule
        ``"lmo"`` (normalised step of length ``lr * rho`` in the norm) or ``"sharp"`` (steepest descent: the step
        is scaled by the dual norm of ``c``, i.e. ``-lr * rho * sharp(c)``).
    decay
        Decoupled weight decay ``>= 0``: ``x <- (1 - lr * decay) x + ...``. ``decay = 1`` with ``lr <= 1`` is a
        Frank-Wolfe step that keeps iterates in the ball of radius ``rho`` (constrained Scion).
        ``lr * decay > 1`` is rejected (the factor would flip the sign of ``x``).
    radius
        A global radius factor ``> 0`` (multiplies every parameter's ``ParamGeometry.radius``).
    point, grad_transform, direction_transform, error_feedback, retraction
        Optional hooks (:class:`GradientPoint`, :class:`GradientTransform`, :class:`DirectionTransform`,
        :class:`ErrorFeedback`, :class:`Retraction`).
    nonfinite
        Policy for a gradient with NaN or Inf: ``"raise"`` (default) raises :class:`NonFiniteGradientError` (a
        ``ValueError``) naming the parameter, and nothing changes; ``"skip"`` returns the parameters and state
        unchanged (the step counter does not advance), as loss-scaling AMP does; ``"ignore"`` performs no check
        (no host synchronisation on accelerators; NaN then propagates into the parameters).
    batch
        Whether parameters whose oracle inputs have the same core shape, dtype, device and norm are stacked and
        sent to the oracle in one batched call (one Newton-Schulz chain for all same-shape matrices). The result
        is the same as one call per parameter; only matrix norms (``ndim >= 2``) are batched. ``"auto"`` (the
        default) batches everywhere except large matrices on a CPU: there one stacked chain is measured slower
        than one chain per matrix (``benchmarks/muon_step.py``: 7-11% on a GPT-shaped set, for the stacking copy
        and the batched product), while on accelerators and for small matrices the fewer calls pay.
    """

    geometry: Norm | str | ParamGeometry | GeometryRule
    lr: float | Callable[[int], float] = 0.02
    beta1: float = 0.0
    beta2: float = 0.0
    rule: Literal["lmo", "sharp"] = "lmo"
    decay: float = 0.0
    radius: float = 1.0
    point: GradientPoint | None = None
    grad_transform: GradientTransform | None = None
    direction_transform: DirectionTransform | None = None
    error_feedback: ErrorFeedback | None = None
    retraction: Retraction | None = None
    nonfinite: Literal["raise", "skip", "ignore"] = "raise"
    batch: bool | Literal["auto"] = "auto"

    # -- validation ----------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        geometry = self.geometry
        if isinstance(geometry, (str, Norm)):
            object.__setattr__(self, "geometry", ParamGeometry(get_norm(geometry)))
        elif not isinstance(geometry, ParamGeometry) and not callable(geometry):
            raise ValueError(
                "Driver: geometry must be a Norm, a registry name, a ParamGeometry or a rule "
                f"(name, shape) -> Norm | ParamGeometry; got geometry={geometry!r}"
            )
        if callable(self.lr):
            pass
        elif not _number(self.lr) or not (0 <= self.lr < math.inf):
            raise ValueError(f"Driver: lr must be a finite number >= 0 or a schedule lr(step); got lr={self.lr!r}")
        for field in ("beta1", "beta2"):
            value = getattr(self, field)
            if not _number(value) or not (0 <= value < 1):
                raise ValueError(f"Driver: {field} must be a number in [0, 1); got {field}={value!r}")
        if self.rule not in ("lmo", "sharp"):
            raise ValueError(f"Driver: rule must be 'lmo' or 'sharp'; got rule={self.rule!r}")
        if not _number(self.decay) or not (0 <= self.decay < math.inf):
            raise ValueError(f"Driver: decay must be a finite number >= 0; got decay={self.decay!r}")
        if not _number(self.radius) or not (0 < self.radius < math.inf):
            raise ValueError(f"Driver: radius must be a finite number > 0; got radius={self.radius!r}")
        if not callable(self.lr) and self.lr * self.decay > 1:
            raise ValueError(
                f"Driver: lr * decay must be <= 1 (the factor 1 - lr * decay would flip x); got lr={self.lr!r}, "
                f"decay={self.decay!r}"
            )
        for field, kind in _HOOKS.items():
            hook = getattr(self, field)
            if hook is not None and not isinstance(hook, kind):
                raise ValueError(f"Driver: {field} must be a {kind.__name__} instance or None; got {hook!r}")
        if self.nonfinite not in _NONFINITE:
            raise ValueError(f"Driver: nonfinite must be one of {_NONFINITE}; got nonfinite={self.nonfinite!r}")
        if not isinstance(self.batch, bool) and self.batch != "auto":
            raise ValueError(f"Driver: batch must be a bool or 'auto'; got batch={self.batch!r}")

    def replace(self, **changes: Any) -> Driver:
        """A copy with some fields changed (validated like a new driver)."""
        return dataclasses.replace(self, **changes)

    # -- small pieces --------------------------------------------------------------------------------------------
    @property
    def per_example(self) -> bool:
        """Whether :meth:`step` takes per-example gradients ``(B, *shape)`` (a per-example ``grad_transform``)."""
        return self.grad_transform is not None and bool(self.grad_transform.per_example)

    @property
    def stateful(self) -> bool:
        """Whether the estimator keeps a momentum buffer (``beta1 > 0``)."""
        return self.beta1 > 0

    def learning_rate(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based), validated."""
        lr = self.lr(step) if callable(self.lr) else self.lr
        try:
            lr = float(lr)
        except (TypeError, ValueError):
            raise ValueError(f"Driver: the schedule lr({step}) returned {lr!r}, not a number") from None
        if not (0 <= lr < math.inf):
            raise ValueError(f"Driver: lr({step}) = {lr!r}; a learning rate must be finite and >= 0")
        if lr * self.decay > 1:
            raise ValueError(f"Driver: lr({step}) * decay = {lr * self.decay!r} > 1 (1 - lr * decay would flip x)")
        return lr

    def geometry_for(self, name: str, shape: tuple[int, ...]) -> ParamGeometry:
        """The :class:`ParamGeometry` of the parameter ``name`` with shape ``shape``."""
        geometry = self.geometry
        if not isinstance(geometry, ParamGeometry):
            geometry = geometry(name, tuple(shape))
            if not isinstance(geometry, ParamGeometry):
                geometry = ParamGeometry(get_norm(geometry))
        if geometry.view is not None and math.prod(geometry.view) != math.prod(shape):
            raise ValueError(
                f"parameter {name!r}: its geometry views shape {tuple(shape)} as {geometry.view}, which has "
                f"a different number of entries"
            )
        rows = len(geometry.view) if geometry.view is not None else len(shape)
        if geometry.transpose and rows < 2:
            raise ValueError(f"parameter {name!r} has shape {tuple(shape)}; transpose=True needs 2 or more axes")
        if rows < geometry.norm.ndim:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(shape)}, but its geometry {geometry.norm!r} acts on "
                f"{geometry.norm.ndim} trailing axes; give it a vector geometry or a view"
            )
        return geometry

    # -- state ---------------------------------------------------------------------------------------------------
    def init_slots(self, name: str, param: Array) -> dict[str, Array]:
        """The state of one parameter: the momentum buffer (zeros) if ``beta1 > 0``, and the hooks' slots."""
        geo = self.geometry_for(name, tuple(param.shape))  # reject an unfit geometry now, not at the first step
        slots: dict[str, Array] = {}
        if self.stateful:
            xp = namespace(param)
            slots[MOMENTUM] = xp.zeros_like(param)
        if stateful_oracle(geo.norm):
            for key, value in geo.norm.init_state(name, _to_oracle(geo, param)).items():
                slots[f"{GEOMETRY}.{key}"] = value
        for stage in _HOOKS:
            hook = getattr(self, stage)
            if hook is not None:
                for key, value in hook.init(name, param).items():
                    slots[f"{stage}.{key}"] = value
        return slots

    def init(self, params: Any) -> dict[str, Any]:
        """The initial state for the parameter tree ``params``: ``{"step": 0, "slots": {name: {key: array}}}``."""
        names, leaves, _ = flatten_tree(params)
        _check_names(names)
        return {"step": 0, "slots": {n: self.init_slots(n, x) for n, x in zip(names, leaves)}}

    # -- the gradient point --------------------------------------------------------------------------------------
    def gradient_point(self, params: Any, state: Mapping[str, Any]) -> Any:
        """Where the next gradient must be taken: ``params`` itself unless the driver has a :class:`GradientPoint`.

        A training loop with such a hook reads ``g = grad(f)(driver.gradient_point(params, state))``.
        """
        if self.point is None:
            return params
        names, leaves, rebuild = flatten_tree(params)
        slots = [state["slots"][n] for n in names]
        return rebuild(self.point_list(names, leaves, slots, int(state["step"])))

    def point_list(
        self, names: Sequence[str], params: Sequence[Array], slots: Sequence[Mapping[str, Array]], step: int
    ) -> list[Array]:
        """:meth:`gradient_point` over aligned lists."""
        if self.point is None:
            return list(params)
        info = StepInfo(step, self.learning_rate(step), tuple(names))
        return list(self.point.point(list(params), _hook_slots([dict(s) for s in slots], "point"), info))

    # -- the step ------------------------------------------------------------------------------------------------
    def step(self, params: Any, grads: Any, state: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """One step: returns ``(new_params, new_state)``; ``params``, ``grads`` and ``state`` are left unchanged.

        ``grads`` must have the structure of ``params``. See the class docstring for the update.
        """
        names, leaves, rebuild = flatten_tree(params)
        gnames, gleaves, _ = flatten_tree(grads)
        if gnames != names:
            raise ValueError(f"grads must have the structure of params; params have {names}, grads have {gnames}")
        try:
            slots = [state["slots"][n] for n in names]
            step = int(state["step"])
        except (KeyError, TypeError):
            raise ValueError("state does not belong to these params; build it with driver.init(params)") from None
        new_leaves, new_slots, taken = self.apply(names, leaves, gleaves, slots, step)
        new_state = {"step": step + 1 if taken else step, "slots": dict(zip(names, new_slots))}
        return rebuild(new_leaves), new_state

    def apply(
        self,
        names: Sequence[str],
        params: Sequence[Array],
        grads: Sequence[Array],
        slots: Sequence[Mapping[str, Array]],
        step: int,
        *,
        oracle: Callable[[list[ParamGeometry], list[Array]], tuple[list[Array], list[Array | None]]] | None = None,
        inplace: bool = False,
    ) -> tuple[list[Array], list[dict[str, Array]], bool]:
        """The step over aligned lists (what :meth:`step` and the torch adapters call).

        Returns ``(new_params, new_slots, taken)``; ``taken`` is False when ``nonfinite="skip"`` skipped the step.
        ``oracle``: who evaluates the oracle stage ``(geometries, estimates) -> (directions, duals)``; default this
        driver's own batched oracle. :mod:`lmo.optimizers.distributed` passes one that splits the same work across
        ranks (and calls this driver's oracle on each rank's part); the values must be those of the default.

        ``inplace``: the caller hands over ``params`` and the momentum buffers (``slots[i]["momentum_buffer"]``)
        and the step may overwrite them: ``m <- m'`` by ``lerp_`` (``copy_`` of ``g`` when ``beta2 = 0``) and
        ``x <- (1 - lr decay) x + f d`` by ``mul_`` and ``add_``, the same values bit for bit as the pure step;
        the returned parameters and momenta are then the very objects handed in. The rule: it is honoured when
        the driver has none of the hooks ``point``, ``direction_transform``, ``error_feedback``, ``retraction``
        and no stateful oracle (those see the estimates -- the momentum itself when ``beta1 = beta2`` -- or the
        new parameters, and may keep them in their slots, where a later in-place write would change what they
        kept), for each part (below) whose parameters, gradients and momenta are torch tensors of one device and
        dtype. Otherwise, numpy and other namespaces included, the step is the pure one and leaves its inputs
        untouched: the new values are always what is returned, and a caller that owns the arrays copies them in
        unless they are the same objects. A ``grad_transform`` runs before anything is written and is allowed.
        ``nonfinite="skip"`` returns before anything is written; an exception raised after the estimator (a
        failing oracle) may leave the handed-over arrays partly updated.

        Parts: without hooks after the estimator and with the driver's own oracle, the parameters are stepped in
        parts -- one per group the oracle evaluates in one call (same-shape matrices it stacks, or one matrix),
        one for all vector geometries -- so that only one part's estimates and directions exist at a time (the
        peak memory of torch.optim.Muon's per-parameter loop); the values are those of one pass over all.
        """
        names = tuple(names)
        params, grads = list(params), list(grads)
        slots = [dict(s) for s in slots]
        if self.per_example:
            _check_per_example(names, params, grads, type(self.grad_transform).__name__)
        else:
            _check_grad_shapes(names, params, grads)
        lr = self.learning_rate(step)
        info = StepInfo(step, lr, names)
        if self.nonfinite != "ignore":
            bad = _nonfinite(names, grads)
            if bad is not None:
                if self.nonfinite == "skip":
                    return params, slots, False
                raise NonFiniteGradientError(
                    f"gradient of parameter {bad!r} holds NaN or Inf; nothing was changed (set nonfinite='skip' to "
                    f"skip such steps, as loss-scaled mixed precision does)"
                )

        if self.grad_transform is not None:
            grads, hs = self.grad_transform(grads, _hook_slots(slots, "grad_transform"), params, info)
            _set_hook_slots(slots, "grad_transform", hs)
            grads = list(grads)
            if self.per_example:
                _check_grad_shapes(names, params, grads)

        geometries = [self.geometry_for(n, tuple(x.shape)) for n, x in zip(names, params)]
        stateful = [stateful_oracle(geo.norm) for geo in geometries]
        plain = self._plain(stateful)
        parts = self._parts(geometries, params) if plain and oracle is None else [list(range(len(params)))]
        new_params: list[Array] = [None] * len(params)  # type: ignore[list-item]
        for part in parts:
            xs, gs, ss = [params[i] for i in part], [grads[i] for i in part], [slots[i] for i in part]
            stepped = self._step_part(
                xs, gs, ss, [geometries[i] for i in part], [stateful[i] for i in part],
                StepInfo(step, lr, tuple(names[i] for i in part)), oracle,
                inplace and plain and self._writes_in_place(xs, gs, ss),  # decided per part: mixed dtypes
            )
            for i, x in zip(part, stepped):
                new_params[i] = x
        return new_params, slots, True

    def _writes_in_place(self, params: list[Array], grads: list[Array], slots: list[dict[str, Array]]) -> bool:
        """Whether the ``_foreach`` in-place forms take these parameters, gradients and momenta."""
        moments = [s[MOMENTUM] for s in slots] if self.stateful else []
        return _foreach.can_write(params, grads, moments)

    def _plain(self, stateful: Sequence[bool]) -> bool:
        """No hook after the estimator and no stateful oracle: the step is estimator, oracle, update per part."""
        hooks = (self.point, self.direction_transform, self.error_feedback, self.retraction)
        return all(h is None for h in hooks) and not any(stateful)

    def _parts(self, geometries: Sequence[ParamGeometry], params: Sequence[Array]) -> list[list[int]]:
        """The parts in which :meth:`apply` steps parameters that need no hook after the estimator: one per group
        that the oracle evaluates in one call (the same-shape matrices it stacks, or one matrix when it does not
        stack, see ``batch``), and one for all parameters with a vector geometry (``norm.ndim < 2``: element-wise
        or row-wise oracles, cheap, whose element-wise work stays one ``_foreach`` call for all of them)."""
        vectors = [i for i, geo in enumerate(geometries) if geo.norm.ndim < 2]
        matrices = [i for i, geo in enumerate(geometries) if geo.norm.ndim >= 2]
        groups = self._groups([geometries[i] for i in matrices], [params[i] for i in matrices])
        out = [[matrices[j] for j in members] for members in groups]
        return out + [vectors] if vectors else out

    def _step_part(
        self,
        params: list[Array],
        grads: list[Array],
        slots: list[dict[str, Array]],
        geometries: list[ParamGeometry],
        stateful: list[bool],
        info: StepInfo,
        oracle: Callable[..., tuple[list[Array], list[Array | None]]] | None,
        inplace: bool,
    ) -> list[Array]:
        """Estimator, oracle, update (and the hooks around them) for aligned lists; returns the new parameters and
        sets the new state in ``slots`` (dicts owned by :meth:`apply`)."""
        lr, step = info.lr, info.step
        # the two-beta estimator
        if self.stateful:
            b1, b2 = self.beta1, self.beta2
            moments = [s[MOMENTUM] for s in slots]
            estimates, new_moments = _foreach.estimator(moments, grads, b1, b2, inplace=inplace)
            for s, m in zip(slots, new_moments):
                s[MOMENTUM] = m
        else:
            estimates = grads

        if self.error_feedback is not None:
            estimates = self.error_feedback.before(estimates, _hook_slots(slots, "error_feedback"), info)

        oracle = self._oracle if oracle is None else oracle
        if any(stateful):
            directions, duals = self._stateful_oracles(
                info.names, params, geometries, estimates, slots, stateful, step, oracle=oracle
            )
        else:
            directions, duals = oracle(geometries, estimates)

        if self.direction_transform is not None:
            seen = dataclasses.replace(info, estimates=tuple(estimates), geometries=tuple(geometries))
            directions, hs = self.direction_transform(
                directions, _hook_slots(slots, "direction_transform"), params, seen
            )
            _set_hook_slots(slots, "direction_transform", hs)

        scales = [lr * self.radius * geo.radius for geo in geometries]
        factors = [s if dual is None else s * dual for s, dual in zip(scales, duals)]
        shrink = 1 - lr * self.decay
        if self.error_feedback is not None:
            updates = _foreach.scale(directions, factors)
            updates = list(self.error_feedback.compress(estimates, directions, updates, geometries, info))
            hs = self.error_feedback.after(estimates, updates, _hook_slots(slots, "error_feedback"), info)
            _set_hook_slots(slots, "error_feedback", hs)
            new_params = _foreach.shrink_add(params, shrink, updates)
        else:  # no hook needs the updates: x' = shrink x + f d without materialising f d (one array less)
            new_params = _foreach.shrink_add_scaled(params, shrink, directions, factors, inplace=inplace)

        if self.retraction is not None:
            new_params = list(self.retraction(new_params, geometries, info))
        if self.point is not None:
            hs = self.point.update(new_params, _hook_slots(slots, "point"), info)
            _set_hook_slots(slots, "point", hs)
        return new_params

    # -- stateful oracles ----------------------------------------------------------------------------------------
    def _stateful_oracles(
        self,
        names: Sequence[str],
        params: list[Array],
        geometries: list[ParamGeometry],
        estimates: list[Array],
        slots: list[dict[str, Array]],
        stateful: list[bool],
        step: int,
        oracle: Callable[..., tuple[list[Array], list[Array | None]]] | None = None,
    ) -> tuple[list[Array], list[Array | None]]:
        """The stateless oracles batched by :meth:`_oracle` (or ``oracle``, see :meth:`apply`), the stateful ones
        (:func:`stateful_oracle`) one by one."""
        plain = [i for i, s in enumerate(stateful) if not s]
        d_plain, dual_plain = (oracle or self._oracle)([geometries[i] for i in plain], [estimates[i] for i in plain])
        directions: list[Array] = [None] * len(params)  # type: ignore[list-item]
        duals: list[Array | None] = [None] * len(params)
        for i, d, dual in zip(plain, d_plain, dual_plain):
            directions[i], duals[i] = d, dual
        for i in (i for i, s in enumerate(stateful) if s):
            geo, c = geometries[i], estimates[i]
            x, v = _to_oracle(geo, params[i]), _to_oracle(geo, c)
            state = _hook_slots([slots[i]], GEOMETRY)[0] or geo.norm.init_state(names[i], x)
            d, state = geo.norm.lmo_stateful(x, v, dict(state), step)
            _set_hook_slots([slots[i]], GEOMETRY, [state])
            directions[i] = _from_oracle(geo, d, c)
            if self.rule == "sharp":
                xp = namespace(c)
                dual = geo.norm.dual_norm(v)
                dual = xp.reshape(dual, tuple(dual.shape) + (1,) * geo.norm.ndim) * xp.ones_like(v)
                duals[i] = _from_oracle(geo, dual, c)
        return directions, duals

    # -- the oracle, batched -------------------------------------------------------------------------------------
    def _groups(self, geometries: Sequence[ParamGeometry], arrays: Sequence[Array]) -> list[list[int]]:
        """The indices that :meth:`_oracle` evaluates in one call, in order: matrices (``norm.ndim >= 2``) whose
        oracle inputs share core shape, dtype, device and norm are stacked (see ``batch``); all others are alone."""
        groups: dict[Hashable, list[int]] = {}
        for i, (geo, x) in enumerate(zip(geometries, arrays)):
            shape = _oracle_shape(geo, tuple(x.shape))
            core = shape[len(shape) - geo.norm.ndim :]
            if geo.norm.ndim >= 2 and (self.batch is True or (self.batch == "auto" and _batch_pays(x, core))):
                key = (geo.norm, core, str(x.dtype), str(device(x)), type(x))
                groups.setdefault(key, []).append(i)
            else:
                groups[("single", i)] = [i]
        return list(groups.values())

    def _oracle(
        self, geometries: list[ParamGeometry], estimates: list[Array]
    ) -> tuple[list[Array], list[Array | None]]:
        """``d_i = lmo_i(c_i)`` for every parameter (and ``||c_i||_*`` for the sharp rule, shaped to broadcast)."""
        n = len(estimates)
        directions: list[Array] = [None] * n  # type: ignore[list-item]
        duals: list[Array | None] = [None] * n
        sharp = self.rule == "sharp"
        views = [_to_oracle(geo, c) for geo, c in zip(geometries, estimates)]
        groups = self._groups(geometries, estimates)
        for members in groups:
            norm = geometries[members[0]].norm
            k = norm.ndim
            if len(members) == 1:
                v = views[members[0]]
                outs = [norm.lmo(v)]
                dual_outs = [norm.dual_norm(v) if sharp else None]
            else:
                xp = namespace(views[members[0]])
                core = tuple(views[members[0]].shape[-k:])
                stacked = xp.concat([xp.reshape(views[i], (-1, *core)) for i in members], axis=0)
                d_all = norm.lmo(stacked)
                dual_all = norm.dual_norm(stacked) if sharp else None
                outs, dual_outs, start = [], [], 0
                for i in members:
                    v = views[i]
                    batch = tuple(v.shape[: v.ndim - k])
                    count = math.prod(batch)
                    outs.append(xp.reshape(d_all[start : start + count, ...], tuple(v.shape)))
                    dual_outs.append(None if dual_all is None else xp.reshape(dual_all[start : start + count], batch))
                    start += count
            for i, d, dual in zip(members, outs, dual_outs):
                geo, c, v = geometries[i], estimates[i], views[i]
                directions[i] = _from_oracle(geo, d, c)
                if dual is not None:
                    xp = namespace(c)
                    dual = xp.reshape(dual, tuple(dual.shape) + (1,) * k)
                    if geo.view is not None or geo.transpose:
                        dual = _from_oracle(geo, dual * xp.ones_like(v), c)
                    duals[i] = dual
        return directions, duals


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
_CPU_BATCH_LIMIT = 256 * 256  # entries per matrix above which a CPU runs same-shape matrices one by one


def _batch_pays(v: Array, core: tuple[int, ...]) -> bool:
    """``batch="auto"``: stack same-shape matrices unless they are large and on a CPU."""
    if math.prod(core) <= _CPU_BATCH_LIMIT:
        return True
    dev = device(v)
    return str(getattr(dev, "type", dev)) not in ("cpu",)


def _oracle_shape(geo: ParamGeometry, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of :func:`_to_oracle` of an array of shape ``shape``."""
    view = geo.view if geo.view is not None else shape
    return (*view[:-2], view[-1], view[-2]) if geo.transpose else tuple(view)


def _to_oracle(geo: ParamGeometry, c: Array) -> Array:
    """``c`` as the oracle sees it: reshaped to the geometry's view, then transposed if asked."""
    if geo.view is None and not geo.transpose:
        return c
    xp = namespace(c)
    v = c if geo.view is None else xp.reshape(c, geo.view)
    return xp.matrix_transpose(v) if geo.transpose else v


def _from_oracle(geo: ParamGeometry, d: Array, like: Array) -> Array:
    """Undo :func:`_to_oracle`: back to the shape of ``like``."""
    if geo.view is None and not geo.transpose:
        return d
    xp = namespace(d)
    if geo.transpose:
        d = xp.matrix_transpose(d)
    return xp.reshape(d, tuple(like.shape))


def _check_grad_shapes(names: Sequence[str], params: Sequence[Array], grads: Sequence[Array]) -> None:
    for name, x, g in zip(names, params, grads):
        if tuple(g.shape) != tuple(x.shape):
            raise ValueError(f"parameter {name!r}: gradient shape {tuple(g.shape)} != shape {tuple(x.shape)}")


def _check_per_example(names: Sequence[str], params: Sequence[Array], grads: Sequence[Array], hook: str) -> None:
    batch = None
    for name, x, g in zip(names, params, grads):
        if g.ndim != x.ndim + 1 or tuple(g.shape[1:]) != tuple(x.shape):
            raise ValueError(
                f"parameter {name!r}: the grad_transform {hook} takes per-example gradients of shape "
                f"(B, *{tuple(x.shape)}); got shape {tuple(g.shape)} (torch: per-example gradients are p.grad_sample, "
                f"see lmo.privacy.per_sample_grads; a private driver runs in lmo.optimizers.DPOptimizer)"
            )
        if batch is None:
            batch = g.shape[0]
        elif g.shape[0] != batch:
            raise ValueError(
                f"per-example gradients must share one batch size; parameter {name!r} has {g.shape[0]} examples, "
                f"the first parameter {batch}"
            )


def _check_names(names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"parameter name {n!r} occurs twice in the tree")
        seen.add(n)


def _hook_slots(slots: list[dict[str, Array]], stage: str) -> list[dict[str, Array]]:
    prefix = stage + "."
    return [{k[len(prefix) :]: v for k, v in s.items() if k.startswith(prefix)} for s in slots]


def _set_hook_slots(slots: list[dict[str, Array]], stage: str, hook_slots: list[dict[str, Array]]) -> None:
    hook_slots = list(hook_slots)
    if len(hook_slots) != len(slots):
        raise ValueError(f"the {stage} hook returned {len(hook_slots)} slot dicts for {len(slots)} parameters")
    prefix = stage + "."
    for s, h in zip(slots, hook_slots):
        for k in [k for k in s if k.startswith(prefix)]:
            del s[k]
        for k, v in h.items():
            s[prefix + k] = v


def _nonfinite(names: Sequence[str], grads: Sequence[Array]) -> str | None:
    """The name of the first parameter whose gradient is not finite, or None; one host sync when all are finite."""
    if not grads:
        return None
    flags = []
    for g in grads:
        xp = namespace(g)
        flags.append(xp.all(xp.isfinite(g)))
    try:
        xp = namespace(flags[0])
        ok = bool(xp.all(xp.stack(flags)))
    except Exception:  # flags on different devices
        ok = all(bool(f) for f in flags)
    if ok:
        return None
    for name, f in zip(names, flags):
        if not bool(f):
            return name
    return None
