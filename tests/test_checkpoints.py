"""Checkpoints and bad state: nothing loads that does not fit, a failing step changes nothing, torch's own
optimizer tests pass on our Muon, and every optimizer's checkpoint reads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import copy
import io
import pickle
import re

import pytest

torch = pytest.importorskip("torch")

from _doubles import skip_without  # noqa: E402

import lmo.optimizers as lo  # noqa: E402


def _params(shapes=((6, 4), (3, 5)), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _stepped(make, shapes=((6, 4), (3, 5)), steps=2, seed=0):
    params = _params(shapes, seed)
    opt = make(params)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return params, opt


def _snapshot(opt, params):
    state = {i: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in opt.state[p].items()}
             for i, p in enumerate(params) if p in opt.state}
    return [p.detach().clone() for p in params], state, copy.deepcopy(opt.param_groups)


def _unchanged(opt, params, snap):
    values, state, groups = snap
    assert all(torch.equal(p.detach(), v) for p, v in zip(params, values))
    now = {i: opt.state[p] for i, p in enumerate(params) if p in opt.state}
    assert now.keys() == state.keys()
    for i, saved in state.items():
        assert now[i].keys() == saved.keys()
        for k, v in saved.items():
            assert torch.equal(now[i][k], v) if isinstance(v, torch.Tensor) else now[i][k] == v
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in groups]


# -- load_state_dict refuses what does not fit, before changing anything ----------------------------------------------
def _muon(params):
    return lo.Muon(params, lr=0.02, vectors="rms")


@skip_without("spectral")
@pytest.mark.parametrize("corrupt,message", [
    (lambda sd: sd["state"][1].__setitem__("momentum_buffer", torch.zeros(5, 3)),
     r"parameter 1 \('0.1'\): 'momentum_buffer' has shape \(5, 3\); the parameter of shape \(3, 5\) needs \(3, 5\)"),
    (lambda sd: sd["state"][0]["momentum_buffer"].__setitem__((0, 0), float("nan")),
     r"parameter 0 \('0.0'\): 'momentum_buffer' holds NaN or Inf"),
    (lambda sd: sd["state"][0].__setitem__("momentum_buffer", torch.zeros(6, 4, dtype=torch.int64)),
     r"'momentum_buffer' must be a floating tensor"),
    (lambda sd: sd["state"][0].__setitem__("step", (i for i in range(3))),
     r"parameter 0 \('0.0'\): 'step' must be a non-negative integer count"),
    (lambda sd: sd["state"][0].__setitem__("step", torch.tensor(-2.0)), r"'step' must be a non-negative integer"),
    (lambda sd: sd["state"][0].__setitem__("exp_avg", torch.zeros(6, 4)),
     r"state key 'exp_avg' is not one of .*: the state of another optimizer"),
    (lambda sd: sd["param_groups"][0].__setitem__("lr", -1.0), r"Learning rate should be >= 0"),
    (lambda sd: sd["param_groups"][0].__setitem__("nesterov", "no"), r"nesterov must be a bool"),
    (lambda sd: sd["param_groups"][0]["params"].append(7), r"the state holds 3 parameters, this group 2"),
    (lambda sd: sd.__setitem__("optimizer", "Lion"), r"saved by Lion; a Muon loads only its own state"),
])
def test_a_state_that_does_not_fit_is_refused_and_nothing_changes(corrupt, message):
    params, opt = _stepped(_muon)
    state = copy.deepcopy(opt.state_dict())  # torch's state dict shares the optimizer's own tensors and dicts
    corrupt(state)
    snap = _snapshot(opt, params)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    _unchanged(opt, params, snap)


@skip_without("spectral")
def test_a_foreign_optimizers_state_is_refused_and_torch_muons_loads():
    params = _params()
    adamw = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.ones_like(p)
    adamw.step()
    opt = lo.Muon(params, lr=0.02)
    snap = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"\['amsgrad', 'betas', .*\] are not hyperparameters of Muon"):
        opt.load_state_dict(adamw.state_dict())
    _unchanged(opt, params, snap)
    assert opt.param_groups[0]["lr"] == 0.02 and "betas" not in opt.param_groups[0]
    # between two of ours: the state says who saved it
    _, lion = _stepped(lambda ps: lo.Lion(ps, lr=0.01))
    with pytest.raises(ValueError, match="saved by Lion"):
        opt.load_state_dict(lion.state_dict())
    _, signum = _stepped(lambda ps: lo.Signum(ps, lr=0.01))
    with pytest.raises(ValueError, match="saved by Signum"):
        opt.load_state_dict(signum.state_dict())
    # torch.optim.Muon's checkpoint loads into ours, and training continues
    theirs = torch.optim.Muon(params, lr=0.02)
    theirs.step()
    opt.load_state_dict(theirs.state_dict())
    assert torch.equal(opt.state[params[0]]["momentum_buffer"], theirs.state[params[0]]["momentum_buffer"])
    opt.step()
    assert int(opt.state[params[0]]["step"]) == 1


# -- a step is atomic --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["gradient", "momentum"])
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_a_failure_in_the_last_parameter_of_the_last_group_changes_nothing(where, policy):
    gen = torch.Generator().manual_seed(3)
    groups = [[torch.nn.Parameter(torch.randn(6, 4, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))],
              [torch.nn.Parameter(torch.randn(3, 3, generator=gen)), torch.nn.Parameter(torch.randn(4, generator=gen))]]
    opt = lo.Signum([{"params": g} for g in groups], lr=0.05, momentum=0.5, nonfinite=policy)
    params = [p for g in groups for p in g]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    last = params[-1]
    if where == "gradient":
        last.grad[2] = float("nan")
    else:
        opt.state[last]["momentum_buffer"][1] = float("inf")
    snap = _snapshot(opt, params)
    if policy == "raise":
        what = "gradient" if where == "gradient" else "momentum_buffer"
        with pytest.raises(lo.NonFiniteGradientError, match=rf"{what} of parameter '1.1' \(param group 1\)"):
            opt.step()
    else:
        opt.step()  # skipped: every group, not only the one holding the NaN
    _unchanged(opt, params, snap)


def _inf_in_place(m):
    m[0, 1] = float("inf")


def _inf_through_a_view(m):
    m.view(-1)[-1] = float("-inf")


def _inf_through_detach(m):
    m.detach().fill_(float("inf"))


def _replaced(m):
    return torch.full_like(m, float("inf"))


def _copied_in(m):
    m.copy_(torch.full_like(m, float("-inf")))


@pytest.mark.parametrize("edit", [_inf_in_place, _inf_through_a_view, _inf_through_detach, _replaced, _copied_in])
def test_a_momentum_edited_after_a_step_is_tested_again(edit):
    """The step tests a momentum again only if it is no longer exactly what the last step left (torch's version
    counter, shared with views and ``detach()``, or another tensor): every such edit is caught before any write (inf,
    not NaN: the snapshot compares with ``torch.equal``)."""
    params, opt = _stepped(lambda ps: lo.Muon(ps, lr=0.02))
    p = params[1]
    replacement = edit(opt.state[p]["momentum_buffer"])
    if replacement is not None:
        opt.state[p]["momentum_buffer"] = replacement
    for q in params:
        q.grad = torch.ones_like(q)
    snap = _snapshot(opt, params)
    with pytest.raises(lo.NonFiniteGradientError, match=r"momentum_buffer of parameter '0.1'"):
        opt.step()
    _unchanged(opt, params, snap)


def test_a_momentum_as_the_last_step_left_it_is_not_read_again(monkeypatch):
    """What the finiteness test reads on each step: every gradient, and a momentum only on the step after it was
    set from outside (here a loaded state); the step's own momenta (zeros, then lerps of finite gradients and
    momenta) are finite by construction."""
    from lmo.optimizers import driver as driver_module

    params = _params()
    opt = lo.Muon(params, lr=0.02)
    seen = []
    real = driver_module.find_nonfinite

    def spy(names, arrays):
        seen.append(list(names))
        return real(names, arrays)

    monkeypatch.setattr(driver_module, "find_nonfinite", spy)
    monkeypatch.setattr(opt._distribution, "nonfinite", lambda names, arrays: spy(names, arrays))
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        for q in params:
            q.grad = torch.randn(q.shape, generator=gen)
        opt.step()
    opt.load_state_dict(opt.state_dict())
    opt.step()
    opt.step()
    grads = ["0.0", "0.1"]
    momenta = ["0.0.momentum_buffer", "0.1.momentum_buffer"]
    assert seen == [grads, grads, grads, grads + momenta, grads]


def test_a_step_under_inference_mode_tests_its_momenta_every_time():
    """Momenta made by a step under ``torch.inference_mode`` are inference tensors, which have no version counter:
    the step still runs, and such a momentum is tested on every step (a NaN written into it is caught)."""
    params = _params()
    opt = lo.Muon(params, lr=0.02)
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        with torch.inference_mode():
            opt.step()
    m = opt.state[params[0]]["momentum_buffer"]
    assert m.is_inference()
    with torch.inference_mode():
        m[0, 0] = float("inf")
        with pytest.raises(lo.NonFiniteGradientError, match=r"momentum_buffer of parameter '0.0'"):
            opt.step()


def test_a_momentum_of_the_wrong_shape_is_refused_at_the_step_before_any_write():
    params, opt = _stepped(lambda ps: lo.Signum(ps, lr=0.05))
    opt.state[params[1]]["momentum_buffer"] = torch.zeros(5, 3)
    for p in params:
        p.grad = torch.ones_like(p)
    snap = _snapshot(opt, params)
    with pytest.raises(ValueError, match=r"parameter '0.1': momentum_buffer has shape \(5, 3\) != shape \(3, 5\)"):
        opt.step()
    _unchanged(opt, params, snap)


# -- hyperparameters by kind and range -------------------------------------------------------------------------------
@skip_without("spectral")
@pytest.mark.parametrize("kwargs,message", [
    ({"ns_coefficients": (1.0, 2.0)}, "Coefficients must be a tuple of exactly 3 values"),
    ({"ns_coefficients": (3.4, "b", 2.0)}, "Coefficients must be a tuple of exactly 3 values"),
    ({"nesterov": "no"}, "nesterov must be a bool"),
    ({"nesterov": 1}, "nesterov must be a bool"),
    ({"ns_steps": 5.0}, "ns_steps must be an int"),
    ({"ns_steps": True}, "ns_steps must be an int"),
    ({"momentum": "0.9"}, "momentum must be a number"),
    ({"method": "qr"}, "method must be one of"),
    ({"adjust_lr_fn": "arbitrary"}, "Adjust learning rate function arbitrary is not supported"),
])
def test_muon_hyperparameters_are_checked_by_kind_and_range(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        lo.Muon(_params(), **kwargs)


def test_scion_unconstrained_must_be_a_bool():
    with pytest.raises(ValueError, match="unconstrained must be a bool"):
        lo.Scion(_params(), lr=0.1, momentum=0.5, norm="ColNorm", unconstrained="yes")


# -- torch's own optimizer inputs for Muon ---------------------------------------------------------------------------
def _torch_inputs():
    """torch's test inputs for its optimizers (``torch.testing._internal``: needs expecttest, a test extra).

    Importing torch's test utilities freezes the global backend flags (``torch.backends.disable_global_flags``),
    which breaks later tests in this process that set them (Opacus sets ``cudnn.deterministic``): thawed again.
    """
    common = pytest.importorskip("torch.testing._internal.common_optimizers")
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True  # the flag's own module
    return common


# Accepted on purpose (documented on lo.Muon): parameters with 3 or more axes are batches of matrices or conv
# kernels, which torch.optim.Muon refuses.
OUR_EXTRAS = {"only support 2D parameters"}


@skip_without("spectral")
def test_muon_raises_torchs_errors_of_the_same_type_at_the_same_moment():
    common = _torch_inputs()
    inputs = common.optim_error_inputs_func_muon(device="cpu", dtype=torch.float32)
    checked = 0
    for error in inputs:
        opt_input = error.optimizer_error_input
        if opt_input.desc in OUR_EXTRAS:
            lo.Muon(opt_input.params, **opt_input.kwargs)  # accepted: a batch of two 3 x 4 matrices
            continue
        if error.error_on == common.OptimizerErrorEnum.CONSTRUCTION_ERROR:
            if issubclass(error.error_type, Warning):
                with pytest.warns(error.error_type, match=error.error_regex):
                    lo.Muon(opt_input.params, **opt_input.kwargs)
            else:
                with pytest.raises(error.error_type, match=error.error_regex):
                    lo.Muon(opt_input.params, **opt_input.kwargs)
        else:
            opt = lo.Muon(opt_input.params, **opt_input.kwargs)
            with pytest.raises(error.error_type, match=error.error_regex):
                opt.step()
        checked += 1
    assert checked == len(inputs) - len(OUR_EXTRAS)


@skip_without("spectral")
def test_muon_trains_on_torchs_inputs_and_its_state_round_trips():
    """torch's optimizer inputs for Muon (``optim_inputs_func_muon``: defaults, lr, a tensor lr, weight decay,
    momentum, ns_steps, ns_coefficients): each goes the right direction, matches torch.optim.Muon's step to its
    bf16 rounding, and saves a state that reloads (weights only) and continues bitwise."""
    common = _torch_inputs()
    for opt_input in common.optim_inputs_func_muon(device="cpu"):
        kwargs = opt_input.kwargs
        gen = torch.Generator().manual_seed(0)
        target = torch.randn(8, 6, generator=gen)
        ours, theirs = torch.nn.Parameter(torch.zeros(8, 6)), torch.nn.Parameter(torch.zeros(8, 6))
        mine, ref = lo.Muon([ours], **kwargs), torch.optim.Muon([theirs], **kwargs)
        losses = []
        for _ in range(5):
            for p, o in ((ours, mine), (theirs, ref)):
                o.zero_grad()
                loss = ((p - target) ** 2).sum()
                loss.backward()
                o.step()
            losses.append(float(((ours - target) ** 2).sum()))
        assert losses[-1] < losses[0], (opt_input.desc, losses)
        moved = float((theirs.detach()).norm())
        assert float((ours - theirs).norm()) < 0.05 * moved, opt_input.desc
        buffer = io.BytesIO()
        torch.save(mine.state_dict(), buffer)
        buffer.seek(0)
        twin = torch.nn.Parameter(ours.detach().clone())
        again = lo.Muon([twin], **kwargs)
        again.load_state_dict(torch.load(buffer, weights_only=True))
        for p, o in ((ours, mine), (twin, again)):
            p.grad = torch.ones_like(p)
            o.step()
        assert torch.equal(ours, twin), opt_input.desc


# -- weights-only checkpoints of every optimizer -----------------------------------------------------------------------
def _every_optimizer():
    yield "LMOOptimizer(signum)", lambda ps: lo.LMOOptimizer(ps, lo.signum(0.05, beta=0.5))
    yield "LMOOptimizer(schedule)", lambda ps: lo.LMOOptimizer(ps, lo.sign_sgd(lambda t: 0.1 / (1 + t)))
    yield "LMOOptimizer(rule, group geometry)", lambda ps: lo.LMOOptimizer(
        [{"params": ps[:1]}, {"params": ps[1:], "geometry": "l2"}], lo.Driver(lambda n, s: "sign", lr=0.05))
    yield "LMOOptimizer(error feedback)", lambda ps: lo.LMOOptimizer(ps, lo.error_feedback(lo.signum(0.05)))
    yield "Lion", lambda ps: lo.Lion(ps, lr=0.01)
    yield "Scion", lambda ps: lo.Scion(ps, lr=0.05, momentum=0.5, norm="ColNorm")
    yield "DPOptimizer", lambda ps: lo.DPOptimizer(ps, lo.dp_sign_sgd(0.01, noise_multiplier=0.5, max_grad_norm=1.0,
                                                                     expected_batch_size=4, generator=0))


@pytest.mark.parametrize("make", [m for _, m in _every_optimizer()], ids=[n for n, _ in _every_optimizer()])
def test_every_checkpoint_reads_with_weights_only_and_continues(make):
    params = _params()
    opt = make(params)
    private = isinstance(opt, lo.DPOptimizer)
    gen = torch.Generator().manual_seed(5)

    def grads():
        for p in params:
            if private:
                p.grad_sample = torch.randn((4, *p.shape), generator=gen)
            else:
                p.grad = torch.randn(p.shape, generator=gen)

    for _ in range(2):
        grads()
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # no pickled driver, geometry or schedule
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    again = make(twins)
    again.load_state_dict(loaded)
    if private:
        assert again.steps == 2
    else:
        grads()
        for p, t in zip(params, twins):
            t.grad = p.grad.clone()
        opt.step()
        again.step()
        assert all(torch.equal(p, t) for p, t in zip(params, twins))


@pytest.mark.parametrize("make", [m for _, m in _every_optimizer()] + [lambda ps: lo.Muon(ps, lr=0.02)],
                         ids=[n for n, _ in _every_optimizer()] + ["Muon"])
def test_a_copied_optimizer_steps_as_the_original(make):
    """``copy.deepcopy`` (and for Muon ``pickle``) of a stepped optimizer: the copy, with its own copies of the
    parameters, steps bit for bit as the original on the same gradients, and leaves the original untouched (torch's
    ``__getstate__`` keeps only defaults, state and groups; the plans are rebuilt by the copy's first step)."""
    params = _params()
    opt = make(params)
    private = isinstance(opt, lo.DPOptimizer)

    def step(o, seed):
        g = torch.Generator().manual_seed(seed)
        for p in o.param_groups[0]["params"] + [q for group in o.param_groups[1:] for q in group["params"]]:
            if private:
                p.grad_sample = torch.randn((4, *p.shape), generator=g)
            else:
                p.grad = torch.randn(p.shape, generator=g)
        o.step()

    for seed in (1, 2):
        step(opt, seed)
    copies = [copy.deepcopy(opt)] + ([pickle.loads(pickle.dumps(opt))] if isinstance(opt, lo.Muon) else [])
    before = [p.detach().clone() for p in params]
    for twin in copies:
        step(twin, 3)
        assert all(torch.equal(p, b) for p, b in zip(params, before))  # the original's parameters are not shared
    step(opt, 3)
    ours = [p for group in opt.param_groups for p in group["params"]]
    for twin in copies:
        theirs = [p for group in twin.param_groups for p in group["params"]]
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
