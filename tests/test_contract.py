"""The contract suite: every registered norm's ``examples()`` x every installed backend, with no list to edit.

A new geometry is one class with a ``name=``; importing ``lmo.geometries`` registers it and this module picks it up.
Known geometry bugs that the kit finds are expected failures (strict, so that the fix shows): see ``conftest.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import INSTALLED, LMO_AT_PENDING, NONFINITE_PENDING, backend_params
from hypothesis import given, settings
from hypothesis import strategies as st

import lmo
from lmo.geometries import Spectral
from lmo.geometries.polar_solvers import METHODS
from lmo.testing import (
    check_bounds,
    check_hard_inputs,
    check_manifold,
    check_nonfinite,
    check_norm,
    check_parity,
    check_references,
    hard_inputs,
    is_manifold,
    large_inputs,
    manifold_inputs,
    numpy_inputs,
)

EXAMPLES = [norm for cls in lmo.norms().values() for norm in cls.examples()]
NORMS = [pytest.param(norm, id=repr(norm)) for norm in EXAMPLES]


def test_every_builtin_has_examples_and_references():
    assert len(NORMS) >= len(lmo.norms())
    for name, cls in lmo.norms().items():
        assert cls.name == name
        assert list(cls.examples()), f"{name} has no examples() for the contract suite"
        for norm in cls.examples():  # every built-in states its results independently, at non-square shapes too
            for label, g in hard_inputs(norm):
                assert norm.reference(g) is not None, f"{norm!r} declares no reference ({label})"


@pytest.mark.parametrize("backend_name", backend_params())
@pytest.mark.parametrize("norm", NORMS)
def test_hard_inputs(norm, backend_name):
    backend = INSTALLED[backend_name]
    assert check_hard_inputs(norm, backend) > 0


@pytest.mark.parametrize("backend_name", backend_params())
@pytest.mark.parametrize("norm", NORMS)
@given(data=st.data())
def test_contract(norm, backend_name, data):
    backend = INSTALLED[backend_name]
    dtype = data.draw(st.sampled_from(backend.dtypes), label="dtype")
    g = data.draw(numpy_inputs(norm, dtype=dtype), label="g")
    layout = data.draw(st.sampled_from(backend.layouts), label="layout") if g.ndim >= 2 else "contiguous"
    check_norm(norm, backend.asarray(g, dtype, layout))


@pytest.mark.parametrize("norm", NORMS)
def test_backend_parity(norm):
    if len(INSTALLED) < 2:
        pytest.skip("parity needs two backends")
    cases = check_parity(norm, list(INSTALLED.values()), max_examples=max(10, settings().max_examples // 4))
    assert cases > 0


def test_outputs_keep_the_input_namespace(backend):
    for param in NORMS:
        norm = param.values[0]
        g = backend.asarray(np.random.default_rng(0).standard_normal(hard_inputs(norm)[-1][1].shape), "float32")
        out = norm.lmo(g)
        assert type(out) is type(g) and out.dtype == g.dtype and out.shape == g.shape


# -- the factored oracle that the optimizers read --------------------------------------------------------------------
def _factored_cases():
    import lmo

    for name, cls in lmo.norms().items():
        for norm in cls.examples():
            yield pytest.param(norm, id=f"{name}:{norm!r}"[:90])


@pytest.mark.parametrize("norm", list(_factored_cases()))
def test_lmo_factored_is_lmo_up_to_the_rounding_of_its_dtype(norm):
    """``lmo(g) = f * d`` for ``(d, f) = lmo_factored(g)``, in float64 within the rounding of ``d``'s dtype."""
    torch = pytest.importorskip("torch")
    shape = norm.core_shape() or ((5, 7) if norm.ndim == 2 else (7,) if norm.ndim == 1 else (3,) * norm.ndim)
    if getattr(norm, "ndim", 1) >= 3 and norm.core_shape() is None:
        shape = (4, 2) + (3,) * (norm.ndim - 2)
    gen = torch.Generator().manual_seed(0)
    g = torch.randn((2, *shape), generator=gen, dtype=torch.float32)
    if callable(getattr(norm, "lmo_stateful", None)):
        pytest.skip("stateful oracles are called through lmo_stateful")
    d, f = norm.lmo_factored(g)
    assert isinstance(f, float) and tuple(d.shape) == tuple(g.shape)
    eps = torch.finfo(d.dtype).eps
    full = norm.lmo(g).double()
    np.testing.assert_allclose((f * d.double()).numpy(), full.numpy(), atol=4 * eps * float(full.abs().max()) + 1e-12)


def _pending(norm, what: str, reason: str) -> list:
    return [pytest.mark.xfail(strict=True, reason=f"{norm.name}: {reason}")] if what else []


@pytest.mark.parametrize("backend_name", backend_params())
@pytest.mark.parametrize("norm", [
    pytest.param(n, id=repr(n), marks=_pending(n, n.name in NONFINITE_PENDING and "nan",
                                                "predates the NaN/inf policy of issue 15 item 5"))
    for n in EXAMPLES])
def test_nonfinite_policy(norm, backend_name):
    backend = INSTALLED[backend_name]
    for dtype in backend.dtypes:
        check_nonfinite(norm, backend, dtype)


# (norm name, input label) pairs where lmo_at is known to be short of the optimum (conftest.LMO_AT_PENDING)
LMO_AT_SHORT: set[tuple[str, str]] = set()
MANIFOLD_CASES = [
    pytest.param(norm, label, x0, g, id=f"{norm!r}-{label}", marks=_pending(
        norm, (norm.name, label) in LMO_AT_SHORT and "short", LMO_AT_PENDING.get(norm.name, "")))
    for norm in EXAMPLES if is_manifold(norm) for label, x0, g in manifold_inputs(norm)
]


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
@pytest.mark.parametrize(("norm", "label", "x0", "g"), MANIFOLD_CASES)
def test_manifold_methods(norm, label, x0, g, backend_name):
    from lmo.testing import ShapeRefused

    backend = INSTALLED[backend_name]
    for dtype in ("float64", "float32"):
        try:
            check_manifold(norm, backend.asarray(x0, dtype), backend.asarray(g, dtype))
        except ShapeRefused:
            assert norm.name == "stiefel" and label == "4x6"  # a Stiefel point is tall
            return


# the declared cases whose tangent optimum the geometry misses today (index into reference_cases())
REFERENCE_SHORT: set[tuple[str, tuple[int, ...]]] = set()
REFERENCE_CASES = [
    pytest.param(norm, ref, id=f"{norm!r}-{i}-{'x'.join(map(str, np.shape(ref.g)))}",
                 marks=_pending(norm, ref.point is not None and (norm.name, np.shape(ref.g)) in REFERENCE_SHORT
                                and "short", LMO_AT_PENDING.get(norm.name, "")))
    for norm in EXAMPLES for i, ref in enumerate(norm.reference_cases())
]


@pytest.mark.parametrize(("norm", "ref"), REFERENCE_CASES)
def test_reference_cases(norm, ref):
    for backend_name in ("numpy", "torch"):
        assert check_references(norm, INSTALLED[backend_name], "float64", [ref]) == 1


def test_every_manifold_declares_tangent_optima():
    for norm in EXAMPLES:
        if is_manifold(norm):
            refs = list(norm.reference_cases())
            assert any(r.point is not None for r in refs) and any(r.project is not None for r in refs), norm


# Inexact oracles at real sizes (side 256, hard spectra): every example that declares delta < 1 or slack > 0, and
# every iterative polar solver with its defaults (``auto`` included: its declared bound is held here).
INEXACT = [n for n in EXAMPLES if n.delta < 1 or n.slack > 0]
INEXACT += [Spectral(method=m) for m in METHODS if m != "svd" and Spectral(method=m) not in INEXACT]


@pytest.mark.parametrize("norm", [pytest.param(n, id=repr(n)) for n in INEXACT])
def test_inexact_bounds_hold_at_large_sizes(norm):
    inputs = large_inputs(norm, side=256)
    assert len(inputs) == 4
    for backend_name, dtypes in (("numpy", ("float64", "float32")), ("torch", ("float32",))):
        for _, g in inputs:
            for dtype in dtypes:
                check_bounds(norm, INSTALLED[backend_name].asarray(g, dtype), reference=norm.reference(np.array(g)))
