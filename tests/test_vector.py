"""Vector geometries against independent references: numpy's norms, linear programs, and their documented rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from lmo.geometries import L1, L2, RMS, Lp, Scaled, Sign, WeightedSign
from lmo.testing import to_numpy

RNG = np.random.default_rng(1)


def _lp_lmo(g, bounds=None, l1=False):
    """argmin <g, d> over the l-infinity box (bounds) or the l1 ball, by a linear program."""
    n = g.size
    if l1:  # d = u - v, u, v >= 0, sum(u + v) <= 1
        res = linprog(np.concatenate([g, -g]), A_ub=np.ones((1, 2 * n)), b_ub=[1.0], bounds=[(0, None)] * 2 * n)
        return res.fun
    return linprog(g, bounds=bounds).fun


@pytest.mark.parametrize("seed", range(5))
def test_polyhedral_oracles_attain_the_linear_programs_optimum(seed):
    g = np.random.default_rng(seed).standard_normal(5)
    w = np.array([1.0, 2.0, 0.5, 4.0, 3.0])
    assert g @ Sign().lmo(g) == pytest.approx(_lp_lmo(g, bounds=[(-1, 1)] * 5), abs=1e-9)
    assert g @ L1().lmo(g) == pytest.approx(_lp_lmo(g, l1=True), abs=1e-9)
    assert g @ WeightedSign(weights=w).lmo(g) == pytest.approx(_lp_lmo(g, bounds=[(-1 / x, 1 / x) for x in w]),
                                                               abs=1e-9)


@pytest.mark.parametrize("p", [1.25, 1.5, 2.5, 3.0, 8.0])
def test_lp_against_numpy_norms(p):
    g = RNG.standard_normal((3, 7))
    q = p / (p - 1)
    n = Lp(p=p)
    np.testing.assert_allclose(n.norm(g), np.linalg.norm(g, ord=p, axis=-1))
    np.testing.assert_allclose(n.dual_norm(g), np.linalg.norm(g, ord=q, axis=-1))
    d = n.lmo(g)
    np.testing.assert_allclose(np.linalg.norm(d, ord=p, axis=-1), 1.0)
    np.testing.assert_allclose(np.sum(g * d, axis=-1), -np.linalg.norm(g, ord=q, axis=-1))


def test_l2_rms_and_sign_against_numpy():
    g = RNG.standard_normal((4, 6))
    np.testing.assert_allclose(L2().norm(g), np.linalg.norm(g, axis=-1))
    np.testing.assert_allclose(L2().lmo(g), -g / np.linalg.norm(g, axis=-1, keepdims=True))
    np.testing.assert_allclose(RMS().norm(g), np.sqrt(np.mean(g**2, axis=-1)))
    np.testing.assert_allclose(RMS().dual_norm(g), np.sqrt(6) * np.linalg.norm(g, axis=-1))
    np.testing.assert_allclose(np.sqrt(np.mean(RMS().lmo(g) ** 2, axis=-1)), 1.0)
    np.testing.assert_array_equal(Sign().lmo(g), -np.sign(g))
    np.testing.assert_allclose(Sign().dual_norm(g), np.abs(g).sum(-1))


def test_ndim_flattens_trailing_axes():
    g = RNG.standard_normal((2, 3, 4))
    np.testing.assert_allclose(Sign(ndim=2).norm(g), np.abs(g).max(axis=(-2, -1)))
    np.testing.assert_allclose(L1(ndim=2).dual_norm(g), np.abs(g).max(axis=(-2, -1)))
    np.testing.assert_allclose(L2(ndim=3).norm(g), np.linalg.norm(g.ravel()))
    d = L1(ndim=2).lmo(g)
    assert d.shape == g.shape and np.all(np.count_nonzero(d.reshape(2, -1), axis=-1) == 1)


def test_documented_tie_and_zero_rules():
    np.testing.assert_allclose(L1().lmo(np.array([3.0, -3.0, 1.0])), [-0.5, 0.5, 0.0])
    np.testing.assert_allclose(Sign().lmo(np.array([2.0, 0.0, -1.0])), [-1.0, 0.0, 1.0])
    for n in (Sign(), L1(), L2(), RMS(), Lp(p=3), WeightedSign(weights=(1.0, 2.0, 3.0)), Scaled(base="l1", scale=2)):
        z = np.zeros((2, 3))
        assert np.all(n.lmo(z) == 0) and np.all(n.norm(z) == 0) and np.all(n.dual_norm(z) == 0)


def test_batched_equals_looped():
    g = RNG.standard_normal((3, 2, 5))
    for n in (Sign(), L1(), L2(), RMS(), Lp(p=1.5)):
        looped = np.stack([np.stack([n.lmo(row) for row in block]) for block in g])
        np.testing.assert_allclose(n.lmo(g), looped)


def test_extreme_scales_stay_finite_and_exact():
    for scale in (1e-300, 1e300):
        g = np.array([3.0, -4.0]) * scale
        np.testing.assert_allclose(L2().norm(g), 5.0 * scale)
        np.testing.assert_allclose(L2().lmo(g), [-0.6, 0.8])
        np.testing.assert_allclose(Lp(p=3).lmo(g), Lp(p=3).lmo(np.array([3.0, -4.0])))


def test_scaled_formulas():
    g = RNG.standard_normal(5)
    s = Scaled(base=L2(), scale=3.0)
    np.testing.assert_allclose(s.norm(g), np.linalg.norm(g) / 3)
    np.testing.assert_allclose(s.dual_norm(g), 3 * np.linalg.norm(g))
    np.testing.assert_allclose(s.lmo(g), 3 * L2().lmo(g))
    np.testing.assert_allclose(s.sharp(g), -s.dual_norm(g) * s.lmo(g))
    assert s.ndim == 1 and s.symmetry == "orthogonal" and Scaled(base=L1(ndim=2)).ndim == 2


def test_half_precision_in_and_out(backend):
    n = Lp(p=3)
    for dtype in [d for d in backend.dtypes if d in ("float16", "bfloat16")]:
        g = backend.asarray(RNG.standard_normal((2, 5)) * 100, dtype)
        d = n.lmo(g)
        assert d.dtype == g.dtype and d.shape == g.shape
        np.testing.assert_allclose(to_numpy(n.norm(d)), 1.0, rtol=2e-2)


def test_bad_inputs_name_the_parameter_and_shape():
    with pytest.raises(ValueError, match=r"g must have a real floating dtype; got dtype int64 with shape \(3,\)"):
        Sign().lmo(np.arange(3))
    with pytest.raises(ValueError, match=r"g must have at least 2 axes.*got shape \(3,\)"):
        Sign(ndim=2).lmo(np.ones(3))
    with pytest.raises(ValueError, match=r"x must have trailing shape \(2,\); got shape \(4, 3\)"):
        WeightedSign(weights=(1.0, 2.0)).norm(np.ones((4, 3)))
    with pytest.raises(ValueError, match="empty core"):
        L2().lmo(np.ones((3, 0)))


def test_input_namespace_is_kept(backend):
    g = backend.asarray(RNG.standard_normal((2, 3)), "float32")
    for n in (Sign(), L1(), L2(), Lp(p=3), RMS()):
        out = n.lmo(g)
        assert type(out) is type(g) and out.dtype == g.dtype
