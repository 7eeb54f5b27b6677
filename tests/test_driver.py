"""Unit and property tests of the generic driver (lmo.optimizers.Driver)."""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import pytest
from _doubles import BACKENDS, PolarSVD, to_backend, to_numpy

import lmo
import lmo.optimizers as lo
from lmo.norm import Norm

RNG = np.random.default_rng


# -- construction ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"geometry": 3}, "geometry"),
        ({"geometry": "no_such_norm"}, "no_such_norm"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta2": -0.1}, "beta2"),
        ({"beta1": True}, "beta1"),
        ({"rule": "newton"}, "rule"),
        ({"decay": -1.0}, "decay"),
        ({"decay": float("nan")}, "decay"),
        ({"radius": 0.0}, "radius"),
        ({"lr": 0.5, "decay": 3.0}, "lr \\* decay"),
        ({"point": lambda x: x}, "point"),
        ({"grad_transform": object()}, "grad_transform"),
        ({"direction_transform": lo.GradientTransform()}, "direction_transform"),
        ({"error_feedback": 1}, "error_feedback"),
        ({"retraction": "sphere"}, "retraction"),
        ({"nonfinite": "warn"}, "nonfinite"),
        ({"batch": 1}, "batch"),
    ],
)
def test_bad_fields_rejected_naming_them(kwargs, name):
    kwargs = {"geometry": "sign", **kwargs}
    with pytest.raises(ValueError, match=name):
        lo.Driver(**kwargs)


def test_param_geometry_validation():
    with pytest.raises(ValueError, match="radius"):
        lo.ParamGeometry(lmo.get_norm("l2"), radius=-1.0)
    with pytest.raises(ValueError, match="view"):
        lo.ParamGeometry(lmo.get_norm("l2"), view=(0, 3))
    driver = lo.Driver(lambda name, shape: lo.ParamGeometry("l2", view=(5, 5)))
    with pytest.raises(ValueError, match="different number of entries"):
        driver.init({"w": np.zeros((4, 6))})
    with pytest.raises(ValueError, match="trailing"):
        lo.Driver(PolarSVD()).init({"b": np.zeros(3)})


def test_schedule_values_are_checked_at_the_step():
    driver = lo.Driver("sign", lr=lambda t: -1.0)
    x = np.ones(3)
    with pytest.raises(ValueError, match="lr\\(0\\)"):
        driver.step(x, x, driver.init(x))
    driver = lo.Driver("sign", lr=lambda t: 2.0, decay=1.0)
    with pytest.raises(ValueError, match="decay"):
        driver.step(x, x, driver.init(x))


def test_driver_is_a_frozen_comparable_value():
    a = lo.signum(lr=0.1, beta=0.9)
    assert a == lo.signum(lr=0.1, beta=0.9) and hash(a) == hash(lo.signum(lr=0.1, beta=0.9))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.lr = 0.2  # type: ignore[misc]
    assert a.replace(lr=0.2).lr == 0.2 and a.lr == 0.1


# -- trees -----------------------------------------------------------------------------------------------------------
Pair = collections.namedtuple("Pair", "a b")


@pytest.mark.parametrize(
    "tree",
    [
        np.ones(3),
        [np.ones(3), np.ones((2, 2))],
        (np.ones(3),),
        {"layer": {"w": np.ones((2, 2)), "b": np.ones(2)}, "head": [np.ones(4)]},
        Pair(np.ones(2), {"c": np.ones(1)}),
    ],
)
def test_any_tree_of_arrays(tree):
    driver = lo.signum(lr=0.1)
    state = driver.init(tree)
    new, state = driver.step(tree, tree, state)
    names, leaves, _ = lo.flatten_tree(tree)
    new_names, new_leaves, _ = lo.flatten_tree(new)
    assert type(new) is type(tree) and new_names == names and list(state["slots"]) == names
    for a, b in zip(leaves, new_leaves):
        np.testing.assert_allclose(b, a - 0.1)


def test_mismatched_grads_and_state_are_rejected():
    driver = lo.sign_sgd(0.1)
    x = {"a": np.ones(2)}
    with pytest.raises(ValueError, match="structure"):
        driver.step(x, {"b": np.ones(2)}, driver.init(x))
    with pytest.raises(ValueError, match="gradient shape"):
        driver.step(x, {"a": np.ones(3)}, driver.init(x))
    with pytest.raises(ValueError, match="driver.init"):
        driver.step(x, x, {})


def test_gradients_of_another_dtype_or_library_and_integer_parameters_are_refused_naming_them():
    """A gradient must have its parameter's dtype and array library (as ``p.grad`` does in torch: the step's kernels
    take one dtype, and a promoted momentum would change the state's dtype), and a parameter a real floating dtype
    (the torch classes refuse a complex one at the step, as torch.optim does: tests/test_checkpoints.py); each
    refusal names the parameter and its shape, and the step returns nothing (the state handed in is untouched)."""
    driver = lo.signum(0.1, beta=0.9)
    x = {"a": np.ones((2, 3), dtype=np.float32)}
    state = driver.init(x)
    slots = {(k, kk): np.array(vv, copy=True) for k, v in state["slots"].items() for kk, vv in v.items()}
    assert slots
    with pytest.raises(ValueError, match=r"parameter 'a' of shape \(2, 3\): gradient dtype float64 != dtype float32"):
        driver.step(x, {"a": np.ones((2, 3))}, state)
    assert all(np.array_equal(state["slots"][k][kk], v) for (k, kk), v in slots.items())
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"the gradient is a torch.Tensor, the parameter a numpy.ndarray"):
        driver.step(x, {"a": torch.ones(2, 3)}, state)
    ints = {"n": torch.ones(4, dtype=torch.int64)}
    with pytest.raises(ValueError, match=r"parameter 'n' of shape \(4,\) has dtype torch.int64; .* floating dtype$"):
        driver.step(ints, ints, driver.init(ints))
    for z in (np.ones((2, 2), dtype=np.complex128), torch.ones(2, 2, dtype=torch.complex64)):
        refusal = r"parameter 'z' of shape \(2, 2\) has dtype .*complex.* real floating dtype \(the geometries act on"
        with pytest.raises(ValueError, match=refusal):
            driver.step({"z": z}, {"z": z}, driver.init({"z": z}))


# -- the estimator, learning rate and decay --------------------------------------------------------------------------
_SEEN: list = []


class Recording(Norm):
    """l2 geometry that records each oracle input (test double)."""

    def norm(self, x):
        return lmo.get_norm("l2").norm(x)

    def dual_norm(self, g):
        return lmo.get_norm("l2").dual_norm(g)

    def lmo(self, g):
        _SEEN.append(np.array(g, copy=True))
        return lmo.get_norm("l2").lmo(g)


@pytest.mark.parametrize("beta1,beta2", [(0.0, 0.0), (0.9, 0.9), (0.95**2, 0.95), (0.9, 0.99), (0.5, 0.0)])
def test_estimator_is_the_two_beta_formula(beta1, beta2):
    rng = RNG(0)
    grads = [rng.standard_normal(4) for _ in range(5)]
    driver = lo.Driver(Recording(), lr=0.1, beta1=beta1, beta2=beta2)
    x = np.zeros(4)
    state = driver.init(x)
    _SEEN.clear()
    m = np.zeros(4)
    for g in grads:
        x, state = driver.step(x, g, state)
        c = beta1 * m + (1 - beta1) * g
        m = beta2 * m + (1 - beta2) * g
        np.testing.assert_allclose(_SEEN[-1], c, rtol=1e-14, atol=1e-15)
        if beta1 > 0:
            np.testing.assert_allclose(state["slots"][""]["momentum_buffer"], m, rtol=1e-14, atol=1e-15)
        else:
            assert state["slots"][""] == {}


def test_nesterov_pair_is_what_torch_muon_computes():
    torch = pytest.importorskip("torch")
    b = 0.95
    rng = RNG(1)
    driver = lo.Driver(Recording(), lr=0.1, beta1=b * b, beta2=b)
    x = np.zeros(6)
    state = driver.init(x)
    buf = torch.zeros(6, dtype=torch.float64)
    _SEEN.clear()
    for _ in range(6):
        g = rng.standard_normal(6)
        x, state = driver.step(x, g, state)
        gt = torch.from_numpy(g)
        buf.lerp_(gt, 1 - b)
        np.testing.assert_allclose(_SEEN[-1], gt.lerp(buf, b).numpy(), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(state["slots"][""]["momentum_buffer"], buf.numpy(), rtol=1e-13, atol=1e-15)


def test_learning_rate_schedule_is_zero_based_and_decay_is_decoupled():
    calls = []

    def schedule(t):
        calls.append(t)
        return 0.1 / (t + 1)

    driver = lo.Driver("sign", lr=schedule, decay=0.5)
    x = np.full(3, 2.0)
    state = driver.init(x)
    zero = np.zeros(3)
    expected = x.copy()
    for t in range(4):
        x, state = driver.step(x, zero, state)  # zero gradient: lmo(0) = 0, only the decay acts
        expected = expected * (1 - 0.1 / (t + 1) * 0.5)
    assert calls == [0, 1, 2, 3]
    np.testing.assert_allclose(x, expected, rtol=1e-15)


# -- the sharp rule --------------------------------------------------------------------------------------------------
SHARP_NORMS = [lmo.get_norm("l1"), lmo.get_norm("l2"), lmo.get_norm("sign"), lmo.get_norm("lp", p=3.0),
               lmo.get_norm("sign", ndim=2), lmo.get_norm("rms"), PolarSVD()]


@pytest.mark.parametrize("norm", SHARP_NORMS, ids=lambda n: repr(n))
@pytest.mark.parametrize("backend", BACKENDS)
def test_sharp_rule_scales_the_step_by_the_dual_norm(norm, backend):
    rng = RNG(2)
    x = to_backend(backend, rng.standard_normal((3, 4)))
    g = to_backend(backend, rng.standard_normal((3, 4)))
    kw = dict(geometry=norm, lr=0.3, radius=1.5, decay=0.1)
    x_lmo, _ = lo.Driver(**kw).step(x, g, lo.Driver(**kw).init(x))
    x_sharp, _ = lo.Driver(rule="sharp", **kw).step(x, g, lo.Driver(**kw).init(x))
    shrunk = to_numpy(x) * (1 - 0.3 * 0.1)
    dual = to_numpy(norm.dual_norm(g))
    dual = dual.reshape(dual.shape + (1,) * norm.ndim)
    np.testing.assert_allclose(to_numpy(x_sharp) - shrunk, dual * (to_numpy(x_lmo) - shrunk), rtol=1e-10,
                               atol=1e-12)
    # and the sharp step is -lr * radius * sharp(g)
    np.testing.assert_allclose(to_numpy(x_sharp) - shrunk, -0.3 * 1.5 * to_numpy(norm.sharp(g)), rtol=1e-10,
                               atol=1e-12)


def test_sharp_rule_with_a_view_scales_each_block():
    rng = RNG(3)
    x = rng.standard_normal((4, 2, 3, 3))
    g = rng.standard_normal((4, 2, 3, 3))
    geo = lo.ParamGeometry(PolarSVD(), view=(4, 18))
    new, _ = lo.Driver(geo, lr=0.2, rule="sharp").step(x, g, lo.Driver(geo).init(x))
    flat = g.reshape(4, 18)
    u, s, vh = np.linalg.svd(flat, full_matrices=False)
    np.testing.assert_allclose(new, x - 0.2 * s.sum() * (u @ vh).reshape(x.shape), rtol=1e-10, atol=1e-12)


# -- Frank-Wolfe: constrained iterates stay in the radius ball -------------------------------------------------------
def _ball_norm(driver, name, x):
    geo = driver.geometry_for(name, tuple(x.shape))
    v = x if geo.view is None else x.reshape(geo.view)
    v = np.swapaxes(v, -1, -2) if geo.transpose else v
    return float(np.max(geo.norm.norm(v))), driver.radius * geo.radius


CONSTRAINED = [
    lo.Driver("l2", lr=0.3, decay=1.0, radius=2.0, beta1=0.9, beta2=0.9),
    lo.Driver("sign", lr=0.5, decay=1.0, radius=0.5),
    lo.Driver(lmo.get_norm("lp", p=1.5), lr=1.0, decay=1.0, radius=3.0, beta1=0.8, beta2=0.99),
    lo.Driver(PolarSVD(), lr=0.7, decay=1.0, radius=1.3, beta1=0.5, beta2=0.5),
    lo.Driver(lo.ScionGeometry("RowNorm", radius=4.0), lr=0.25, decay=1.0, beta1=0.9, beta2=0.9),
    lo.Driver(lo.ScionGeometry("ColNorm", {"normalized": True}, radius=2.0), lr=0.4, decay=1.0),
    lo.Driver(lo.ScionGeometry("Sign", radius=30.0), lr=0.1, decay=1.0, beta1=0.9, beta2=0.9),
    lo.Driver(lo.ScionGeometry(PolarSVD(), radius=5.0), lr=0.9, decay=1.0),
]


@pytest.mark.parametrize("driver", CONSTRAINED, ids=range(len(CONSTRAINED)))
@pytest.mark.parametrize("seed", range(4))
def test_constrained_iterates_stay_in_the_radius_ball(driver, seed):
    rng = RNG(seed)
    x = {"w": np.zeros((5, 3)), "u": np.zeros((3, 7))}
    state = driver.init(x)
    for t in range(40):
        # heavy-tailed, drifting gradients push towards the boundary from all sides
        g = {k: rng.standard_cauchy(v.shape) + 5 * math.sin(t / 3) for k, v in x.items()}
        x, state = driver.step(x, g, state)
        for k, v in x.items():
            value, rho = _ball_norm(driver, k, v)
            assert value <= rho * (1 + 1e-12), (k, t, value, rho)
    # and the boundary is reached: the constraint binds (the test could fail)
    assert max(_ball_norm(driver, k, v)[0] / _ball_norm(driver, k, v)[1] for k, v in x.items()) > 0.5


@pytest.mark.skipif("spectral" not in lmo.norms(), reason="needs the registry's spectral geometry (geom branch)")
def test_constrained_scion_configuration_stays_in_its_ball():
    driver = lo.scion(lr=0.2, beta=0.9, geometry=lo.ScionRecipe(radius=3.0, output_radius=50.0, bias_radius=2.0))
    rng = RNG(5)
    x = {"h.weight": np.zeros((6, 4)), "h.bias": np.zeros(6), "lm_head.weight": np.zeros((3, 6))}
    state = driver.init(x)
    bound = driver.for_parameters(list(x), [v.shape for v in x.values()])  # the recipe as the plan sees it
    assert bound.geometry_for("lm_head.weight", (3, 6)).norm.name == "scion_sign"  # the last matrix: the output
    for _ in range(30):
        g = {k: rng.standard_normal(v.shape) for k, v in x.items()}
        x, state = driver.step(x, g, state)
        for k, v in x.items():
            geo = bound.geometry_for(k, v.shape)
            value, rho = _ball_norm(bound, k, v)
            assert value <= rho * (1 + geo.norm.slack + 1e-6), (k, value, rho)


# -- Muon with an exact polar factor on a diagonal embedding is SignSGD ---------------------------------------------
def _polar_norms():
    return [pytest.param(PolarSVD(), id="svd-double"), pytest.param(
        "registry",
        id="registry-svd",
        marks=pytest.mark.skipif("spectral" not in lmo.norms(), reason="needs spectral (method='svd'), geom branch"),
    )]


@pytest.mark.parametrize("polar", _polar_norms())
@pytest.mark.parametrize("shape", [(4, 4), (5, 3), (3, 6)])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_on_a_diagonal_embedding_is_signsgd(polar, shape, nesterov):
    m, n = shape
    k = min(m, n)
    rng = RNG(7)
    q, _ = np.linalg.qr(rng.standard_normal((m, m)))
    p, _ = np.linalg.qr(rng.standard_normal((n, n)))
    h = rng.uniform(0.5, 3.0, k)
    target = rng.standard_normal(k)

    def grad_f(z):  # f(z) = sum h (z - target)^2 / 2 + sum |z|^3 / 3 (a non-quadratic, separable f)
        return h * (z - target) + np.abs(z) * z

    norm = PolarSVD() if not isinstance(polar, str) else lmo.get_norm("spectral", method="svd")
    muon = lo.muon(lr=0.05, beta=0.9, nesterov=nesterov, weight_decay=0.0, adjust_lr="none", norm=norm)
    sign = lo.Driver("sign", lr=0.05, beta1=muon.beta1, beta2=muon.beta2)

    w = q.T @ np.diag(rng.standard_normal(k)) @ np.eye(k, n) @ p if m == k else \
        q.T @ np.eye(m, k) @ np.diag(rng.standard_normal(k)) @ p
    w = w + q.T @ _offdiag(rng, m, n) @ p  # off-diagonal content that F ignores and Muon must not touch
    z = np.diagonal(q @ w @ p.T).copy()
    off = q @ w @ p.T - _diag_embed(np.diagonal(q @ w @ p.T), m, n)
    ws, zs = muon.init(w), sign.init(z)
    for _ in range(15):
        gz = grad_f(np.diagonal(q @ w @ p.T))
        gw = q.T @ _diag_embed(gz, m, n) @ p  # chain rule: grad F(W) = Q^T diag(grad f) P
        w, ws = muon.step(w, gw, ws)
        z, zs = sign.step(z, grad_f(z), zs)
        inner = q @ w @ p.T
        np.testing.assert_allclose(np.diagonal(inner), z, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(inner - _diag_embed(np.diagonal(inner), m, n), off, atol=1e-9)


def _diag_embed(z, m, n):
    out = np.zeros((m, n))
    out[np.arange(len(z)), np.arange(len(z))] = z
    return out


def _offdiag(rng, m, n):
    a = rng.standard_normal((m, n))
    return a - _diag_embed(np.diagonal(a), m, n)


# -- batching --------------------------------------------------------------------------------------------------------
_CALLS: list = []


class CountingPolar(PolarSVD):
    def lmo(self, g):
        _CALLS.append(tuple(g.shape))
        return super().lmo(g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_shape_matrices_go_to_the_oracle_in_one_batch(backend):
    rng = RNG(8)
    shapes = {"a": (4, 3), "b": (4, 3), "c": (2, 4, 3), "d": (3, 4), "v": (5,)}
    x = {k: to_backend(backend, rng.standard_normal(s)) for k, s in shapes.items()}
    g = {k: to_backend(backend, rng.standard_normal(s)) for k, s in shapes.items()}

    def rule(name, shape):
        return "l2" if len(shape) == 1 else CountingPolar()

    _CALLS.clear()
    batched, _ = lo.Driver(rule, lr=0.1, rule="sharp").step(x, g, lo.Driver(rule).init(x))
    assert sorted(_CALLS) == [(3, 4), (4, 4, 3)]  # a, b and c's two matrices in one call; d alone
    _CALLS.clear()
    single, _ = lo.Driver(rule, lr=0.1, rule="sharp", batch=False).step(x, g, lo.Driver(rule).init(x))
    assert len(_CALLS) == 4
    for k in shapes:
        np.testing.assert_allclose(to_numpy(batched[k]), to_numpy(single[k]), rtol=1e-12, atol=1e-13)


class CountingSpectral(lmo.geometries.Spectral):
    """The exact spectral oracle (``lmo_factored`` is its route in a step), counting the shapes it is called on."""

    def lmo_factored(self, g, *, finite=False):
        _CALLS.append(tuple(g.shape))
        return super().lmo_factored(g, finite=finite)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("accelerator", [False, True])
def test_tall_matrices_share_the_stack_of_their_transposes_on_accelerators(backend, accelerator, monkeypatch):
    """On an accelerator, and for small matrices on a CPU, a transposable norm's tall matrices go to the oracle
    transposed, in one call with the wide ones (an MLP's W_in and W_out); larger ones on a CPU are stacked with each
    other in their own layout (a transposed write is a strided pass). Either way the step is the one each matrix
    gets alone. A shape-dependent scale is not transposable. (``CountingSpectral.lmo_factored`` takes no
    workspace: the plan passes none.)"""
    from lmo.optimizers import step as step_module

    monkeypatch.setattr(step_module, "CPU_TRANSPOSE_LIMIT", 16)  # the 6 x 3 matrices are "large"
    if accelerator:
        monkeypatch.setattr(step_module, "_on_cpu", lambda x: False)
    rng = RNG(12)
    shapes = {"w_in": (6, 3), "w_out": (3, 6), "w_in2": (6, 3), "square": (3, 3)}
    x = {k: to_backend(backend, rng.standard_normal(s)) for k, s in shapes.items()}
    g = {k: to_backend(backend, rng.standard_normal(s)) for k, s in shapes.items()}
    assert CountingSpectral().transposable and not CountingSpectral(scale="rms").transposable
    separate = [(2, 6, 3), (3, 3), (3, 6)]
    for scale, calls in (("none", [(3, 3), (3, 3, 6)] if accelerator else separate), ("rms", separate)):
        driver = lo.Driver(CountingSpectral(scale=scale), lr=0.1, decay=0.1)
        _CALLS.clear()
        batched, _ = driver.step(x, g, driver.init(x))
        assert sorted(_CALLS) == calls, scale
        single, _ = driver.replace(batch=False).step(x, g, driver.init(x))
        for k in shapes:
            np.testing.assert_allclose(to_numpy(batched[k]), to_numpy(single[k]), rtol=1e-12, atol=1e-13)


def test_views_and_transposes_reach_the_oracle_as_declared():
    rng = RNG(9)
    x = np.zeros((4, 2, 3, 3))
    g = rng.standard_normal((4, 2, 3, 3))
    conv = lo.ParamGeometry(PolarSVD(), radius=0.5, view=(4, 18))
    new, _ = lo.Driver(conv, lr=1.0).step(x, g, lo.Driver(conv).init(x))
    u, _, vh = np.linalg.svd(g.reshape(4, 18), full_matrices=False)
    np.testing.assert_allclose(new, -0.5 * (u @ vh).reshape(x.shape), atol=1e-12)
    # transpose: a row norm acting on columns
    g2 = rng.standard_normal((5, 3))
    cols = lo.ParamGeometry("l2", transpose=True)
    new, _ = lo.Driver(cols, lr=1.0).step(np.zeros((5, 3)), g2, lo.Driver(cols).init(np.zeros((5, 3))))
    np.testing.assert_allclose(new, -g2 / np.linalg.norm(g2, axis=0, keepdims=True), atol=1e-14)


# -- non-finite gradients --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_policy(backend):
    x = {"ok": to_backend(backend, np.ones(3)), "bad": to_backend(backend, np.ones(2))}
    g = {"ok": to_backend(backend, np.ones(3)), "bad": to_backend(backend, np.array([1.0, np.nan]))}
    driver = lo.signum(lr=0.1)
    state = driver.init(x)
    with pytest.raises(lo.NonFiniteGradientError, match="'bad'") as info:
        driver.step(x, g, state)
    assert isinstance(info.value, ValueError)
    skip = driver.replace(nonfinite="skip")
    new_x, new_state = skip.step(x, g, state)
    assert new_state["step"] == 0
    for k in x:
        np.testing.assert_array_equal(to_numpy(new_x[k]), to_numpy(x[k]))
    g["bad"] = to_backend(backend, np.array([np.inf, 1.0]))
    with pytest.raises(lo.NonFiniteGradientError, match="'bad'"):
        driver.step(x, g, state)
    g["bad"] = to_backend(backend, np.array([np.nan, 1.0]))
    ignoring = lo.Driver("sign", lr=0.1, nonfinite="ignore")
    with np.errstate(invalid="ignore", divide="ignore"):
        new_x, _ = ignoring.step(x, g, ignoring.init(x))  # no check: sign(NaN) is NaN, and it propagates
    assert not np.isfinite(to_numpy(new_x["bad"])).all()
    assert np.isfinite(to_numpy(new_x["ok"])).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unchecked_steps_keep_the_oracles_guard(backend):
    """The oracle skips its non-finite guard only where the step proved its input finite (Plan.finite); with
    ``nonfinite="ignore"`` a NaN gradient of a stacked spectral batch makes that matrix NaN, never a zero step."""
    from lmo.optimizers.step import build_plan

    rng = np.random.default_rng(3)
    x = {f"w{i}": to_backend(backend, rng.standard_normal((4, 4))) for i in range(3)}
    g = {k: to_backend(backend, rng.standard_normal((4, 4))) for k in x}
    muon = lo.muon(lr=0.1)
    assert build_plan(muon, list(x), list(x.values())).finite
    ignoring = muon.replace(nonfinite="ignore")
    assert not build_plan(ignoring, list(x), list(x.values())).finite
    bad = np.array(to_numpy(g["w1"]), dtype=np.float64)
    bad[2, 2] = np.nan
    g["w1"] = to_backend(backend, bad)
    with np.errstate(invalid="ignore"):
        new_x, _ = ignoring.step(x, g, ignoring.init(x))
    assert np.isnan(to_numpy(new_x["w1"])).all()
    assert np.isfinite(to_numpy(new_x["w0"])).all() and np.isfinite(to_numpy(new_x["w2"])).all()


# -- hooks -----------------------------------------------------------------------------------------------------------
class ClipGlobal(lo.GradientTransform):
    def __init__(self, c):
        self.c = c

    def __call__(self, grads, slots, params, info):
        total = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
        scale = min(1.0, self.c / total)
        return [g * scale for g in grads], slots


class Halve(lo.DirectionTransform):
    def init(self, name, param):
        return {"count": np.zeros(())}

    def __call__(self, directions, slots, params, info):
        return [0.5 * d for d in directions], [{"count": s["count"] + 1} for s in slots]


class EF(lo.ErrorFeedback):
    """EF-SignSGD (Karimireddy et al. 2019) in the driver's terms: p = lr c + e, step -lr sign(p), e <- p + u."""

    def init(self, name, param):
        return {"e": np.zeros_like(param)}

    def before(self, estimates, slots, info):
        return [info.lr * c + s["e"] for c, s in zip(estimates, slots)]

    def after(self, inputs, updates, slots, info):
        return [{"e": p + u} for p, u in zip(inputs, updates)]


class UnitSphere(lo.Retraction):
    def __call__(self, params, geometries, info):
        return [x / np.linalg.norm(x) for x in params]


class Extrapolate(lo.GradientPoint):
    """Gradient at y = x + a (x - x_prev)."""

    def __init__(self, a):
        self.a = a

    def init(self, name, param):
        return {"prev": np.array(param, copy=True), "cur": np.array(param, copy=True)}

    def point(self, params, slots, info):
        return [x + self.a * (x - s["prev"]) for x, s in zip(params, slots)]

    def update(self, params, slots, info):
        return [{"prev": s["cur"], "cur": x} for x, s in zip(params, slots)]


def test_gradient_transform_hook_runs_before_the_estimator():
    rng = RNG(10)
    grads = [rng.standard_normal(4) * 10 for _ in range(4)]
    hooked = lo.Driver("l2", lr=0.1, beta1=0.9, beta2=0.9, grad_transform=ClipGlobal(1.0))
    plain = lo.Driver("l2", lr=0.1, beta1=0.9, beta2=0.9)
    x1 = x2 = np.zeros(4)
    s1, s2 = hooked.init(x1), plain.init(x2)
    for g in grads:
        x1, s1 = hooked.step(x1, g, s1)
        x2, s2 = plain.step(x2, g * min(1, 1 / np.linalg.norm(g)), s2)
    np.testing.assert_allclose(x1, x2, rtol=1e-14)
    np.testing.assert_allclose(s1["slots"][""]["momentum_buffer"], s2["slots"][""]["momentum_buffer"], rtol=1e-14)


def test_direction_transform_hook_runs_after_the_oracle_with_state():
    rng = RNG(11)
    x = {"w": rng.standard_normal((3, 3))}
    g = {"w": rng.standard_normal((3, 3))}
    hooked = lo.Driver("sign", lr=0.2, direction_transform=Halve())
    state = hooked.init(x)
    assert set(state["slots"]["w"]) == {"direction_transform.count"}
    new, state = hooked.step(x, g, state)
    new, state = hooked.step(new, g, state)
    ref, _ = lo.Driver("sign", lr=0.2, radius=0.5).step(x, g, lo.Driver("sign").init(x))
    ref, _ = lo.Driver("sign", lr=0.2, radius=0.5).step(ref, g, lo.Driver("sign").init(x))
    np.testing.assert_allclose(new["w"], ref["w"])
    assert float(state["slots"]["w"]["direction_transform.count"]) == 2


def test_error_feedback_hook_is_ef_signsgd():
    rng = RNG(12)
    grads = [rng.standard_normal(5) for _ in range(6)]
    driver = lo.Driver(lmo.get_norm("l1"), lr=0.1, error_feedback=EF(), rule="sharp")
    x = np.zeros(5)
    state = driver.init(x)
    # reference: EF with the scaled-sign... here the l1-sharp compressor C(p) = ||p||_inf e_argmax sign (top-1)
    xr, e = np.zeros(5), np.zeros(5)
    for g in grads:
        x, state = driver.step(x, g, state)
        p = 0.1 * g + e
        i = int(np.argmax(np.abs(p)))
        delta = np.zeros(5)
        delta[i] = 0.1 * np.abs(p[i]) * np.sign(p[i])  # lr * ||p||_* * (-lmo(p))
        xr, e = xr - delta, p - delta
        np.testing.assert_allclose(x, xr, atol=1e-14)
        np.testing.assert_allclose(state["slots"][""]["error_feedback.e"], e, atol=1e-14)


def test_retraction_hook_runs_after_the_step():
    driver = lo.Driver("l2", lr=0.3, retraction=UnitSphere())
    x = np.array([1.0, 0.0, 0.0])
    state = driver.init(x)
    for g in np.random.default_rng(13).standard_normal((5, 3)):
        x, state = driver.step(x, g, state)
        assert abs(np.linalg.norm(x) - 1) < 1e-14


def test_gradient_point_hook():
    hook = Extrapolate(0.5)
    driver = lo.Driver("l2", lr=0.1, point=hook)
    x = np.array([1.0, 2.0])
    state = driver.init(x)
    np.testing.assert_array_equal(driver.gradient_point(x, state), x)  # prev = x at init
    x1, state = driver.step(x, np.array([0.0, -1.0]), state)  # l2 step of length 0.1 along +e2
    np.testing.assert_allclose(x1, [1.0, 2.1])
    np.testing.assert_allclose(driver.gradient_point(x1, state), [1.0, 2.15])
    assert lo.Driver("l2").gradient_point(x, lo.Driver("l2").init(x)) is x


def test_hook_that_breaks_alignment_is_reported():
    class Bad(lo.DirectionTransform):
        def __call__(self, directions, slots, params, info):
            return directions, slots[:-1]

    driver = lo.Driver("sign", direction_transform=Bad())
    x = [np.ones(2), np.ones(2)]
    with pytest.raises(ValueError, match="direction_transform hook returned 1"):
        driver.step(x, x, driver.init(x))


# -- the in-place step (torch) ---------------------------------------------------------------------------------------
def _bits(t):
    """A tensor's bit pattern (so that -0.0 and 0.0, or two NaNs, compare as what they are)."""
    import torch

    return t.contiguous().view({torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
                                torch.float16: torch.int16}[t.dtype])


def _run_apply(driver, names, inits, grads_seq, *, inplace, executor=None):
    params = [x.clone() for x in inits]
    slots = [driver.init_slots(n, x) for n, x in zip(names, params)]
    for t, grads in enumerate(grads_seq):
        params, slots, _ = driver.apply(names, params, grads, slots, t, inplace=inplace, executor=executor)
    return params, slots


def _one_pass(plan, batches, estimates, params, slots, step, stacked=None):
    """An executor that evaluates every batch in one pass, stacking itself (as the distributed executor does)."""
    from lmo.optimizers.step import evaluate

    return evaluate(plan, batches, estimates, params, slots, step)


def _torch_problem(shapes, steps=4, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    inits = [torch.randn(s, generator=gen) for s in shapes]
    return inits, [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]


_MATS = [(6, 4), (6, 4), (3, 5), (2, 3, 3)]
_ALL = _MATS + [(5,), (5,)]
INPLACE_DRIVERS = {  # (driver, parameter shapes)
    "muon nesterov, decay": (lambda: lo.muon(lr=0.05, weight_decay=0.1, norm=PolarSVD()), _MATS),
    "muon plain (c is m)": (lambda: lo.muon(lr=0.05, nesterov=False, weight_decay=0.1, norm=PolarSVD()), _MATS),
    "lion, decay": (lambda: lo.lion(0.05, weight_decay=0.1), _ALL),
    "sharp sign (array factors)": (lambda: lo.Driver("sign", lr=0.05, beta1=0.5, beta2=0.5, rule="sharp", decay=0.1),
                                   _ALL),
    "beta2 = 0 (m' = g)": (lambda: lo.Driver("l2", lr=0.05, beta1=0.5, beta2=0.0), _ALL),
    "no momentum": (lambda: lo.Driver(PolarSVD(), lr=0.05, decay=0.5), _MATS),
    "matrices and vectors, batched": (
        lambda: lo.Driver(lambda n, s: "rms" if len(s) == 1 else PolarSVD(), lr=0.05, beta1=0.9, beta2=0.9,
                          batch=True), _ALL),
}


@pytest.mark.parametrize("make,shapes", INPLACE_DRIVERS.values(), ids=INPLACE_DRIVERS.keys())
def test_inplace_apply_is_bitwise_the_pure_step_and_writes_into_what_it_is_handed(make, shapes):
    torch = pytest.importorskip("torch")
    driver = make()
    names = [f"p{i}" for i in range(len(shapes))]
    inits, grads_seq = _torch_problem(shapes)
    pure, pure_slots = _run_apply(driver, names, inits, grads_seq, inplace=False)
    one_pass, _ = _run_apply(driver, names, inits, grads_seq, inplace=False, executor=_one_pass)
    params = [x.clone() for x in inits]
    slots = [driver.init_slots(n, x) for n, x in zip(names, params)]
    for t, grads in enumerate(grads_seq):
        kept = [g.clone() for g in grads]
        moments = [s.get("momentum_buffer") for s in slots]
        new, slots, taken = driver.apply(names, params, grads, slots, t, inplace=True)
        assert taken and all(y is x for y, x in zip(new, params))  # the parameters handed in, stepped
        assert all(m is None or s["momentum_buffer"] is m for s, m in zip(slots, moments))
        assert all(torch.equal(_bits(g), _bits(k)) for g, k in zip(grads, kept))  # gradients are only read
    for a, b, c in zip(params, pure, one_pass):
        assert torch.equal(_bits(a), _bits(b)) and torch.equal(_bits(b), _bits(c))
    for s, r in zip(slots, pure_slots):
        assert s.keys() == r.keys() and all(torch.equal(_bits(s[k]), _bits(r[k])) for k in s)


def test_inplace_apply_with_a_hook_is_the_pure_step_and_leaves_its_inputs_alone():
    torch = pytest.importorskip("torch")
    names = ["a", "b"]
    inits, grads_seq = _torch_problem([(6, 4), (5,)])
    base = lo.Driver("sign", lr=0.05, beta1=0.9, beta2=0.9, decay=0.1)
    for driver in (lo.error_feedback(base), lo.schedule_free(base), base.replace(retraction=UnitSphere())):
        pure, pure_slots = _run_apply(driver, names, inits, grads_seq, inplace=False)
        params = [x.clone() for x in inits]
        slots = [driver.init_slots(n, x) for n, x in zip(names, params)]
        for t, grads in enumerate(grads_seq):
            before = [x.clone() for x in params]
            moments = [s["momentum_buffer"].clone() for s in slots]
            new, new_slots, _ = driver.apply(names, params, grads, slots, t, inplace=True)
            for x, x0, s, m0 in zip(params, before, slots, moments):  # the pure step: nothing handed in changed
                assert torch.equal(_bits(x), _bits(x0)) and torch.equal(_bits(s["momentum_buffer"]), _bits(m0))
            params, slots = new, new_slots
        for a, b in zip(params, pure):
            assert torch.equal(_bits(a), _bits(b))
        for s, r in zip(slots, pure_slots):
            assert all(torch.equal(_bits(s[k]), _bits(r[k])) for k in s)


def test_inplace_nonfinite_skip_changes_nothing():
    torch = pytest.importorskip("torch")
    driver = lo.muon(lr=0.05, weight_decay=0.1, norm=PolarSVD(), nonfinite="skip")
    inits, (grads,) = _torch_problem([(6, 4), (3, 5)], steps=1)
    params = [x.clone() for x in inits]
    slots = [driver.init_slots(n, x) for n, x in zip("ab", params)]
    slots = [{**s, "momentum_buffer": torch.randn(s["momentum_buffer"].shape)} for s in slots]
    moments = [s["momentum_buffer"].clone() for s in slots]
    grads[1][0, 0] = float("nan")
    new, new_slots, taken = driver.apply(["a", "b"], params, grads, slots, 0, inplace=True)
    assert not taken
    for x, x0, s, m0 in zip(new, inits, new_slots, moments):
        assert torch.equal(_bits(x), _bits(x0)) and torch.equal(_bits(s["momentum_buffer"]), _bits(m0))


def test_inplace_apply_on_numpy_is_the_pure_step():
    driver = lo.lion(0.05, weight_decay=0.1)
    x, g = {"w": np.ones((3, 2))}, {"w": np.full((3, 2), 0.5)}
    state = driver.init(x)
    slots = [state["slots"]["w"]]
    new, new_slots, _ = driver.apply(["w"], [x["w"]], [g["w"]], slots, 0, inplace=True)
    np.testing.assert_array_equal(x["w"], np.ones((3, 2)))  # untouched: numpy has no in-place path
    np.testing.assert_array_equal(slots[0]["momentum_buffer"], np.zeros((3, 2)))
    ref, _ = driver.step(x, g, state)
    np.testing.assert_array_equal(new[0], ref["w"])


def test_foreach_inplace_needs_torch_tensors():
    from lmo.optimizers import _foreach

    xs, ds = [np.ones(3)], [np.ones(3)]
    with pytest.raises(ValueError, match="inplace=True needs torch tensors"):
        _foreach.estimator(xs, ds, 0.5, 0.5, inplace=True)
    with pytest.raises(ValueError, match="inplace=True needs torch tensors"):
        _foreach.shrink_add_scaled(xs, 0.9, ds, [0.1], inplace=True)
    with pytest.raises(ValueError, match="inplace=True needs torch tensors"):
        _foreach.shrink_add(xs, 0.9, ds, inplace=True)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_the_update_is_torchs_scalar_arithmetic_bit_for_bit(dtype):
    """``shrink_add_scaled`` (``x' = shrink x + a d``, in place and pure) gives the bits of torch's own
    ``x.mul_(shrink).add_(d, alpha=a)`` with Python numbers, whatever form it hands the factor to torch in (a 0-d
    tensor on a CPU: torch's in-place ``_foreach_mul_`` with a number rounds it to a bfloat16/float16 list's dtype
    first, which this test caught); and ``increment`` adds one to every step counter."""
    torch = pytest.importorskip("torch")
    from lmo.optimizers import _foreach

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(9)
    xs = [torch.randn(s, generator=gen).to(dt) for s in [(7, 5), (5, 7), (3,)]]
    ds = [torch.randn(x.shape, generator=gen).to(torch.bfloat16) for x in xs]
    shrink, a = 1 - 0.0213 * 0.1, -0.0371
    expected = [x.clone().mul_(shrink).add_(d, alpha=a) for x, d in zip(xs, ds)]
    pure = _foreach.shrink_add_scaled(xs, shrink, ds, [a] * 3)
    inplace = _foreach.shrink_add_scaled([x.clone() for x in xs], shrink, ds, [a] * 3, inplace=True)
    for e, p, q in zip(expected, pure, inplace):
        assert torch.equal(_bits(e), _bits(p)) and torch.equal(_bits(e), _bits(q))
    counters = [torch.zeros(()), torch.full((), 4.0, dtype=torch.float64), torch.zeros(1)]
    _foreach.increment(counters)
    assert [float(c) for c in counters] == [1.0, 5.0, 1.0]
    assert [c.dtype for c in counters] == [torch.float32, torch.float64, torch.float32]


def test_inplace_is_decided_per_part_so_a_mixed_dtype_part_alone_is_pure():
    torch = pytest.importorskip("torch")
    driver = lo.Driver(lambda n, s: "sign" if len(s) == 1 else PolarSVD(), lr=0.05, beta1=0.9, beta2=0.9)
    names = ["w", "b32", "b64"]
    gen = torch.Generator().manual_seed(6)
    params = [torch.randn(6, 4, generator=gen), torch.randn(5, generator=gen),
              torch.randn(3, generator=gen, dtype=torch.float64)]
    grads = [torch.randn_like(x) for x in params]
    inits = [x.clone() for x in params]
    slots = [driver.init_slots(n, x) for n, x in zip(names, params)]
    pure, _, _ = driver.apply(names, inits, grads, [dict(s) for s in slots], 0)
    new, _, _ = driver.apply(names, params, grads, slots, 0, inplace=True)
    assert new[0] is params[0]  # the matrix's part: one dtype, stepped in place
    assert new[1] is not params[1] and new[2] is not params[2]  # the vectors' part mixes dtypes: pure
    assert torch.equal(params[1], inits[1]) and torch.equal(params[2], inits[2])
    for a, b in zip(new, pure):
        assert torch.equal(a, b)


def test_all_finite_flags_every_non_finite_entry_and_no_large_finite_one():
    """The step's one finiteness test (:func:`lmo.optimizers._foreach.all_finite`): NaN, +inf and -inf anywhere in any
    tensor of a mixed-dtype list give False; large finite tensors of every dtype, float16 ones whose sum exceeds
    float16's range included, give True (no false alarm on ordinary values)."""
    torch = pytest.importorskip("torch")
    from lmo.optimizers import _foreach

    def tensors():
        return [torch.ones(300, 400, dtype=torch.float16), torch.full((1000, 100), 3e4, dtype=torch.bfloat16),
                torch.randn(7, 5, dtype=torch.float64), torch.randn(64, 64)]

    assert bool(_foreach.all_finite(tensors()))
    for which in range(4):
        for bad in (float("nan"), float("inf"), -float("inf")):
            ts = tensors()
            ts[which].view(-1)[ts[which].numel() // 2] = bad
            assert not bool(_foreach.all_finite(ts)), (which, bad)
    assert _foreach.all_finite([]) is None
