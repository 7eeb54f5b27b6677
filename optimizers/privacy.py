r"""Differential privacy for the driver: per-example clipping and Gaussian noise as a gradient hook, and DP-MuonBC's
bias correction as a post-LMO hook. Private optimizers are configurations of the one driver with these hooks.

The privatised gradient of one step (Abadi et al., 2016; per-matrix clipping as in Kim & Fan, 2026, "DP-Muon")::

    per_matrix:  g_W(x) <- g_W(x) * min(1, C_W / ||g_W(x)||_F)        for every example x and parameter W
    flat:        g(x)   <- g(x)   * min(1, C / ||g(x)||_2)              (all parameters of an example together)
    g_W  = ( sum_x g_W(x) + N(0, (sigma * S)^2 I) ) / expected_batch_size
    S    = sqrt(sum_W C_W^2)  (per_matrix)   or   C  (flat)              the L2 sensitivity of the sum

followed by the driver's step (momentum, LMO, ...), which is post-processing: the privacy of the whole run is that
of the subsampled Gaussian mechanism with noise multiplier ``sigma``, one release per step, accounted by
:mod:`lmo.privacy`.

Privacy is one slice: :func:`private` makes any configuration private (its driver with :class:`Privatize` as the
gradient transform and, for DP-MuonBC, :class:`BiasCorrection` after the oracle). :func:`dp_muon` (DP-MuonBC with
``bias_correction=True``), :func:`dp_sign_sgd`, :func:`dp_scion` and :func:`dp_sgd` (the ``l2`` geometry with the
sharp rule: SGD) are ``private`` of the configuration of the same name. torch users run private drivers in
:class:`lmo.optimizers.DPOptimizer` (or :class:`lmo.optimizers.DPMuon`), which privatises all param groups together
and accounts for privacy.

The driver of a private configuration takes per-example gradients: ``driver.step(params, grads, state)`` with each
leaf of ``grads`` of shape ``(B, *param.shape)``, the same ``B`` for every leaf (``B = 0`` is an empty batch: the
step releases noise only, as Poisson sampling requires).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lmo.backend import Array, device, namespace, safe_divide
from lmo.norm import Norm, norms
from lmo.random import RandomSource

from . import validation
from .configs import MATRIX_SHAPES, ScionRecipe, configuration, configured, muon, scion, sign_sgd
from .driver import DirectionTransform, Driver, GradientTransform, ParamGeometry, StepInfo
from .validation import HyperparameterError

__all__ = [
    "private",
    "Privatize",
    "BiasCorrection",
    "clip_per_example",
    "clip_factors",
    "polar_bias_correction",
    "noise_variance_factor",
    "dp_muon",
    "dp_sign_sgd",
    "dp_scion",
    "dp_sgd",
    "CLIPPING",
]

CLIPPING = ("per_matrix", "flat")


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    return validation.real(name, value, 0.0, low_open=not allow_zero)


# ---------------------------------------------------------------------------------------------------------------
# Clipping
# ---------------------------------------------------------------------------------------------------------------
def _wide_dtype(xp: Any, x: Array) -> Any:
    """The dtype in which clipped gradients are formed: float32 for half precision, else the gradient's own."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise ValueError(f"per-example gradients must have a real floating dtype; got {x.dtype}")
    return xp.float32 if xp.finfo(x.dtype).bits < 32 else x.dtype


def _squared_norms(xp: Any, g: Array) -> tuple[Array, Any]:
    """Per-example squared norms ``(B,)`` of ``g`` ``(B, ...)``, accumulated in float64 where the device has it.

    Returns ``(squares, dtype)``: the accumulation dtype tells the rounding bound. Float64 squares of float32 (or
    half) entries are exact and cannot overflow; float64 gradients are scaled by their largest entry first.
    """
    flat = xp.reshape(g, (g.shape[0], math.prod(g.shape[1:])))
    try:
        wide = xp.astype(flat, xp.float64)
    except Exception:  # a device without float64 (Apple MPS): accumulate in float32, with the bound that implies
        wide = xp.astype(flat, xp.float32)
    if flat.dtype == xp.float64 and flat.shape[1] > 0 and flat.shape[0] > 0:
        peak = xp.max(xp.abs(wide), axis=1)
        scaled = safe_divide(xp, wide, peak[:, None])
        return xp.sum(scaled * scaled, axis=1) * (peak * peak), wide.dtype
    return xp.sum(wide * wide, axis=1), wide.dtype


def _margin(xp: Any, acc_dtype: Any, grad_dtype: Any, entries: int) -> float:
    """A relative margin ``k`` such that clipping to ``C (1 - k)`` with the computed norm gives ``||clipped|| <= C``
    in exact arithmetic on the computed values: it covers the rounding of the norm (``entries`` squares summed in
    any order, a square root and a division in ``acc_dtype``) and of the product in ``grad_dtype``."""
    eps_acc = float(xp.finfo(acc_dtype).eps)
    eps_grad = float(xp.finfo(grad_dtype).eps)
    return 2.0 * ((entries + 8) * eps_acc + 2.0 * eps_grad)


def clip_factors(
    grads: Sequence[Array], thresholds: Sequence[float], clipping: str = "per_matrix"
) -> list[Array]:
    """The per-example clipping factors ``(B,)`` of each parameter's per-example gradients ``(B, *shape)``.

    ``per_matrix``: ``thresholds`` holds one ``C_W`` per parameter and each factor is
    ``min(1, C_W (1 - k) / ||g_W(x)||)``; ``flat``: ``thresholds`` holds one ``C`` and every parameter of example
    ``x`` gets ``min(1, C (1 - k) / ||g(x)||)`` with the norm over all parameters together. ``k`` (below ``1e-6``
    for float32 gradients with up to a billion entries) absorbs floating-point rounding, so that the clipped values,
    formed in float32 or wider, obey the bound exactly; a zero gradient gets the factor 1.
    """
    validation.choice("clipping", clipping, CLIPPING)
    grads = list(grads)
    if not grads:
        return []
    xp = namespace(grads[0])
    if clipping == "per_matrix":
        if len(thresholds) != len(grads):
            raise ValueError(f"per_matrix clipping needs one threshold per parameter; got {len(thresholds)} "
                             f"for {len(grads)} parameters")
        out = []
        for g, c in zip(grads, thresholds):
            sq, acc = _squared_norms(xp, g)
            entries = math.prod(g.shape[1:])
            out.append(_factor(xp, xp.sqrt(sq), c, _margin(xp, acc, _wide_dtype(xp, g), entries), _wide_dtype(xp, g)))
        return out
    if len(thresholds) != 1:
        raise ValueError(f"flat clipping takes one threshold; got {len(thresholds)}")
    total, acc = None, None
    for g in grads:
        sq, acc = _squared_norms(xp, g)  # the same accumulation dtype for every parameter (one device)
        total = sq if total is None else total + sq
    entries = sum(math.prod(g.shape[1:]) for g in grads) + len(grads)
    wide = _wide_dtype(xp, grads[0])
    factor = _factor(xp, xp.sqrt(total), thresholds[0], _margin(xp, acc, wide, entries), wide)
    return [factor for _ in grads]


def _factor(xp: Any, norms_: Array, c: float, margin: float, dtype: Any) -> Array:
    bound = c * (1.0 - margin)
    # bound / max(norm, bound): exactly 1 when norm <= bound (and for a zero gradient), else bound / norm < 1
    f = bound / xp.maximum(norms_, xp.full_like(norms_, bound))
    return xp.astype(f, dtype)


def _expand(xp: Any, f: Array, ndim: int) -> Array:
    return xp.reshape(f, (f.shape[0],) + (1,) * (ndim - 1))


def clip_per_example(
    grads: Sequence[Array], max_grad_norm: float | Sequence[float], clipping: str = "per_matrix"
) -> list[Array]:
    """Per-example gradients ``(B, *shape)``, clipped: ``per_matrix`` (each parameter's gradient of each example to
    its ``C_W``; ``max_grad_norm`` one float for all or one per parameter) or ``flat`` (each example's whole
    gradient to ``C``). Results are float32 for half-precision inputs, else the inputs' dtype; see
    :func:`clip_factors` for the exact bound."""
    grads = list(grads)
    thresholds = _thresholds_list(max_grad_norm, len(grads), clipping)
    out = []
    for g, f in zip(grads, clip_factors(grads, thresholds, clipping)):
        xp = namespace(g)
        out.append(xp.astype(g, f.dtype) * _expand(xp, f, g.ndim))
    return out


def _thresholds_list(max_grad_norm: Any, n: int, clipping: str) -> list[float]:
    if clipping == "flat":
        return [_positive("max_grad_norm", max_grad_norm)]
    if isinstance(max_grad_norm, (int, float)) and not isinstance(max_grad_norm, bool):
        return [_positive("max_grad_norm", max_grad_norm)] * n
    values = [_positive("max_grad_norm", c) for c in max_grad_norm]
    if len(values) != n:
        raise ValueError(f"max_grad_norm has {len(values)} thresholds for {n} parameters")
    return values


# ---------------------------------------------------------------------------------------------------------------
# The privatisation hook
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Privatize(GradientTransform):
    """Per-example clipping, the sum over the lot, Gaussian noise and the division by the expected batch size.

    Fields
    ------
    noise_multiplier
        ``sigma >= 0``: the noise added to the clipped sum has std ``sigma * S`` per entry, ``S`` the sensitivity.
    max_grad_norm
        ``per_matrix``: one ``C`` for every parameter, a sequence with one ``C_W`` per parameter (in the order of
        the parameters), or a mapping from parameter name to ``C_W`` (every parameter named); ``S = sqrt(sum C_W^2)``.
        ``flat``: one ``C``; ``S = C``.
    expected_batch_size
        The divisor of the noisy sum: ``sample_rate * dataset size`` under Poisson sampling (not the realised batch
        size, which would leak through the step size).
    clipping
        ``"per_matrix"`` (default; DP-Muon) or ``"flat"`` (Opacus's default).
    generator
        The noise's generator: ``None`` (fresh OS entropy), an ``int`` seed, a backend generator, or a
        :class:`lmo.random.RandomSource` (see :mod:`lmo.random`).

    The hook draws from its generator (its one side effect). Noise is drawn in float32 or float64 (float32 for
    half-precision gradients) and the result is cast to the parameter's dtype.
    """

    noise_multiplier: float
    max_grad_norm: Any
    expected_batch_size: float
    clipping: str = "per_matrix"
    generator: Any = None

    per_example = True

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier, allow_zero=True)
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))
        _positive("expected_batch_size", self.expected_batch_size)
        object.__setattr__(self, "expected_batch_size", float(self.expected_batch_size))
        validation.choice("clipping", self.clipping, CLIPPING)
        c = self.max_grad_norm
        if isinstance(c, (int, float)) and not isinstance(c, bool):
            _positive("max_grad_norm", c)
            object.__setattr__(self, "max_grad_norm", float(c))
        elif self.clipping == "flat":
            raise ValueError(f"flat clipping takes one max_grad_norm (a number); got max_grad_norm={c!r}")
        elif isinstance(c, Mapping):
            object.__setattr__(self, "max_grad_norm", {str(k): _positive(f"max_grad_norm[{k!r}]", v)
                                                       for k, v in c.items()})
        elif isinstance(c, Sequence) and not isinstance(c, str):
            object.__setattr__(self, "max_grad_norm", tuple(_positive("max_grad_norm", v) for v in c))
        else:
            raise ValueError(f"max_grad_norm must be a number, a sequence or a mapping of numbers; got {c!r}")
        object.__setattr__(self, "generator", RandomSource(self.generator))

    # -- calibration -----------------------------------------------------------------------------------------
    def thresholds(self, names: Sequence[str]) -> list[float]:
        """The clipping thresholds for the parameters ``names``: one per parameter (``per_matrix``) or ``[C]``."""
        c = self.max_grad_norm
        if self.clipping == "flat":
            return [c]
        if isinstance(c, float):
            return [c] * len(names)
        if isinstance(c, dict):
            missing = [n for n in names if n not in c]
            if missing:
                raise ValueError(f"max_grad_norm names no threshold for the parameters {missing}")
            return [c[n] for n in names]
        if len(c) != len(names):
            raise ValueError(f"max_grad_norm has {len(c)} thresholds for {len(names)} parameters {list(names)}")
        return list(c)

    def sensitivity(self, names: Sequence[str]) -> float:
        """The L2 sensitivity ``S`` of the clipped sum over the parameters ``names`` (add or remove one example)."""
        return math.sqrt(math.fsum(c * c for c in self.thresholds(names)))

    def noise_std(self, names: Sequence[str]) -> float:
        """The std per entry of the noise added to the clipped sum: ``noise_multiplier * S``."""
        return self.noise_multiplier * self.sensitivity(names)

    def gradient_noise_std(self, names: Sequence[str]) -> float:
        """The std per entry of the noise in the privatised gradient: ``noise_multiplier * S / expected_batch_size``."""
        return self.noise_std(names) / self.expected_batch_size

    # -- the hook --------------------------------------------------------------------------------------------
    def __call__(
        self, grads: list[Array], slots: list[dict[str, Array]], params: list[Array], info: StepInfo
    ) -> tuple[list[Array], list[dict[str, Array]]]:
        return self.privatize(grads, params, info.names), slots

    def privatize(self, grads: Sequence[Array], params: Sequence[Array], names: Sequence[str]) -> list[Array]:
        """The privatised gradients (shapes and dtypes of ``params``) from per-example ``grads`` ``(B, *shape)``:
        ``(sum_x clip(g(x)) + N(0, (sigma S)^2 I)) / expected_batch_size``.

        It is the composition of :meth:`clipped_sums`, :meth:`add_noise` and :meth:`finish`; a data-parallel run
        (``DPMuon(..., process_group=...)``) sums the clipped sums over the ranks between the first two and adds
        the noise on one rank only, so that it is drawn once per parameter."""
        return self.finish(self.add_noise(self.clipped_sums(grads, names), names), params)

    def clipped_sums(self, grads: Sequence[Array], names: Sequence[str]) -> list[Array]:
        """``sum_x clip(g(x))`` for each parameter (float32 for half precision, else the gradients' dtype); a batch
        of no examples gives zeros of the parameter's shape."""
        grads = list(grads)
        factors = clip_factors(grads, self.thresholds(names), self.clipping)
        out = []
        for g, f in zip(grads, factors):
            xp = namespace(g)
            if g.shape[0] > 0:
                out.append(xp.tensordot(f, xp.astype(g, f.dtype), axes=1))
            else:
                out.append(xp.zeros(tuple(g.shape[1:]), dtype=f.dtype, device=device(g)))
        return out

    def add_noise(self, sums: Sequence[Array], names: Sequence[str]) -> list[Array]:
        """``sums`` plus Gaussian noise of std ``noise_std(names)`` per entry, drawn from the hook's generator in the
        order of the parameters (the hook's one side effect)."""
        std = self.noise_std(names)
        if std <= 0:
            return list(sums)
        return [s + self.generator.normal(s, std) for s in sums]

    def finish(self, sums: Sequence[Array], params: Sequence[Array]) -> list[Array]:
        """The noisy sums divided by the expected batch size, in the parameters' dtypes."""
        out = []
        for s, x in zip(sums, params):
            xp = namespace(s)
            out.append(xp.astype(s / self.expected_batch_size, x.dtype))
        return out


# ---------------------------------------------------------------------------------------------------------------
# DP-MuonBC: bias correction of the polar factor
# ---------------------------------------------------------------------------------------------------------------
def noise_variance_factor(step: int, beta1: float, beta2: float) -> float:
    """``v`` such that the oracle's input ``c`` of step ``step`` (0-based) carries noise of variance ``v tau^2`` per
    entry when every gradient so far carried independent noise of variance ``tau^2``: for the driver's estimator
    ``c_t = b1 m_{t-1} + (1 - b1) g_t``, ``m_t = b2 m_{t-1} + (1 - b2) g_t``, ``m_{-1} = 0``::

        v = (1 - b1)^2 + b1^2 (1 - b2)^2 (1 - b2^(2t)) / (1 - b2^2)
    """
    if step < 0:
        raise ValueError(f"step must be >= 0; got {step}")
    b1, b2 = float(beta1), float(beta2)
    memory = (1 - b2) ** 2 * (1 - b2 ** (2 * step)) / (1 - b2 * b2)
    return (1 - b1) ** 2 + b1 * b1 * memory


def polar_bias_correction(estimate: Array, direction: Array, variance: float, max_correction: float = 1.0) -> Array:
    r"""DP-MuonBC's correction of a polar-factor direction for Gaussian noise of variance ``variance`` per entry.

    For ``M`` of shape ``(m, n)``, ``m <= n``, with SVD ``U diag(s) V^T`` and i.i.d. ``Z ~ N(0, v)``, the polar map's
    heat smoothing is, to second order (the Laplacian term of ``E f(M + Z) = f(M) + v/2 Laplacian f(M) + O(v^2)``)::

        E polar(M + Z) = U diag(1 - v k) V^T + O(v^2),
        k_i = sum_{j != i} 1 / (s_i + s_j)^2 + (n - m) / (2 s_i^2)

    (the noise shrinks each singular direction; the transpose for ``m > n``). The correction evaluates the leading
    term at the noisy estimate and removes it::

        d_BC = (I + U diag(min(v k, max_correction)) U^T) d        (m <= n;  d (I + V diag(...) V^T) if m > n)

    where ``d`` is the oracle's direction ``lmo(estimate) = -f U V^T`` (any scale ``f``; a Newton-Schulz direction
    is corrected alike). The remaining bias is ``O(v^2)``. ``max_correction`` caps ``v k_i``: where it binds, the
    noise is as large as the singular value and no expansion holds. Batched over leading axes.
    """
    xp = namespace(estimate)
    if variance <= 0:
        return direction
    m, n = estimate.shape[-2], estimate.shape[-1]
    c = estimate if xp.finfo(estimate.dtype).bits >= 32 else xp.astype(estimate, xp.float32)
    d = xp.astype(direction, c.dtype)
    wide = m <= n
    gram = c @ xp.matrix_transpose(c) if wide else xp.matrix_transpose(c) @ c
    lam, w = xp.linalg.eigh(gram)
    s = xp.sqrt(xp.clip(lam, 0.0, None))
    pair = s[..., :, None] + s[..., None, :]
    inv = safe_divide(xp, xp.ones_like(pair), pair * pair)
    diag = safe_divide(xp, xp.ones_like(s), 4.0 * s * s)
    k = xp.sum(inv, axis=-1) - diag + abs(n - m) * 2.0 * diag
    k = xp.where(s > 0, k, xp.full_like(k, math.inf))
    corr = xp.clip(variance * k, 0.0, max_correction)
    t = (w * corr[..., None, :]) @ xp.matrix_transpose(w)  # W diag(corr) W^T
    out = d + (t @ d if wide else d @ t)
    return xp.astype(out, direction.dtype)


def _is_polar(norm: Norm) -> bool:
    """Whether ``norm`` is the registry's ``spectral`` norm (its oracle is a polar factor ``-f U V^T``)."""
    return getattr(type(norm), "name", None) == "spectral"


@dataclasses.dataclass(frozen=True, eq=False)
class BiasCorrection(DirectionTransform):
    """DP-MuonBC: the post-LMO hook that removes the leading bias of the noisy polar factor
    (:func:`polar_bias_correction`), for every parameter whose geometry has a polar-factor oracle.

    Fields
    ------
    noise
        The noise of the privatised gradient: a number (its std per entry), or the :class:`Privatize` hook of the
        driver (the default's meaning too, ``None``): then the std that the privatisation released in this step,
        ``noise_multiplier * S / expected_batch_size`` with ``S`` over all parameters privatised together
        (:attr:`StepInfo.gradient_noise_std`; the private torch optimizers privatise all their groups together).
    beta1, beta2
        The driver's estimator, which carries the noise of past steps into ``c`` (:func:`noise_variance_factor`).
    max_correction
        The cap on each singular direction's correction (see :func:`polar_bias_correction`).
    polar
        ``polar(norm) -> bool``: which geometries to correct; default, the registry's ``spectral`` norm (its oracle is
        ``-f U V^T`` for every method). Other parameters' directions pass unchanged.
    """

    noise: Any = None
    beta1: float = 0.0
    beta2: float = 0.0
    max_correction: float = 1.0
    polar: Callable[[Norm], bool] | None = None

    def __post_init__(self) -> None:
        if self.noise is not None and not isinstance(self.noise, Privatize):
            _positive("noise", self.noise, allow_zero=True)
        for name in ("beta1", "beta2"):
            validation.probability(name, getattr(self, name))
        _positive("max_correction", self.max_correction)

    def noise_std(self, info: StepInfo) -> float:
        """The std per entry of the noise in this step's privatised gradients."""
        if self.noise is not None and not isinstance(self.noise, Privatize):
            return float(self.noise)
        if info.gradient_noise_std is not None:
            return info.gradient_noise_std
        if isinstance(self.noise, Privatize):
            return self.noise.gradient_noise_std(info.names)
        raise ValueError("BiasCorrection(noise=None) reads the noise of the step's privatisation; this driver has no "
                         "private gradient transform: give the noise std as a number")

    def __call__(
        self, directions: list[Array], slots: list[dict[str, Array]], params: list[Array], info: StepInfo
    ) -> tuple[list[Array], list[dict[str, Array]]]:
        if info.estimates is None or info.geometries is None:
            raise ValueError("BiasCorrection needs the oracle's inputs and geometries (StepInfo.estimates/geometries)")
        tau = self.noise_std(info)
        variance = tau * tau * noise_variance_factor(info.step, self.beta1, self.beta2)
        polar = self.polar or _is_polar
        out = []
        for d, c, geo in zip(directions, info.estimates, info.geometries):
            if variance > 0 and polar(geo.norm):
                corrected = polar_bias_correction(geo.to_oracle(c), geo.to_oracle(d), variance, self.max_correction)
                out.append(geo.from_oracle(corrected, d))
            else:
                out.append(d)
        return out, slots


# ---------------------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------------------
@configuration(
    cases=[
        {"driver": sign_sgd(), "lr": 0.05, "noise_multiplier": 0.0, "max_grad_norm": 1e6, "expected_batch_size": 1},
        {"driver": muon(weight_decay=0.0), "lr": 0.1, "noise_multiplier": 0.01, "max_grad_norm": 5.0,
         "expected_batch_size": 1, "generator": 0, "bias_correction": True},
    ],
    bad=[({"driver": sign_sgd(0.05), "noise_multiplier": 1.0, "max_grad_norm": 1.0}, "expected_batch_size"),
         ({"driver": sign_sgd(0.05), "privatizer": "noise"}, "privatizer")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def private(
    driver: Driver,
    privatizer: Privatize | None = None,
    *,
    noise_multiplier: float | None = None,
    max_grad_norm: Any = None,
    expected_batch_size: float | None = None,
    clipping: str = "per_matrix",
    generator: Any = None,
    bias_correction: bool = False,
    max_correction: float = 1.0,
    lr: Any = None,
) -> Driver:
    """``driver`` made differentially private: its gradient transform :class:`Privatize` (per-example clipping,
    Gaussian noise of std ``noise_multiplier * S``, division by ``expected_batch_size``), and with
    ``bias_correction`` DP-MuonBC's :class:`BiasCorrection` after the oracle. The driver then takes per-example
    gradients ``(B, *shape)``.

    Give the privacy parameters, or ``privatizer`` (a :class:`Privatize`: the private torch optimizers make one and
    share it between their groups). ``driver`` must not have a gradient transform (nor, with ``bias_correction``,
    a direction transform) of its own. ``lr`` (if given) replaces the driver's, as in the other wrappers.
    """
    validation.boolean("bias_correction", bias_correction)
    if privatizer is None:
        missing = [name for name, v in (("noise_multiplier", noise_multiplier), ("max_grad_norm", max_grad_norm),
                                         ("expected_batch_size", expected_batch_size)) if v is None]
        if missing:
            raise ValueError(f"private() needs {', '.join(missing)} (or a Privatize hook as privatizer=)")
        privatizer = Privatize(noise_multiplier, max_grad_norm, expected_batch_size, clipping, generator)
    elif not isinstance(privatizer, Privatize):
        raise HyperparameterError("privatizer", privatizer, "a Privatize hook or None")
    if driver.grad_transform is not None or (bias_correction and driver.direction_transform is not None):
        raise ValueError("private() sets the driver's grad_transform (and, with bias_correction, its "
                         "direction_transform); the driver has one already")
    changes: dict[str, Any] = {"grad_transform": privatizer}
    if lr is not None:
        changes["lr"] = lr
    if bias_correction:
        changes["direction_transform"] = BiasCorrection(None, driver.beta1, driver.beta2, max_correction)
    return driver.replace(**changes)


_BAD_PRIVACY = [
    ({"noise_multiplier": -1.0, "max_grad_norm": 1.0, "expected_batch_size": 8}, "noise_multiplier"),
    ({"noise_multiplier": 1.0, "max_grad_norm": 0.0, "expected_batch_size": 8}, "max_grad_norm"),
    ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 0}, "expected_batch_size"),
    ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 8, "clipping": "per_layer"}, "clipping"),
    ({"noise_multiplier": 1.0, "max_grad_norm": [1.0, 2.0], "expected_batch_size": 8, "clipping": "flat"}, "flat"),
]
_NOISE_FREE = {"noise_multiplier": 0.0, "max_grad_norm": 1e6, "expected_batch_size": 1}
_NOISY = {"noise_multiplier": 0.01, "max_grad_norm": 5.0, "expected_batch_size": 1, "generator": 0}


@configuration(
    cases=[
        {"lr": 0.1, "weight_decay": 0.0, **_NOISE_FREE},
        {"lr": 0.1, "weight_decay": 0.0, **_NOISY, "bias_correction": True},
        {"lr": 0.1, "weight_decay": 0.0, **_NOISY, "clipping": "flat", "nesterov": False},
    ],
    bad=_BAD_PRIVACY,
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def dp_muon(
    lr: float | Callable[[int], float] = 1e-3,
    *,
    noise_multiplier: float,
    max_grad_norm: Any,
    expected_batch_size: float,
    clipping: str = "per_matrix",
    generator: Any = None,
    bias_correction: bool = False,
    max_correction: float = 1.0,
    **muon_arguments: Any,
) -> Driver:
    """DP-Muon (Kim & Fan, 2026): :func:`muon` on the privatised gradient (:class:`Privatize`); with
    ``bias_correction=True``, DP-MuonBC (:class:`BiasCorrection` after the LMO). ``muon_arguments`` are
    :func:`muon`'s (``beta``, ``nesterov``, ``weight_decay``, ``ns_steps``, ``method``, ...). The driver takes
    per-example gradients ``(B, *shape)``.
    """
    return private(
        muon(lr, **muon_arguments), noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size, clipping=clipping, generator=generator,
        bias_correction=bias_correction, max_correction=max_correction,
    )


@configuration(
    cases=[{"lr": 0.05, **_NOISE_FREE}, {"lr": 0.05, **_NOISY, "clipping": "flat"}],
    bad=_BAD_PRIVACY,
)
def dp_sign_sgd(
    lr: float | Callable[[int], float] = 1e-3,
    *,
    noise_multiplier: float,
    max_grad_norm: Any,
    expected_batch_size: float,
    clipping: str = "per_matrix",
    generator: Any = None,
    weight_decay: float = 0.0,
    **driver: Any,
) -> Driver:
    """DP-SignSGD: :func:`sign_sgd` on the privatised gradient (:class:`Privatize`). Per-example gradients."""
    return private(
        sign_sgd(lr, weight_decay=weight_decay, **driver), noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm, expected_batch_size=expected_batch_size, clipping=clipping, generator=generator,
    )


@configuration(
    cases=[{"lr": 0.1, "geometry": ScionRecipe(radius=10.0, output_radius=10.0, bias_radius=10.0), **_NOISE_FREE}],
    bad=_BAD_PRIVACY,
    shapes={"w": (6, 4), "b": (5,), "lm_head": (3, 6)},
    needs=("spectral",),
)
def dp_scion(
    lr: float | Callable[[int], float] = 2.0**-8,
    *,
    noise_multiplier: float,
    max_grad_norm: Any,
    expected_batch_size: float,
    clipping: str = "per_matrix",
    generator: Any = None,
    bias_correction: bool = False,
    max_correction: float = 1.0,
    **scion_arguments: Any,
) -> Driver:
    """DP-Scion: :func:`scion` (constrained; ``scion_arguments`` are its ``beta``, ``geometry``, ...) on the
    privatised gradient; ``bias_correction`` corrects the parameters with a ``spectral`` geometry. Per-example
    gradients."""
    return private(
        scion(lr, **scion_arguments), noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size, clipping=clipping, generator=generator,
        bias_correction=bias_correction, max_correction=max_correction,
    )


@configuration(
    cases=[{"lr": 0.1, **_NOISE_FREE}, {"lr": 0.1, "beta": 0.5, **_NOISY}],
    bad=[*_BAD_PRIVACY, ({"beta": 1.0, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 8},
                         "beta")],
)
def dp_sgd(
    lr: float | Callable[[int], float] = 0.1,
    *,
    noise_multiplier: float,
    max_grad_norm: Any,
    expected_batch_size: float,
    clipping: str = "per_matrix",
    generator: Any = None,
    beta: float = 0.0,
    weight_decay: float = 0.0,
    **driver: Any,
) -> Driver:
    """DP-SGD (Abadi et al., 2016) as a configuration: the ``l2`` geometry with the sharp rule is SGD
    (``lr * ||c|| * lmo(c) = -lr c`` on every row), so ``x <- (1 - lr wd) x - lr c`` with ``c`` the EMA (``beta``;
    0: none) of the privatised gradient. With ``clipping="flat"`` and ``beta=0`` this is Opacus's ``DPOptimizer``
    around ``torch.optim.SGD``. Per-example gradients."""
    names = {"beta1": ("beta", beta), "beta2": ("beta", beta), "decay": ("weight_decay", weight_decay)}
    base = configured(names, geometry=ParamGeometry(norms()["l2"]()), lr=lr, beta1=beta, beta2=beta, rule="sharp",
                      decay=weight_decay, **driver)
    return private(
        base, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, expected_batch_size=expected_batch_size,
        clipping=clipping, generator=generator,
    )
