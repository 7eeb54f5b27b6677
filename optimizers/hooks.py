"""The driver's hooks behind the research variants (:mod:`lmo.optimizers.variants`).

Each is one small :class:`~lmo.optimizers.driver.Hook` with its per-parameter slots in the optimizer state:

- :class:`ScaledLMOCompressor` (error feedback): ``p = lr c + e``, the update ``-P_d(p)`` (the projection of ``p``
  on the oracle's direction ``d = lmo(p)``: ``(||p||_1 / d) sign(p)`` for l-inf, ``(||p||_* / r) U V^T`` for the
  spectral norm), ``e <- p - P_d(p)``.
- :class:`Transport` (implicit gradient transport): gradients at ``x + gamma (x - x_prev)``.
- :class:`ScheduleFree`: the driver steps ``z``, gradients at ``y = (1 - beta) z + beta x``, ``x`` the weighted
  average of the ``z``; ``eval()`` evaluates at ``x``.
- :class:`RowNormalize` (NorMuon): per-row second moments of the oracle's direction, norm-preserving.
- :class:`Retract`: back onto the manifold of each parameter's geometry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lmo.backend import Array, device, namespace

from . import validation
from .configs import VIEWS, flattens
from .driver import DirectionTransform, ErrorFeedback, GradientPoint, ParamGeometry, Retraction, StepInfo

__all__ = ["ScaledLMOCompressor", "Transport", "ScheduleFree", "RowNormalize", "Retract"]


def _inner(xp: Any, a: Array, b: Array, ndim: int) -> Array:
    axes = tuple(range(-ndim, 0))
    return xp.sum(a * b, axis=axes, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# error feedback
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ScaledLMOCompressor(ErrorFeedback):
    r"""Error feedback (Seide et al. 2014; Karimireddy et al. 2019, EF-SignSGD) with the geometry's scaled LMO as
    the compressor, for any driver. Per parameter, with the driver's estimator ``c`` and learning rate ``lr``::

        p  = lr * c + e                           (buffer e in parameter units, e_0 = 0)
        d  = lmo(p)                                (the driver's geometry)
        C(p) = (<p, -d> / <d, d>) (-d)             (the Euclidean projection of p on the line of d)
        x <- (1 - lr decay) x - C(p);     e <- p - C(p)

    ``<p, -d> = ||p||_*`` (LMO duality), so ``C(p) = (||p||_1 / d) sign(p)`` for the l-inf ball (EF-SignSGD) and
    ``(||p||_* / r) U V^T`` for the spectral ball (``r`` the rank of ``p``). The projection is taken per oracle
    entry (each matrix of a batch of matrices). ``C`` is a contraction, ``||p - C(p)||^2 = (1 - delta) ||p||^2``
    with ``delta = ||p||_*^2 / (<d, d> ||p||^2) > 0``, which is what error feedback needs (Karimireddy et al.,
    Theorem II); the raw LMO step of fixed length is not, and with it the buffer grows without bound.

    Estimator scaling: ``c`` is the driver's normalised EMA ``beta1 m + (1 - beta1) g`` (not the heavy-ball sum
    ``beta m + g``), so the buffer receives ``lr * c`` per step: ``lr`` is the step of SGD on the same EMA, and a
    heavy-ball step ``gamma`` corresponds to ``lr = gamma / (1 - beta)``. The driver's ``rule`` and ``radius`` do not
    enter: the length of the step is that of ``p``.
    """

    def init(self, name: str, param: Array) -> dict[str, Array]:
        return {"error": namespace(param).zeros_like(param)}

    def before(self, estimates: list[Array], slots: list[dict[str, Array]], info: StepInfo) -> list[Array]:
        return [info.lr * c + s["error"] for c, s in zip(estimates, slots)]

    def compress(
        self,
        inputs: list[Array],
        directions: list[Array],
        updates: list[Array],
        geometries: list[ParamGeometry],
        info: StepInfo,
    ) -> list[Array]:
        out = []
        for p, d, geo in zip(inputs, directions, geometries):
            xp = namespace(p)
            vp, vd = geo.to_oracle(p), geo.to_oracle(d)
            k = geo.norm.ndim
            dd = _inner(xp, vd, vd, k)
            coef = _inner(xp, vp, vd, k) / xp.where(dd > 0, dd, xp.ones_like(dd))
            out.append(geo.from_oracle(-(coef * vd), p))  # -C(p), C(p) = coef d: the added update
        return out

    def after(
        self, inputs: list[Array], updates: list[Array], slots: list[dict[str, Array]], info: StepInfo
    ) -> list[dict[str, Array]]:
        return [{"error": p + u} for p, u in zip(inputs, updates)]


# ---------------------------------------------------------------------------------------------------------------
# gradient points
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Transport(GradientPoint):
    r"""Implicit gradient transport (Arnold et al. 2019, heavy-ball IGT): the gradient of step ``t`` is taken at

        y_t = x_t + gamma (x_t - x_{t-1}),          gamma = beta / (1 - beta) for an EMA with factor beta,

    so that the EMA of transported gradients tracks ``grad f(x_t)`` to second order on quadratics. Slots:
    ``"anchor"`` (``x_t``) and ``"delta"`` (``x_t - x_{t-1}``, zero at the start).
    """

    gamma: float = 9.0

    def __post_init__(self) -> None:
        validation.real("gamma", self.gamma, 0.0)

    def init(self, name: str, param: Array) -> dict[str, Array]:
        xp = namespace(param)
        return {"anchor": xp.asarray(param, copy=True), "delta": xp.zeros_like(param)}

    def point(self, params: list[Array], slots: list[dict[str, Array]], info: StepInfo) -> list[Array]:
        return [x + self.gamma * s["delta"] for x, s in zip(params, slots)]

    def update(self, params: list[Array], slots: list[dict[str, Array]], info: StepInfo) -> list[dict[str, Array]]:
        return [{"anchor": x, "delta": x - s["anchor"]} for x, s in zip(params, slots)]


@dataclasses.dataclass(frozen=True)
class ScheduleFree(GradientPoint):
    r"""Schedule-free averaging (Defazio et al. 2024, "The Road Less Scheduled") around any driver, whose iterate
    is the base sequence ``z``::

        y_t = (1 - beta) z_t + beta x_t                    (gradients are taken here)
        z_{t+1} = driver step of z_t with g = grad f(y_t)  (weight decay, if any, acts on z)
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},     c_{t+1} = w_t / sum_{i<=t} w_i,  w_t = lr_t ** power

    (``power = 2``: Defazio et al.'s weighting with warmup; ``power = 0``: the uniform average ``c = 1 / (t+1)``).
    ``x`` is the point to evaluate (``evaluation_point``; ``optimizer.eval()`` in torch). Slots: ``"average"``
    (``x``) and ``"weight"`` (the sum of weights, a 0-d array).
    """

    beta: float = 0.9
    power: float = 2.0

    def __post_init__(self) -> None:
        validation.real("beta", self.beta, 0.0, 1.0)
        validation.real("power", self.power, 0.0)

    def init(self, name: str, param: Array) -> dict[str, Array]:
        xp = namespace(param)
        weight = xp.zeros((), dtype=param.dtype, device=device(param))
        return {"average": xp.asarray(param, copy=True), "weight": weight}

    def point(self, params: list[Array], slots: list[dict[str, Array]], info: StepInfo) -> list[Array]:
        b = self.beta  # z + beta (x - z): exactly z while x = z (at the start, and for lr = 0)
        return [z + b * (s["average"] - z) for z, s in zip(params, slots)]

    def evaluation_point(self, params: list[Array], slots: list[dict[str, Array]], info: StepInfo) -> list[Array]:
        return [s["average"] for s in slots]

    def update(self, params: list[Array], slots: list[dict[str, Array]], info: StepInfo) -> list[dict[str, Array]]:
        w = info.lr**self.power if self.power else 1.0
        out = []
        for z, s in zip(params, slots):
            xp = namespace(z)
            total = s["weight"] + w
            c = xp.where(total > 0, w / xp.where(total > 0, total, xp.ones_like(total)), xp.ones_like(total))
            average = xp.where(c == 1, z, s["average"] + c * (z - s["average"]))
            out.append({"average": average, "weight": xp.asarray(total, dtype=z.dtype)})
        return out


# ---------------------------------------------------------------------------------------------------------------
# direction transforms
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RowNormalize(DirectionTransform):
    r"""NorMuon's neuron-wise normalisation (Li et al. 2025, arXiv 2510.05491) of the oracle's direction ``d``
    (an orthogonalised matrix), per row ``i`` (output neuron)::

        v_i <- beta2 v_i + (1 - beta2) mean_j d_ij^2
        d'  =  d / (sqrt(v) + eps);     d <- d' * ||d||_F / (||d'||_F + eps)     (norm-preserving)

    Rows are those of the matrix the oracle sees: the last axis is the row's entries for matrices and batches of
    matrices; a parameter with 4 or more axes (``view="auto"``), or 3 or more (``view="flatten"``), is the matrix
    ``(O, I * k1 * ...)`` (as :class:`lmo.optimizers.MuonGeometry`). Slot ``"second_moment"``: one entry per row.
    A vector or scalar (a bias, a gain: fewer than 2 axes) is one row, on which the norm-preserving normalisation
    is the identity: its direction passes unchanged, with no slot.
    """

    beta2: float = 0.95
    eps: float = 1e-10
    view: str = "auto"

    def __post_init__(self) -> None:
        validation.probability("beta2", self.beta2)
        validation.real("eps", self.eps, 0.0)
        validation.choice("view", self.view, VIEWS)

    def _axes(self, ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(row-reduction axes, matrix axes) of a parameter with ``ndim`` axes."""
        if flattens(ndim, self.view):
            axes = tuple(range(1, ndim))
            return axes, tuple(range(ndim))
        return (ndim - 1,), (ndim - 2, ndim - 1)

    def init(self, name: str, param: Array) -> dict[str, Array]:
        if param.ndim < 2:
            return {}
        xp = namespace(param)
        rows, _ = self._axes(param.ndim)
        shape = tuple(1 if i in rows else n for i, n in enumerate(param.shape))
        return {"second_moment": xp.zeros(shape, dtype=param.dtype)}

    def __call__(
        self, directions: list[Array], slots: list[dict[str, Array]], params: list[Array], info: StepInfo
    ) -> tuple[list[Array], list[dict[str, Array]]]:
        out, new = [], []
        b2, eps = self.beta2, self.eps
        for d, s in zip(directions, slots):
            if d.ndim < 2:
                out.append(d)
                new.append({})
                continue
            xp = namespace(d)
            rows, matrix = self._axes(d.ndim)
            v = b2 * s["second_moment"] + (1 - b2) * xp.mean(d * d, axis=rows, keepdims=True)
            scaled = d / (xp.sqrt(v) + eps)
            before = xp.sqrt(xp.sum(d * d, axis=matrix, keepdims=True))
            after = xp.sqrt(xp.sum(scaled * scaled, axis=matrix, keepdims=True))
            out.append(scaled * (before / (after + eps)))
            new.append({"second_moment": v})
        return out, new


# ---------------------------------------------------------------------------------------------------------------
# retraction
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Retract(Retraction):
    """Back onto each parameter's manifold after the step: ``x <- geometry.retract(x_new, 0)`` in the oracle's view.

    Every retraction of :mod:`lmo.geometries.manifold` is a function of ``x + step`` (normalisation, polar factor,
    QR), so it is applied to the stepped point. Parameters whose geometry has no ``retract`` are left unchanged.
    """

    def __call__(self, params: list[Array], geometries: list[ParamGeometry], info: StepInfo) -> list[Array]:
        if info.lr == 0:  # a step of length 0 moves nothing (not even an off-manifold start)
            return list(params)
        out = []
        for x, geo in zip(params, geometries):
            retract = getattr(geo.norm, "retract", None)
            if retract is None:
                out.append(x)
                continue
            xp = namespace(x)
            v = geo.to_oracle(x)
            out.append(geo.from_oracle(retract(v, xp.zeros_like(v)), x))
        return out
