"""Optimizers: the generic stochastic LMO driver and its configurations (see DESIGN.md, "Driver layer").

Functional (numpy, CuPy, torch, any array-API namespace)::

    from lmo.optimizers import signum
    opt = signum(lr=1e-3, beta=0.9)              # a Driver: a frozen dataclass
    state = opt.init(params)                     # params: an array, or a dict / list / tuple of arrays
    params, state = opt.step(params, grads, state)

torch (``torch.optim.Optimizer`` subclasses; torch is imported only when one of these names is used)::

    from lmo.optimizers import Muon, Scion, Lion, Signum, SignSGD, LMOOptimizer, muon_with_adamw

Differential privacy: the configurations ``dp_muon``, ``dp_sign_sgd``, ``dp_scion``, ``dp_sgd`` (drivers with the
``Privatize`` hook, taking per-example gradients), and the torch optimizers ``DPMuon`` and ``DPOptimizer``
(see ``lmo.optimizers.privacy``, ``lmo.privacy`` and docs/privacy.md).
"""

from __future__ import annotations

from typing import Any

from .configs import (
    NS_COEFFICIENTS,
    SCION_NORMS,
    Configuration,
    MuonGeometry,
    ScionGeometry,
    ScionRecipe,
    configuration,
    configurations,
    lion,
    muon,
    scion,
    scion_geometry,
    sign_sgd,
    signum,
    spectral_descent,
    uscion,
)
from .privacy import BiasCorrection, Privatize, dp_muon, dp_scion, dp_sgd, dp_sign_sgd
from .driver import (
    DirectionTransform,
    Driver,
    ErrorFeedback,
    GradientPoint,
    GradientTransform,
    Hook,
    NonFiniteGradientError,
    ParamGeometry,
    Retraction,
    StepInfo,
    flatten_tree,
    stateful_oracle,
)
from .hooks import Retract, RowNormalize, ScaledLMOCompressor, ScheduleFree, Transport
from .variants import (
    LowRankGeometry,
    ManifoldGeometry,
    dion,
    error_feedback,
    exact_muon,
    heavy_tailed_muon,
    igt,
    low_rank_muon,
    manifold_muon,
    normuon,
    orth_dion,
    randomized_muon,
    schedule_free,
)

_TORCH_NAMES = (
    "LMOOptimizer",
    "Muon",
    "SignSGD",
    "Signum",
    "Lion",
    "Scion",
    "muon_with_adamw",
    "split_muon_params",
    "OptimizerInputs",
)
_TORCH_PRIVACY_NAMES = ("DPOptimizer", "DPMuon")

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
    "sign_sgd",
    "signum",
    "lion",
    "muon",
    "scion",
    "uscion",
    "spectral_descent",
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
    "ScaledLMOCompressor",
    "Transport",
    "ScheduleFree",
    "RowNormalize",
    "Retract",
    "MuonGeometry",
    "ScionGeometry",
    "ScionRecipe",
    "SCION_NORMS",
    "scion_geometry",
    "NS_COEFFICIENTS",
    "Configuration",
    "configuration",
    "configurations",
    "dp_muon",
    "dp_sign_sgd",
    "dp_scion",
    "dp_sgd",
    "Privatize",
    "BiasCorrection",
    *_TORCH_NAMES,
    *_TORCH_PRIVACY_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from . import torch as _torch_adapters

        return getattr(_torch_adapters, name)
    if name in _TORCH_PRIVACY_NAMES:
        from . import torch_privacy as _torch_privacy

        return getattr(_torch_privacy, name)
    raise AttributeError(f"module 'lmo.optimizers' has no attribute {name!r}")
