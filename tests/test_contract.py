"""The contract suite: every registered norm's ``examples()`` x every installed backend, with no list to edit.

A new geometry is one class with a ``name=``; importing ``lmo.geometries`` registers it and this module picks it up.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import INSTALLED, backend_params
from hypothesis import given, settings
from hypothesis import strategies as st

import lmo
from lmo.testing import check_norm, check_parity, hard_inputs, numpy_inputs

NORMS = [pytest.param(norm, id=repr(norm)) for cls in lmo.norms().values() for norm in cls.examples()]


def test_every_builtin_has_examples():
    assert len(NORMS) >= len(lmo.norms())
    for name, cls in lmo.norms().items():
        assert cls.name == name
        assert list(cls.examples()), f"{name} has no examples() for the contract suite"


@pytest.mark.parametrize("backend_name", backend_params())
@pytest.mark.parametrize("norm", NORMS)
def test_hard_inputs(norm, backend_name):
    backend = INSTALLED[backend_name]
    for dtype in backend.dtypes:
        for _label, g in hard_inputs(norm):
            check_norm(norm, backend.asarray(g, dtype))


@pytest.mark.parametrize("backend_name", backend_params())
@pytest.mark.parametrize("norm", NORMS)
@given(data=st.data())
def test_contract(norm, backend_name, data):
    backend = INSTALLED[backend_name]
    dtype = data.draw(st.sampled_from(backend.dtypes), label="dtype")
    g = data.draw(numpy_inputs(norm, dtype=dtype), label="g")
    check_norm(norm, backend.asarray(g, dtype))


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
