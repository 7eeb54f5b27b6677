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
state, leaving its inputs untouched, over any array-API namespace (numpy, torch, CuPy, array-api-strict). What can
be decided before the first step -- each parameter's geometry, view and radius, the same-shape batches of the
oracle -- is a :class:`lmo.optimizers.step.Plan`, made once per parameter structure and kept
(:meth:`Driver.plan`); the step itself is :func:`lmo.optimizers.step.run_step`. The torch adapters keep one plan
per param group and step their own parameters and momenta in place (``inplace=True``: the same values, bit for
bit, written into those tensors).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from lmo.backend import Array, namespace
from lmo.norm import Norm, get_norm

from . import _foreach, validation
from .validation import HyperparameterError

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
    "hook_slots",
    "set_hook_slots",
    "find_nonfinite",
    "first_nonfinite",
    "MOMENTUM",
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
        object.__setattr__(self, "radius", validation.real("radius", self.radius, 0.0, low_open=True))
        if self.view is not None:
            view = tuple(self.view)
            if not view or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in view):
                raise HyperparameterError("view", self.view, "a tuple of positive ints")
            object.__setattr__(self, "view", view)
        validation.boolean("transpose", self.transpose)

    def oracle_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape that :meth:`to_oracle` gives an array of shape ``shape``."""
        view = self.view if self.view is not None else tuple(shape)
        return (*view[:-2], view[-1], view[-2]) if self.transpose else tuple(view)

    def to_oracle(self, c: Array) -> Array:
        """``c`` as the oracle sees it: reshaped to the view, then transposed if asked."""
        if self.view is None and not self.transpose:
            return c
        xp = namespace(c)
        v = c if self.view is None else xp.reshape(c, self.view)
        return xp.matrix_transpose(v) if self.transpose else v

    def from_oracle(self, d: Array, like: Array) -> Array:
        """Undo :meth:`to_oracle`: ``d`` back to the shape of ``like``."""
        if self.view is None and not self.transpose:
            return d
        xp = namespace(d)
        if self.transpose:
            d = xp.matrix_transpose(d)
        return xp.reshape(d, tuple(like.shape))


GeometryRule = Callable[[str, tuple[int, ...]], Norm | str | ParamGeometry]
"""A rule assigning a geometry to each parameter from its name (dotted path) and shape.

A rule that must see the whole parameter list (to find the last layer, say: :class:`lmo.optimizers.ScionRecipe`)
also has a method ``for_parameters(names, shapes) -> GeometryRule``: the rule for that list, in registration order.
The driver calls it once per parameter list (:meth:`Driver.for_parameters`) before any per-parameter call."""


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
    lr: Any  # the learning rate of this step: a number, or a 0-d tensor (torch adapters with a tensor lr)
    names: tuple[str, ...]  # parameter names, aligned with every list a hook receives
    estimates: tuple[Array, ...] | None = None  # the oracle's inputs c (direction_transform only)
    geometries: tuple[ParamGeometry, ...] | None = None  # the parameters' geometries (direction_transform only)
    gradient_noise_std: float | None = None  # noise std per entry that the gradient transform released (DP)


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

    def gradient_noise_std(self, names: Sequence[str]) -> float | None:
        """The std per entry of the noise this transform adds to the gradients of the parameters ``names`` (None:
        it adds none); the step passes it on to later hooks as :attr:`StepInfo.gradient_noise_std`."""
        return None


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


def hook_slots(slots: Sequence[Mapping[str, Array]], stage: str) -> list[dict[str, Array]]:
    """Each parameter's slots of one stage (``"<stage>.<key>"`` in the state), with the prefix removed."""
    prefix = stage + "."
    return [{k[len(prefix):]: v for k, v in s.items() if k.startswith(prefix)} for s in slots]


def set_hook_slots(slots: list[dict[str, Array]], stage: str, stage_slots: Sequence[Mapping[str, Array]]) -> None:
    """Replace each parameter's slots of ``stage`` by ``stage_slots`` (one dict per parameter, in order)."""
    stage_slots = list(stage_slots)
    if len(stage_slots) != len(slots):
        raise ValueError(f"the {stage} hook returned {len(stage_slots)} slot dicts for {len(slots)} parameters")
    prefix = stage + "."
    for s, h in zip(slots, stage_slots):
        for k in [k for k in s if k.startswith(prefix)]:
            del s[k]
        for k, v in h.items():
            s[prefix + k] = v


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
_PLAN_CACHE = 8  # plans kept per driver (one per parameter structure it has stepped)


_STEP_CHECKS: dict[str, Callable[[str, Any], float]] = {
    "beta1": validation.probability,
    "beta2": validation.probability,
    "decay": lambda name, value: validation.real(name, value, 0.0),
}
#: the driver's fields that the step reads at every step (a plan does not depend on them: Driver.plans_like)
_STEP_SCALARS = frozenset({"lr", *_STEP_CHECKS})


def checked_step_numbers(numbers: Mapping[str, Any]) -> dict[str, float]:
    """The estimator's ``beta1``, ``beta2`` (each in ``[0, 1)``) and the ``decay`` (``>= 0``) among ``numbers``, as
    floats, checked: the one check, of a new driver's and of the numbers that a step traced by ``torch.compile``
    reads from its param group (comparisons only: traced, a changing number is a symbolic float, and its check is
    guards, not a graph break)."""
    return {name: _STEP_CHECKS[name](name, value) for name, value in numbers.items()}


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
        shape. The rule is called once per parameter when the driver first meets a parameter structure (the
        plan); it must be deterministic. A rule that needs the whole parameter list (the output layer is the last
        matrix: :class:`~lmo.optimizers.ScionRecipe`) is bound to it first (:meth:`for_parameters`).
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
        (no host synchronisation on accelerators; NaN then propagates into the parameters). The check is one
        test on the device for all gradients together, read once per step.
    batch
        Whether parameters whose oracle inputs have the same core shape, dtype, device and norm are stacked and
        sent to the oracle in one batched call (one Newton-Schulz chain for all same-shape matrices). The result
        is the same as one call per parameter; only matrix norms (``ndim >= 2``) are batched. ``"auto"`` (the
        default) batches everywhere except large float32 matrices on a CPU
        (:data:`lmo.optimizers.step.CPU_BATCH_LIMIT`; ``benchmarks/muon_step.py`` measures both).
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

    # -- validation: the one place where the driver's fields are checked ----------------------------------------
    def __post_init__(self) -> None:
        geometry = self.geometry
        if isinstance(geometry, (str, Norm)):
            object.__setattr__(self, "geometry", ParamGeometry(get_norm(geometry)))
        elif not isinstance(geometry, ParamGeometry) and not callable(geometry):
            raise HyperparameterError(
                "geometry", geometry, "a Norm, a registry name, a ParamGeometry or a rule (name, shape) -> geometry"
            )
        numbers = checked_step_numbers({"beta1": self.beta1, "beta2": self.beta2, "decay": self.decay})
        for field, value in numbers.items():
            object.__setattr__(self, field, value)
        validation.choice("rule", self.rule, ("lmo", "sharp"))
        object.__setattr__(self, "radius", validation.real("radius", self.radius, 0.0, low_open=True))
        if not callable(self.lr):
            object.__setattr__(self, "lr", self.check_lr(self.lr))
        for field, kind in _HOOKS.items():
            hook = getattr(self, field)
            if hook is not None and not isinstance(hook, kind):
                raise HyperparameterError(field, hook, f"a {kind.__name__} instance or None")
        validation.choice("nonfinite", self.nonfinite, _NONFINITE)
        if self.batch is not True and self.batch is not False:
            validation.choice("batch", self.batch, ("auto",))
        object.__setattr__(self, "_plans", {})

    def check_lr(self, lr: Any, name: str = "lr") -> Any:
        """The check of a learning rate value for this driver: a finite number ``>= 0`` (or a one-element tensor,
        checked once on the host) with ``lr * decay <= 1``; returns it (a number as a float)."""
        lr = validation.learning_rate(name, lr)
        if self.decay and validation.scalar(lr) * self.decay > 1:
            raise HyperparameterError(name, lr, f"at most 1 / decay = {1 / self.decay:g} (lr * decay must be <= 1: "
                                      "the factor 1 - lr * decay would flip x)")
        return lr

    def replace(self, **changes: Any) -> Driver:
        """A copy with some fields changed (validated like a new driver)."""
        return dataclasses.replace(self, **changes)

    # -- small pieces --------------------------------------------------------------------------------------------
    @property
    def per_example(self) -> bool:
        """Whether :meth:`step` takes per-example gradients ``(B, *shape)`` (a per-example ``grad_transform``)."""
        return self.grad_transform is not None and bool(self.grad_transform.per_example)

    @property
    def has_momentum(self) -> bool:
        """Whether the estimator keeps a momentum buffer (``beta1 > 0``)."""
        return self.beta1 > 0

    def learning_rate(self, step: int) -> Any:
        """The learning rate of step ``step`` (0-based): the number, or the schedule's value (checked)."""
        if not callable(self.lr):
            return self.lr
        value = self.lr(step)
        try:
            return self.check_lr(value, f"lr({step})")
        except HyperparameterError:
            raise
        except (TypeError, ValueError):
            raise HyperparameterError(f"lr({step})", value, "a number (the schedule's value)") from None

    def geometry_for(self, name: str, shape: tuple[int, ...]) -> ParamGeometry:
        """The :class:`ParamGeometry` of the parameter ``name`` with shape ``shape`` (``ValueError`` if it does not
        fit the shape)."""
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

    def plans_like(self, other: Driver) -> bool:
        """Whether a plan made for ``other`` serves this driver: the two differ at most in the numbers that the step
        reads from the driver itself (``lr``, ``beta1``, ``beta2``, ``decay``), with the same estimator structure
        (both with momentum or both without, ``beta1 = beta2`` in both or in neither), not in what a plan resolves
        (geometries, radii, batches, hooks). A scheduler that cycles the momentum (torch's ``OneCycleLR``) then
        changes a group's driver every step, and its plan is kept."""
        if (self.has_momentum, self.beta1 == self.beta2) != (other.has_momentum, other.beta1 == other.beta2):
            return False
        return all(getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(self)
                   if f.compare and f.name not in _STEP_SCALARS)

    def for_parameters(self, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> Driver:
        """This driver for the parameter list ``names`` / ``shapes`` (all parameters, in registration order): a
        geometry rule with a ``for_parameters`` method (a rule that looks at the whole list, see
        :data:`GeometryRule`) is replaced by its rule for this list; any other driver is returned as it is."""
        bind = getattr(self.geometry, "for_parameters", None)
        if bind is None:
            return self
        return self.replace(geometry=bind(tuple(names), tuple(tuple(s) for s in shapes)))

    def plan(self, names: Sequence[str], params: Sequence[Array]) -> Any:
        """The :class:`lmo.optimizers.step.Plan` of this driver for these parameters: made on the first call for a
        parameter structure (names, shapes, dtypes, devices) and kept."""
        from .step import build_plan

        key = (tuple(names), tuple((tuple(x.shape), str(x.dtype), str(getattr(x, "device", "")), type(x))
                                   for x in params))
        plans = self._plans  # type: ignore[attr-defined]
        plan = plans.get(key)
        if plan is None:
            plan = build_plan(self.for_parameters(names, [tuple(x.shape) for x in params]), names, params)
            if len(plans) >= _PLAN_CACHE:
                plans.pop(next(iter(plans)))
            plans[key] = plan
        return plan

    # -- state ---------------------------------------------------------------------------------------------------
    def init_slots(self, name: str, param: Array) -> dict[str, Array]:
        """The state of one parameter: the momentum buffer (zeros) if ``beta1 > 0``, and the hooks' slots."""
        geo = self.geometry_for(name, tuple(param.shape))  # reject an unfit geometry now, not at the first step
        slots: dict[str, Array] = {}
        if self.has_momentum:
            slots[MOMENTUM] = namespace(param).zeros_like(param)
        if stateful_oracle(geo.norm):
            for key, value in geo.norm.init_state(name, geo.to_oracle(param)).items():
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
        driver = self.for_parameters(names, [tuple(x.shape) for x in leaves])
        return {"step": 0, "slots": {n: driver.init_slots(n, x) for n, x in zip(names, leaves)}}

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
        return list(self.point.point(list(params), hook_slots([dict(s) for s in slots], "point"), info))

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
        inplace: bool = False,
        executor: Any = None,
    ) -> tuple[list[Array], list[dict[str, Array]], bool]:
        """The step over aligned lists (what :meth:`step` calls): checks, then
        :func:`lmo.optimizers.step.run_step` on this driver's plan for the parameters.

        Returns ``(new_params, new_slots, taken)``; ``taken`` is False when ``nonfinite="skip"`` skipped the step.
        Everything that can be refused (gradient shapes, non-finite gradients, the learning rate) is checked
        before anything is computed. ``inplace``: the caller hands over ``params`` and the momentum buffers,
        which the step may overwrite (see :func:`~lmo.optimizers.step.run_step`); the returned arrays are then
        the very objects handed in. ``executor``: the oracle stage (default
        :func:`lmo.optimizers.step.evaluate`; :class:`lmo.optimizers.distributed.Distribution` shares it out).
        """
        from .step import run_step

        names = tuple(names)
        params, grads = list(params), list(grads)
        slots = [dict(s) for s in slots]
        if self.per_example:
            _check_per_example(names, params, grads, type(self.grad_transform).__name__)
        else:
            _check_grads(names, params, grads)
        lr = self.learning_rate(step)
        bad = None if self.nonfinite == "ignore" else find_nonfinite(names, grads)
        if bad is not None:
            if self.nonfinite == "skip":
                return params, slots, False
            raise NonFiniteGradientError(
                f"gradient of parameter {bad!r} holds NaN or Inf; nothing was changed (set nonfinite='skip' to "
                f"skip such steps, as loss-scaled mixed precision does)"
            )
        if self.has_momentum:
            for x, s in zip(params, slots):
                if MOMENTUM not in s:  # e.g. a state saved with momentum 0, loaded with momentum > 0
                    s[MOMENTUM] = namespace(x).zeros_like(x)
        new = run_step(self.plan(names, params), params, grads, slots, lr, step, inplace=inplace, executor=executor)
        return new, slots, True


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def find_nonfinite(names: Sequence[str], arrays: Sequence[Array]) -> str | None:
    """The name of the first array with a NaN or Inf entry, or None: one test on the device for all arrays, read
    once (:func:`lmo.optimizers._foreach.all_finite`); only when it fails are the arrays tested one by one."""
    flag = _foreach.all_finite(arrays)
    return None if flag is None or bool(flag) else first_nonfinite(names, arrays)


def first_nonfinite(names: Sequence[str], arrays: Sequence[Array]) -> str | None:
    """The name of the first array with a NaN or Inf entry, or None (one host read per array: for the message of
    a step that is refused, not for the check itself)."""
    for name, a in zip(names, arrays):
        xp = namespace(a)
        if not bool(xp.all(xp.isfinite(a))):
            return name
    return None


def _check_grads(names: Sequence[str], params: Sequence[Array], grads: Sequence[Array]) -> None:
    """Each gradient has its parameter's shape and dtype (as torch's autograd keeps ``p.grad``: the step's in-place
    kernels take one dtype, and a promoted momentum would change the state's dtype)."""
    for name, x, g in zip(names, params, grads):
        if tuple(g.shape) != tuple(x.shape):
            raise ValueError(f"parameter {name!r}: gradient shape {tuple(g.shape)} != shape {tuple(x.shape)}")
        _check_grad_dtype(name, x, g)


def _check_grad_dtype(name: str, x: Array, g: Array) -> None:
    if g.dtype != x.dtype:
        where = f"parameter {name!r} of shape {tuple(x.shape)}"
        if namespace(g) is not namespace(x):
            raise ValueError(f"{where}: the gradient is a {type(g).__module__}.{type(g).__name__}, the parameter a "
                             f"{type(x).__module__}.{type(x).__name__} (one array library per parameter)")
        raise ValueError(f"{where}: gradient dtype {g.dtype} != dtype {x.dtype} (cast the gradient to the "
                         "parameter's dtype)")


def _check_per_example(names: Sequence[str], params: Sequence[Array], grads: Sequence[Array], hook: str) -> None:
    batch = None
    for name, x, g in zip(names, params, grads):
        if g.ndim != x.ndim + 1 or tuple(g.shape[1:]) != tuple(x.shape):
            raise ValueError(
                f"parameter {name!r}: the grad_transform {hook} takes per-example gradients of shape "
                f"(B, *{tuple(x.shape)}); got shape {tuple(g.shape)} (torch: per-example gradients are p.grad_sample, "
                f"see lmo.privacy.per_sample_grads; a private driver runs in lmo.optimizers.DPOptimizer)"
            )
        _check_grad_dtype(name, x, g)
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
