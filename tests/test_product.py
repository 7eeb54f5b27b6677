"""Product geometries against brute force (scipy linprog on polyhedral blocks) and the block formulas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

import lmo
from lmo.geometries import Product
from lmo.testing import to_numpy

POLY = (("sign", (3,)), ("l1", (4,)), ("scion_sign", (2, 2)))
RADII = (1.0, 0.5, 2.0)


def lp_optimum(g, combine):
    """min <g, d> over the product unit ball of the polyhedral blocks, as a linear program in (d, t)."""
    n = g.size
    sizes = [3, 4, 4]
    rows, rhs = [], []
    # variables: d (n), t (n) with |d_i| <= t_i; block norms are linear in t
    def add(row_d, row_t, b):
        rows.append(np.concatenate((row_d, row_t)))
        rhs.append(b)
    for i in range(n):
        e = np.zeros(n)
        e[i] = 1
        add(e, -e, 0.0)
        add(-e, -e, 0.0)
    start, blocks = 0, []
    for size, (name, _), r in zip(sizes, POLY, RADII):
        idx = np.arange(start, start + size)
        start += size
        # block norm / r as a list of linear forms in t whose max is the norm (sign, scion_sign) or one sum (l1)
        if name == "l1":
            forms = [np.isin(np.arange(n), idx).astype(float) / r]
        else:
            c = 2.0 if name == "scion_sign" else 1.0  # scion_sign on (2, 2): c = d_in = 2
            forms = [np.eye(n)[i] * c / r for i in idx]
        blocks.append(forms)
    if combine == "max":
        for forms in blocks:
            for f in forms:
                add(np.zeros(n), f, 1.0)
    else:  # sum: sum_b u_b <= 1 with u_b >= each form of block b -> add u variables
        k = len(blocks)
        rows = [np.concatenate((r, np.zeros(k))) for r in rows]
        for b, forms in enumerate(blocks):
            for f in forms:
                ub = np.zeros(k)
                ub[b] = -1
                rows.append(np.concatenate((np.zeros(n), f, ub)))
                rhs.append(0.0)
        rows.append(np.concatenate((np.zeros(2 * n), np.ones(k))))
        rhs.append(1.0)
    cost = np.concatenate((g, np.zeros(len(rows[0]) - n)))
    res = linprog(cost, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=[(None, None)] * len(cost))
    assert res.status == 0
    return res.fun


@pytest.mark.parametrize("combine", ["max", "sum"])
def test_polyhedral_product_against_linprog(combine):
    norm = Product(blocks=POLY, radii=RADII, combine=combine)
    rng = np.random.default_rng(0)
    for _ in range(5):
        g = rng.standard_normal(11)
        best = lp_optimum(g, combine)
        d = norm.lmo(g)
        assert float(g @ d) == pytest.approx(best, rel=1e-8, abs=1e-10)
        assert norm.dual_norm(g) == pytest.approx(-best, rel=1e-8)
        assert norm.norm(d) == pytest.approx(1.0, rel=1e-10)


def test_block_formulas_with_matrix_blocks(backend):
    blocks = (("spectral", (3, 2)), ("l2", (4,)), ("nuclear", (2, 2)))
    radii = (2.0, 1.0, 0.5)
    g = np.random.default_rng(1).standard_normal((2, 14))
    parts = Product(blocks=blocks).split(g)
    a = np.stack([r * to_numpy(lmo.get_norm(n).dual_norm(p)) for (n, _), p, r in zip(blocks, parts, radii)], -1)
    expected = {"max": a.sum(-1), "sum": a.max(-1), "l2": np.sqrt((a**2).sum(-1))}
    rng = np.random.default_rng(2)
    for combine, dual in expected.items():
        norm = Product(blocks=blocks, radii=radii, combine=combine)
        x = backend.asarray(g, "float32")
        d = to_numpy(norm.lmo(x))
        np.testing.assert_allclose(to_numpy(norm.dual_norm(x)), dual, rtol=1e-5)
        np.testing.assert_allclose((g * d).sum(-1), -dual, rtol=1e-5)
        np.testing.assert_allclose(to_numpy(norm.norm(backend.asarray(d, "float32"))), 1.0, rtol=1e-5)
        for _ in range(20):  # no random feasible point does better
            y = rng.standard_normal(g.shape)
            y = y / np.asarray(norm.norm(y))[..., None]
            assert np.all((g * y).sum(-1) >= -dual * (1 + 1e-5))


def test_sum_combination_splits_ties_and_zero_is_zero():
    norm = Product(blocks=(("l2", (2,)), ("l2", (2,))), combine="sum")
    d = norm.lmo(np.array([3.0, 4.0, 0.0, 5.0]))
    np.testing.assert_allclose(d, [-0.3, -0.4, 0.0, -0.5])
    for combine in ("max", "sum", "l2"):
        assert np.all(Product(blocks=(("spectral", (2, 2)), ("sign", (3,))), combine=combine).lmo(np.zeros(7)) == 0)


def test_layout_declarations_and_errors():
    norm = Product(blocks=(("spectral", (3, 2)), ("l2", (4,))))
    x = np.arange(20.0).reshape(2, 10)
    assert [p.shape for p in norm.split(x)] == [(2, 3, 2), (2, 4)]
    np.testing.assert_array_equal(norm.join(norm.split(x)), x)
    assert norm.core_shape() == (10,)
    inexact = Product(blocks=(("spectral", (3, 2)), (lmo.get_norm("spectral", method="newton_schulz"), (2, 2))))
    assert inexact.delta == lmo.get_norm("spectral", method="newton_schulz").delta
    with pytest.raises(ValueError, match="shape"):
        Product(blocks=(("spectral", (3,)),))
    with pytest.raises(ValueError, match="radii"):
        Product(blocks=(("l2", (3,)),), radii=(1.0, 2.0))
    with pytest.raises(ValueError, match="combine"):
        Product(blocks=(("l2", (3,)),), combine="min")
    with pytest.raises(ValueError, match=r"trailing shape \(10,\)"):
        norm.lmo(np.ones(9))
