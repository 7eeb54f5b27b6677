"""``torch.compile(optimizer.step)``: one compilation under an LR schedule with a tensor lr, results equal to eager.

The test compiles with the ``"aot_eager"`` backend: recompilations are dynamo's decisions (its guards) and AOT
autograd's, which specialises a graph on a Python number it cannot make a graph input (a lerp's weight), as inductor
does; inductor's C++ compilation would cost this suite a minute. ``benchmarks/muon_compile.py`` measures the
inductor compilation (warm-up, steady step, agreement with eager)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from _doubles import skip_without  # noqa: E402

import lmo.optimizers as lo  # noqa: E402

SHAPES = [(8, 8), (8, 8), (16, 8), (8, 16), (5,)]  # two stacked pairs (a tall matrix with a wide one), a vector


SCHEDULES = {
    "LambdaLR": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + t)),
    # torch's default cycle_momentum=True: a new momentum (or beta1) in the group at every step, a Python float
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20),
}


def _run(make, schedule, grads, compiled, fullgraph=False):
    """The parameters after the steps, the frames and graphs dynamo compiled by the end of each step (a
    recompilation is a compiled frame, with or without a graph: a frame that graph-breaks before any tensor work
    has none), and the optimizer. ``fullgraph``: ``opt.step`` compiled with ``fullgraph=True`` before the scheduler
    wraps it in its own (untraceable) counter, as for torch.optim."""
    import torch._dynamo as dynamo

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.1 * torch.randn(s, generator=gen)) for s in SHAPES]
    opt = make(params)
    scheduler = None if fullgraph else SCHEDULES[schedule](opt)
    dynamo.reset()
    dynamo.utils.counters.clear()
    step = torch.compile(opt.step, backend="aot_eager", fullgraph=fullgraph) if compiled else opt.step
    scheduler = scheduler or SCHEDULES[schedule](opt)
    frames = []
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        step()
        scheduler.step()
        # fullgraph=True compiles without dynamo's count of frames; every compilation there is one graph
        frames.append((dynamo.utils.counters["frames"]["total"], dynamo.utils.counters["stats"]["unique_graphs"]))
    return params, frames, opt


MAKERS = {
    "Muon": lambda ps: lo.Muon(ps, lr=torch.tensor(0.05), vectors="rms"),
    "Muon auto": lambda ps: lo.Muon(ps, lr=torch.tensor(0.05), vectors="rms", method="auto"),
    "Lion": lambda ps: lo.Lion(ps, lr=torch.tensor(0.05)),
}


@skip_without("spectral")
@pytest.mark.parametrize(("name", "schedule"), [("Muon", "LambdaLR"), ("Muon", "OneCycleLR"),
                                                ("Muon auto", "OneCycleLR"), ("Lion", "OneCycleLR")])
def test_compiled_step_compiles_once_under_a_schedule_and_equals_eager(name, schedule):
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(6)]
    compiled, frames, opt = _run(MAKERS[name], schedule, grads, compiled=True)
    eager, _, _ = _run(MAKERS[name], schedule, grads, compiled=False)
    # the first step creates the momenta, the second steps them (and sees a second momentum: dynamo makes a number
    # that changes a graph input): compiled by then, and never again
    assert frames[1][0] > 0 and frames[-1] == frames[1], f"recompiled after warm-up: (frames, graphs) by step {frames}"
    group = opt.param_groups[0]
    if schedule == "LambdaLR":
        assert float(group["lr"]) == pytest.approx(0.05 / 7)  # the schedule moved the tensor lr
    else:  # it moved the momentum as well
        momentum = group["momentum"] if "momentum" in group else group["betas"][0]
        assert momentum < 0.94
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # compiled code keeps no memory of its own between steps: buffers shared by the stacks in turn would be aliased
    # graph inputs (inductor refused them: "expected size 131072 == 65536")
    assert opt.kept_nbytes() == 0


@pytest.mark.parametrize(("b1", "b2"), [(0.95**2, 0.95), (0.9, 0.9), (0.3, 0.7), (0.5, 0.0)])
@pytest.mark.parametrize("inplace", [False, True], ids=["pure", "inplace"])
def test_the_traced_estimator_is_the_eager_one(b1, b2, inplace):
    """What ``torch.compile`` traces of the estimator (the lerps' arithmetic, so that a scheduled momentum is a graph
    input) is ``c = b1 m + (1 - b1) g``, ``m' = b2 m + (1 - b2) g`` within float32 rounding of the eager lerps, for
    each structure (Nesterov's two betas, one beta, ``b2 = 0``); in place it writes ``m'`` into the momenta and never
    into a gradient."""
    from lmo.optimizers import _foreach

    gen = torch.Generator().manual_seed(4)
    moments = [torch.randn(6, 4, generator=gen), torch.randn(5, generator=gen)]
    grads = [torch.randn(6, 4, generator=gen), torch.randn(5, generator=gen)]
    given = [g.clone() for g in grads]
    eager_c, eager_m = _foreach.estimator([m.clone() for m in moments], grads, b1, b2, inplace=inplace)
    into = [m.clone() for m in moments]
    traced_c, traced_m = _foreach._traced_estimator(into, grads, b1, b2, inplace)
    for m, g, c, new, ec, em in zip(moments, grads, traced_c, traced_m, eager_c, eager_m):
        torch.testing.assert_close(c, b1 * m + (1 - b1) * g, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(new, b2 * m + (1 - b2) * g, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(c, ec, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(new, em, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(g, h) for g, h in zip(grads, given))
    if inplace:
        assert all(new is m for new, m in zip(traced_m, into))
    assert not any(c.data_ptr() == g.data_ptr() for c, g in zip(traced_c, grads))


@skip_without("spectral")
def test_with_nonfinite_ignore_the_step_is_one_graph_under_a_momentum_schedule():
    """With ``nonfinite="ignore"`` (no finiteness test, whose host read is the step's graph break) a traced step
    has no graph break: ``torch.compile(opt.step, fullgraph=True)`` steps under ``OneCycleLR``, which moves the
    momentum every step (read from the group as a graph input), compiles by the second step and not again, and
    equals eager."""
    def make(params):
        return lo.Muon(params, lr=torch.tensor(0.05), vectors="rms", nonfinite="ignore")

    gen = torch.Generator().manual_seed(2)
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(5)]
    compiled, frames, _ = _run(make, "OneCycleLR", grads, compiled=True, fullgraph=True)
    eager, _, _ = _run(make, "OneCycleLR", grads, compiled=False, fullgraph=True)
    assert frames[1][1] > 0 and frames[-1] == frames[1], f"recompiled after warm-up: (frames, graphs) by step {frames}"
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


NUMBERS_CASES = [
    lambda ps: lo.Muon(ps, momentum=0.9, weight_decay=0.01),
    lambda ps: lo.Muon(ps, momentum=0.9, nesterov=False),
    lambda ps: lo.Signum(ps, momentum=0.8, weight_decay=0.1),
    lambda ps: lo.Lion(ps, betas=(0.85, 0.97), weight_decay=0.2),
    lambda ps: lo.SignSGD(ps, weight_decay=0.3),
    lambda ps: lo.Scion(ps, momentum=0.1, norm="Sign"),
    lambda ps: lo.LMOOptimizer(ps, lo.signum(0.1, beta=0.7, weight_decay=0.05)),
]
NUMBERS_IDS = ["Muon", "Muon-no-nesterov", "Signum", "Lion", "SignSGD", "Scion", "LMOOptimizer"]


@pytest.mark.parametrize("make", NUMBERS_CASES, ids=NUMBERS_IDS)
def test_the_numbers_a_traced_step_reads_are_the_configured_drivers(make):
    """What a traced step reads from the group (``step_numbers``, of the ``scheduled`` keys) is what
    ``configure`` makes of the same group -- at the constructor's values and at values a scheduler writes."""
    opt = make([torch.nn.Parameter(torch.randn(4, 4))])
    group = dict(opt.param_groups[0])
    for scale in (1.0, 0.5):
        for key in opt.scheduled:
            value = opt.param_groups[0][key]
            group[key] = (value[0] * scale, *value[1:]) if isinstance(value, tuple) else value * scale
        driver = opt.configure(group)
        numbers = opt.step_numbers(group)
        assert numbers, type(opt).__name__
        for name, value in numbers.items():
            assert value == pytest.approx(getattr(driver, name), rel=1e-15), (name, scale)


@pytest.mark.parametrize("make", [
    lambda ps: lo.Muon(ps, lr=torch.tensor(0.02), vectors="rms"),
    lambda ps: lo.Lion(ps, lr=torch.tensor(0.02)),
    lambda ps: lo.Signum(ps, lr=torch.tensor(0.02)),
], ids=["Muon", "Lion", "Signum"])
def test_an_eager_onecycle_run_is_the_configured_run_bit_for_bit(make):
    """20 eager steps under ``OneCycleLR`` (momentum cycled) with the kept driver rescheduled equal, bit for bit, the
    same steps with the group configured anew at every step (the route before ``_rescheduled``)."""
    def run(rescheduled: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in ((8, 8), (8, 8), (16, 8), (8,))]
        opt = make(params)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=30)
        if not rescheduled:
            opt._rescheduled = lambda *args: None
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
            schedule.step()
        return [p.detach().clone() for p in params]

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_a_momentum_schedule_keeps_dp_muonbc_correction_in_step_with_the_momentum(bias_correction):
    """DP-MuonBC's correction is built from the betas (``BiasCorrection(beta1, beta2)``), so for ``DPMuon`` with
    ``bias_correction=True`` a new momentum is a new configuration, not the kept driver with new numbers: after each
    step under a moving momentum the plan's driver and its correction have the configured betas."""
    gen = torch.Generator().manual_seed(4)
    params = [torch.nn.Parameter(torch.randn(4, 4, generator=gen))]
    opt = lo.DPMuon(params, lr=0.05, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=3,
                    bias_correction=bias_correction, generator=0)
    assert opt._scheduled_numbers_suffice() is not bias_correction
    for momentum in (0.95, 0.9, 0.8):
        opt.param_groups[0]["momentum"] = momentum
        params[0].grad_sample = torch.randn(3, 4, 4, generator=gen)
        opt.step()
        stepped, wanted = opt._plans[0].plan.driver, opt.configure(opt.param_groups[0])
        assert (stepped.beta1, stepped.beta2) == (wanted.beta1, wanted.beta2), momentum
        corrections = [(d.beta1, d.beta2) if d is not None else None
                       for d in (stepped.direction_transform, wanted.direction_transform)]
        assert corrections[0] == corrections[1] and (corrections[0] is not None) is bias_correction, momentum


@pytest.mark.parametrize("make", NUMBERS_CASES, ids=NUMBERS_IDS)
def test_an_eager_step_under_a_schedule_makes_the_configured_driver_without_configuring(make):
    """An eager step whose group changed only in its ``scheduled`` numbers takes the kept driver with the new numbers
    (``_rescheduled``, no ``configure``): equal to what ``configure`` makes of the group for every value it accepts,
    and ``None`` (so that ``configure`` words the refusal for the torch argument) for every value it refuses, at the
    ends of the ranges and beyond; and nothing when anything else changed."""
    opt = make([torch.nn.Parameter(torch.randn(4, 4))])
    base = dict(opt.param_groups[0])
    driver, hyper = opt.configure(base), opt._hyperparameters(base)
    tried = accepted = 0
    for key in sorted(opt.scheduled):
        for value in (0.0, 0.05, 0.5, 0.9, 0.999, 1.0, 1.5, -0.1, 2.0, math.nan, math.inf, -math.inf):
            group = dict(base)
            group[key] = (value, *base[key][1:]) if isinstance(base[key], tuple) else value
            fast = opt._rescheduled(driver, hyper, opt._hyperparameters(group), group)
            try:
                configured = opt.configure(group)
            except ValueError:
                configured = None
            tried += 1
            if configured is None:
                assert fast is None, (key, value)
            elif fast is not None:
                accepted += 1
                assert fast == configured, (key, value)
    assert accepted >= 3 and accepted < tried, (accepted, tried)
    other = dict(base)
    other["lr"], other["nonfinite"] = 0.5, "skip"
    assert opt._rescheduled(driver, hyper, opt._hyperparameters(other), other) is None
    # a step after a scheduler moved the numbers: no configure, and the plan's driver has the configured numbers
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    opt = make(params)
    params[0].grad = torch.randn(4, 4)
    opt.step()
    calls, configure = [], opt.configure
    opt.configure = lambda group: calls.append(group) or configure(group)
    group = opt.param_groups[0]
    for key in opt.scheduled:
        group[key] = (group[key][0] * 0.5, *group[key][1:]) if isinstance(group[key], tuple) else group[key] * 0.5
    opt.step()
    assert calls == []
    stepped, wanted = opt._plans[0].plan.driver, configure(group)
    assert {f: getattr(stepped, f) for f in ("beta1", "beta2", "decay")} == \
        {f: getattr(wanted, f) for f in ("beta1", "beta2", "decay")}


@skip_without("spectral")
@pytest.mark.parametrize("make", [
    lambda ps: lo.DPMuon(ps, lr=0.05, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4, generator=7,
                         sample_rate=0.01),
    lambda ps: lo.DPOptimizer(ps, lo.dp_sign_sgd(0.05, noise_multiplier=1.0, max_grad_norm=1.0,
                                                 expected_batch_size=4, generator=7), sample_rate=0.01),
], ids=["DPMuon", "DPOptimizer"])
def test_a_compiled_private_step_runs_as_written(make):
    """``torch.compile(opt.step)`` of a private optimizer runs its step untraced (the noise comes from the privacy
    layer's generator, which a graph would not draw from): the compiled and the eager optimizer take the same steps
    bit for bit, on a model with a bias, and count them for the accountant. Before, the traced step lost its
    privatised gradients at a graph break ("a private optimizer's gradients exist only inside step()")."""
    import torch._dynamo as dynamo

    dynamo.reset()
    gen = torch.Generator().manual_seed(5)
    inits = [torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen)]  # a weight and its bias
    samples = [[torch.randn(4, *x.shape, generator=gen) for x in inits] for _ in range(3)]
    runs = []
    for compiled in (False, True):
        params = [torch.nn.Parameter(x.clone()) for x in inits]
        opt = make(params)
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        for per_example in samples:
            for p, g in zip(params, per_example):
                p.grad_sample = g.clone()
            step()
        runs.append((params, opt))
    (eager, eager_opt), (traced, traced_opt) = runs
    for a, b in zip(eager, traced):
        assert torch.equal(a, b)
    assert eager_opt.privacy.steps == traced_opt.privacy.steps == 3
    assert traced_opt.epsilon(1e-5) == eager_opt.epsilon(1e-5)
