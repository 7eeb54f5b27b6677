"""Differentially private training with torch: per-example gradients, Poisson sampling, privacy accounting.

The code lives with the optimizers that use it (the ``lmo`` core imports neither torch nor ``lmo.optimizers``):
:mod:`lmo.optimizers.per_example` (:func:`per_sample_grads`, :func:`clear_grad_sample`, :class:`PoissonSampler`,
:func:`poisson_loader`) and :mod:`lmo.optimizers.accounting` (:func:`epsilon`, :func:`noise_multiplier_for`,
:class:`PrivacyAccountant`, ``ACCOUNTANTS``). This module gives them their established names, importing each only
when it is first used; ``docs/privacy.md`` walks through a private training run.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "per_sample_grads": "per_example",
    "clear_grad_sample": "per_example",
    "PoissonSampler": "per_example",
    "poisson_loader": "per_example",
    "epsilon": "accounting",
    "noise_multiplier_for": "accounting",
    "PrivacyAccountant": "accounting",
    "ACCOUNTANTS": "accounting",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lmo.privacy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lmo.optimizers.{home}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
