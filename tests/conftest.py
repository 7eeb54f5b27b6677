"""Shared test set-up: hypothesis profiles and the array backends every generic test runs on.

Profiles: ``dev`` (quick, the default on a workstation) and ``ci`` (at least 200 examples per case, derandomized;
chosen when ``CI`` is set, or by ``HYPOTHESIS_PROFILE=ci``).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from lmo.testing import available_backends

settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Every backend the library supports; the ones not installed or without a device are skipped, not dropped.
KNOWN_BACKENDS = ("numpy", "torch", "array_api_strict", "torch-cuda", "cupy")
INSTALLED = available_backends()


def backend_params() -> list:
    return [
        pytest.param(name, id=name, marks=[] if name in INSTALLED else [
            pytest.mark.skip(reason=f"backend {name} is not available on this machine")])
        for name in KNOWN_BACKENDS
    ]


@pytest.fixture(params=backend_params())
def backend(request):
    """A property-kit ``Backend`` for each installed array library."""
    return INSTALLED[request.param]

# The geometries that predate the NaN/inf policy of issue 15 item 5 (the "geom" branch makes them keep it): until it
# lands, the kit's "non-finite input" check fails for them, and the tests below expect exactly that (strict xfail).
# Empty this set when the geometries keep the policy.
NONFINITE_PENDING = frozenset({
    "sign", "l1", "l2", "lp", "rms", "weighted_sign", "scaled", "spectral", "spectral_conv", "nuclear", "schatten",
    "frobenius", "colnorm", "rownorm", "scion_sign", "bias_rms", "product", "sphere", "stiefel", "spectral_sphere",
})
# Known lmo_at bugs the kit finds (issue 16): Stiefel's dual ascent stops 2-14% short of the optimum on tall, nearly
# square points (fixed on the Stiefel branch, item 4), and the spectral sphere's bisection is up to 10% short on
# square matrices, where the optimal G - lam Theta is singular and msign of it is not the argmin.
LMO_AT_PENDING = {
    "stiefel": "Stiefel.lmo_at: dual ascent stops 2-14% short on tall nearly square points (issue 16 item 4)",
    "spectral_sphere": "SpectralSphere.lmo_at: up to 10% short on square matrices (msign of a singular G - lam Theta)",
}


def registry_name(label: str) -> str:
    """The registry name in a kit report label (``spectral(scale='rms')`` -> ``spectral``)."""
    return label.split("(", 1)[0]


def pending_failures(report) -> list:
    """The failures of ``report`` that are not among the known pending ones above."""
    out = []
    for f in report.failures:
        name = registry_name(f.norm)
        if f.property == "non-finite input" and name in NONFINITE_PENDING:
            continue
        if f.method == "lmo_at" and name in LMO_AT_PENDING:
            continue
        out.append(f)
    return out
