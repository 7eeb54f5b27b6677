"""The non-finite input policy (``Norm.infinite_input``), on every built-in geometry, backend and dtype.

A NaN in a batch entry: that entry's ``lmo`` / ``sharp`` are NaN everywhere and its ``norm`` / ``dual_norm`` NaN.
An infinity: ``norm`` / ``dual_norm`` are ``inf``, ``sharp`` NaN, and ``lmo`` is the limit (``"limit"``: finite,
feasible, equal to the oracle at ``+-inf -> +-T`` for a huge ``T``) or NaN everywhere (``"nan"``). The other entries
are what the oracle gives without the bad ones. Nothing raises (``LinAlgError`` from an SVD, say) and, with
``RuntimeWarning`` an error in this suite, nothing warns.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import INSTALLED, backend_params

import lmo
from lmo.geometries import Stiefel
from lmo.geometries.low_rank import LowRankPolar, RandomizedPolar
from lmo.geometries.tangent import Tangent
from lmo.testing import to_numpy

EXTRA = [LowRankPolar(rank=2), RandomizedPolar(rank=2), Tangent(manifold="stiefel"), Tangent(manifold="sphere")]
NORMS = [pytest.param(n, id=repr(n)) for cls in lmo.norms().values() for n in cls.examples()]
NORMS += [pytest.param(n, id=repr(n)) for n in EXTRA]
_TOL = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 3e-2, "float16": 4e-3}


def _core(norm):
    core = norm.core_shape()
    return tuple(core) if core is not None else {1: (5,), 2: (4, 3), 3: (3, 2, 2), 4: (3, 2, 2, 2)}[norm.ndim]


def _inputs(norm):
    """Entries 0 and 3 finite, 1 with a NaN, 2 with +inf and (if there is room) -inf."""
    g = np.random.default_rng(7).standard_normal((4, *_core(norm)))
    g[1].flat[-1] = np.nan
    g[2].flat[0] = np.inf
    if g[2].size > 1:
        g[2].flat[-1] = -np.inf
    return g


def test_every_builtin_declares_a_policy():
    for name, cls in lmo.norms().items():
        for norm in cls.examples():
            assert norm.infinite_input in ("limit", "nan"), name


def test_policy_of_the_builtins_is_the_documented_one():
    """The table in docs/geometries.md, by registry name (the default instance)."""
    limit = {"sign", "l1", "l2", "lp", "rms", "bias_rms", "weighted_sign", "scaled", "frobenius", "schatten",
             "colnorm", "rownorm", "scion_sign", "sphere"}
    for name, cls in lmo.norms().items():
        norm = next(iter(cls.examples()))
        assert norm.infinite_input == ("limit" if name in limit else "nan"), name
    sign = lmo.get_norm("sign")
    assert lmo.get_norm("product", blocks=[(sign, (2,)), ("l2", (3,))]).infinite_input == "limit"
    assert lmo.get_norm("product", blocks=[(sign, (2,)), ("spectral", (2, 2))]).infinite_input == "nan"
    assert lmo.get_norm("product", blocks=[(sign, (2,))], combine="sum").infinite_input == "nan"


@pytest.mark.parametrize("backend_name", backend_params())
@pytest.mark.parametrize("norm", NORMS)
def test_nonfinite_inputs(norm, backend_name):
    backend = INSTALLED[backend_name]
    g64 = _inputs(norm)
    good = g64[[0, 3]]
    for dtype in backend.dtypes:
        g = backend.asarray(g64, dtype)
        d, dual, size, sharp = (to_numpy(f(g)).astype(np.float64) for f in (norm.lmo, norm.dual_norm, norm.norm,
                                                                             norm.sharp))
        ref = backend.asarray(good, dtype)
        tol = _TOL[dtype]
        np.testing.assert_allclose(d[[0, 3]], to_numpy(norm.lmo(ref)).astype(np.float64), rtol=tol, atol=tol)
        np.testing.assert_allclose(dual[[0, 3]], to_numpy(norm.dual_norm(ref)).astype(np.float64), rtol=tol)
        np.testing.assert_allclose(size[[0, 3]], to_numpy(norm.norm(ref)).astype(np.float64), rtol=tol)
        assert np.isnan(d[1]).all() and np.isnan(sharp[1]).all() and np.isnan(dual[1]) and np.isnan(size[1])
        assert dual[2] == np.inf and size[2] == np.inf and np.isnan(sharp[2]).all()
        direction, factor = norm.lmo_factored(g)  # the optimizers' route keeps the policy (finite=False)
        factored = factor * to_numpy(direction).astype(np.float64)
        assert np.isnan(factored[1]).all() and np.isfinite(factored[[0, 3]]).all()
        np.testing.assert_allclose(factored[[0, 3]], d[[0, 3]], rtol=_TOL["bfloat16"], atol=_TOL["bfloat16"])
        if norm.infinite_input == "nan":
            assert np.isnan(d[2]).all() and np.isnan(factored[2]).all()
            continue
        np.testing.assert_allclose(factored[2], d[2], rtol=_TOL["bfloat16"], atol=_TOL["bfloat16"])
        assert np.isfinite(d[2]).all()
        assert float(to_numpy(norm.norm(backend.asarray(d[2:3], dtype)))[0]) <= 1 + norm.slack + 4 * tol
        # the limit: the oracle at +-inf -> +-T, T huge (float64 holds the finite part exactly beside T)
        big = np.where(np.isinf(g64[2:3]), np.sign(g64[2:3]) * 1e150, g64[2:3])
        limit = to_numpy(norm.lmo(backend.asarray(big, "float64")))[0] if "float64" in backend.dtypes else None
        if limit is not None:
            np.testing.assert_allclose(d[2], limit, rtol=4 * tol, atol=4 * tol)


def test_product_takes_the_limit_block_by_block(backend):
    """combine="max": a block with an infinity gets its own limit, the finite blocks their usual direction."""
    prod = lmo.get_norm("product", blocks=[("sign", (2,)), ("l2", (3,)), ("colnorm", (2, 2))], radii=(1.0, 2.0, 0.5))
    g = np.array([[0.5, -2.0, 1.0, -np.inf, np.inf, 3.0, -4.0, 0.0, 1.0]])
    d = to_numpy(prod.lmo(backend.asarray(g)))[0]
    np.testing.assert_allclose(d[:2], [-1.0, 1.0])
    np.testing.assert_allclose(d[2:5], 2.0 * np.array([0.0, 1.0, -1.0]) / np.sqrt(2), atol=1e-12)
    np.testing.assert_allclose(d[5:], to_numpy(prod.blocks[2][0].lmo(backend.asarray(g[:, 5:].reshape(1, 2, 2))))
                               .ravel() * 0.5, atol=1e-12)


def test_lmo_at_nonfinite_gradients(backend):
    """The manifold oracles follow the policy of their geometry (Stiefel: refuse; the sphere: the limit)."""
    st = Stiefel()
    w = st.project(np.random.default_rng(8).standard_normal((3, 6, 4)))
    g = np.random.default_rng(9).standard_normal((3, 6, 4))
    g[1, 2, 1], g[2, 0, 0] = np.nan, np.inf
    d = to_numpy(st.lmo_at(backend.asarray(w), backend.asarray(g)))
    assert np.isnan(d[1:]).all() and np.isfinite(d[0]).all()
    np.testing.assert_allclose(d[0], to_numpy(st.lmo_at(backend.asarray(w[:1]), backend.asarray(g[:1])))[0],
                               atol=1e-6)
    sphere = lmo.get_norm("sphere")
    x = sphere.project(backend.asarray(np.random.default_rng(10).standard_normal((3, 5))))
    v = backend.asarray(np.array([[1.0, 2, 3, 4, 5], [1, np.nan, 0, 0, 0], [np.inf, 0, 0, 0, 0]]))
    d = to_numpy(sphere.lmo_at(x, v))
    assert np.isfinite(d[[0, 2]]).all() and np.isnan(d[1]).all()


@pytest.mark.filterwarnings("ignore::UserWarning")  # dynamo's notes on array-api-compat's lru_cache
def test_guard_compiles_without_graph_breaks():
    """No host synchronisation: torch.compile(fullgraph=True) traces an oracle with the guard, refusing and limiting."""
    torch = pytest.importorskip("torch")
    g = torch.tensor([[1.0, float("inf"), -2.0], [1.0, float("nan"), 2.0], [3.0, 4.0, 0.0]])
    l2 = torch.compile(lmo.get_norm("l2").lmo, backend="eager", fullgraph=True)(g)
    assert torch.equal(l2[0], torch.tensor([0.0, -1.0, 0.0])) and l2[1].isnan().all()
    m = torch.randn(3, 4, 3)
    m[1, 0, 0] = float("nan")
    spectral = torch.compile(lmo.get_norm("nuclear").lmo, backend="eager", fullgraph=True)(m)
    assert spectral[1].isnan().all() and spectral[[0, 2]].isfinite().all()
