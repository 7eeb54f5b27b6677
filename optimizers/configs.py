"""Optimizers as configurations of the one :class:`~lmo.optimizers.Driver`.

Each function returns a ``Driver``; none implements an update of its own. Each is registered with the test inputs
that the generic optimizer suite runs it on (:func:`configuration`), so a new configuration is tested by defining it
here, with no list to edit.

=============  =============================================  ==============================  ===========  =========
configuration  geometry (lmo of the estimator c)              (beta1, beta2)                  decay        radius
=============  =============================================  ==============================  ===========  =========
sign_sgd       sign (l-inf): -sign(g)                          (0, 0)                          wd           1
signum         sign                                           (b, b)                          wd           1
lion           sign                                           (b1, b2) = (0.9, 0.99)          wd           1
muon           spectral (Newton-Schulz): -UV^T                 (b^2, b) Nesterov / (b, b)      wd           adjust(A, B)
scion          per parameter (Spectral, Sign, ColNorm, ...)    (b, b)                          1            per group
uscion         as scion                                       (b, b)                          0            per group
=============  =============================================  ==============================  ===========  =========
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lmo.backend import Array, namespace
from lmo.geometries.polar_solvers import METHODS as POLAR_METHODS
from lmo.norm import Norm, get_norm, norms
from lmo.random import gaussian, uniform

from . import validation
from .driver import Driver, ParamGeometry
from .validation import HyperparameterError, renamed

__all__ = [
    "sign_sgd",
    "signum",
    "lion",
    "muon",
    "scion",
    "uscion",
    "spectral_descent",
    "MuonGeometry",
    "ScionGeometry",
    "ScionRecipe",
    "ScionAssignment",
    "SCION_ROLES",
    "scion_init",
    "SCION_NORMS",
    "vector_geometry",
    "ADJUST_LR",
    "VIEWS",
    "flattens",
    "Configuration",
    "configuration",
    "configurations",
    "NS_COEFFICIENTS",
]

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)  # Keller Jordan's quintic Newton-Schulz coefficients (torch.optim.Muon)


# ---------------------------------------------------------------------------------------------------------------
# The registry of configurations and their test inputs
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Configuration:
    """A registered configuration and the inputs the generic test suite runs it on.

    ``cases``: keyword sets that build working drivers; on the suite's quadratic each must reduce the loss.
    ``bad``: ``(kwargs, name)`` pairs that must raise ``ValueError`` at construction, mentioning ``name``.
    ``shapes``: parameter shapes of the suite's quadratic (matrix methods need matrices).
    ``needs``: registry names of norms the configuration needs; the suite skips it (saying so) while one is missing.
    """

    name: str
    factory: Callable[..., Driver]
    cases: tuple[Mapping[str, Any], ...]
    bad: tuple[tuple[Mapping[str, Any], str], ...]
    shapes: Mapping[str, tuple[int, ...]]
    needs: tuple[str, ...] = ()

    def missing(self) -> tuple[str, ...]:
        """The norms this configuration needs that are not registered (yet)."""
        known = norms()
        return tuple(n for n in self.needs if n not in known)


_CONFIGURATIONS: dict[str, Configuration] = {}


def configuration(
    *,
    cases: Sequence[Mapping[str, Any]],
    bad: Sequence[tuple[Mapping[str, Any], str]] = (),
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    needs: Sequence[str] = (),
) -> Callable[[Callable[..., Driver]], Callable[..., Driver]]:
    """Register a configuration function with its test inputs (see :class:`Configuration`)."""

    def register(factory: Callable[..., Driver]) -> Callable[..., Driver]:
        name = factory.__name__
        _CONFIGURATIONS[name] = Configuration(
            name=name,
            factory=factory,
            cases=tuple(dict(c) for c in cases),
            bad=tuple((dict(k), str(p)) for k, p in bad),
            shapes=dict(shapes or {"w": (6, 4), "b": (5,)}),
            needs=tuple(needs),
        )
        return factory

    return register


def configurations() -> dict[str, Configuration]:
    """Every registered configuration by name."""
    return dict(_CONFIGURATIONS)


MATRIX_SHAPES = {"w": (6, 4), "v": (3, 5), "e": (2, 3, 3)}


def configured(names: Mapping[str, tuple[str, Any]], **fields: Any) -> Driver:
    """``Driver(**fields)``, its errors naming the configuration's hyperparameters (``names``: field -> (keyword,
    value), e.g. ``beta2 -> beta``)."""
    with renamed(names):
        return Driver(**fields)


# ---------------------------------------------------------------------------------------------------------------
# Sign methods
# ---------------------------------------------------------------------------------------------------------------
@configuration(
    cases=[{"lr": 0.05}, {"lr": 0.05, "weight_decay": 0.01}],
    bad=[({"lr": -1.0}, "lr"), ({"weight_decay": -0.1}, "decay")],
)
def sign_sgd(lr: float | Callable[[int], float] = 3e-3, *, weight_decay: float = 0.0, **driver: Any) -> Driver:
    """SignSGD (Bernstein et al., 2018): ``x <- (1 - lr wd) x - lr sign(g)``; the LMO of the l-inf ball.

    Default ``lr=3e-3``, measured to work from ``7.5e-4`` to ``1.2e-2`` (digits CNN test accuracy 0.945 / 0.970 /
    0.956; char transformer validation loss 2.11 at the default; docs/optimizers.md, "Defaults and recipes")."""
    return configured({"decay": ("weight_decay", weight_decay)}, geometry=get_norm("sign"), lr=lr, decay=weight_decay,
                   **driver)


@configuration(
    cases=[{"lr": 0.05}, {"lr": 0.05, "beta": 0.5, "weight_decay": 0.01}],
    bad=[({"beta": 1.0}, "beta"), ({"beta": -0.5}, "beta"), ({"lr": float("nan")}, "lr")],
)
def signum(
    lr: float | Callable[[int], float] = 3e-3, *, beta: float = 0.9, weight_decay: float = 0.0, **driver: Any
) -> Driver:
    """Signum (Bernstein et al., 2018): ``m <- b m + (1 - b) g``, ``x <- (1 - lr wd) x - lr sign(m)``.

    Default ``lr=3e-3``, measured to work from ``7.5e-4`` to ``1.2e-2`` (digits CNN 0.969 / 0.970 / 0.952; char
    transformer 1.80 at the default; docs/optimizers.md, "Defaults and recipes")."""
    names = {"beta1": ("beta", beta), "beta2": ("beta", beta), "decay": ("weight_decay", weight_decay)}
    return configured(names, geometry=get_norm("sign"), lr=lr, beta1=beta, beta2=beta, decay=weight_decay, **driver)


@configuration(
    cases=[{"lr": 0.05}, {"lr": 0.05, "betas": (0.95, 0.98), "weight_decay": 0.1}],
    bad=[({"betas": (0.9, 1.0)}, "beta2"), ({"betas": (0.9,)}, "betas"), ({"weight_decay": -1.0}, "decay")],
)
def lion(
    lr: float | Callable[[int], float] = 3e-3,
    *,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
    **driver: Any,
) -> Driver:
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms")::

        c = b1 m + (1 - b1) g;   x <- (1 - lr wd) x - lr sign(c);   m <- b2 m + (1 - b2) g

    Default ``lr=3e-3`` (the paper's and lion-pytorch's ``1e-4`` is for large models with long schedules: 0.870 on
    the digits CNN), measured to work from ``7.5e-4`` to ``1.2e-2`` (digits CNN 0.956 / 0.961 / 0.931; char
    transformer 1.91 at the default; docs/optimizers.md, "Defaults and recipes").
    """
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise HyperparameterError("betas", betas, "a pair (beta1, beta2)") from None
    return configured({"decay": ("weight_decay", weight_decay)}, geometry=get_norm("sign"), lr=lr, beta1=beta1,
                   beta2=beta2, decay=weight_decay, **driver)


# ---------------------------------------------------------------------------------------------------------------
# Muon
# ---------------------------------------------------------------------------------------------------------------
ADJUST_LR = ("original", "match_rms_adamw", "none")
VIEWS = ("auto", "batch", "flatten")


def flattens(ndim: int, view: str) -> bool:
    """Whether a parameter with ``ndim`` axes is one matrix ``(O, I * k1 * ...)`` under ``view`` (a conv kernel):
    4 or more axes under ``"auto"``, 3 or more under ``"flatten"``; else its leading axes are batch axes."""
    return ndim >= 3 and (view == "flatten" or (view == "auto" and ndim >= 4))


@dataclasses.dataclass(frozen=True)
class MuonGeometry:
    """Muon's per-parameter geometry: a matrix norm (spectral) and the shape-dependent radius of the update.

    Shapes (``view``):

    - ``(A, B)``: one matrix.
    - ``(E, A, B)`` (``view="auto"`` or ``"batch"``): ``E`` matrices, each orthogonalised on its own (stacked experts,
      fused heads). Leading axes of higher-dimensional parameters are batch axes under ``view="batch"``.
    - ``(O, I, k1, ...)`` with 4 or more axes (``view="auto"``), or any parameter with 3 or more axes under
      ``view="flatten"``: a convolution kernel, flattened to the matrix ``(O, I * k1 * ...)``. The radius is then
      computed from that matrix: ``A = O``, ``B = I * k1 * ...``
      (so ``original`` gives ``sqrt(max(1, O / (I k1 ...)))``).
      Use ``view="flatten"`` for Conv1d kernels ``(O, I, k)``, which ``"auto"`` would read as ``O`` matrices.
    - vectors and scalars (fewer than 2 axes): the geometry ``vectors`` if given, else refused. ``vectors`` is a
      ``Norm``, registry name or ``ParamGeometry`` (e.g. ``"rms"`` or :func:`vector_geometry`), or a rule
      ``(name, shape) -> geometry`` for them; a scalar is seen as a vector of one entry.

    Radius (``adjust_lr``, torch.optim.Muon's ``adjust_lr_fn``) from the matrix shape ``(A, B)``:
    ``"original"`` ``sqrt(max(1, A / B))`` (Keller Jordan), ``"match_rms_adamw"`` ``0.2 sqrt(max(A, B))`` (Moonshot),
    ``"none"`` 1.
    """

    norm: Norm
    adjust_lr: str | None = "original"
    view: str = "auto"
    vectors: Any = None
    label: str = dataclasses.field(default="muon", compare=False)  # the configuration's name, for messages

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", get_norm(self.norm))
        if self.norm.ndim != 2:
            raise HyperparameterError("norm", self.norm, "a matrix norm (ndim=2)")
        adjust = "original" if self.adjust_lr is None else self.adjust_lr
        object.__setattr__(self, "adjust_lr", validation.choice("adjust_lr", adjust, ADJUST_LR))
        validation.choice("view", self.view, VIEWS)
        object.__setattr__(self, "vectors", vectors_rule(self.vectors))

    def radius(self, rows: int, cols: int) -> float:
        """The radius of an ``(rows, cols)`` matrix's update under this geometry's ``adjust_lr``."""
        if self.adjust_lr == "original":
            return math.sqrt(max(1.0, rows / cols))
        if self.adjust_lr == "match_rms_adamw":
            return 0.2 * math.sqrt(max(rows, cols))
        return 1.0

    def __call__(self, name: str, shape: tuple[int, ...]) -> ParamGeometry:
        if len(shape) < 2:
            if self.vectors is not None:
                return vector_for(self.vectors, name, tuple(shape))
            raise ValueError(
                f"{self.label} acts on matrices; parameter {name!r} has shape {tuple(shape)}. Give what is not a "
                f"matrix a geometry: {self.label}(..., vectors='rms') (lmo.optimizers.vector_geometry(): each "
                f"vector's step has RMS lr), or a rule {self.label}(..., vectors=lambda name, shape: "
                f"lmo.optimizers.ParamGeometry('rms', radius=0.1))"
            )
        if flattens(len(shape), self.view):
            view = (shape[0], math.prod(shape[1:]))
            return ParamGeometry(self.norm, self.radius(*view), view)
        return ParamGeometry(self.norm, self.radius(shape[-2], shape[-1]))


def vectors_rule(vectors: Any) -> ParamGeometry | Callable[[str, tuple[int, ...]], Any] | None:
    """``vectors=`` of the matrix configurations, checked: ``None`` (refuse vectors), a ``ParamGeometry``, a
    ``Norm`` or registry name (made a ``ParamGeometry`` of radius 1), or a rule ``(name, shape) -> geometry``."""
    if vectors is None or isinstance(vectors, ParamGeometry):
        return vectors
    if isinstance(vectors, (str, Norm)):
        return ParamGeometry(get_norm(vectors))
    if callable(vectors):
        return vectors
    raise HyperparameterError("vectors", vectors, "None, a Norm, a registry name, a ParamGeometry or a rule "
                              "(name, shape) -> geometry")


def vector_for(vectors: Any, name: str, shape: tuple[int, ...]) -> ParamGeometry:
    """The geometry that ``vectors`` (see :func:`vectors_rule`) gives the parameter ``name`` of fewer than 2 axes;
    a scalar is seen as a vector of one entry (``view=(1,)``), so that a vector norm applies to it."""
    geo = vectors(name, shape) if callable(vectors) and not isinstance(vectors, ParamGeometry) else vectors
    if not isinstance(geo, ParamGeometry):
        geo = ParamGeometry(get_norm(geo))
    if not shape and geo.view is None and geo.norm.ndim == 1:
        geo = dataclasses.replace(geo, view=(1,))
    return geo


def vector_geometry(radius: float = 1.0) -> ParamGeometry:
    """The documented geometry of vectors (biases, norm gains, scalars) beside matrices: the RMS norm, so that each
    vector's step ``lr * radius * lmo(c) = -lr * radius * c / rms(c)`` has RMS ``lr * radius`` (Scion's ``BiasRMS``;
    a scalar moves by ``lr * radius``). The private optimizers (:class:`lmo.optimizers.DPMuon`) use it by default."""
    return ParamGeometry(get_norm("rms"), radius)


def _ns_coefficients(value: Any) -> tuple[float, ...]:
    """torch.optim.Muon's rule: one quintic ``(a, b, c)``."""
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3
            or not all(validation.is_number(v) and math.isfinite(v) for v in value)):
        raise HyperparameterError("ns_coefficients", value, "a tuple of exactly 3 finite numbers (a, b, c)",
                                  f"Coefficients must be a tuple of exactly 3 values; got ns_coefficients={value!r}")
    return tuple(float(v) for v in value)


@configuration(
    cases=[
        {"lr": 0.1, "weight_decay": 0.0},
        {"lr": 0.1, "nesterov": False, "weight_decay": 0.01, "adjust_lr": "match_rms_adamw"},
        {"lr": 0.1, "weight_decay": 0.0, "method": "auto"},
    ],
    bad=[
        ({"beta": 1.5}, "beta"),
        ({"weight_decay": -0.1}, "decay"),
        ({"adjust_lr": "bogus"}, "adjust"),
        ({"ns_steps": 0}, "steps"),
        ({"nesterov": 1}, "nesterov"),
        ({"ns_coefficients": (1.0, 2.0)}, "ns_coefficients"),
        ({"method": "auto", "ns_steps": 7}, "ns_steps would be ignored with method='auto'"),
        ({"method": "svd", "ns_coefficients": (3.0, -3.2, 1.2)}, "ns_coefficients would be ignored"),
        ({"norm": "spectral", "method": "auto"}, "method would be ignored with norm="),
        ({"method": "auto", "eps": -1.0}, "eps"),
    ],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def muon(
    lr: float | Callable[[int], float] = 0.02,
    *,
    beta: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.1,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    adjust_lr: str | None = "original",
    view: str = "auto",
    method: str = "newton_schulz",
    norm: Norm | str | None = None,
    ns_dtype: str | None = None,
    vectors: Any = "rms",
    **driver: Any,
) -> Driver:
    """Muon (Jordan et al., 2024), exactly as torch.optim.Muon computes it, in this package's sign convention::

        m <- b m + (1 - b) g                                   (buf.lerp_(g, 1 - b))
        c  = b m + (1 - b) g = b^2 m_old + (1 - b^2) g         (Nesterov: g.lerp(buf, b); else c = m)
        x <- (1 - lr wd) x + lr * adjust(A, B) * lmo(c),       lmo(c) = -NS(c) ~ -U V^T  (c = U S V^T)

    i.e. the driver with ``(beta1, beta2) = (b^2, b)`` (Nesterov) or ``(b, b)``, the spectral geometry
    ``get_norm("spectral", method="newton_schulz", steps=ns_steps, coefficients=ns_coefficients, eps=eps)``
    and the radius ``adjust(A, B)`` of :class:`MuonGeometry` (conv kernels and batches of matrices included).
    ``method`` replaces Newton-Schulz by another polar solver of the spectral geometry: ``"auto"`` (the fastest
    one whose update is at least as orthogonal as the default's: docs/polar_solvers.md), ``"polar_express"``,
    ``"svd"`` (exact), ...; it keeps ``eps`` and has its own steps (``ns_steps`` and ``ns_coefficients`` must keep
    their defaults: a value that would be ignored is refused). ``norm`` (a matrix ``Norm`` or registry name)
    replaces the geometry altogether (then ``ns_*``, ``eps`` and ``method`` must keep their defaults).
    ``ns_dtype`` (``"float32"``, ``"bfloat16"``, ...) pins the dtype of the polar iteration; the default follows
    the device (bf16 where bf16 matrix products are fast, as torch.optim.Muon always uses; fp32 elsewhere).

    ``vectors``: the geometry of parameters with fewer than 2 axes (biases, gains, scalars): a ``Norm``, registry
    name or ``ParamGeometry``, or a rule ``(name, shape) -> geometry`` for them; default ``"rms"``
    (:func:`vector_geometry`: each vector's step has RMS ``lr``, Scion's ``BiasRMS``), so that
    ``muon(lr).init({"w": W, "b": b})`` works in numpy and CuPy; ``None`` refuses them, as torch.optim.Muon does.

    Default ``lr=0.02`` (KellerJordan/Muon's and :func:`~lmo.optimizers.torch.muon_with_adamw`'s; torch.optim.Muon's
    ``1e-3`` reaches 0.868 on the digits CNN), measured to work from ``5e-3`` to ``0.08`` (digits CNN 0.960 / 0.969 /
    0.948; char transformer 1.72 at the default; docs/optimizers.md, "Defaults and recipes").
    """
    validation.boolean("nesterov", nesterov)
    steps, coefficients = validation.integer("ns_steps", ns_steps, 1, 100), _ns_coefficients(ns_coefficients)
    if norm is not None:
        _refuse_unused("norm=", {"ns_steps": steps, "ns_coefficients": coefficients, "eps": eps, "method": method})
        norm = get_norm(norm)
    elif method == "newton_schulz":
        norm = get_norm("spectral", method=method, steps=steps, coefficients=coefficients, eps=eps, dtype=ns_dtype)
    else:
        with renamed({"dtype": ("ns_dtype", ns_dtype)}):
            norm = _spectral(method, ns_dtype, eps)  # first: an unknown method is named before the refusal below
        _refuse_unused(f"method={method!r}", {"ns_steps": steps, "ns_coefficients": coefficients})
    geometry = MuonGeometry(norm, adjust_lr=adjust_lr, view=view, vectors=vectors)
    beta1, beta2 = muon_betas(beta, nesterov) if validation.is_number(beta) else (beta, beta)
    names = {"beta1": ("beta", beta), "beta2": ("beta", beta), "decay": ("weight_decay", weight_decay)}
    return configured(names, geometry=geometry, lr=lr, beta1=beta1, beta2=beta2, decay=weight_decay, **driver)


# muon()'s own defaults of the polar iteration's hyperparameters
_NS_DEFAULTS = {name: inspect.signature(muon).parameters[name].default
                for name in ("ns_steps", "ns_coefficients", "eps", "method")}


def _refuse_unused(why: str, given: Mapping[str, Any]) -> None:
    """The polar iteration's hyperparameters that a configuration would ignore (Newton-Schulz's with another method,
    any of them with a norm given) are refused unless they are the defaults (a torch class passes all of them), not
    dropped in silence."""
    for name, value in given.items():
        if value != _NS_DEFAULTS[name]:
            raise HyperparameterError(name, value, f"its default {_NS_DEFAULTS[name]!r} with {why}",
                                      f"{name} would be ignored with {why} (it sets the default spectral geometry"
                                      f"{'' if name == 'method' else ' of method=newton_schulz'}); got "
                                      f"{name}={value!r}")


def muon_betas(beta: Any, nesterov: bool) -> tuple[Any, Any]:
    """:func:`muon`'s estimator betas ``(beta1, beta2)``: Nesterov's ``(b^2, b)``, else ``(b, b)``."""
    return (beta * beta if nesterov else beta), beta


def _spectral(method: str, dtype: str | None, eps: float = _NS_DEFAULTS["eps"]) -> Norm:
    validation.choice("method", method, POLAR_METHODS)
    return get_norm("spectral", method=method, dtype=dtype, eps=eps)


@configuration(
    cases=[{"lr": 0.5}],
    bad=[({"lr": -0.5}, "lr")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def spectral_descent(
    lr: float | Callable[[int], float] = 0.1, *, beta: float = 0.0, method: str = "svd", vectors: Any = "l2",
    **driver: Any
) -> Driver:
    """Stochastic spectral descent (Carlson et al., 2015): the sharp step ``x <- x - lr ||c||_nuc U V^T``.

    The driver with the spectral geometry and ``rule="sharp"``: the step is scaled by the dual (nuclear) norm.
    ``vectors`` (see :func:`muon`): default ``"l2"``, the spectral norm of a vector (a one-row matrix), whose
    sharp step is ``-lr c`` (SGD); the RMS ball's sharp step would be ``-lr n c`` for ``n`` entries.
    """
    geometry = MuonGeometry(_spectral(method, None), adjust_lr="none", view="batch", vectors=vectors,
                            label="spectral_descent")
    names = {"beta1": ("beta", beta), "beta2": ("beta", beta)}
    return configured(names, geometry=geometry, lr=lr, beta1=beta, beta2=beta, rule="sharp", **driver)


def _scion_spectral(name: str, shape: tuple[int, ...], *, max: bool = False, normalized: bool = True,
                    steps: int = 5) -> ParamGeometry:
    if len(shape) != 2:
        raise ValueError(f"Scion norm 'Spectral' acts on matrices; parameter {name!r} has shape {shape} "
                         f"(use 'SpectralConv' for conv kernels, 'BiasRMS' for vectors)")
    # Scion: sqrt(d_out / d_in) (normalized), sqrt(d_out) (not), max(1, .) with max=True
    scale = ("rms_max" if max else "rms") if normalized else "l2_rms"
    return ParamGeometry(_ns("spectral", steps, scale=scale))


def _scion_spectral_conv(name: str, shape: tuple[int, ...], *, steps: int = 5) -> ParamGeometry:
    if len(shape) not in (3, 4):
        raise ValueError(f"Scion norm 'SpectralConv' acts on conv kernels (3 or 4 axes); {name!r} has shape {shape}")
    return ParamGeometry(_ns("spectral_conv", steps, ndim=len(shape)))


def _scion_sign(name: str, shape: tuple[int, ...], *, normalized: bool = True, zero_init: bool = False
                ) -> ParamGeometry:
    if len(shape) != 2:
        raise ValueError(f"Scion norm 'Sign' acts on matrices; parameter {name!r} has shape {shape}")
    return ParamGeometry(get_norm("scion_sign", normalized=normalized))


def _scion_bias_rms(name: str, shape: tuple[int, ...]) -> ParamGeometry:
    # Scion: g / rms(g) along axis 0. A vector (the usual case) is one unit-RMS vector; a matrix, unit-RMS columns.
    if len(shape) > 2:
        raise ValueError(f"Scion norm 'BiasRMS' acts on vectors; parameter {name!r} has shape {shape}")
    if len(shape) == 2:
        return ParamGeometry(get_norm("bias_rms"), 1.0, transpose=True)
    return ParamGeometry(get_norm("bias_rms"), 1.0, None if shape else (1,))


def _scion_colnorm(name: str, shape: tuple[int, ...], *, normalized: bool = False, transpose: bool = False
                   ) -> ParamGeometry:
    # Scion: columns (rows when transposed: embeddings stored (vocab, dim)) of unit RMS, / (other dim) if normalized
    if len(shape) != 2:
        raise ValueError(f"Scion norm 'ColNorm' acts on matrices; parameter {name!r} has shape {shape}")
    return ParamGeometry(get_norm("colnorm", rms=True, normalized=normalized, transpose=transpose))


def _scion_rownorm(name: str, shape: tuple[int, ...], *, normalized: bool = True, transpose: bool = False
                   ) -> ParamGeometry:
    # Scion: rows (columns when transposed) of unit l2 norm, / sqrt(their length) if normalized
    if len(shape) != 2:
        raise ValueError(f"Scion norm 'RowNorm' acts on matrices; parameter {name!r} has shape {shape}")
    return ParamGeometry(get_norm("rownorm", normalized=normalized, transpose=transpose))


def _scion_auto(name: str, shape: tuple[int, ...]) -> ParamGeometry:
    if len(shape) in (3, 4):
        return _scion_spectral_conv(name, shape)
    if len(shape) == 2:
        return _scion_spectral(name, shape)
    if len(shape) <= 1:
        return _scion_bias_rms(name, shape)
    raise ValueError(f"Scion norm 'Auto' has no geometry for parameter {name!r} of shape {shape}")


def _ns(name: str, steps: int, **params: Any) -> Norm:
    return get_norm(name, method="newton_schulz", steps=steps, coefficients=NS_COEFFICIENTS, eps=1e-7, **params)


SCION_NORMS: dict[str, Callable[..., ParamGeometry]] = {
    "Spectral": _scion_spectral,
    "SpectralConv": _scion_spectral_conv,
    "Sign": _scion_sign,
    "BiasRMS": _scion_bias_rms,
    "ColNorm": _scion_colnorm,
    "RowNorm": _scion_rownorm,
    "Auto": _scion_auto,
}
"""Scion's norm names (LIONS-EPFL/scion) -> ``fn(name, shape, **norm_kwargs) -> ParamGeometry`` in our registry's
terms: the same oracle (Scion's ascent direction negated, without its ``1e-8`` in denominators) and the same norm, so
the ``"sharp"`` rule scales by the right dual norm. ``Spectral``: ``spectral`` (Newton-Schulz with Scion's
coefficients) with ``scale="rms"`` (``sqrt(d_out/d_in)``), ``"rms_max"`` (``max=True``) or ``"l2_rms"``
(``normalized=False``); ``SpectralConv``: ``spectral_conv`` (``sqrt(c_out/c_in) / K``); ``Sign``: ``scion_sign``;
``ColNorm``: ``colnorm(rms=True)``; ``RowNorm``: ``rownorm``; ``BiasRMS``: ``bias_rms`` (per column of a matrix).
See :mod:`lmo.geometries.columns` for the correspondence of each class."""


@dataclasses.dataclass(frozen=True)
class ScionGeometry:
    """A Scion parameter group's geometry: ``norm`` (a Scion name, a registry name, or a ``Norm``) with
    ``norm_kwargs``, and the group's ``radius`` (the reference's ``scale``). Scion names get Scion's shape factors
    (:data:`SCION_NORMS`); registry names and ``Norm`` instances are used as they are."""

    norm: str | Norm = "Auto"
    norm_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    radius: float = 1.0

    def __post_init__(self) -> None:
        kwargs = dict(self.norm_kwargs or {})
        object.__setattr__(self, "norm_kwargs", tuple(sorted(kwargs.items())))  # hashable
        object.__setattr__(self, "radius", validation.real("radius", self.radius, 0.0, low_open=True))
        if isinstance(self.norm, str) and self.norm in SCION_NORMS:
            fn = SCION_NORMS[self.norm]
            import inspect

            accepted = [p for p in inspect.signature(fn).parameters if p not in ("name", "shape")]
            unknown = sorted(set(kwargs) - set(accepted))
            if unknown:
                raise ValueError(
                    f"norm_kwargs {unknown} are not accepted by Scion norm {self.norm!r}; it takes {accepted or 'none'}"
                )
        elif isinstance(self.norm, (str, Norm)):
            object.__setattr__(self, "norm", get_norm(self.norm, **kwargs))
            object.__setattr__(self, "norm_kwargs", ())
        else:
            raise ValueError(
                f"norm must be a Scion norm name ({', '.join(SCION_NORMS)}), a registry name or a Norm; "
                f"got norm={self.norm!r}"
            )

    def __call__(self, name: str, shape: tuple[int, ...]) -> ParamGeometry:
        if isinstance(self.norm, Norm):
            return ParamGeometry(self.norm, self.radius)
        geo = SCION_NORMS[self.norm](name, tuple(shape), **dict(self.norm_kwargs))
        return dataclasses.replace(geo, radius=geo.radius * self.radius)


SCION_ROLES = ("output", "embedding", "hidden", "conv", "vector")
"""The roles of :class:`ScionRecipe`, each with its Scion norm and radius."""


def _patterns(field: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise HyperparameterError(
            field, value, "a name, a module name or a glob pattern (or a sequence of them)") from None
    if not all(isinstance(p, str) and p for p in out):
        raise HyperparameterError(field, value, "non-empty strings: parameter names, module names or glob patterns")
    return out


def _declared(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``name`` is declared by one of ``patterns``: the parameter's name, the name of a module holding it
    (a dotted prefix: ``"head"`` declares ``"head.weight"``), or a glob pattern (``"*.lm_head.*"``)."""
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


def _reads_rows(first: tuple[int, ...], following: tuple[int, ...]) -> bool:
    """Whether a model's first matrix ``first`` is an embedding table ``(vocab, dim)``, seen from the matrix
    registered after it: that one takes inputs of ``first``'s row length ``dim`` (a lookup emits rows), not of
    its row count (a linear layer ``(out, in)`` emits ``out`` values). A square matrix cannot tell: not a table."""
    return len(first) == 2 and first[0] != first[1] and following[-1] == first[1]


@dataclasses.dataclass(frozen=True)
class ScionRecipe:
    """Scion's per-parameter recipe for any model, from its parameter list alone (``model.named_parameters()``:
    names, shapes, registration order), with no naming rule required. Each parameter gets a role, and the role its
    Scion norm (:data:`SCION_NORMS`) and radius:

    =========  ===========================================================  =========================  ================
    role       parameters                                                   norm (lmo of the estimate)  radius
    =========  ===========================================================  =========================  ================
    output     the last matrix in registration order (the layer that maps   ``Sign``, normalised:       output_radius
               to the output), or the parameters named by ``output``        ``-sign(g) / d_in``
    embedding  the matrices named by ``embedding`` (tables stored           ``ColNorm`` transposed:     embedding_radius
               ``(vocab, dim)``)                                            rows of unit RMS
    hidden     every other matrix                                           ``Spectral``: ``-sqrt(d_out  radius
                                                                            / d_in) U V^T``
    conv       kernels of 3 or 4 axes                                       ``SpectralConv``            radius
    vector     0 or 1 axis (biases, norm gains, scalars)                    ``BiasRMS``: unit RMS       bias_radius
    =========  ===========================================================  =========================  ================

    ``output`` and ``embedding`` override the structural choice: parameter names, module names (``"head"`` declares
    ``head.weight`` and ``head.bias``) or glob patterns (``"*lm_head*"``). Declare the output of a model whose
    output matrix is not registered last -- one that ties it to the input embedding (``named_parameters()`` lists
    a tied tensor once, under the embedding's name: ``output="wte"``), or registers a matrix after its head.

    The recipe is a geometry rule that sees the whole parameter list: the driver binds it to the list
    (:meth:`for_parameters`, the torch optimizers to all their parameters) before it assigns geometries;
    :meth:`assign` does the same for a model's ``named_parameters()`` and shows the result. Called on one
    parameter alone, it knows only the declared names and the shape (no output layer unless declared).
    The defaults (``radius``, ``output_radius``, ...) are the ones measured to train both a small CNN and a small
    GPT with :func:`scion` and :func:`uscion` at their default learning rates (docs/optimizers.md, "Scion recipes").
    """

    radius: float = 8.0
    output_radius: float = 128.0
    embedding_radius: float = 1.0
    bias_radius: float = 1.0
    output: str | Sequence[str] | None = None
    embedding: str | Sequence[str] = ()
    steps: int = 5

    def __post_init__(self) -> None:
        for field in ("radius", "output_radius", "embedding_radius", "bias_radius"):
            object.__setattr__(self, field, validation.real(field, getattr(self, field), 0.0, low_open=True))
        if self.output is not None:
            object.__setattr__(self, "output", _patterns("output", self.output))
        object.__setattr__(self, "embedding", _patterns("embedding", self.embedding))
        validation.integer("steps", self.steps, 1, 100)

    # -- roles ---------------------------------------------------------------------------------------------------
    def role(self, name: str, shape: tuple[int, ...]) -> str:
        """The role of one parameter seen alone: by its shape and the declared names (``output``, ``embedding``)."""
        ndim = len(shape)
        if ndim <= 1:
            return "vector"
        if ndim >= 3:
            return "conv"
        if self.output is not None and _declared(name, self.output):
            return "output"
        if _declared(name, self.embedding):
            return "embedding"
        return "hidden"

    def roles(self, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> dict[str, str]:
        """The role of every parameter of a list (in registration order): as :meth:`role`, and, unless ``output``
        is declared, the last matrix is the output layer. ``ValueError`` if a declared name matches no parameter."""
        names, shapes = list(names), [tuple(s) for s in shapes]
        for field in ("output", "embedding"):
            for pattern in getattr(self, field) or ():
                if not any(_declared(n, (pattern,)) for n in names):
                    raise ValueError(f"ScionRecipe: {field}={pattern!r} matches no parameter; the parameters are "
                                     f"{names if len(names) <= 12 else names[:12] + ['...']}")
        out = {n: self.role(n, s) for n, s in zip(names, shapes)}
        matrices = [(n, s) for n, s in zip(names, shapes) if len(s) >= 2]
        if self.output is None:
            last = [n for n, _ in matrices if out[n] == "hidden"][-1:]
            for n in last:
                out[n] = "output"
        if not self.embedding and len(matrices) >= 2 and _reads_rows(matrices[0][1], matrices[1][1]):
            if out[matrices[0][0]] == "hidden":
                out[matrices[0][0]] = "embedding"
        return out

    def for_parameters(self, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> ScionAssignment:
        """The rule of this recipe for a parameter list (what the driver calls): its :meth:`roles`, fixed."""
        return ScionAssignment(self, tuple(self.roles(names, shapes).items()))

    def assign(self, named_parameters: Any) -> ScionAssignment:
        """The recipe bound to a model's parameters, e.g. ``recipe.assign(model.named_parameters())`` (pairs of a
        name and an array, or a mapping): what the optimizer will use, to read (``print``) or to pass as the
        ``geometry`` of :func:`scion`."""
        pairs = list(named_parameters.items() if isinstance(named_parameters, Mapping) else named_parameters)
        return self.for_parameters([n for n, _ in pairs], [tuple(x.shape) for _, x in pairs])

    # -- geometry ------------------------------------------------------------------------------------------------
    def geometry(self, role: str, name: str, shape: tuple[int, ...]) -> ParamGeometry:
        """The geometry of a parameter in ``role``: its Scion norm and the role's radius times the norm's own."""
        shape = tuple(shape)
        if role == "vector":
            geo, r = _scion_bias_rms(name, shape), self.bias_radius
        elif role == "output":
            geo, r = _scion_sign(name, shape), self.output_radius
        elif role == "embedding":
            geo, r = _scion_colnorm(name, shape, transpose=True), self.embedding_radius
        elif role == "hidden":
            geo, r = _scion_spectral(name, shape, steps=self.steps), self.radius
        elif role == "conv":
            geo, r = _scion_spectral_conv(name, shape, steps=self.steps), self.radius
        else:
            raise ValueError(f"ScionRecipe: role must be one of {SCION_ROLES}; got {role!r} for parameter {name!r}")
        return dataclasses.replace(geo, radius=geo.radius * r)

    def radius_of(self, role: str) -> float:
        """The radius of a role (``radius`` for hidden matrices and conv kernels)."""
        return {"output": self.output_radius, "embedding": self.embedding_radius,
                "vector": self.bias_radius}.get(role, self.radius)

    def __call__(self, name: str, shape: tuple[int, ...]) -> ParamGeometry:
        return self.geometry(self.role(name, tuple(shape)), name, tuple(shape))


@dataclasses.dataclass(frozen=True)
class ScionAssignment:
    """A :class:`ScionRecipe` bound to a parameter list: each parameter's role, fixed (``roles``: ``(name, role)``
    pairs in registration order). A geometry rule; a parameter it does not list gets the recipe's role of a
    parameter seen alone (:meth:`ScionRecipe.role`). ``str()`` is a table of the assignment."""

    recipe: ScionRecipe
    roles: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", dict(self.roles))

    def role(self, name: str, shape: tuple[int, ...]) -> str:
        """The role of parameter ``name``."""
        return self._by_name.get(name) or self.recipe.role(name, tuple(shape))  # type: ignore[attr-defined]

    def __call__(self, name: str, shape: tuple[int, ...]) -> ParamGeometry:
        return self.recipe.geometry(self.role(name, tuple(shape)), name, tuple(shape))

    def __str__(self) -> str:
        width = max([len(n) for n, _ in self.roles] + [9])
        rows = [f"{'parameter':{width}s}  {'role':9s}  {'norm':20s}  radius"]
        for name, role in self.roles:
            rows.append(f"{name:{width}s}  {role:9s}  {_ROLE_NORMS[role]:20s}  {self.recipe.radius_of(role):g}")
        return "\n".join(rows)


_ROLE_NORMS = {"output": "Sign", "embedding": "ColNorm (transposed)", "hidden": "Spectral", "conv": "SpectralConv",
               "vector": "BiasRMS"}


def scion_init(params: Any, geometry: ScionRecipe | ScionAssignment | None = None, *, seed: int = 0,
               vectors: str = "keep") -> dict[str, Array]:
    """Scion's initialisation (Pethick et al., 2025; the reference's ``Norm.init`` times the group's radius): each
    parameter a random point on the sphere of its role's ball (:class:`ScionRecipe`), so that constrained Scion
    starts where its iterates live (inside the ball of radius ``rho``, on its surface)::

        hidden     rho sqrt(d_out / d_in) Q            Q (semi-)orthogonal, Haar-distributed (QR of a Gaussian)
        conv       rho sqrt(c_out / c_in) / K  Q_tap   each kernel tap (c_out, c_in) orthogonal; K taps (k*k)
        output     rho / d_in  S                       S: random signs
        embedding  rho  E                              E: Gaussian rows (one per token) of unit RMS
        vector     kept as it is ("keep"), or zeros ("zeros": the reference's BiasRMS init; it would also zero
                   the gains of LayerNorm/GroupNorm, switching them off)

    ``params``: a mapping or pairs of (name, array), e.g. ``model.named_parameters()``; ``geometry``: the recipe
    (default ``ScionRecipe()``; only the roles and radii are used) or its assignment. ``seed`` seeds each
    parameter's draw (with its index). Returns ``{name: array}`` in each parameter's namespace, dtype and device;
    the inputs are not changed. torch: ``model.load_state_dict(scion_init(model.named_parameters()), strict=False)``.
    """
    validation.choice("vectors", vectors, ("keep", "zeros"))
    pairs = list(params.items() if isinstance(params, Mapping) else params)
    recipe = ScionRecipe() if geometry is None else geometry
    if isinstance(recipe, ScionRecipe):
        recipe = recipe.assign(pairs)
    if not isinstance(recipe, ScionAssignment):
        raise HyperparameterError("geometry", geometry, "a ScionRecipe or a ScionAssignment")
    out = {}
    for index, (name, x) in enumerate(pairs):
        x = x.detach() if hasattr(x, "detach") else x  # a torch parameter: its values, outside autograd
        role, shape = recipe.role(name, tuple(x.shape)), tuple(x.shape)
        xp = namespace(x)
        radius = recipe.recipe.radius_of(role)
        if role == "vector":
            out[name] = xp.zeros_like(x) if vectors == "zeros" else xp.asarray(x, copy=True)
        elif role == "hidden":
            out[name] = (radius * math.sqrt(shape[0] / shape[1])) * _orthogonal(x, shape[:0], shape, seed + index)
        elif role == "conv":  # taps last: (c_out, c_in, k1, ...) with each [:, :, tap] orthogonal
            taps = math.prod(shape[2:])
            q = _orthogonal(x, (taps,), shape[:2], seed + index)
            q = xp.reshape(xp.permute_dims(q, (1, 2, 0)), shape)
            out[name] = (radius * math.sqrt(shape[0] / shape[1]) / taps) * q
        elif role == "output":
            out[name] = xp.astype(_signs(_random(x, shape, seed + index, "uniform") - 0.5) * (radius / shape[-1]),
                                  x.dtype)
        else:  # embedding: rows of unit RMS
            e = _random(x, shape, seed + index, "normal")
            out[name] = xp.astype(radius * e / xp.sqrt(xp.mean(e * e, axis=-1, keepdims=True)), x.dtype)
    return out


def _random(like: Array, shape: tuple[int, ...], seed: int, kind: str) -> Array:
    """Draws of ``shape`` like ``like``, in float32 at least (QR and normalisation in low precision are poor)."""
    xp = namespace(like)
    work = like if like.dtype in (xp.float32, xp.float64) else xp.astype(like, xp.float32)
    return (gaussian if kind == "normal" else uniform)(work, shape, seed)


def _signs(x: Array) -> Array:
    """-1 where ``x < 0``, else 1."""
    xp = namespace(x)
    one = xp.ones_like(x)
    return xp.where(x < 0, -one, one)


def _orthogonal(like: Array, batch: tuple[int, ...], shape: tuple[int, int], seed: int) -> Array:
    """``batch`` random matrices of ``shape`` with orthonormal rows or columns (Haar: the QR factor of a Gaussian,
    its signs fixed by ``R``'s diagonal, as torch.nn.init.orthogonal_), in ``like``'s namespace and dtype."""
    xp = namespace(like)
    rows, cols = shape
    g = _random(like, (*batch, max(rows, cols), min(rows, cols)), seed, "normal")
    q, r = xp.linalg.qr(g)
    q = q * _signs(xp.linalg.diagonal(r))[..., None, :]
    q = q if rows >= cols else xp.matrix_transpose(q)
    return xp.astype(q, like.dtype)


def _scion_driver(lr: Any, beta: float, geometry: Any, constrained: bool, driver: dict[str, Any]) -> Driver:
    if geometry is None:
        geometry = ScionRecipe()
    names = {"beta1": ("beta", beta), "beta2": ("beta", beta)}
    return configured(names, geometry=geometry, lr=lr, beta1=beta, beta2=beta, decay=1.0 if constrained else 0.0,
                   **driver)


@configuration(
    cases=[{"lr": 0.1, "geometry": ScionRecipe(radius=10.0, output_radius=10.0, bias_radius=10.0)}],
    bad=[({"lr": 1.5}, "lr"), ({"beta": 1.0}, "beta")],
    shapes={"w": (6, 4), "b": (5,), "lm_head": (3, 6)},
    needs=("spectral",),
)
def scion(
    lr: float | Callable[[int], float] = 2.0**-8,
    *,
    beta: float = 0.9,
    geometry: Any = None,
    **driver: Any,
) -> Driver:
    """Constrained Scion (Pethick et al., 2025, "Training Deep Learning Models with Norm-Constrained LMOs")::

        m <- b m + (1 - b) g;   x <- (1 - lr) x + lr * rho * lmo(m)        (a Frank-Wolfe step, lr <= 1)

    per parameter geometry and radius ``rho`` from ``geometry`` (default :class:`ScionRecipe`: hidden Spectral,
    lm_head Sign, embeddings ColNorm, biases BiasRMS). Iterates that start in the radius ball stay in it.
    ``beta`` is the usual momentum (Scion's own ``momentum`` is ``1 - beta``; README default 0.1, i.e. beta 0.9).

    Default ``lr=2^-8`` with :class:`ScionRecipe`'s radii (8 hidden, 128 output), measured to work from ``2^-10``
    to ``2^-6`` (digits CNN 0.896 / 0.976 / 0.955; char transformer 1.66 at the default; AdamW's best: 0.972 and
    2.00; docs/optimizers.md, "Defaults and recipes").
    """
    return _scion_driver(lr, beta, geometry, True, driver)


@configuration(
    cases=[{"lr": 0.1, "geometry": ScionRecipe(radius=1.0, output_radius=1.0)}],
    bad=[({"beta": -0.1}, "beta"), ({"radius": 0.0}, "radius")],
    shapes={"w": (6, 4), "b": (5,), "lm_head": (3, 6)},
    needs=("spectral",),
)
def uscion(
    lr: float | Callable[[int], float] = 2.0**-8,
    *,
    beta: float = 0.8,
    geometry: Any = None,
    **driver: Any,
) -> Driver:
    """Unconstrained Scion: as :func:`scion` with ``x <- x + lr * rho * lmo(m)`` (no shrinking of ``x``).

    Default ``lr=2^-8``, ``beta=0.8``, measured to work from ``2^-10`` to ``2^-6`` (digits CNN 0.902 / 0.977 /
    0.969; char transformer 1.63 at the default; docs/optimizers.md, "Defaults and recipes")."""
    return _scion_driver(lr, beta, geometry, False, driver)
