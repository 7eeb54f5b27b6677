"""Matrix configurations on parameter trees with vectors and scalars (numpy, array-api-strict, torch): the one
default vector geometry, rules for what is not a matrix, and the message for a refused parameter."""

from __future__ import annotations

import numpy as np
import pytest
from _doubles import BACKENDS, to_backend, to_numpy

import lmo
import lmo.optimizers as lo

# the matrix configurations and their step of a vector from zero (first step, estimator c = (1 - beta1) g):
# the lmo rule with the RMS ball moves it by -lr g / rms(g); spectral descent's sharp step in the l2 ball by -lr c
MATRIX_CONFIGS = {
    "muon": "rms", "exact_muon": "rms", "normuon": "rms", "dion": "rms", "orth_dion": "rms",
    "low_rank_muon": "rms", "randomized_muon": "rms", "heavy_tailed_muon": "rms", "spectral_descent": "l2",
}

pytestmark = pytest.mark.skipif("spectral" not in lmo.norms(), reason="needs the spectral geometry")


def _tree(backend: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((6, 4)), "b": np.zeros(5), "s": np.zeros(())}
    grads = {"w": rng.standard_normal((6, 4)), "b": rng.standard_normal(5), "s": np.array(-0.7)}
    return ({k: to_backend(backend, v) for k, v in params.items()},
            {k: to_backend(backend, v) for k, v in grads.items()}, grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(MATRIX_CONFIGS))
def test_matrix_configurations_train_vectors_and_scalars_by_default(name, backend):
    lr = 0.1
    driver = getattr(lo, name)(lr)
    params, grads, raw = _tree(backend)
    state = driver.init(params)
    new, state = driver.step(params, grads, state)
    b, s, g = to_numpy(new["b"]), to_numpy(new["s"]), raw["b"]
    if MATRIX_CONFIGS[name] == "rms":
        np.testing.assert_allclose(b, -lr * g / np.sqrt(np.mean(g**2)), rtol=1e-6)
        np.testing.assert_allclose(s, lr * 1.0, rtol=1e-6)  # a scalar is a vector of one entry: -lr sign(g)
    else:  # the l2 ball's sharp step is SGD on the estimator c = g (beta = 0)
        np.testing.assert_allclose(b, -lr * g, rtol=1e-6)
        np.testing.assert_allclose(s, lr * 0.7, rtol=1e-6)
    assert np.all(np.isfinite(to_numpy(new["w"]))) and not np.allclose(to_numpy(new["w"]), to_numpy(params["w"]))
    again, _ = driver.step(new, grads, state)  # and the state carries on
    assert to_numpy(again["b"]).shape == (5,) and to_numpy(again["s"]).shape == ()


@pytest.mark.parametrize("name", sorted(MATRIX_CONFIGS))
def test_a_rule_for_what_is_not_a_matrix(name):
    def rule(param_name, shape):
        return lo.ParamGeometry(MATRIX_CONFIGS[name], radius=0.5 if param_name == "b" else 2.0)

    params, grads, _ = _tree("numpy")
    default = getattr(lo, name)(0.1)
    driver = getattr(lo, name)(0.1, vectors=rule)
    by_default, _ = default.step(params, grads, default.init(params))
    new, _ = driver.step(params, grads, driver.init(params))
    np.testing.assert_allclose(new["b"], 0.5 * by_default["b"], rtol=1e-12)  # each parameter its own radius
    np.testing.assert_allclose(new["s"], 2.0 * by_default["s"], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(MATRIX_CONFIGS))
def test_refused_vectors_are_told_the_rule_idiom(name):
    driver = getattr(lo, name)(0.1, vectors=None)
    params, _, _ = _tree("numpy")
    with pytest.raises(ValueError) as err:
        driver.init(params)
    message = str(err.value)
    assert "'b'" in message and "(5,)" in message and f"{name}(..., vectors=" in message
    assert "lambda name, shape" in message and "torch" not in message and "adamw" not in message.lower()


def test_vectors_must_be_a_geometry_or_a_rule():
    with pytest.raises(ValueError, match="vectors"):
        lo.muon(vectors=3.0)
    with pytest.raises(ValueError, match="vectors"):
        lo.dion(vectors=object())
