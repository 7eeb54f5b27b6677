"""Manifold geometries: tangency, feasibility, optimality certificates, retractions, against independent solutions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lmo.geometries import SpectralSphere, Sphere, Stiefel
from lmo.testing import to_numpy


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_sphere(backend):
    s = Sphere(radius=2.0)
    x = s.project(backend.asarray(rand(3, 5), "float32"))
    np.testing.assert_allclose(np.linalg.norm(to_numpy(x), axis=-1), 2.0, rtol=1e-6)
    g = backend.asarray(rand(3, 5, seed=1), "float32")
    d = s.lmo_at(x, g)
    assert np.all(to_numpy(s.tangent_residual(x, d)) < 1e-5)
    xn, gn, dn = to_numpy(x), to_numpy(g), to_numpy(d)
    pg = gn - (xn * gn).sum(-1, keepdims=True) * xn / 4.0
    np.testing.assert_allclose(dn, -pg / np.linalg.norm(pg, axis=-1, keepdims=True), atol=1e-5)
    r = s.retract(x, 0.3 * d)
    np.testing.assert_allclose(np.linalg.norm(to_numpy(r), axis=-1), 2.0, rtol=1e-6)
    assert np.all(to_numpy(s.lmo_at(x, x)) == 0)  # a normal gradient has no tangent descent direction


@pytest.mark.parametrize("shape", [(5, 5), (7, 3), (12, 4)])
def test_stiefel_lmo_at_is_tangent_feasible_and_certified(backend, shape):
    st = Stiefel()
    w = st.project(backend.asarray(rand(2, *shape), "float64" if "float64" in backend.dtypes else "float32"))
    g = backend.asarray(rand(2, *shape, seed=1), str(w.dtype).split(".")[-1])
    d, gap, residual, steps = st.lmo_at(w, g, info=True)
    assert np.all(to_numpy(st.tangent_residual(w, d)) < 1e-5)
    assert np.all(np.linalg.norm(to_numpy(d), 2, axis=(-2, -1)) <= 1 + 1e-5)
    value = (to_numpy(g) * to_numpy(d)).sum((-2, -1))
    assert np.all(to_numpy(gap) <= 1e-4 * np.abs(value))  # <G, d> is within gap of the optimum
    assert value.max() < 0
    if shape[0] == shape[1]:
        assert steps == 0  # closed form


def _stiefel_sdp(w: np.ndarray, g: np.ndarray) -> float:
    """min <G, A> s.t. ||A||_2 <= 1, W^T A + A^T W = 0, by cvxpy's interior-point solver (the independent optimum).

    In the orthonormal coordinates ``A = [W, W_perp] Z`` the tangent constraint says that the top ``n x n`` block of
    ``Z`` is skew, and ``||A||_2 = ||Z||_2`` (a better-conditioned program than the one in ``A``).
    """
    import cvxpy as cp

    m, n = w.shape
    complement = np.linalg.qr(w, mode="complete")[0][:, n:]
    h = np.concatenate([w, complement], axis=1).T @ g
    z = cp.Variable((m, n))
    top = z[:n, :]
    problem = cp.Problem(cp.Minimize(cp.sum(cp.multiply(h, z))), [cp.sigma_max(z) <= 1, top + top.T == 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "solution may be inaccurate": Clarabel's reduced accuracy is still ~1e-8
        problem.solve(solver=cp.CLARABEL)
    assert problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), problem.status
    return float(problem.value)


# the shapes of the bug report (nearly square, where the old dual ascent stalled 2-14% off), tall and square ones
@pytest.mark.parametrize("shape", [(7, 5), (9, 5), (6, 5), (16, 12), (13, 12), (12, 4), (20, 6), (5, 5), (6, 6)])
def test_stiefel_lmo_at_matches_the_sdp_optimum(shape):
    rng = np.random.default_rng(sum(shape))
    st = Stiefel()
    w = st.project(rng.standard_normal((2, *shape)))
    g = rng.standard_normal((2, *shape))
    d, gap, _, _ = st.lmo_at(w, g, info=True)
    assert np.all(st.tangent_residual(w, d) < 1e-10)
    assert np.all(np.linalg.norm(d, 2, axis=(-2, -1)) <= 1 + 1e-12)
    value = (g * d).sum((-2, -1))
    for b in range(2):
        optimum = _stiefel_sdp(w[b], g[b])
        # our point is feasible and certified: OPT <= value <= OPT + gap; the solver's value is OPT to ~1e-8
        assert abs(value[b] - optimum) <= 1e-6 * abs(optimum), (value[b], optimum)
        assert value[b] - gap[b] <= optimum + 1e-7 * abs(optimum)
        assert gap[b] <= 1e-6 * abs(optimum)


def test_stiefel_lmo_at_degenerate_inputs():
    """Gradients that are rank one, nearly normal to the manifold, exactly normal, or of geometric spectrum
    (singular values 1 .. 1e-6): the certified gap still meets the tolerance."""
    rng = np.random.default_rng(12)
    st = Stiefel()
    w = st.project(rng.standard_normal((9, 5)))
    sym = rng.standard_normal((5, 5))
    u, _ = np.linalg.qr(rng.standard_normal((9, 5)))
    v, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    g = np.stack([
        np.outer(rng.standard_normal(9), rng.standard_normal(5)),
        w @ (sym + sym.T) + 1e-3 * rng.standard_normal((9, 5)),
        (u * np.geomspace(1, 1e-6, 5)) @ v.T,
    ])
    d, gap, _, _ = st.lmo_at(np.broadcast_to(w, g.shape), g, info=True)
    value = (g * d).sum((-2, -1))
    assert np.all(gap <= 1e-6 * np.abs(value)) and np.all(value < 0)
    for point in (w, st.project(rng.standard_normal((5, 5)))):  # tall and square
        normal = st.lmo_at(point, point @ (sym + sym.T))
        assert np.all(normal == 0)  # a normal gradient has no tangent descent direction


def test_stiefel_single_column_is_the_sphere():
    """For n = 1 the Stiefel manifold is the unit sphere and the spectral norm of a column is its l2 norm."""
    w = Sphere().project(rand(4, 6, seed=2))[..., None]
    g = rand(4, 6, 1, seed=3)
    d = Stiefel(tol=1e-9).lmo_at(w, g)
    np.testing.assert_allclose(d[..., 0], Sphere().lmo_at(w[..., 0], g[..., 0]), atol=1e-6)


def test_stiefel_square_closed_form_beats_random_tangent_vectors():
    st = Stiefel()
    w = st.project(rand(4, 4, seed=4))
    g = rand(4, 4, seed=5)
    d = st.lmo_at(w, g)
    best = float((g * d).sum())
    rng = np.random.default_rng(6)
    for _ in range(200):
        k = rng.standard_normal((4, 4))
        a = w @ (k - k.T)
        a /= np.linalg.norm(a, 2)
        assert float((g * a).sum()) >= best - 1e-10


@pytest.mark.parametrize("retraction", ["polar", "qr"])
def test_stiefel_retractions_land_on_the_manifold(retraction):
    st = Stiefel(retraction=retraction)
    w = st.project(rand(3, 8, 3, seed=7))
    d = st.lmo_at(w, rand(3, 8, 3, seed=8))
    r = st.retract(w, 0.2 * d)
    np.testing.assert_allclose(np.swapaxes(r, -1, -2) @ r, np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-12)
    if retraction == "qr":
        q, rr = np.linalg.qr(w[0] + 0.2 * d[0])
        np.testing.assert_allclose(r[0], q * np.sign(np.diag(rr)), atol=1e-12)
    # a retraction is first-order: R(w, t d) = w + t d + O(t^2)
    t = 1e-4
    assert np.abs(st.retract(w, t * d) - (w + t * d)).max() < 10 * t**2


def test_spectral_sphere():
    sp = SpectralSphere(radius=3.0)
    w = sp.project(rand(2, 5, 4, seed=9))
    np.testing.assert_allclose(np.linalg.norm(w, 2, axis=(-2, -1)), 3.0, rtol=1e-12)
    g = rand(2, 5, 4, seed=10)
    d = sp.lmo_at(w, g)
    assert np.all(sp.tangent_residual(w, d) < 1e-10)
    assert np.all(np.linalg.norm(d, 2, axis=(-2, -1)) <= 1 + 1e-10)
    # optimality: the dual bound -||G - lam Theta||_* at the best lam matches the primal value
    u, _, vh = np.linalg.svd(w)
    theta = u[..., :, :1] * vh[..., :1, :]
    lams = np.linspace(-20, 20, 4001)
    for b in range(2):
        dual = max(-np.linalg.norm(g[b] - lam * theta[b], "nuc") for lam in lams)
        assert float((g[b] * d[b]).sum()) == pytest.approx(dual, abs=2e-3)
    r = sp.retract(w, 0.5 * d)
    np.testing.assert_allclose(np.linalg.norm(r, 2, axis=(-2, -1)), 3.0, rtol=1e-12)


def test_manifold_errors():
    with pytest.raises(ValueError, match="tall"):
        Stiefel().lmo_at(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="same shape"):
        Sphere().lmo_at(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="retraction"):
        Stiefel(retraction="cayley")
    with pytest.raises(ValueError, match="radius"):
        Sphere(radius=0.0)
