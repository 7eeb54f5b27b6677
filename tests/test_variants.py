"""The research variants (issue 7) against independent references written from their papers.

The references are plain numpy from the papers' update formulas; they call neither the driver, nor the hooks, nor
the geometries. Randomness that a reference cannot reproduce (Dion's initial basis) is read from the driver's
initial state and handed to the reference as the paper's input; randomized sketches are tested on inputs for which
every sketch gives the same, known answer.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from _doubles import skip_without

import lmo.optimizers as lo
from lmo.geometries.low_rank import RandomizedPolar

pytestmark = skip_without("spectral", "stiefel", "sphere", "spectral_sphere")
RNG = np.random.default_rng(7)


def _polar(a, rank=None):
    """U V^T of the SVD (over the top ``rank`` singular pairs: the polar factor of a rank-deficient matrix)."""
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    r = min(a.shape) if rank is None else rank
    return u[:, :r] @ vh[:r]


def _qr_pos(a):
    q, r = np.linalg.qr(a)
    s = np.where(np.diag(r) < 0, -1.0, 1.0)
    return q * s, r * s[:, None]


def _assert_close(a, b, tol=1e-10):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def _grads(shape, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(n)]


def _run(driver, x0, grads):
    x, state, out = x0.copy(), driver.init(x0), []
    for g in grads:
        x, state = driver.step(x, g, state)
        out.append(x)
    return out, state


# -- 1. spectral descent, version A ------------------------------------------------------------------------------
def test_exact_muon_is_li_hong_version_a():
    x0, grads = RNG.standard_normal((5, 3)), _grads((5, 3))
    ours, _ = _run(lo.exact_muon(0.03, beta=0.8, weight_decay=0.1), x0, grads)
    x, b = x0.copy(), np.zeros_like(x0)
    for g, got in zip(grads, ours):
        b = 0.8 * b + 0.2 * g
        x = x - 0.03 * 0.1 * x - 0.03 * _polar(b)
        _assert_close(got, x, 1e-12)


# -- 2. error feedback --------------------------------------------------------------------------------------------
def test_error_feedback_sign_is_karimireddy_ef_signsgd():
    """Karimireddy et al. 2019, Algorithm 1 with the scaled sign compressor: p = g e + ...; Delta = ||p||_1/d sign p."""
    x0, grads = RNG.standard_normal(7), _grads(7, n=8)
    ours, state = _run(lo.error_feedback(lo.sign_sgd(), lr=0.05), x0, grads)
    x, e = x0.copy(), np.zeros_like(x0)
    for g, got in zip(grads, ours):
        p = 0.05 * g + e
        delta = np.abs(p).sum() / p.size * np.sign(p)
        x, e = x - delta, p - delta
        _assert_close(got, x, 1e-12)
    _assert_close(state["slots"][""]["error_feedback.error"], e, 1e-12)


def test_error_feedback_spectral_uses_nuclear_over_rank():
    x0, grads = RNG.standard_normal((6, 4)), _grads((6, 4))
    grads[2] = np.outer(RNG.standard_normal(6), RNG.standard_normal(4))  # a rank-1 gradient: r = 1 there
    ours, _ = _run(lo.error_feedback(lo.exact_muon(beta=0.0), lr=0.1), x0, grads)
    x, e = x0.copy(), np.zeros_like(x0)
    for g, got in zip(grads, ours):
        p = 0.1 * g + e
        u, s, vh = np.linalg.svd(p, full_matrices=False)
        r = int(np.sum(s > 1e-12 * s[0]))
        delta = s.sum() / r * (u[:, :r] @ vh[:r])
        x, e = x - delta, p - delta
        _assert_close(got, x, 1e-9)


def test_error_feedback_buffer_stays_bounded_where_the_raw_step_would_not_contract():
    # the compressor is a contraction: ||p - C(p)|| < ||p||, so e stays O(lr * ||g||) on a bounded gradient stream
    driver = lo.error_feedback(lo.sign_sgd(), lr=0.01)
    x = np.zeros(50)
    state = driver.init(x)
    rng = np.random.default_rng(3)
    for _ in range(300):
        x, state = driver.step(x, rng.standard_normal(50), state)
    assert np.linalg.norm(state["slots"][""]["error_feedback.error"]) < 0.01 * 50


# -- 3. implicit gradient transport ---------------------------------------------------------------------------------
def test_igt_is_arnold_heavy_ball_igt_with_a_sign_step():
    h, t = RNG.uniform(0.5, 2.0, 5), RNG.standard_normal(5)
    grad = lambda x: h * (x - t)  # noqa: E731
    driver = lo.igt(lo.signum(0.02, beta=0.8))
    x, state = np.zeros(5), None
    state = driver.init(x)
    xr, prev, v = np.zeros(5), np.zeros(5), np.zeros(5)
    for _ in range(10):
        x, state = driver.step(x, grad(driver.gradient_point(x, state)), state)
        y = xr + 0.8 / 0.2 * (xr - prev)  # Arnold et al. 2019: the transported point
        v = 0.8 * v + 0.2 * grad(y)
        prev, xr = xr, xr - 0.02 * np.sign(v)
        _assert_close(x, xr, 1e-12)


def test_igt_momentum_tracks_the_gradient_on_a_quadratic():
    # Arnold et al.: with gamma = beta / (1 - beta), m_k - H x_k = beta (m_{k-1} - H x_{k-1}) on a quadratic, so
    # from x_{-1} = x_0, m_{-1} = 0: m_k - H x_k = -beta^(k+1) H x_0 exactly
    h = RNG.uniform(0.5, 2.0, 4)
    beta = 0.7
    driver = lo.igt(lo.signum(0.01, beta=beta))
    x0 = RNG.standard_normal(4)
    x, state = x0.copy(), driver.init(x0)
    for k in range(8):
        xk = x
        x, state = driver.step(x, h * driver.gradient_point(x, state), state)
        _assert_close(state["slots"][""]["momentum_buffer"] - h * xk, -(beta ** (k + 1)) * h * x0, 1e-12)


# -- 4. schedule-free and NorMuon -----------------------------------------------------------------------------------
def test_schedule_free_is_defazio_with_an_lmo_base_step():
    h, t = RNG.uniform(0.5, 2.0, 6), RNG.standard_normal(6)
    grad = lambda x: h * (x - t)  # noqa: E731
    lrs = [0.05 * min(1.0, (k + 1) / 3) for k in range(8)]  # a warmup: the weights lr^2 differ
    driver = lo.schedule_free(lo.sign_sgd(weight_decay=0.1), lr=lambda k: lrs[k], beta=0.9)
    z, state = np.zeros(6), None
    state = driver.init(z)
    zr, xr, total = np.zeros(6), np.zeros(6), 0.0
    for k in range(8):
        z, state = driver.step(z, grad(driver.gradient_point(z, state)), state)
        y = 0.1 * zr + 0.9 * xr
        zr = (1 - lrs[k] * 0.1) * zr - lrs[k] * np.sign(grad(y))  # weight decay on z
        total += lrs[k] ** 2
        c = lrs[k] ** 2 / total
        xr = (1 - c) * xr + c * zr
        _assert_close(z, zr, 1e-12)
        point = driver.point.evaluation_point([z], [{"average": state["slots"][""]["point.average"]}], None)
        _assert_close(point[0], xr)


def _normuon_reference(x, grads, lr, beta, beta2, wd, eps=1e-10):
    """Li et al. 2025 (NorMuon), Algorithm 1 with Nesterov momentum as in their code, exact polar factor."""
    a, b = x.shape
    m, v, out = np.zeros_like(x), np.zeros((a, 1)), []
    for g in grads:
        m = beta * m + (1 - beta) * g
        o = _polar((1 - beta) * g + beta * m)
        v = beta2 * v + (1 - beta2) * np.mean(o * o, axis=1, keepdims=True)
        on = o / (np.sqrt(v) + eps)
        on = on * np.linalg.norm(o) / (np.linalg.norm(on) + eps)
        x = x * (1 - lr * wd) - lr * np.sqrt(max(1, a / b)) * on
        out.append(x)
    return out


@pytest.mark.parametrize("shape", [(6, 4), (3, 5)])
def test_normuon(shape):
    x0, grads = RNG.standard_normal(shape), _grads(shape)
    ours, _ = _run(lo.normuon(0.02, beta=0.9, beta2=0.8, weight_decay=0.1, method="svd"), x0, grads)
    for a, b in zip(ours, _normuon_reference(x0, grads, 0.02, 0.9, 0.8, 0.1)):
        _assert_close(a, b, 1e-10)


# -- 5. low-rank methods --------------------------------------------------------------------------------------------
def _dion_reference(x, grads, q, lr, mu, wd, orth):
    """Ahn et al. 2025, Algorithm 1 (Dion); orth: Q <- qr(R) (Orth-Dion)."""
    m_, n = x.shape
    mom, out = np.zeros_like(x), []
    for g in grads:
        bmat = mom + g
        p, _ = np.linalg.qr(bmat @ q)
        r = bmat.T @ p
        mom = bmat - (1 - mu) * p @ r.T
        q = _qr_pos(r)[0] if orth else r / (np.linalg.norm(r, axis=0, keepdims=True) + 1e-8)
        x = (1 - lr * wd) * x - lr * np.sqrt(m_ / n) * p @ q.T
        out.append(x)
    return out


@pytest.mark.parametrize("orth", [False, True])
@pytest.mark.parametrize("shape", [(8, 5), (4, 7)])
def test_dion_and_orth_dion(orth, shape):
    x0, grads = RNG.standard_normal(shape), _grads(shape)
    driver = (lo.orth_dion if orth else lo.dion)(0.05, rank=2, mu=0.9, weight_decay=0.1)
    q0 = driver.init(x0)["slots"][""]["geometry.basis"]
    ours, state = _run(driver, x0, grads)
    for a, b in zip(ours, _dion_reference(x0, grads, q0.copy(), 0.05, 0.9, 0.1, orth)):
        _assert_close(a, b, 1e-9)
    if orth:  # an exact rank-2 partial isometry
        step = (ours[-1] - (1 - 0.05 * 0.1) * ours[-2]) / (0.05 * np.sqrt(shape[0] / shape[1]))
        _assert_close(np.linalg.svd(step, compute_uv=False), [1, 1] + [0] * (min(shape) - 2), 1e-9)


def test_dion_rank_fraction_and_zero_gradient():
    driver = lo.dion(0.1, rank_fraction=0.5)
    x = np.ones((6, 4))
    state = driver.init(x)
    assert state["slots"][""]["geometry.basis"].shape == (4, 2)
    new, _ = driver.step(x, np.zeros_like(x), state)
    np.testing.assert_array_equal(new, x)
    new, _ = lo.orth_dion(0.1, rank=3).step(x, np.zeros_like(x), lo.orth_dion(0.1, rank=3).init(x))
    np.testing.assert_array_equal(new, x)


def _low_rank(shape, r, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((shape[0], r)) @ rng.standard_normal((r, shape[1]))


@pytest.mark.parametrize("sketch", ["gaussian", "norm", "uniform"])
def test_randomized_polar_is_exact_on_matrices_of_rank_r(sketch):
    # any sketch whose range is the range of G gives Q U V^T = polar(G): Muon with the exact polar factor
    shape, r = (9, 7), 3
    grads = [_low_rank(shape, r, s) for s in range(4)]
    x0 = RNG.standard_normal(shape)
    ours, _ = _run(lo.randomized_muon(0.1, rank=r, sketch=sketch, oversample=0, power_steps=0, beta=0.0,
                                      adjust_lr="none"), x0, grads)
    x = x0.copy()
    for g, got in zip(grads, ours):
        x = x - 0.1 * _polar(g, r)
        _assert_close(got, x, 1e-8)


def test_randomized_polar_full_rank_is_muon_with_exact_polar():
    x0, grads = RNG.standard_normal((6, 4)), _grads((6, 4))
    ours, _ = _run(lo.randomized_muon(0.02, rank=4, beta=0.9, weight_decay=0.1), x0, grads)
    theirs, _ = _run(lo.muon(0.02, beta=0.9, weight_decay=0.1, method="svd"), x0, grads)
    for a, b in zip(ours, theirs):
        _assert_close(a, b, 1e-9)


def test_randomized_polar_power_steps_improve_the_approximation():
    g = RNG.standard_normal((40, 30)) * np.logspace(0, -3, 30)  # decaying column scales: a decaying spectrum
    u, s, vh = np.linalg.svd(g, full_matrices=False)
    best = s[:5].sum()
    values = []
    for h in (0, 2):
        geo = RandomizedPolar(rank=5, oversample=2, power_steps=h)
        d, _ = geo.lmo_stateful(g, g, geo.init_state("w", g), 0)
        values.append(-float(np.sum(g * d)) / best)
    assert values[1] > 0.999 and values[1] >= values[0] - 1e-12, values


def test_column_sketch_never_selects_zero_columns():
    g = np.zeros((5, 8))
    g[:, [1, 4, 6]] = RNG.standard_normal((5, 3))
    geo = lo.low_rank_muon(rank=3).geometry.norm
    omega = geo.sketch_matrix(g, 3, 123)
    assert sorted(np.nonzero(omega.sum(axis=1))[0].tolist()) == [1, 4, 6]


def test_low_rank_muon_matches_muon_on_rank_r_gradients():
    # on a rank-r matrix the column range is the range, and Newton-Schulz commutes with the projection
    shape, r = (8, 6), 2
    grads = [_low_rank(shape, r, s) for s in range(3)]
    x0 = RNG.standard_normal(shape)
    ours, _ = _run(lo.low_rank_muon(0.05, rank=r, beta=0.0), x0, grads)
    theirs, _ = _run(lo.muon(0.05, beta=0.0, weight_decay=0.0), x0, grads)
    for a, b in zip(ours, theirs):
        _assert_close(a, b, 2e-3)


def test_heavy_tailed_muon_unscaled_nesterov():
    """arXiv 2605.06884 (from the issue): m <- beta m + g, c = g + beta m, X <- X - lr polar(c) (full rank here)."""
    x0, grads = RNG.standard_normal((5, 4)), _grads((5, 4))
    ours, _ = _run(lo.heavy_tailed_muon(0.03, rank=4, beta=0.9), x0, grads)
    x, m = x0.copy(), np.zeros_like(x0)
    for g, got in zip(grads, ours):
        m = 0.9 * m + g
        x = x - 0.03 * _polar(g + 0.9 * m)
        _assert_close(got, x, 1e-9)


# -- 6. manifold Muon -----------------------------------------------------------------------------------------------
def _skew(a):
    return 0.5 * (a - a.T)


def test_manifold_muon_square_stiefel_is_bernstein_closed_form():
    """Bernstein 2025: on square W (orthogonal group) the tangent LMO is -W msign(skew(W^T M))."""
    w0 = _polar(RNG.standard_normal((5, 5)))
    grads = _grads((5, 5))
    ours, _ = _run(lo.manifold_muon(0.1, manifold="stiefel", beta=0.5), w0, grads)
    w, m = w0.copy(), np.zeros_like(w0)
    for g, got in zip(grads, ours):
        m = 0.5 * m + 0.5 * g
        w = _polar(w - 0.1 * w @ _polar(_skew(w.T @ m)))
        _assert_close(got, w, 1e-9)


def test_manifold_muon_sphere_reference():
    w0 = RNG.standard_normal(6)
    w0 = 3.0 * w0 / np.linalg.norm(w0)
    grads = _grads(6)
    ours, _ = _run(lo.manifold_muon(0.2, manifold="sphere", radius=3.0, beta=0.0), w0, grads)
    w = w0.copy()
    for g, got in zip(grads, ours):
        pg = g - (g @ w) * w / 9.0
        w = w - 0.2 * pg / np.linalg.norm(pg)
        w = 3.0 * w / np.linalg.norm(w)
        _assert_close(got, w, 1e-12)


@pytest.mark.parametrize("manifold,shape,steps", [("stiefel", (6, 3), 60), ("stiefel", (3, 6), 60),
                                                  ("sphere", (6, 4), 300), ("spectral_sphere", (5, 4), 200)])
def test_manifold_muon_stays_on_the_manifold_and_solves_procrustes(manifold, shape, steps):
    target = RNG.standard_normal(shape)
    driver = lo.manifold_muon(lambda k: 0.3 * (1 - k / steps), manifold=manifold, beta=0.5, radius=2.0)
    x = RNG.standard_normal(shape)
    state = driver.init(x)
    for _ in range(steps):
        x, state = driver.step(x, x - target, state)  # f = ||x - T||^2 / 2
        if manifold == "stiefel":
            w = x if shape[0] >= shape[1] else x.T
            assert np.linalg.norm(w.T @ w - np.eye(w.shape[1])) < 1e-10
        elif manifold == "sphere":
            assert abs(np.linalg.norm(x) - 2.0) < 1e-10
        else:
            assert abs(np.linalg.norm(x, 2) - 2.0) < 1e-10
    if manifold == "stiefel":  # the orthogonal Procrustes solution
        _assert_close(x, _polar(target), 2e-2)
    elif manifold == "sphere":
        _assert_close(x, 2.0 * target / np.linalg.norm(target), 2e-2)


# -- torch: state_dict of stateful geometries and the train()/eval() swap --------------------------------------------
torch = pytest.importorskip("torch")


def _torch_run(opt, params, target, steps):
    for _ in range(steps):
        opt.zero_grad()
        for p, t in zip(params, target):
            p.grad = p.detach() - t
        opt.step()


def test_stateful_geometry_state_roundtrips_through_state_dict():
    target = [torch.randn(6, 4, dtype=torch.float64)]
    make = lambda ps: lo.LMOOptimizer(ps, lo.dion(0.05, rank=2))  # noqa: E731
    a = [torch.nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))]
    opt = make(a)
    _torch_run(opt, a, target, 3)
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=False)["state"][0]  # LMOOptimizer groups hold the driver geometry
    assert set(state) >= {"geometry.momentum", "geometry.basis", "step"} and state["geometry.basis"].shape == (4, 2)
    b = [torch.nn.Parameter(a[0].detach().clone())]
    opt_b = make(b)
    opt_b.load_state_dict(opt.state_dict())
    _torch_run(opt, a, target, 2)
    _torch_run(opt_b, b, target, 2)
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("wrap", ["igt", "schedule_free"])
def test_torch_train_eval_swap(wrap):
    driver = lo.igt(lo.signum(0.05, beta=0.8)) if wrap == "igt" else lo.schedule_free(lo.sign_sgd(0.05))
    p = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = lo.LMOOptimizer([p], driver)
    target = [torch.linspace(-1, 1, 5, dtype=torch.float64)]
    _torch_run(opt, [p], target, 4)
    y = p.detach().clone()
    state = opt.state[p]
    opt.eval()
    expected = state["iterate"] if wrap == "igt" else state["point.average"]
    assert torch.equal(p.detach(), expected) and not torch.equal(y, expected)
    with pytest.raises(RuntimeError, match="train"):
        opt.step()
    opt.train()
    assert torch.equal(p.detach(), y)
    # functional and torch agree on the gradient point
    x = {"w": torch.zeros(5, dtype=torch.float64)}
    fstate = driver.init(x)
    for _ in range(4):
        g = driver.gradient_point(x, fstate)["w"] - target[0]
        x, fstate = driver.step(x, {"w": g}, fstate)
    assert torch.equal(driver.gradient_point(x, fstate)["w"], y)
