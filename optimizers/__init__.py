"""Optimizers: the generic stochastic LMO driver and its configurations (see DESIGN.md, "Driver layer").

Functional (numpy, CuPy, torch, any array-API namespace)::

    from lmo.optimizers import signum
    opt = signum(lr=1e-3, beta=0.9)              # a Driver: a frozen dataclass
    state = opt.init(params)                     # params: an array, or a dict / list / tuple of arrays
    params, state = opt.step(params, grads, state)

torch (``torch.optim.Optimizer`` subclasses; torch is imported only when one of these names is used)::

    from lmo.optimizers import Muon, Scion, Lion, Signum, SignSGD, LMOOptimizer, muon_with_adamw

Differential privacy: ``private(driver, ...)`` makes any configuration private; ``dp_muon``, ``dp_sign_sgd``,
``dp_scion``, ``dp_sgd`` are the private versions of their configurations (drivers taking per-example gradients),
and the torch optimizers ``DPMuon`` and ``DPOptimizer`` train every parameter privately (see
``lmo.optimizers.privacy``, ``lmo.privacy`` and docs/privacy.md).
"""

from __future__ import annotations

from typing import Any

from . import configs, driver, hooks, privacy, variants
from .configs import *  # noqa: F403  each module's __all__ is its public API
from .driver import *  # noqa: F403
from .hooks import *  # noqa: F403
from .privacy import *  # noqa: F403
from .variants import *  # noqa: F403

# torch is imported only when one of these is used (``import lmo.optimizers`` works without torch)
_TORCH_NAMES = ("DriverOptimizer", "LMOOptimizer", "Muon", "SignSGD", "Signum", "Lion", "Scion", "muon_with_adamw",
                "split_muon_params", "OptimizerInputs", "UnsupportedParameterError")
_TORCH_PRIVACY_NAMES = ("DPOptimizer", "DPMuon")

__all__ = [
    *driver.__all__,
    *configs.__all__,
    *variants.__all__,
    *hooks.__all__,
    *privacy.__all__,
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
