"""Matrix geometries against independent solvers (numpy SVD, scipy linprog), Scion's formulas, their declared
symmetries, and the property kit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import pending_failures
from scipy.optimize import linprog

import lmo
from lmo.geometries import (
    BiasRMS,
    ColNorm,
    Frobenius,
    Nuclear,
    Product,
    RowNorm,
    Schatten,
    ScionSign,
    Spectral,
    SpectralConv,
    SpectralSphere,
    Sphere,
    Stiefel,
)
from lmo.testing import check_plugin, to_numpy

MINE = [Spectral, SpectralConv, Nuclear, Schatten, Frobenius, ColNorm, RowNorm, ScionSign, BiasRMS, Product, Sphere,
        Stiefel, SpectralSphere]


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def value(g, d):
    return float(np.sum(g * d))


def test_spectral_family_against_numpy_svd(backend):
    g = rand(2, 5, 3)
    s = np.linalg.svd(g, compute_uv=False)
    u, _, vh = np.linalg.svd(g, full_matrices=False)
    x = backend.asarray(g, "float64" if "float64" in backend.dtypes else "float32")
    tol = dict(rtol=1e-5, atol=1e-5)
    sp = lmo.get_norm("spectral")
    np.testing.assert_allclose(to_numpy(sp.norm(x)), s[:, 0], **tol)
    np.testing.assert_allclose(to_numpy(sp.dual_norm(x)), s.sum(-1), **tol)
    np.testing.assert_allclose(to_numpy(sp.lmo(x)), -u @ vh, **tol)
    nu = lmo.get_norm("nuclear")
    np.testing.assert_allclose(to_numpy(nu.norm(x)), s.sum(-1), **tol)
    np.testing.assert_allclose(to_numpy(nu.dual_norm(x)), s[:, 0], **tol)
    np.testing.assert_allclose(to_numpy(nu.lmo(x)), -u[..., :, :1] * vh[..., :1, :], **tol)
    sc = lmo.get_norm("schatten", p=3.0)
    q = 1.5
    np.testing.assert_allclose(to_numpy(sc.norm(x)), (s**3).sum(-1) ** (1 / 3), **tol)
    np.testing.assert_allclose(to_numpy(sc.dual_norm(x)), (s**q).sum(-1) ** (1 / q), **tol)
    w = s ** (q - 1) / ((s**q).sum(-1, keepdims=True) ** (1 / 3))
    np.testing.assert_allclose(to_numpy(sc.lmo(x)), -(u * w[:, None, :]) @ vh, **tol)
    fro = lmo.get_norm("frobenius")
    np.testing.assert_allclose(to_numpy(fro.lmo(x)), -g / np.linalg.norm(g, axis=(-2, -1), keepdims=True), **tol)


@pytest.mark.parametrize("scale,factor", [("none", 1.0), ("rms", math.sqrt(6 / 4)), ("rms_max", math.sqrt(6 / 4)),
                                          ("l2_rms", math.sqrt(6)), (2.5, 2.5)])
def test_spectral_scales(scale, factor):
    g = rand(6, 4)
    u, s, vh = np.linalg.svd(g, full_matrices=False)
    n = Spectral(scale=scale)
    np.testing.assert_allclose(n.lmo(g), -factor * u @ vh, atol=1e-12)
    np.testing.assert_allclose(n.dual_norm(g), factor * s.sum(), rtol=1e-12)
    np.testing.assert_allclose(n.norm(g), s[0] / factor, rtol=1e-12)
    assert Spectral(scale="rms_max").lmo(rand(3, 7)).std() == pytest.approx(Spectral().lmo(rand(3, 7)).std())


def test_spectral_rank_deficient_and_scale_extremes():
    g = rand(6, 2) @ rand(2, 5)  # rank 2
    d = Spectral().lmo(g)
    assert np.linalg.matrix_rank(d, tol=1e-8) == 2
    assert value(g, d) == pytest.approx(-np.linalg.svd(g, compute_uv=False).sum(), rel=1e-12)
    for scale in (1e-30, 1e30):
        for norm in (Spectral(), Nuclear(), Schatten(p=1.5), Nuclear(method="power"), ColNorm(rms=True)):
            big = norm.lmo(g * scale)
            np.testing.assert_allclose(big, norm.lmo(g), atol=1e-10)
            assert np.isfinite(norm.dual_norm(g * scale)) and norm.dual_norm(g * scale) > 0


def test_nuclear_power_iteration_declares_an_honest_bound():
    rng = np.random.default_rng(3)
    norm = Nuclear(method="power", steps=3)
    assert norm.delta == pytest.approx(4096 ** (-1 / 32) - 1e-3)
    for _ in range(20):
        n = 12
        s = np.sort(rng.uniform(0, 1, n))[::-1]
        s[1] = s[0] * (1 - 1e-3)  # a tiny gap: power iteration cannot separate the top pair, the bound must hold
        u = np.linalg.qr(rng.standard_normal((n, n)))[0]
        v = np.linalg.qr(rng.standard_normal((n, n)))[0]
        g = (u * s) @ v.T
        d = norm.lmo(g)
        assert -value(g, d) >= norm.delta * s[0]
        assert np.linalg.norm(d, "nuc") <= 1 + 1e-12


def test_spectral_conv_matches_the_reshaped_formula():
    g = rand(2, 6, 3, 3, 3)  # batch 2, c_out 6, c_in 3, 3x3 kernel
    n = SpectralConv()
    mat = g.reshape(2, 6, 27)
    u, s, vh = np.linalg.svd(mat, full_matrices=False)
    f = math.sqrt(6 / 3) / 9
    np.testing.assert_allclose(n.lmo(g), (-f * u @ vh).reshape(g.shape), atol=1e-12)
    np.testing.assert_allclose(n.dual_norm(g), f * s.sum(-1), rtol=1e-12)
    g1 = rand(5, 4, 3)
    np.testing.assert_allclose(SpectralConv(ndim=3).norm(g1),
                               np.linalg.norm(g1.reshape(5, 12), 2) * 3 / math.sqrt(5 / 4))


# -- Scion: the formulas of LIONS-EPFL/scion's scion.py (which returns -lmo), with eps = 0 ---------------------------
def scion_colnorm(g, normalized, transpose):
    if transpose:
        g = g.T
    rms = np.sqrt(np.sum(g**2, axis=0, keepdims=True)) / math.sqrt(g.shape[0])
    if normalized:
        rms = rms * g.shape[1]
    g = g / rms
    return g.T if transpose else g


def scion_rownorm(g, normalized, transpose):
    if transpose:
        g = g.T
    rms = np.sqrt(np.sum(g**2, axis=-1, keepdims=True))
    if normalized:
        rms = rms * math.sqrt(g.shape[-1])
    g = g / rms
    return g.T if transpose else g


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
def test_scion_correspondence(normalized, transpose):
    g = rand(7, 4)
    np.testing.assert_allclose(-ColNorm(rms=True, normalized=normalized, transpose=transpose).lmo(g),
                               scion_colnorm(g, normalized, transpose), atol=1e-12)
    np.testing.assert_allclose(-RowNorm(normalized=normalized, transpose=transpose).lmo(g),
                               scion_rownorm(g, normalized, transpose), atol=1e-12)
    np.testing.assert_allclose(-ScionSign(normalized=normalized).lmo(g),
                               np.sign(g) / (4 if normalized else 1), atol=1e-12)
    b = rand(9)
    np.testing.assert_allclose(-BiasRMS().lmo(b), b / np.sqrt(np.mean(b**2)), atol=1e-12)
    u, _, vh = np.linalg.svd(g, full_matrices=False)
    for scale, s in (("rms", math.sqrt(7 / 4)), ("rms_max", max(1, math.sqrt(7 / 4))), ("l2_rms", math.sqrt(7))):
        np.testing.assert_allclose(-Spectral(scale=scale).lmo(g), s * u @ vh, atol=1e-12)


def test_column_row_norms_by_their_definitions():
    g = rand(5, 3)
    cols, rows = np.linalg.norm(g, axis=0), np.linalg.norm(g, axis=1)
    assert ColNorm().norm(g) == pytest.approx(cols.max())
    assert ColNorm().dual_norm(g) == pytest.approx(cols.sum())
    assert RowNorm().norm(g) == pytest.approx(rows.max())
    assert RowNorm().dual_norm(g) == pytest.approx(rows.sum())
    # the operator-norm definitions: l1 -> l2 is attained at a vertex e_j, l2 -> l_inf at a row direction
    assert ColNorm().norm(g) == pytest.approx(max(np.linalg.norm(g @ e) for e in np.eye(3)))
    g[:, 1] = 0  # a zero column gets a zero direction
    assert np.all(ColNorm().lmo(g)[:, 1] == 0)


@pytest.mark.parametrize("norm", [ScionSign(), ScionSign(normalized=False)], ids=repr)
def test_scion_sign_against_linprog(norm):
    g = rand(3, 4, seed=5)
    c = 4.0 if norm.normalized else 1.0
    res = linprog(g.ravel(), bounds=[(-1 / c, 1 / c)] * g.size)  # the unit ball: c max|d_ij| <= 1
    assert value(g, norm.lmo(g)) == pytest.approx(res.fun, rel=1e-9)
    assert -res.fun == pytest.approx(norm.dual_norm(g), rel=1e-9)


def test_declared_symmetries_hold_and_the_other_side_does_not():
    rng = np.random.default_rng(6)
    g = rand(5, 4, seed=7)
    q_left = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    q_right = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    for norm in (ColNorm(), ColNorm(rms=True), RowNorm(transpose=True)):
        assert norm.symmetry == "orthogonal_left"
        assert norm.norm(q_left @ g) == pytest.approx(norm.norm(g))
        np.testing.assert_allclose(norm.lmo(q_left @ g), q_left @ norm.lmo(g), atol=1e-12)
        assert abs(norm.norm(g @ q_right) - norm.norm(g)) > 1e-3
    for norm in (RowNorm(), RowNorm(normalized=True), ColNorm(transpose=True)):
        assert norm.symmetry == "orthogonal_right"
        assert norm.norm(g @ q_right) == pytest.approx(norm.norm(g))
        assert abs(norm.norm(q_left @ g) - norm.norm(g)) > 1e-3
    for norm in (Spectral(), Nuclear(), Schatten(p=3.0), Frobenius()):
        assert norm.symmetry == "orthogonal"
        assert norm.dual_norm(q_left @ g @ q_right) == pytest.approx(norm.dual_norm(g))
        np.testing.assert_allclose(norm.lmo(q_left @ g @ q_right), q_left @ norm.lmo(g) @ q_right, atol=1e-10)
    perm = rng.permutation(20)
    signs = rng.choice([-1.0, 1.0], 20)
    h = (g.ravel()[perm] * signs).reshape(5, 4)
    assert ScionSign().dual_norm(h) == pytest.approx(ScionSign().dual_norm(g))


def test_bad_parameters_and_inputs_are_named():
    with pytest.raises(ValueError, match="scale"):
        Spectral(scale="huge")
    with pytest.raises(ValueError, match="method"):
        lmo.get_norm("spectral", method="newton")
    with pytest.raises(ValueError, match="p must"):
        Schatten(p=1.0)
    with pytest.raises(ValueError, match="ndim"):
        SpectralConv(ndim=2)
    with pytest.raises(ValueError, match="normalized"):
        RowNorm(normalized="yes")
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        Spectral().lmo(np.ones(3))
    # the keyword names of the torch Muon drop-in
    n = lmo.get_norm("spectral", method="newton_schulz", steps=5, coefficients=(3.4445, -4.775, 2.0315), eps=1e-7,
                     dtype="float32")
    assert n.solver.schedule == ((3.4445, -4.775, 2.0315),) * 5
    assert 0.3 < n.delta < 0.5 and 0.2 < n.slack < 0.21
    assert n.bounds_for((64, 64))[0] > n.delta


@pytest.mark.parametrize("cls", MINE, ids=lambda c: c.name)
def test_property_kit_passes(cls):
    report = check_plugin(cls, backends=["numpy", "array_api_strict"], max_examples=5)
    assert report.rows and not pending_failures(report), str(report)



@pytest.mark.parametrize("norm", [pytest.param(n, id=repr(n)) for cls in lmo.norms().values() for n in cls.examples()
                                  if n.ndim == 2])
def test_transposable_declaration(norm):
    """``transposable`` (the optimizers stack a tall matrix with its wide transposes) holds where declared:
    ``||G^T|| = ||G||``, ``||G^T||_* = ||G||_*`` and ``lmo(G^T) = lmo(G)^T``; Spectral declares it exactly for a
    shape-independent factor."""
    g = rand(2, 7, 3, seed=5)
    if isinstance(norm, Spectral) and type(norm).lmo is Spectral.lmo:
        assert norm.transposable == (norm.scale == "none" or not isinstance(norm.scale, str))
    if not norm.transposable:
        return
    t = np.swapaxes(g, -1, -2)
    tol = 1e-10 if getattr(norm, "method", "svd") == "svd" else 1e-6
    np.testing.assert_allclose(norm.norm(t), norm.norm(g), rtol=tol)
    np.testing.assert_allclose(norm.dual_norm(t), norm.dual_norm(g), rtol=tol)
    np.testing.assert_allclose(norm.lmo(t), np.swapaxes(norm.lmo(g), -1, -2), rtol=tol, atol=tol)
