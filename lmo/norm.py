"""The ``Norm`` contract and the registry of geometries.

A geometry is a norm ``||.||`` together with its linear minimisation oracle

    lmo(g) = argmin_{||d|| <= 1} <g, d>,        so   <g, lmo(g)> = -||g||_*   (the dual norm),

and the sharp operator ``sharp(g) = -||g||_* lmo(g)`` (the steepest-descent step of size ``||g||_*``).
This is the argmin, not the ascent direction that most neural-network codebases return: an optimizer step is
``x <- x + lr * radius * lmo(c)``.

A plugin is a subclass with a registry name::

    class Box(Norm, name="box"):
        width: float = 1.0                      # parameters are dataclass fields (keywords)

        def norm(self, x): ...
        def dual_norm(self, g): ...
        def lmo(self, g): ...

Every subclass is made a frozen dataclass, so norms are small immutable values with a readable ``repr``, equality
and a hash; optimizer configurations that hold them print and compare. Parameters are validated in
``__post_init__`` (use ``object.__setattr__`` there to normalise a field).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.metadata
import inspect
import math
from collections.abc import Iterable
from typing import Any, ClassVar

from .backend import Array, Namespace, namespace, widen

__all__ = ["Norm", "Reference", "get_norm", "norms", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "lmo.geometries"

_REGISTRY: dict[str, type[Norm]] = {}
_ABSTRACT_METHODS = ("norm", "dual_norm", "lmo")


class Norm(abc.ABC):
    """A norm with its dual norm and linear minimisation oracle, acting on the trailing ``ndim`` axes.

    Leading axes are batch axes: ``norm(x)`` of shape ``(*batch, *core)`` has shape ``batch``, and ``lmo(g)`` has
    the shape of ``g``. Outputs keep the input's namespace, device and dtype.

    Class declarations (a subclass may override them as plain class attributes or as properties):

    ``ndim``
        1: the norm acts on the trailing axis (vectors); 2: on the trailing two axes (matrices).
    ``delta``
        Declared optimality: ``<g, lmo(g)> <= -delta * dual_norm(g)``. Exact oracles declare 1.
    ``slack``
        Declared feasibility: ``norm(lmo(g)) <= 1 + slack``. Exact oracles declare 0.
    ``symmetry``
        A group of isometries under which the norm is invariant, checked by ``lmo.testing``:
        ``"signed_permutation"`` (entrywise norms), ``"sign_flip"``, ``"orthogonal"`` (Euclidean and Schatten norms
        act on vectors / on both sides of matrices), ``"orthogonal_left"``, ``"orthogonal_right"``, or ``None``.
    ``infinite_input``
        What the oracle does with an infinite input entry, ``"limit"`` or ``"nan"`` (the default). The policy for
        non-finite inputs, the same for every geometry and applied once, in :meth:`_prepare`:

        - a NaN anywhere in a batch entry makes that entry's ``lmo`` and ``sharp`` NaN in every position, and its
          ``norm`` / ``dual_norm`` NaN; never a finite direction, never a backend exception;
        - an entry with ``+-inf`` (and no NaN) has ``norm`` / ``dual_norm`` ``inf``; its ``lmo`` is, for
          ``"limit"``, the finite limit of ``lmo(g_t)`` where ``g_t`` replaces ``+-inf`` by ``+-t``, ``t -> inf``
          (feasible), and for ``"nan"`` NaN in every position (a refusal that needs no host synchronisation: the
          optimizers' finiteness check turns it into a refused step); its ``sharp`` (an infinite step) is NaN;
        - every other batch entry is computed as if the bad ones were absent.

        A ``"limit"`` geometry says how its limit is computed by :meth:`_at_infinity`.
    ``transposable``
        For a matrix norm (``ndim == 2``): ``||X^T|| = ||X||`` with the same instance on the transposed core, so that
        ``lmo(X^T) = lmo(X)^T`` up to rounding. An optimizer may then hand a tall matrix to the oracle transposed and
        stack it with the wide matrices of that shape (an MLP's ``W_in`` and ``W_out`` in one call: on accelerators,
        and for small matrices on a CPU). Default ``False``; ``lmo.testing`` checks a ``True``.
    ``separable_axes``
        The core axes (negative indices among the trailing ``ndim`` axes) along which the oracle is separable:
        for every axis ``a`` listed, cutting ``g`` into blocks along ``a`` and applying ``lmo`` to each block
        gives the blocks of ``lmo(g)``, exactly (shape-dependent scale factors included). Sharded training uses
        it to run the oracle on a shard without gathering the matrix (:mod:`lmo.optimizers.distributed`); the
        leading batch axes are always separable and are not listed. Default ``()``: the oracle needs the whole
        core (the safe answer; a norm that declares nothing is always gathered). ``lmo.testing`` checks it.
    """

    name: ClassVar[str]
    ndim: ClassVar[int] = 1
    delta: ClassVar[float] = 1.0
    slack: ClassVar[float] = 0.0
    symmetry: ClassVar[str | None] = None
    separable_axes: ClassVar[tuple[int, ...]] = ()
    infinite_input: ClassVar[str] = "nan"
    transposable: ClassVar[bool] = False

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)
        if name is not None:
            _register(cls, name)

    # -- the contract --------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def norm(self, x: Array) -> Array:
        """``||x||``, reducing the trailing ``ndim`` axes."""

    @abc.abstractmethod
    def dual_norm(self, g: Array) -> Array:
        """``||g||_* = max_{||d|| <= 1} <g, d>``, reducing the trailing ``ndim`` axes."""

    @abc.abstractmethod
    def lmo(self, g: Array) -> Array:
        """``argmin_{||d|| <= 1} <g, d>``; same namespace, device, dtype and shape as ``g``; ``lmo(0) = 0``."""

    def lmo_factored(self, g: Array, *, finite: bool = False, workspace: Any = None) -> tuple[Array, float]:
        """``(d, f)`` with ``lmo(g) = f * d``: the oracle as a direction and the number it is multiplied by.

        ``d`` has ``g``'s shape and namespace but may be in the oracle's working dtype (a bfloat16 polar iteration
        returns its bfloat16 iterate) and strided (a transposed view); ``f`` is a Python float. An optimizer's update
        ``x + lr * rho * lmo(g)`` then reads ``d`` once, with the coefficient ``lr * rho * f``, instead of casting and
        scaling it first. The non-finite policy is ``lmo``'s; ``finite=True`` is the caller's promise that every
        entry of ``g`` is finite (the optimizers test gradients and momenta once per step, on the device), which lets
        an implementation skip the per-call guard (on a broken promise the result is unspecified).

        ``workspace``: memory the caller keeps between calls (for torch, a :class:`lmo.geometries._torch.Workspace`),
        which an implementation may write its temporaries and ``d`` into instead of fresh memory; ``d`` is then valid
        until the caller's next call with the same workspace (the optimizers consume it first). An implementation
        may ignore it; the optimizers pass it only to an override whose signature has it.

        Default: ``(lmo(g), 1.0)``; ``lmo.testing`` checks that ``f * d`` is ``lmo(g)`` up to the rounding of ``d``'s
        dtype, and that the policy holds with ``finite=False``.
        """
        return self.lmo(g), 1.0

    def sharp(self, g: Array) -> Array:
        """``g^# = -||g||_* lmo(g)``: the steepest-descent step ``argmax_d <g, d> - ||d||^2 / 2``, up to sign.

        With this convention ``<g, sharp(g)> = ||g||_*^2`` and ``||sharp(g)|| = ||g||_*``. A batch entry with a NaN
        or an infinity gives NaN (an infinite step is refused like an undefined one).
        """
        xp = namespace(g)
        scale = self.dual_norm(g)
        scale = xp.where(xp.isinf(scale), math.nan, scale)
        scale = xp.reshape(scale, tuple(scale.shape) + (1,) * self.ndim)
        return -scale * self.lmo(g)

    # -- what the property kit needs to know ---------------------------------------------------------------------
    @classmethod
    def examples(cls) -> Iterable[Norm]:
        """Instances that the contract suite checks for this class (default: the instance with default parameters)."""
        try:
            return (cls(),)
        except TypeError as err:
            raise TypeError(
                f"{cls.__qualname__} has required parameters; define the classmethod examples() to return the "
                f"instances that the property kit should check ({err})"
            ) from None

    def core_shape(self) -> tuple[int, ...] | None:
        """The trailing shape this norm requires, or ``None`` if any shape with ``ndim`` non-empty axes fits."""
        return None

    def reference(self, g: Any) -> Reference | None:
        """What this norm gives on ``g`` (a float64 numpy array), known independently of its methods, or ``None``.

        A geometry that can state its results in closed form (``sum |g|``, the singular values of ``g`` from
        numpy, ...) returns them as a :class:`Reference`; ``lmo.testing`` compares ``norm``, ``dual_norm`` and
        ``lmo`` with it on every input it draws. A subclass inherits the reference, so one that changes the math
        (an ``rms`` that is silently ``l2``) is caught; one that changes it on purpose declares its own.
        Default: ``None`` (no closed form; the kit's other checks still apply).
        """
        return None

    def reference_cases(self) -> Iterable[Reference]:
        """Fixed inputs with independently known results (closed forms, or numbers from an LP or a convex solver
        stated with their source), checked by ``lmo.testing`` on every backend; see :class:`Reference`.

        Manifold geometries declare their tangent-space optimum here (``point`` and ``tangent_value``). Default:
        none.
        """
        return ()

    # -- helpers for implementations -----------------------------------------------------------------------------
    def _prepare(self, x: Array, name: str = "g", *, finite: bool = False) -> tuple[Namespace, Array, Any]:
        """Validate ``x`` for this norm and return ``(xp, x_wide, narrow)``, see :func:`lmo.backend.widen`; ``narrow``
        also applies the non-finite policy to a result, unless ``finite`` (the caller's promise, see
        :meth:`lmo_factored`) skips that guard."""
        xp = namespace(x)
        if x.ndim < self.ndim:
            raise ValueError(
                f"{self!r}: {name} must have at least {self.ndim} axes (the norm acts on the trailing {self.ndim}); "
                f"got shape {tuple(x.shape)}"
            )
        core = tuple(x.shape[x.ndim - self.ndim :])
        if any(n == 0 for n in core):
            raise ValueError(f"{self!r}: {name} has an empty core {core} (shape {tuple(x.shape)})")
        expected = self.core_shape()
        if expected is not None and core != tuple(expected):
            raise ValueError(f"{self!r}: {name} must have trailing shape {tuple(expected)}; got shape {tuple(x.shape)}")
        wide, narrow = widen(xp, x, name=name, where=self)  # the norm's repr is formed only for an error
        if finite:
            return xp, wide, narrow
        return (xp, *_guard_nonfinite(xp, wide, narrow, self.ndim, self.infinite_input, self._at_infinity))

    def _at_infinity(self, xp: Namespace, x: Array) -> Array:
        """For ``infinite_input = "limit"``: the input on which the oracle is evaluated in place of a batch entry
        ``x`` that holds ``+-inf`` (and no NaN), such that ``lmo`` there is ``lim_{t -> inf} lmo(x_t)``.

        Default: the direction of the infinite part, ``sign(x)`` where ``x`` is infinite and 0 elsewhere
        (``x_t / t`` tends to it, and ``lmo`` is positively homogeneous of degree 0), right for every oracle that
        is continuous there. An oracle that computes the limit from the raw input (``-sign(g)``, or a wrapper whose
        inner norms apply this policy themselves) returns ``x``.
        """
        return xp.where(xp.isinf(x), xp.sign(x), xp.zeros_like(x))

    def _axes(self) -> tuple[int, ...]:
        return tuple(range(-self.ndim, 0))


def _guard_nonfinite(
    xp: Namespace, x: Array, narrow: Any, ndim: int, policy: str, at_infinity: Any
) -> tuple[Array, Any]:
    """The non-finite input policy of :class:`Norm` (its docstring): ``(x_clean, narrow_guarded)``.

    Two read-only reductions find the bad batch entries (``max x`` over the core is NaN if the entry holds a NaN and
    ``inf`` if it holds ``+inf``; ``min x`` catches ``-inf``); bad entries are replaced by 0 (``"limit"``: by
    ``at_infinity(x)`` where infinite), so that no backend routine (an SVD, say) ever sees them; the returned
    ``narrow`` overwrites their results: per-entry values (shape ``batch``) with NaN / ``inf``, arrays of the input's
    shape with NaN where the policy refuses. On the hot path (a ``"nan"`` oracle) that is the reductions, one
    ``where`` on the input and one on the output, with no host synchronisation, so it runs under ``torch.compile``.
    """
    axes = tuple(range(-ndim, 0))
    high = xp.max(x, axis=axes)  # batch shape; NaN propagates through max and min (and no |x| temporary is made)
    finite = (high < math.inf) & (xp.min(x, axis=axes) > -math.inf)
    undefined = xp.isnan(high)
    spread = tuple(high.shape) + (1,) * ndim
    ok = xp.reshape(finite, spread)
    if policy == "limit":
        infinite = xp.reshape(~finite & ~undefined, spread)
        clean = xp.where(ok, x, xp.where(infinite, at_infinity(xp, x), 0.0))
        refused = xp.reshape(undefined, spread)
    else:
        clean = xp.where(ok, x, 0.0)

    def guarded(y: Array) -> Array:
        if y.ndim == high.ndim:  # a value per entry: norm, dual_norm
            y = xp.where(undefined, math.nan, xp.where(finite, y, math.inf))
        elif y.ndim == x.ndim:  # an array of the input's shape: lmo, sharp
            y = xp.where(refused, math.nan, y) if policy == "limit" else xp.where(ok, y, math.nan)
        return narrow(y)

    return clean, guarded


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """An input ``g`` and results for it that were obtained without the geometry's own methods.

    Every field that is not ``None`` is checked by ``lmo.testing``; arrays are float64 numpy arrays (or nested
    lists), and ``g`` may have batch axes (then ``norm`` and ``dual_norm`` have the batch shape).

    ``norm``, ``dual_norm``
        ``||g||`` and ``||g||_*``.
    ``lmo``
        ``argmin_{||d|| <= 1} <g, d>``, with the tie rule the geometry documents; leave it ``None`` where the argmin
        is set-valued and no rule is documented, or where it is too ill-conditioned to compare.
    ``condition``
        How much a relative perturbation of ``g`` can move ``lmo`` (e.g. ``s_1 / s_r`` for a polar factor): the kit
        compares the argmin within its tolerance times ``condition``.
    ``point``, ``tangent_value``, ``tangent_lmo``
        For manifold geometries: a point ``x`` of the manifold, the optimum ``min <g, v>`` over tangent ``v`` at
        ``x`` with ``||v|| <= 1`` (what ``lmo_at(x, g)`` must attain), and that argmin where it is unique.
    ``project``
        For manifold geometries: ``project(g)``.
    ``rtol``
        The relative accuracy of the numbers themselves (a solver's tolerance; 0 for closed forms).
    ``source``
        How the numbers were obtained ("closed form: ...", "cvxpy 1.9 (Clarabel), gap 1e-9", ...).
    """

    g: Any
    norm: Any = None
    dual_norm: Any = None
    lmo: Any = None
    condition: float = 1.0
    point: Any = None
    tangent_value: Any = None
    tangent_lmo: Any = None
    project: Any = None
    rtol: float = 0.0
    source: str = ""


# -- registry ----------------------------------------------------------------------------------------------------
def _register(cls: type[Norm], name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a norm's registry name must be a Python identifier; {cls.__qualname__} has name={name!r}")
    missing = [m for m in _ABSTRACT_METHODS if getattr(getattr(cls, m), "__isabstractmethod__", False)]
    if missing:
        raise TypeError(
            f"class {cls.__qualname__}(Norm, name={name!r}) does not define {', '.join(missing)}; "
            f"a registered norm implements {', '.join(_ABSTRACT_METHODS)} (leave out name= for an abstract helper)"
        )
    _check_declarations(cls)
    existing = _REGISTRY.get(name)
    if existing is not None and _qualified(existing) != _qualified(cls):
        raise ValueError(
            f"norm name {name!r} is already registered by {_qualified(existing)}; "
            f"{_qualified(cls)} needs another name"
        )
    cls.name = name
    _REGISTRY[name] = cls


def _check_declarations(cls: type[Norm]) -> None:
    for attr, ok, rule in (
        ("ndim", lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
        ("delta", lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "in (0, 1]"),
        ("slack", lambda v: isinstance(v, (int, float)) and v >= 0, ">= 0"),
        ("infinite_input", lambda v: v in ("limit", "nan"), "'limit' or 'nan'"),
    ):
        value = inspect.getattr_static(cls, attr)
        if isinstance(value, (property, dataclasses.Field)) or attr in getattr(cls, "__dataclass_fields__", {}):
            continue  # declared per instance; the property kit checks the values
        if not ok(value):
            raise ValueError(f"{cls.__qualname__}.{attr} must be {rule}; got {value!r}")


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_builtins_loaded = False
_entry_points_loaded: set[str] = set()


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module("lmo.geometries")


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> None:
    if ep.name in _entry_points_loaded:
        return
    _entry_points_loaded.add(ep.name)
    loaded = ep.load()  # importing the module registers its classes through the class keyword
    if isinstance(loaded, type) and issubclass(loaded, Norm) and ep.name not in _REGISTRY:
        _register(loaded, ep.name)


def norms() -> dict[str, type[Norm]]:
    """All registered norms by name: the built-ins, subclasses defined so far, and entry-point plugins."""
    _load_builtins()
    for ep in _entry_points():
        _load_entry_point(ep)
    return dict(sorted(_REGISTRY.items()))


def get_norm(name: str | Norm, **params: Any) -> Norm:
    """The registered norm ``name`` built with keyword ``params``: ``get_norm("lp", p=3)``.

    A ``Norm`` instance is returned as it is (with no parameters). An unknown name raises ``ValueError`` that lists
    the known names; unknown or invalid parameters raise ``ValueError`` that names them.
    """
    if isinstance(name, Norm):
        if params:
            raise ValueError(f"get_norm got the instance {name!r} and parameters {sorted(params)}; give one or other")
        return name
    if not isinstance(name, str):
        raise ValueError(f"get_norm takes a registry name or a Norm instance; got {name!r}")
    _load_builtins()
    if name not in _REGISTRY:
        for ep in _entry_points():
            if ep.name == name:
                _load_entry_point(ep)
    if name not in _REGISTRY:
        known = ", ".join(norms())
        raise ValueError(f"unknown norm {name!r}; known norms: {known}")
    cls = _REGISTRY[name]
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(params) - set(fields))
    if unknown:
        accepted = ", ".join(fields) or "no parameters"
        raise ValueError(f"norm {name!r} got unknown parameter(s) {', '.join(unknown)}; it takes: {accepted}")
    return cls(**params)
