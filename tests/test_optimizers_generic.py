"""The generic optimizer suite: every registered configuration x backend, and every torch adapter class, through
the same tests. Configurations declare their inputs beside them (``@configuration(cases=..., bad=...)`` in
``lmo.optimizers.configs``; ``inputs = OptimizerInputs(...)`` on the torch classes): there is no list to edit here.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from _doubles import BACKENDS, linear_decay, quadratic, to_backend, to_numpy

import lmo.optimizers as lo

CONFIGS = lo.configurations()
STEPS = 120


def _config_cases():
    for name, info in CONFIGS.items():
        for i, case in enumerate(info.cases):
            yield pytest.param(info, case, id=f"{name}-{i}")


def _config_bad():
    for name, info in CONFIGS.items():
        for i, (kwargs, param) in enumerate(info.bad):
            yield pytest.param(info, kwargs, param, id=f"{name}-{i}")


def _skip_missing(info):
    missing = info.missing()
    if missing:
        pytest.skip(f"{info.name} needs the geometry {', '.join(missing)}, which is not registered yet")


def _as_given(driver, grads):
    """The gradients as the driver takes them: per-example (a batch of one example) for a private driver."""
    if not driver.per_example:
        return grads
    from lmo.backend import namespace

    return {k: namespace(v).expand_dims(v, axis=0) for k, v in grads.items()}


def _skip_private(driver):
    if driver.per_example:
        pytest.skip("LMOOptimizer refuses private drivers; DPOptimizer runs them (tests/test_privacy.py)")


def _params(info, backend, dtype="float64", seed=1):
    rng = np.random.default_rng(seed)
    return {k: to_backend(backend, 0.1 * rng.standard_normal(s), dtype) for k, s in info.shapes.items()}


def test_registry_covers_every_public_configuration():
    # every factory exported by lmo.optimizers that returns a Driver is registered (so it is in this suite)
    import inspect

    def returns_driver(obj):
        return inspect.isfunction(obj) and inspect.signature(obj).return_annotation in ("Driver", lo.Driver)

    exported = {n for n in lo.__all__ if returns_driver(getattr(lo, n))}
    assert exported <= set(CONFIGS), exported - set(CONFIGS)
    assert {"sign_sgd", "signum", "lion", "muon", "scion", "uscion"} <= set(CONFIGS)


# -- functional: every configuration x backend -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("info,case", list(_config_cases()))
def test_converges_on_a_quadratic(info, case, backend):
    _skip_missing(info)
    case = dict(case)
    driver = info.factory(**{**case, "lr": linear_decay(case["lr"], STEPS)})
    f, grad, _ = quadratic(info.shapes)
    x = _params(info, backend)
    state = driver.init(x)
    f0 = f(x)
    for _ in range(STEPS):  # gradients where the driver asks for them (IGT, schedule-free: not at x)
        x, state = driver.step(x, _as_given(driver, grad(driver.gradient_point(x, state))), state)
    assert state["step"] == STEPS
    assert f(x) < 0.05 * f0, (f0, f(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("info,case", list(_config_cases()))
def test_state_stable_dtype_and_namespace_kept_inputs_untouched(info, case, backend):
    _skip_missing(info)
    driver = info.factory(**case)
    _, grad, _ = quadratic(info.shapes)
    x = _params(info, backend, dtype="float32")
    state = driver.init(x)
    layout = {n: {k: (tuple(v.shape), str(v.dtype)) for k, v in s.items()} for n, s in state["slots"].items()}
    for _ in range(3):
        g = _as_given(driver, grad(x))
        snapshot = ({k: to_numpy(v).copy() for k, v in x.items()}, {k: to_numpy(v).copy() for k, v in g.items()},
                    {n: {k: to_numpy(v).copy() for k, v in s.items()} for n, s in state["slots"].items()})
        new_x, new_state = driver.step(x, g, state)
        # pure: the inputs are unchanged
        for k in x:
            np.testing.assert_array_equal(to_numpy(x[k]), snapshot[0][k])
            np.testing.assert_array_equal(to_numpy(g[k]), snapshot[1][k])
        for n, s in state["slots"].items():
            for k, v in s.items():
                np.testing.assert_array_equal(to_numpy(v), snapshot[2][n][k])
        # dtype, shape and namespace kept; state layout stable
        for k in x:
            assert type(new_x[k]) is type(x[k]) and new_x[k].dtype == x[k].dtype and new_x[k].shape == x[k].shape
        assert {n: {k: (tuple(v.shape), str(v.dtype)) for k, v in s.items()}
                for n, s in new_state["slots"].items()} == layout
        assert all(type(v) is type(x[n]) for n, s in new_state["slots"].items() for v in s.values())
        x, state = new_x, new_state
    assert state["step"] == 3


@pytest.mark.parametrize("info,kwargs,param", list(_config_bad()))
def test_bad_hyperparameters_rejected_at_construction(info, kwargs, param):
    _skip_missing(info)
    with pytest.raises(ValueError, match=param):
        info.factory(**kwargs)


# -- torch: every configuration through LMOOptimizer, every adapter class --------------------------------------------
torch = pytest.importorskip("torch")


def _torch_params(shapes, seed=1):
    rng = np.random.default_rng(seed)
    return [torch.nn.Parameter(torch.from_numpy(0.1 * rng.standard_normal(s))) for s in shapes.values()]


def _run(opt, params, grad_fn, steps):
    for _ in range(steps):
        opt.zero_grad()
        for p, g in zip(params, grad_fn(params)):
            p.grad = g
        opt.step()


def _grad_fn(shapes):
    _, grad, _ = quadratic(shapes)
    names = list(shapes)

    def fn(params):
        g = grad(dict(zip(names, [p.detach() for p in params])))
        return [g[n].clone() for n in names]

    return fn


def _assert_roundtrip_bitwise(make_opt, shapes, steps=3):
    """``steps`` steps, save, load into fresh params and optimizer, ``steps`` more == ``2 steps`` uninterrupted."""
    grad_fn = _grad_fn(shapes)
    ref = _torch_params(shapes)
    opt = make_opt(ref)
    _run(opt, ref, grad_fn, 2 * steps)

    first = _torch_params(shapes)
    opt1 = make_opt(first)
    _run(opt1, first, grad_fn, steps)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in first], "opt": opt1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    second = [torch.nn.Parameter(t) for t in saved["params"]]
    opt2 = make_opt(second)
    opt2.load_state_dict(saved["opt"])
    _run(opt2, second, grad_fn, steps)
    for a, b in zip(ref, second):
        assert torch.equal(a, b), float((a - b).abs().max())


@pytest.mark.parametrize("info,case", list(_config_cases()))
def test_lmo_optimizer_state_dict_roundtrip_is_bitwise(info, case):
    _skip_missing(info)
    driver = info.factory(**case)
    _skip_private(driver)
    _assert_roundtrip_bitwise(lambda ps: lo.LMOOptimizer(ps, driver), info.shapes)


@pytest.mark.parametrize("info,case", list(_config_cases()))
def test_lmo_optimizer_matches_functional_driver(info, case):
    _skip_missing(info)
    driver = info.factory(**case)
    _skip_private(driver)
    names = list(info.shapes)
    params = _torch_params(info.shapes)
    opt = lo.LMOOptimizer([{"params": params, "param_names": names}], driver)
    x = {n: p.detach().clone() for n, p in zip(names, params)}
    state = driver.init(x)
    grad_fn = _grad_fn(info.shapes)
    for _ in range(3):
        grads = grad_fn(params)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        x, state = driver.step(x, dict(zip(names, grads)), state)
    y = driver.gradient_point(x, state)  # torch parameters hold the gradient point (x itself without a point hook)
    for n, p in zip(names, params):
        assert torch.equal(p.detach(), y[n])


@pytest.mark.parametrize("info,case", list(_config_cases()))
def test_lmo_optimizer_group_overrides(info, case):
    _skip_missing(info)
    driver = info.factory(**case)
    _skip_private(driver)
    a, b = _torch_params(info.shapes), _torch_params(info.shapes)
    frozen = [p.detach().clone() for p in b]
    opt = lo.LMOOptimizer([{"params": a}, {"params": b, "lr": 0.0}], driver)
    for p in a + b:
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(torch.equal(p.detach(), q) for p, q in zip(b, frozen))  # lr = 0 in the second group
    assert any(not torch.equal(p.detach(), q) for p, q in zip(a, frozen))
    assert opt.param_groups[1]["lr"] == 0.0 and opt.param_groups[0]["lr"] == driver.lr


def _class_cases():
    import lmo.optimizers.torch as lot

    for name in lot.__all__:
        cls = getattr(lot, name)
        inputs = getattr(cls, "inputs", None)
        if isinstance(cls, type) and isinstance(inputs, lot.OptimizerInputs):
            for i, case in enumerate(inputs.cases):
                yield pytest.param(cls, case, inputs.shapes, id=f"{name}-{i}")


def _class_bad():
    import lmo.optimizers.torch as lot

    for name in lot.__all__:
        cls = getattr(lot, name)
        inputs = getattr(cls, "inputs", None)
        if isinstance(cls, type) and isinstance(inputs, lot.OptimizerInputs):
            for i, (kwargs, text) in enumerate(inputs.bad):
                yield pytest.param(cls, kwargs, text, inputs.shapes, id=f"{name}-{i}")


def _split_needs(case):
    case = dict(case)
    needs = case.pop("needs", ())
    missing = [n for n in needs if n not in lo.configs.norms()]
    if missing:
        pytest.skip(f"needs the geometry {', '.join(missing)}, which is not registered yet")
    return case


def test_every_adapter_class_declares_inputs():
    import lmo.optimizers.torch as lot

    classes = [getattr(lot, n) for n in lot.__all__ if isinstance(getattr(lot, n), type)
               and issubclass(getattr(lot, n), torch.optim.Optimizer)]
    named = [c for c in classes if c not in (lot.LMOOptimizer, lot.DriverOptimizer)]  # the generic ones
    assert {c.__name__ for c in named} >= {"Muon", "SignSGD", "Signum", "Lion", "Scion"}
    assert all(isinstance(getattr(c, "inputs", None), lot.OptimizerInputs) for c in named)


@pytest.mark.parametrize("cls,case,shapes", list(_class_cases()))
def test_adapter_converges_with_an_lr_scheduler(cls, case, shapes):
    case = _split_needs(case)
    f, _, _ = quadratic(shapes)
    params = _torch_params(shapes)
    opt = cls(params, **case)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / STEPS)
    grad_fn = _grad_fn(shapes)
    as_dict = lambda: dict(zip(shapes, [p.detach() for p in params]))  # noqa: E731
    f0 = f(as_dict())
    for _ in range(STEPS):
        opt.zero_grad()
        for p, g in zip(params, grad_fn(params)):
            p.grad = g
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert f(as_dict()) < 0.05 * f0


@pytest.mark.parametrize("cls,case,shapes", list(_class_cases()))
def test_adapter_state_dict_roundtrip_is_bitwise(cls, case, shapes):
    case = _split_needs(case)
    _assert_roundtrip_bitwise(lambda ps: cls(ps, **case), shapes)


@pytest.mark.parametrize("cls,case,shapes", list(_class_cases()))
def test_adapter_state_dict_loads_with_weights_only(cls, case, shapes):
    case = _split_needs(case)
    params = _torch_params(shapes)
    opt = cls(params, **case)
    _run(opt, params, _grad_fn(shapes), 2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = cls(_torch_params(shapes), **case)
    fresh.load_state_dict(loaded)
    assert fresh.state_dict()["param_groups"] == copy.deepcopy(opt.state_dict()["param_groups"])


@pytest.mark.parametrize("cls,kwargs,text,shapes", list(_class_bad()))
def test_adapter_bad_hyperparameters_rejected_at_construction(cls, kwargs, text, shapes):
    with pytest.raises(ValueError, match=text):
        cls(_torch_params(shapes), **kwargs)
