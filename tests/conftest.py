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
