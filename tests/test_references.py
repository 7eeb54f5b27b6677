"""Each configuration's update pinned to an independent reference written from its paper's formulas.

The references below are plain numpy, written from the papers (they do not call the driver, the geometries or
each other). Each runs the same gradient sequence as the configuration and must agree to float64 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from _doubles import PolarSVD

import lmo
import lmo.optimizers as lo

STEPS = 6


def _grads(shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(STEPS)]


def _run(driver, x0, grads):
    x, state = x0.copy(), driver.init(x0)
    out = []
    for g in grads:
        x, state = driver.step(x, g, state)
        out.append(x)
    return out


def _polar(a):
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    return u @ vh


# -- references from the papers -----------------------------------------------------------------------------------
def ref_sign_sgd(x, grads, lr, wd):
    """Bernstein et al. 2018, Algorithm 1 (with decoupled weight decay): x <- x - lr sign(g)."""
    out = []
    for g in grads:
        x = x - lr * wd * x - lr * np.sign(g)
        out.append(x)
    return out


def ref_signum(x, grads, lr, beta, wd):
    """Bernstein et al. 2018, Algorithm 3: m <- beta m + (1 - beta) g; x <- x - lr sign(m)."""
    m, out = np.zeros_like(x), []
    for g in grads:
        m = beta * m + (1 - beta) * g
        x = x - lr * (np.sign(m) + wd * x)
        out.append(x)
    return out


def ref_lion(x, grads, lr, b1, b2, wd):
    """Chen et al. 2023, Algorithm 2: c = b1 m + (1-b1) g; x <- x - lr (sign(c) + wd x); m <- b2 m + (1-b2) g."""
    m, out = np.zeros_like(x), []
    for g in grads:
        c = b1 * m + (1 - b1) * g
        x = x - lr * (np.sign(c) + wd * x)
        m = b2 * m + (1 - b2) * g
        out.append(x)
    return out


def ref_muon(x, grads, lr, mu, nesterov, wd, adjust):
    """Jordan et al. 2024 (as torch.optim.Muon): B <- mu B + (1-mu) g ... W <- W - lr wd W - lr adjust O."""
    a, b = x.shape
    ratio = {"original": np.sqrt(max(1, a / b)), "match_rms_adamw": 0.2 * np.sqrt(max(a, b))}[adjust]
    buf, out = np.zeros_like(x), []
    for g in grads:
        buf = mu * buf + (1 - mu) * g
        update = (1 - mu) * g + mu * buf if nesterov else buf
        x = x * (1 - lr * wd) - lr * ratio * _polar(update)
        out.append(x)
    return out


def ref_scion(x, grads, lr, momentum, scale, constrained):
    """Pethick et al. 2025, Algorithm (u)Scion, spectral norm with the RMS->RMS factor sqrt(d_out / d_in):
    d <- (1 - a) d + a g;  x <- (1 - lr) x - lr scale sqrt(d_out/d_in) U V^T (constrained) / without (1 - lr)."""
    d_out, d_in = x.shape
    buf, out = np.zeros_like(x), []
    for g in grads:
        buf = (1 - momentum) * buf + momentum * g
        step = scale * np.sqrt(d_out / d_in) * _polar(buf)
        x = ((1 - lr) * x if constrained else x) - lr * step
        out.append(x)
    return out


def ref_spectral_descent(x, grads, lr):
    """Carlson et al. 2015: x <- x - lr ||g||_S1 U V^T (the sharp operator of the spectral norm)."""
    out = []
    for g in grads:
        s = np.linalg.svd(g, compute_uv=False)
        x = x - lr * s.sum() * _polar(g)
        out.append(x)
    return out


# -- the comparisons ---------------------------------------------------------------------------------------------------
def _assert_same(ours, ref):
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_sign_sgd():
    x0, grads = np.ones((3, 4)), _grads((3, 4))
    _assert_same(_run(lo.sign_sgd(0.1, weight_decay=0.3), x0, grads), ref_sign_sgd(x0, grads, 0.1, 0.3))


def test_signum():
    x0, grads = np.ones(5), _grads(5)
    _assert_same(_run(lo.signum(0.1, beta=0.8, weight_decay=0.1), x0, grads), ref_signum(x0, grads, 0.1, 0.8, 0.1))


def test_lion():
    x0, grads = np.ones((2, 3)), _grads((2, 3))
    _assert_same(_run(lo.lion(0.05, betas=(0.9, 0.99), weight_decay=0.5), x0, grads),
                 ref_lion(x0, grads, 0.05, 0.9, 0.99, 0.5))


def _exact_spectral():
    """The exact polar oracle: the registry's ``spectral`` with method='svd' once it exists, else the test double."""
    if "spectral" in lmo.norms():
        return lmo.get_norm("spectral", method="svd")
    return PolarSVD()


@pytest.mark.parametrize("shape", [(6, 4), (3, 5)])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_muon(shape, nesterov, adjust):
    x0, grads = np.ones(shape), _grads(shape)
    driver = lo.muon(0.02, beta=0.95, nesterov=nesterov, weight_decay=0.1, adjust_lr=adjust, norm=_exact_spectral())
    _assert_same(_run(driver, x0, grads), ref_muon(x0, grads, 0.02, 0.95, nesterov, 0.1, adjust))


@pytest.mark.parametrize("constrained", [True, False])
def test_scion_and_uscion(constrained):
    x0, grads = np.ones((6, 4)), _grads((6, 4))
    factory = lo.scion if constrained else lo.uscion
    geometry = lo.ScionGeometry(_exact_spectral(), radius=3.0 * np.sqrt(6 / 4))
    driver = factory(0.05, beta=0.9, geometry=geometry)
    _assert_same(_run(driver, x0, grads), ref_scion(x0, grads, 0.05, 0.1, 3.0, constrained))


def test_spectral_descent():
    x0, grads = np.ones((4, 3)), _grads((4, 3))
    geometry = lo.MuonGeometry(_exact_spectral(), adjust_lr="none")
    driver = lo.Driver(geometry, lr=0.01, rule="sharp")
    _assert_same(_run(driver, x0, grads), ref_spectral_descent(x0, grads, 0.01))


@pytest.mark.skipif("spectral" not in lmo.norms(), reason="needs the registry's spectral (method='svd'), geom branch")
def test_spectral_descent_configuration():
    x0, grads = np.ones((4, 3)), _grads((4, 3))
    _assert_same(_run(lo.spectral_descent(0.01), x0, grads), ref_spectral_descent(x0, grads, 0.01))
