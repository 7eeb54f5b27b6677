"""Privacy accounting of the subsampled Gaussian mechanism: :func:`epsilon`, :func:`noise_multiplier_for` and
:class:`PrivacyAccountant`, by Google's ``dp-accounting`` (RDP or PLD accountant). Also importable as
:mod:`lmo.privacy`. dp-accounting is imported only when used (``pip install "lmo-optim[privacy]"``).
"""

from __future__ import annotations

import math
from typing import Any

from . import validation

__all__ = ["epsilon", "noise_multiplier_for", "PrivacyAccountant", "ACCOUNTANTS"]

ACCOUNTANTS = ("rdp", "pld")


# ---------------------------------------------------------------------------------------------------------------
# Accounting (dp-accounting)
# ---------------------------------------------------------------------------------------------------------------
def _dp_accounting() -> Any:
    try:
        import dp_accounting
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError('privacy accounting needs dp-accounting: pip install "lmo-optim[privacy]"') from err
    return dp_accounting


def _check_accounting(noise_multiplier: Any, sample_rate: Any, steps: Any, accountant: str) -> tuple[float, float, int]:
    sigma = validation.real("noise_multiplier", noise_multiplier, 0.0)
    q = validation.real("sample_rate", sample_rate, 0.0, 1.0, low_open=True)
    steps = validation.integer("steps", steps, 0)
    validation.choice("accountant", accountant, ACCOUNTANTS)
    return sigma, q, steps


def _check_delta(delta: Any) -> float:
    return validation.real("delta", delta, 0.0, 1.0, low_open=True, high_open=True)


def _fresh(accountant: str) -> Any:
    dpa = _dp_accounting()
    if accountant == "rdp":
        return dpa.rdp.RdpAccountant()
    return dpa.pld.PLDAccountant()


def _event(noise_multiplier: float, sample_rate: float, steps: int) -> Any:
    dpa = _dp_accounting()
    one = dpa.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1:
        one = dpa.PoissonSampledDpEvent(sample_rate, one)
    return dpa.SelfComposedDpEvent(one, steps)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, *, accountant: str = "rdp") -> float:
    """The epsilon of ``steps`` releases of the Poisson-subsampled Gaussian mechanism (sampling rate
    ``sample_rate``, noise multiplier ``noise_multiplier`` = noise std / L2 sensitivity) at ``delta``, under the
    add-or-remove-one neighbouring relation, from dp-accounting's ``"rdp"`` (Renyi DP; Mironov 2017) or ``"pld"``
    (privacy loss distributions; tighter) accountant. ``inf`` for ``noise_multiplier = 0`` and ``steps > 0``."""
    sigma, q, steps = _check_accounting(noise_multiplier, sample_rate, steps, accountant)
    delta = _check_delta(delta)
    if steps == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    return float(_fresh(accountant).compose(_event(sigma, q, steps)).get_epsilon(delta))


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    accountant: str = "rdp",
    tolerance: float = 1e-4,
) -> float:
    """The smallest noise multiplier (within ``tolerance``) whose ``steps`` releases at ``sample_rate`` spend at most
    ``target_epsilon`` at ``delta``: dp-accounting's ``calibrate_dp_mechanism`` over :func:`epsilon`'s mechanism.
    The result is on the safe side: ``epsilon(result, ...) <= target_epsilon``."""
    validation.real("target_epsilon", target_epsilon, 0.0, low_open=True)
    _, q, steps = _check_accounting(1.0, sample_rate, steps, accountant)
    delta = _check_delta(delta)
    if steps == 0:
        raise ValueError("steps must be >= 1 to calibrate the noise")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1); got {tolerance!r}")
    dpa = _dp_accounting()
    sigma = dpa.calibrate_dp_mechanism(
        lambda: _fresh(accountant),
        lambda s: _event(s, q, steps),
        float(target_epsilon),
        delta,
        bracket_interval=dpa.LowerEndpointAndGuess(1e-3, 1.0),
        tol=tolerance,
    )
    return float(sigma)


class PrivacyAccountant:
    """The privacy spent by a run of the subsampled Gaussian mechanism, step by step (what the private optimizers
    report through ``epsilon(delta)``): ``step()`` counts a release; ``epsilon(delta)`` is :func:`epsilon` of the
    releases so far."""

    def __init__(self, noise_multiplier: float, sample_rate: float, *, accountant: str = "rdp", steps: int = 0):
        self.noise_multiplier, self.sample_rate, self.steps = _check_accounting(
            noise_multiplier, sample_rate, steps, accountant
        )
        self.accountant = accountant

    def __repr__(self) -> str:
        return (f"PrivacyAccountant(noise_multiplier={self.noise_multiplier}, sample_rate={self.sample_rate}, "
                f"accountant={self.accountant!r}, steps={self.steps})")

    def step(self, count: int = 1) -> None:
        """Count ``count`` more releases."""
        validation.integer("count", count, 0)
        self.steps += count

    def epsilon(self, delta: float) -> float:
        """The epsilon spent so far, at ``delta``."""
        return epsilon(self.noise_multiplier, self.sample_rate, self.steps, delta, accountant=self.accountant)
