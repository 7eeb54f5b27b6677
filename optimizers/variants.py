"""Research variants as configurations of the one :class:`~lmo.optimizers.Driver` (issue 7).

Each function returns a ``Driver``: a geometry, an estimator, a rule, a decay and, where the method needs one, one
hook of :mod:`lmo.optimizers.hooks` or one stateful geometry of :mod:`lmo.geometries.low_rank` /
:mod:`lmo.geometries.tangent`. The wrappers ``error_feedback``, ``igt`` and ``schedule_free`` take any driver and
return it with one hook added. See ``docs/variants.md`` for the table of all configurations.

Sign convention: ``lmo(c) = argmin_{||d|| <= 1} <c, d>``; a step is ``x <- (1 - lr decay) x + lr rho lmo(c)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from lmo.geometries.low_rank import LowRankPolar, RandomizedPolar
from lmo.geometries.manifold import SpectralSphere, Sphere, Stiefel
from lmo.geometries.tangent import Tangent
from lmo.norm import Norm, get_norm

from . import validation
from .configs import (
    MATRIX_SHAPES,
    NS_COEFFICIENTS,
    MuonGeometry,
    configuration,
    configured,
    muon,
    sign_sgd,
    signum,
    vectors_rule,
)
from .driver import Driver, ParamGeometry
from .hooks import Retract, RowNormalize, ScaledLMOCompressor, ScheduleFree, Transport

__all__ = [
    "exact_muon",
    "error_feedback",
    "igt",
    "schedule_free",
    "normuon",
    "dion",
    "orth_dion",
    "low_rank_muon",
    "randomized_muon",
    "heavy_tailed_muon",
    "manifold_muon",
    "LowRankGeometry",
    "ManifoldGeometry",
]

Schedule = float | Callable[[int], float]


def _with_lr(driver: Driver, lr: Schedule | None, wrapper: str) -> Driver:
    if not isinstance(driver, Driver):
        raise ValueError(f"{wrapper} wraps a Driver; got driver={driver!r}")
    return driver if lr is None else driver.replace(lr=lr)


# ---------------------------------------------------------------------------------------------------------------
# 1. spectral steepest descent, version A (version B, the sharp step, is configs.spectral_descent)
# ---------------------------------------------------------------------------------------------------------------
@configuration(
    cases=[{"lr": 0.2, "beta": 0.5, "weight_decay": 0.01}],
    bad=[({"beta": 1.0}, "beta"), ({"lr": -0.1}, "lr")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def exact_muon(lr: Schedule = 0.02, *, beta: float = 0.9, weight_decay: float = 0.0, vectors: Any = "rms",
               **driver: Any) -> Driver:
    """Muon with the exact polar factor (Li & Hong 2025, arXiv 2502.02900, the Muon of their analysis, "version
    A"): with ``B_t = beta B_{t-1} + (1 - beta) G_t``, ``X <- X - lr U V^T`` where ``B_t = U S V^T`` (SVD).

    The driver with ``(beta1, beta2) = (beta, beta)``, the spectral geometry with ``method="svd"``, rule ``"lmo"``
    and no shape factor. Version B, the sharp step ``X <- X - lr ||B_t||_* U V^T``, is
    :func:`lmo.optimizers.spectral_descent`. The paper's heavy-ball buffer ``B_t = mu B_{t-1} + G_t`` is
    ``1 / (1 - mu)`` times this EMA: the same direction here; for version B multiply ``lr`` by ``1 - mu``.
    ``vectors``: the geometry of biases and gains, as in :func:`~lmo.optimizers.muon` (default ``"rms"``).
    """
    geometry = MuonGeometry(get_norm("spectral", method="svd"), adjust_lr="none", view="batch", vectors=vectors,
                            label="exact_muon")
    names = {"beta1": ("beta", beta), "beta2": ("beta", beta), "decay": ("weight_decay", weight_decay)}
    return configured(names, geometry=geometry, lr=lr, beta1=beta, beta2=beta, decay=weight_decay, **driver)


# ---------------------------------------------------------------------------------------------------------------
# 2. error feedback
# ---------------------------------------------------------------------------------------------------------------
@configuration(
    cases=[
        {"driver": signum(beta=0.5), "lr": 0.1},
        {"driver": muon(beta=0.5, norm="spectral", weight_decay=0.0), "lr": 0.3},
    ],
    bad=[({"driver": "muon", "lr": 0.1}, "Driver"), ({"driver": sign_sgd(), "lr": -1.0}, "lr")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def error_feedback(driver: Driver, *, lr: Schedule | None = None) -> Driver:
    r"""Error feedback for any LMO driver (Karimireddy et al. 2019; the fix of Parshakova et al. 2026,
    arXiv 2605.08980, which restores convergence of Muon-type methods on convex Lipschitz functions), with the
    driver's geometry as a scaled-LMO compressor (:class:`lmo.optimizers.hooks.ScaledLMOCompressor`)::

        p = lr c + e;   x <- (1 - lr decay) x - C(p);   e <- p - C(p)
        C(p) = (||p||_* / ||lmo(p)||_F^2) (-lmo(p))     (l-inf: (||p||_1 / d) sign(p);  spectral: (||p||_*/r) U V^T)

    ``c`` is the driver's estimator (its EMA, see the hook for the scaling), ``lr`` (if given) replaces the
    driver's. The driver's rule and radius are superseded by the compressor. The paper's own pseudo-code was not
    available to us: this follows the issue text and Karimireddy et al.'s EF-SignSGD.
    """
    driver = _with_lr(driver, lr, "error_feedback")
    if driver.error_feedback is not None:
        raise ValueError(f"error_feedback: the driver already has an error-feedback hook ({driver.error_feedback!r})")
    return driver.replace(error_feedback=ScaledLMOCompressor())


# ---------------------------------------------------------------------------------------------------------------
# 3. implicit gradient transport
# ---------------------------------------------------------------------------------------------------------------
@configuration(
    cases=[{"driver": muon(beta=0.5, weight_decay=0.0), "lr": 0.1}],
    bad=[({"driver": sign_sgd(), "lr": 0.1}, "beta"), ({"driver": signum(), "lr": 0.1, "gamma": -1.0}, "gamma")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def igt(driver: Driver, *, lr: Schedule | None = None, gamma: float | None = None) -> Driver:
    r"""Implicit gradient transport for any LMO driver (LMO-IGT, arXiv 2605.05577; transported Scion,
    arXiv 2605.18528 — papers not available to us, implemented from the issue text and Arnold et al. 2019)::

        y_t = x_t + gamma (x_t - x_{t-1});   g_t = grad f(y_t);   then the driver's step of x_t with g_t

    ``gamma = beta2 / (1 - beta2)`` by default (IGT's transport for the EMA factor ``beta2`` of the driver: the
    EMA of gradients at these points tracks ``grad f(x_t)`` exactly on quadratics). Functional: take gradients at
    ``driver.gradient_point(x, state)``. torch: the parameters hold ``y_t`` for the backward pass;
    ``optimizer.eval()`` puts ``x_t`` there for evaluation, ``optimizer.train()`` puts ``y_t`` back.
    """
    driver = _with_lr(driver, lr, "igt")
    if driver.point is not None:
        raise ValueError(f"igt: the driver already has a gradient-point hook ({driver.point!r})")
    if gamma is None:
        if driver.beta2 <= 0:
            raise ValueError("igt needs a driver with momentum (beta2 > 0), or an explicit gamma")
        gamma = driver.beta2 / (1 - driver.beta2)
    return driver.replace(point=Transport(gamma))


# ---------------------------------------------------------------------------------------------------------------
# 4. schedule-free and NorMuon
# ---------------------------------------------------------------------------------------------------------------
@configuration(
    cases=[{"driver": sign_sgd(weight_decay=0.01), "lr": 0.1, "beta": 0.5, "power": 0.0}],
    bad=[({"driver": sign_sgd(), "lr": 0.1, "beta": 1.5}, "beta"), ({"driver": None}, "Driver")],
)
def schedule_free(driver: Driver, *, lr: Schedule | None = None, beta: float = 0.9, power: float = 2.0) -> Driver:
    r"""Schedule-free (Defazio et al. 2024) around any LMO driver (:class:`lmo.optimizers.hooks.ScheduleFree`)::

        y_t = (1 - beta) z_t + beta x_t;   z_{t+1} = driver step of z_t at g = grad f(y_t)
        x_{t+1} = (1 - c) x_t + c z_{t+1},  c = lr_t^power / sum_{i <= t} lr_i^power

    The driver's iterate is ``z`` (its weight decay acts on ``z``); evaluate at ``x``
    (``driver.point.evaluation_point``; torch: ``optimizer.eval()``). SF-NorMuon (arXiv 2605.23061) is
    ``schedule_free(normuon(...))``; usually the base driver then has no momentum of its own (``beta=0``).
    """
    driver = _with_lr(driver, lr, "schedule_free")
    if driver.point is not None:
        raise ValueError(f"schedule_free: the driver already has a gradient-point hook ({driver.point!r})")
    return driver.replace(point=ScheduleFree(beta, power))


@configuration(
    cases=[{"lr": 0.1, "beta2": 0.5, "nesterov": False, "weight_decay": 0.01}],
    bad=[({"beta2": 1.0}, "beta2"), ({"beta": -0.1}, "beta"), ({"eps": -1.0}, "eps")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def normuon(
    lr: Schedule = 0.02,
    *,
    beta: float = 0.95,
    beta2: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
    adjust_lr: str | None = "original",
    view: str = "auto",
    **muon_arguments: Any,
) -> Driver:
    r"""NorMuon (Li et al. 2025, arXiv 2510.05491; SF-NorMuon, arXiv 2605.23061, is ``schedule_free`` of it)::

        O = lmo(c)                                  (Muon's estimator and Newton-Schulz oracle)
        v <- beta2 v + (1 - beta2) mean_row(O^2)    (one second moment per row: per output neuron)
        O' = O / (sqrt(v) + eps);  O <- O' ||O||_F / ||O'||_F     (RMS-matched: the step keeps Muon's norm)
        W <- (1 - lr wd) W + lr adjust(A, B) O

    :func:`lmo.optimizers.muon` with the direction transform :class:`lmo.optimizers.hooks.RowNormalize`. Extra
    keywords (``ns_steps``, ``method``, ``norm``, ...) go to :func:`~lmo.optimizers.muon`.
    """
    base = muon(lr, beta=beta, nesterov=nesterov, weight_decay=weight_decay, adjust_lr=adjust_lr, view=view,
                **muon_arguments)
    if base.direction_transform is not None:
        raise ValueError("normuon: the driver already has a direction transform")
    return _labelled(base, "normuon").replace(direction_transform=RowNormalize(beta2=beta2, eps=eps, view=view))


# ---------------------------------------------------------------------------------------------------------------
# 5. low-rank spectral methods
# ---------------------------------------------------------------------------------------------------------------
_LOW_RANK_ADJUST = ("fan_ratio", "original", "match_rms_adamw", "none")


@dataclasses.dataclass(frozen=True)
class LowRankGeometry:
    """The geometry rule of the low-rank methods: a (stateful) matrix oracle on each matrix (batches of matrices
    and conv kernels as in :class:`lmo.optimizers.MuonGeometry`), with the radius ``adjust_lr``: ``"fan_ratio"``
    ``sqrt(A / B)`` (Dion's ``lr * sqrt(fan_out / fan_in)``), or Muon's ``"original"``, ``"match_rms_adamw"``,
    ``"none"``. ``vectors``: the geometry of what is not a matrix, as in :class:`~lmo.optimizers.MuonGeometry`."""

    norm: Norm
    adjust_lr: str = "fan_ratio"
    view: str = "auto"
    vectors: Any = "rms"
    label: str = dataclasses.field(default="dion", compare=False)

    def __post_init__(self) -> None:
        validation.choice("adjust_lr", self.adjust_lr, _LOW_RANK_ADJUST)
        object.__setattr__(self, "vectors", vectors_rule(self.vectors))

    def __call__(self, name: str, shape: tuple[int, ...]) -> ParamGeometry:
        fan = self.adjust_lr == "fan_ratio"
        geo = MuonGeometry(self.norm, adjust_lr="none" if fan else self.adjust_lr, view=self.view,
                           vectors=self.vectors, label=self.label)(name, shape)
        if len(shape) < 2:
            return geo
        if fan:
            rows, cols = (geo.view or tuple(shape))[-2:]
            geo = dataclasses.replace(geo, radius=math.sqrt(rows / cols))
        return geo


def _dion(lr: Schedule, right: str, rank: int | None, rank_fraction: float | None, mu: float, weight_decay: float,
          adjust_lr: str, seed: int, vectors: Any, label: str, driver: dict[str, Any]) -> Driver:
    if rank is None and rank_fraction is None:
        rank_fraction = 0.25
    norm = LowRankPolar(rank=rank, rank_fraction=rank_fraction, mu=mu, right=right, seed=seed)
    geometry = LowRankGeometry(norm, adjust_lr, vectors=vectors, label=label)
    return configured({"decay": ("weight_decay", weight_decay)}, geometry=geometry, lr=lr, decay=weight_decay,
                      **driver)


@configuration(
    cases=[{"lr": 0.1, "rank": 2, "mu": 0.5, "weight_decay": 0.01}],
    bad=[({"rank": 0}, "rank"), ({"rank_fraction": 1.5}, "rank_fraction"), ({"mu": 1.0}, "mu"),
         ({"adjust_lr": "bogus"}, "adjust")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def dion(
    lr: Schedule = 0.01,
    *,
    rank: int | None = None,
    rank_fraction: float | None = None,
    mu: float = 0.95,
    weight_decay: float = 0.0,
    adjust_lr: str = "fan_ratio",
    seed: int = 0,
    vectors: Any = "rms",
    **driver: Any,
) -> Driver:
    r"""Dion (Ahn et al. 2025, arXiv 2504.05295, Algorithm 1, single device)::

        B = M + G;  P = qr(B Q);  R = B^T P;  M <- B - (1 - mu) P R^T;  Q <- colnorm(R)
        X <- (1 - lr wd) X - lr sqrt(m / n) P Q^T

    The driver with a plain estimator (``beta = 0``: Dion's buffer ``M`` is the error feedback of its compressor
    and lives with ``Q`` in the stateful geometry :class:`lmo.geometries.low_rank.LowRankPolar`), the radius
    ``sqrt(m / n)`` (``adjust_lr``, see :class:`LowRankGeometry`) and decay ``wd``. ``rank`` (an int) or
    ``rank_fraction`` of ``min(m, n)`` (default 1/4). ``seed`` seeds the initial ``Q`` (with the parameter name).
    ``vectors``: the geometry of biases and gains, as in :func:`~lmo.optimizers.muon` (default ``"rms"``).
    """
    return _dion(lr, "column", rank, rank_fraction, mu, weight_decay, adjust_lr, seed, vectors, "dion", driver)


@configuration(
    cases=[{"lr": 0.1, "rank_fraction": 0.5, "mu": 0.5}],
    bad=[({"rank": 2, "rank_fraction": 0.5}, "rank"), ({"mu": -0.5}, "mu")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def orth_dion(
    lr: Schedule = 0.01,
    *,
    rank: int | None = None,
    rank_fraction: float | None = None,
    mu: float = 0.95,
    weight_decay: float = 0.0,
    adjust_lr: str = "fan_ratio",
    seed: int = 0,
    vectors: Any = "rms",
    **driver: Any,
) -> Driver:
    r"""Orth-Dion (arXiv 2605.16341; paper not available to us, implemented from the issue text): Dion with QR on
    both sides, ``Q <- qr(R)`` instead of the column normalisation, so that the step ``-P Q^T`` is an exact rank-r
    partial isometry (all its nonzero singular values are 1)::

        B = M + G;  P = qr(B Q);  R = B^T P;  M <- B - (1 - mu) P R^T;  Q <- qr(R)
        X <- (1 - lr wd) X - lr sqrt(m / n) P Q^T
    """
    return _dion(lr, "qr", rank, rank_fraction, mu, weight_decay, adjust_lr, seed, vectors, "orth_dion", driver)


def _labelled(driver: Driver, label: str) -> Driver:
    """A driver built by :func:`muon` with its geometry's messages naming the configuration ``label``."""
    if isinstance(driver.geometry, MuonGeometry):
        return driver.replace(geometry=dataclasses.replace(driver.geometry, label=label))
    return driver


def _randomized(lr: Schedule, norm: RandomizedPolar, beta: float, nesterov: bool, weight_decay: float,
                adjust_lr: str | None, view: str, label: str, driver: dict[str, Any]) -> Driver:
    return _labelled(muon(lr, beta=beta, nesterov=nesterov, weight_decay=weight_decay, adjust_lr=adjust_lr, view=view,
                          norm=norm, **driver), label)


@configuration(
    cases=[{"lr": 0.1, "rank": 2, "weight_decay": 0.01}],
    bad=[({"rank": -1}, "rank"), ({"sketch": "bogus"}, "sketch"), ({"ns_steps": 0}, "steps")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def low_rank_muon(
    lr: Schedule = 0.02,
    *,
    rank: int | None = None,
    rank_fraction: float | None = None,
    sketch: str = "norm",
    ns_steps: int = 5,
    beta: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    adjust_lr: str | None = "original",
    view: str = "auto",
    seed: int = 0,
    **driver: Any,
) -> Driver:
    r"""Low-rank Muon (He, Deng & Lu 2025, arXiv 2509.11983; implemented from the paper's description: column
    selection and Newton-Schulz)::

        S = r columns of C, sampled ~ ||C_:j||^2 (sketch="norm") or uniformly;  Q = qr(C_:S)
        O = Q NS(Q^T C);   X <- (1 - lr wd) X - lr adjust(A, B) O

    :func:`lmo.optimizers.muon` (its estimator and radius) with the oracle
    :class:`lmo.geometries.low_rank.RandomizedPolar` (column sketch, no oversampling, no power steps,
    ``ns_steps`` quintic Newton-Schulz steps on the ``r x n`` matrix). ``rank`` or ``rank_fraction``
    (default 1/4 of ``min(m, n)``).
    """
    if rank is None and rank_fraction is None:
        rank_fraction = 0.25
    validation.choice("sketch", sketch, ("norm", "uniform"))  # low-rank Muon selects columns
    validation.integer("ns_steps", ns_steps, 1, 100)
    norm = RandomizedPolar(rank=rank, rank_fraction=rank_fraction, sketch=sketch, oversample=0, power_steps=0,
                           method="newton_schulz", steps=ns_steps, coefficients=NS_COEFFICIENTS, seed=seed)
    return _randomized(lr, norm, beta, nesterov, weight_decay, adjust_lr, view, "low_rank_muon", driver)


@configuration(
    cases=[{"lr": 0.1, "rank": 2}],
    bad=[({"oversample": -1}, "oversample"), ({"power_steps": 1.5}, "power_steps"), ({"sketch": "x"}, "sketch")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def randomized_muon(
    lr: Schedule = 0.02,
    *,
    rank: int | None = None,
    rank_fraction: float | None = None,
    sketch: str = "gaussian",
    power_steps: int = 1,
    oversample: int = 5,
    beta: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    adjust_lr: str | None = "original",
    view: str = "auto",
    seed: int = 0,
    **driver: Any,
) -> Driver:
    r"""Muon with the randomized polar factor (arXiv 2605.06884, implemented from the issue text and the randomized
    range finder of Halko, Martinsson & Tropp 2011)::

        Omega: n x (r + p)  Gaussian, or columns sampled ~ ||C_:j||^2 ("norm") or uniformly
        Y = C Omega;  h times Y = C (C^T qr(Y));  Q = qr(Y);  Q^T C = U S V^T (exact, small)
        X <- (1 - lr wd) X - lr adjust(A, B) Q U_r V_r^T

    :func:`lmo.optimizers.muon` with :class:`lmo.geometries.low_rank.RandomizedPolar`: ``power_steps`` (``h``),
    ``oversample`` (``p``), ``rank`` or ``rank_fraction`` (default 1/4). A fresh sketch per step, seeded.
    """
    if rank is None and rank_fraction is None:
        rank_fraction = 0.25
    norm = RandomizedPolar(rank=rank, rank_fraction=rank_fraction, sketch=sketch, oversample=oversample,
                           power_steps=power_steps, seed=seed)
    return _randomized(lr, norm, beta, nesterov, weight_decay, adjust_lr, view, "randomized_muon", driver)


@configuration(
    cases=[{"lr": 0.1, "rank": 3}],
    bad=[({"beta": 1.0}, "beta"), ({"rank": 0}, "rank")],
    shapes=MATRIX_SHAPES,
    needs=("spectral",),
)
def heavy_tailed_muon(
    lr: Schedule = 0.02,
    *,
    rank: int | None = None,
    rank_fraction: float | None = None,
    beta: float = 0.9,
    power_steps: int = 1,
    oversample: int = 5,
    weight_decay: float = 0.0,
    seed: int = 0,
    **driver: Any,
) -> Driver:
    r"""Muon for heavy-tailed noise with the randomized polar (arXiv 2605.06884; implemented from the issue text):
    unscaled Nesterov momentum and the randomized polar factor::

        m <- beta m + g;   c = g + beta m;   X <- (1 - lr wd) X - lr Q U_r V_r^T    (randomized polar of c)

    The unscaled ``c = beta^2 m_{t-1} + (1 + beta) g`` is ``1 / (1 - beta)`` times the driver's Nesterov EMA
    ``(beta1, beta2) = (beta^2, beta)``, and the oracle is 0-homogeneous: the driver's estimator gives this step
    exactly, with no rescaling of ``lr``. No shape factor (``adjust_lr="none"``); Gaussian sketch.
    """
    if rank is None and rank_fraction is None:
        rank_fraction = 0.25
    norm = RandomizedPolar(rank=rank, rank_fraction=rank_fraction, sketch="gaussian", oversample=oversample,
                           power_steps=power_steps, seed=seed)
    return _randomized(lr, norm, beta, True, weight_decay, "none", "auto", "heavy_tailed_muon", driver)


# ---------------------------------------------------------------------------------------------------------------
# 6. manifold Muon
# ---------------------------------------------------------------------------------------------------------------
_MANIFOLDS = ("stiefel", "sphere", "spectral_sphere")


@dataclasses.dataclass(frozen=True)
class ManifoldGeometry:
    """The geometry rule of :func:`manifold_muon`: each parameter on ``manifold`` with the tangent oracle.

    - ``"stiefel"``: matrices with orthonormal columns (wide matrices: orthonormal rows, through
      ``ParamGeometry.transpose``); ``retraction`` ``"polar"`` or ``"qr"``; ``method`` the polar solver.
    - ``"sphere"``: the Frobenius sphere of each parameter (vectors: the l2 sphere) of radius ``radius``
      (``"rms"``: ``sqrt(size)``, entries of unit RMS).
    - ``"spectral_sphere"``: matrices of spectral norm ``radius`` (``"rms"``: ``sqrt(A / B)``, RMS->RMS norm 1).
    """

    manifold: str = "stiefel"
    radius: float | str = "rms"
    retraction: str = "polar"
    method: str = "svd"

    def __post_init__(self) -> None:
        validation.choice("manifold", self.manifold, _MANIFOLDS)
        if self.radius != "rms":
            validation.real("radius", self.radius, 0.0, low_open=True)
        Stiefel(retraction=self.retraction, method=self.method)  # validates both

    def __call__(self, name: str, shape: tuple[int, ...]) -> ParamGeometry:
        shape = tuple(shape)
        if self.manifold == "sphere":
            core = shape[-2:] if len(shape) >= 2 else shape
            radius = math.sqrt(math.prod(core)) if self.radius == "rms" else self.radius
            view = shape if shape else (1,)
            return ParamGeometry(Tangent(manifold=Sphere(ndim=min(2, max(1, len(shape))), radius=radius)), 1.0, view)
        if len(shape) < 2:
            raise ValueError(f"manifold {self.manifold!r} holds matrices; parameter {name!r} has shape {shape} "
                             f"(use manifold='sphere' for vectors)")
        rows, cols = shape[-2:]
        if self.manifold == "stiefel":
            return ParamGeometry(Tangent(manifold=Stiefel(retraction=self.retraction, method=self.method)), 1.0,
                                 transpose=rows < cols)
        radius = math.sqrt(rows / cols) if self.radius == "rms" else self.radius
        return ParamGeometry(Tangent(manifold=SpectralSphere(radius=radius, method=self.method)))


@configuration(
    cases=[{"lr": 0.3, "manifold": "sphere", "beta": 0.5}],
    bad=[({"manifold": "torus"}, "manifold"), ({"beta": 1.0}, "beta"), ({"radius": -1.0}, "radius"),
         ({"retraction": "cayley"}, "retraction")],
    shapes={"w": (6, 4), "v": (4, 8), "b": (9,)},
    needs=("stiefel", "sphere", "spectral_sphere"),
)
def manifold_muon(
    lr: Schedule = 0.05,
    *,
    manifold: str = "stiefel",
    beta: float = 0.9,
    radius: float | str = "rms",
    retraction: str = "polar",
    method: str = "svd",
    **driver: Any,
) -> Driver:
    r"""Manifold Muon (Bernstein 2025, "Modular manifolds", Thinking Machines Lab) and its relatives: steepest
    descent on a manifold under the spectral (Stiefel, spectral sphere) or l2 (hypersphere) norm::

        m <- beta m + (1 - beta) g
        A  = lmo_at(W, m) = argmin { <m, A> : A tangent at W, ||A|| <= 1 }
        W <- retract(W + lr A)

    The driver with the tangent oracle :class:`lmo.geometries.tangent.Tangent` of ``manifold``
    (:class:`ManifoldGeometry`: ``"stiefel"``, ``"sphere"``, ``"spectral_sphere"`` — the spectral-sphere
    optimizer) and the retraction hook :class:`lmo.optimizers.hooks.Retract`. The momentum is kept in the ambient
    space (no vector transport), as in the reference. Start on the manifold (``geometry.project``); a parameter
    off it is projected before its first oracle call and retracted after the first step. A step with ``lr = 0``
    leaves the parameters unchanged.
    """
    geometry = ManifoldGeometry(manifold, radius, retraction, method)
    names = {"beta1": ("beta", beta), "beta2": ("beta", beta)}
    return configured(names, geometry=geometry, lr=lr, beta1=beta, beta2=beta, retraction=Retract(), **driver)
