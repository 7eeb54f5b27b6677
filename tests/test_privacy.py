"""Differential privacy: per-example gradients, clipping, noise, accounting, sampling, DP-MuonBC, private optimizers.

The privacy-critical parts are checked against independent computations: a loop of per-example backward passes and
Opacus's GradSampleModule (per-example gradients), float64 norms of every clipped example (the clipping bound),
the calibration formula over many draws (noise), Opacus's RDP accountant (epsilon), Opacus's DPOptimizer (the DP-SGD
step), and Monte Carlo over noise draws (the bias correction).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

import lmo
import lmo.optimizers as lo
from lmo.optimizers.privacy import (
    BiasCorrection,
    Privatize,
    clip_factors,
    clip_per_example,
    noise_variance_factor,
    polar_bias_correction,
)

torch = pytest.importorskip("torch")
privacy = pytest.importorskip("lmo.privacy")
from _doubles import PolarSVD  # noqa: E402

needs_spectral = pytest.mark.skipif("spectral" not in lmo.norms(),
                                    reason="needs the registry's spectral geometry (geom branch)")


# ---------------------------------------------------------------------------------------------------------------
# Per-example gradients
# ---------------------------------------------------------------------------------------------------------------
class Scaled(torch.nn.Module):
    """A layer with a buffer that the forward pass reads."""

    def __init__(self, n):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n) * 0.1 + 1.0)
        self.register_buffer("shift", torch.linspace(-0.5, 0.5, n))

    def forward(self, x):
        return x * self.weight + self.shift


class Net(torch.nn.Module):
    """Embedding, conv, layer norm, linear layers, a BatchNorm in eval mode (running statistics are buffers) and a
    custom layer with a buffer."""

    def __init__(self, buffers=True):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 4)
        self.conv = torch.nn.Conv1d(4, 6, kernel_size=3, padding=1)
        self.bn = torch.nn.BatchNorm1d(6) if buffers else torch.nn.Identity()
        self.norm = torch.nn.LayerNorm(6)
        self.scaled = Scaled(6) if buffers else torch.nn.Identity()
        self.head = torch.nn.Linear(6 * 5, 3)

    def forward(self, tokens):
        h = self.embed(tokens).transpose(1, 2)          # (B, 4, 5)
        h = torch.tanh(self.bn(self.conv(h)))           # (B, 6, 5)
        h = self.scaled(self.norm(h.transpose(1, 2)))   # (B, 5, 6)
        return self.head(h.flatten(1))


def _net(seed=0, buffers=True):
    torch.manual_seed(seed)
    net = Net(buffers).double()
    if buffers:
        with torch.no_grad():
            net.bn.running_mean.uniform_(-0.2, 0.2)
            net.bn.running_var.uniform_(0.5, 1.5)
        net.bn.eval()
    return net


def _batch(n=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 11, (n, 5), generator=g), torch.randint(0, 3, (n,), generator=g)


def _loop(net, x, y):
    out = {}
    for i in range(x.shape[0]):
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in net.named_parameters():
            out.setdefault(n, []).append(p.grad.detach().clone())
    net.zero_grad()
    return {n: torch.stack(v) for n, v in out.items()}


def test_per_sample_grads_equal_a_loop_of_per_example_backward_passes():
    net = _net()
    x, y = _batch()
    expected = _loop(net, x, y)
    sentinel = {n: torch.full_like(p, 7.0) for n, p in net.named_parameters()}
    for n, p in net.named_parameters():
        p.grad = sentinel[n].clone()
    for micro in (None, 3):
        losses = privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y, micro_batch_size=micro)
        assert losses.shape == (7,)
        for n, p in net.named_parameters():
            assert p.grad_sample.shape == (7, *p.shape)
            torch.testing.assert_close(p.grad_sample, expected[n], rtol=1e-10, atol=1e-12, msg=n)
            assert torch.equal(p.grad, sentinel[n]), "p.grad must be left untouched"
    with torch.no_grad():
        ref = torch.stack([torch.nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1]) for i in range(7)])
    torch.testing.assert_close(losses.double(), ref)


def test_per_sample_grads_agree_with_opacus_grad_sample_module():
    opacus = pytest.importorskip("opacus")
    net = _net(buffers=False)  # Opacus refuses trainable layers with buffers
    x, y = _batch(9)
    privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y)
    ours = {n: p.grad_sample.clone() for n, p in net.named_parameters()}
    privacy.clear_grad_sample(net.parameters())
    for reduction in ("mean", "sum"):
        gsm = opacus.GradSampleModule(_net(buffers=False), loss_reduction=reduction)
        privacy.per_sample_grads(gsm, torch.nn.functional.cross_entropy, x, y, micro_batch_size=4)  # Opacus' hooks
        for n, p in gsm._module.named_parameters():
            torch.testing.assert_close(p.grad_sample, ours[n], rtol=1e-9, atol=1e-12, msg=f"{reduction} {n}")
            assert p.grad is None
        with pytest.raises(ValueError, match="hooks"):
            privacy.per_sample_grads(gsm, torch.nn.functional.cross_entropy, x, y, method="functorch")
        gsm._close()


def test_per_sample_grads_subset_empty_batch_and_refusals():
    net = _net()
    x, y = _batch(4)
    privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y, params=[net.head.weight])
    assert net.head.weight.grad_sample.shape == (4, 3, 30)
    assert getattr(net.embed.weight, "grad_sample", None) is None
    losses = privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x[:0], y[:0])
    assert losses.shape == (0,) and net.conv.weight.grad_sample.shape == (0, *net.conv.weight.shape)
    net.bn.train()
    with pytest.raises(ValueError, match="BatchNorm"):
        privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y)
    net.bn.eval()
    with pytest.raises(ValueError, match="batch axis"):
        privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y[:3])
    with pytest.raises(ValueError, match="micro_batch_size"):
        privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y, micro_batch_size=0)
    with pytest.raises(ValueError, match="GradSampleModule"):
        privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y, method="opacus")


# ---------------------------------------------------------------------------------------------------------------
# Clipping
# ---------------------------------------------------------------------------------------------------------------
def _hard_examples(shape, dtype, seed):
    """Per-example gradients whose norms sit on, just around, far above and far below the threshold 1."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((12, *shape))
    base /= np.sqrt(np.sum(base.reshape(12, -1) ** 2, axis=1)).reshape(-1, *([1] * len(shape)))
    scales = [1.0, 1.0 + 1e-7, 1.0 - 1e-7, 1.0 + 1e-3, 2.0, 1e-3, 1e6, 1e30, 0.0, 0.999999, 3.7, 1.0 + 1e-12]
    g = base * np.array(scales).reshape(-1, *([1] * len(shape)))
    return torch.tensor(g, dtype=dtype)


def _norms64(g):
    return torch.linalg.vector_norm(g.double().reshape(g.shape[0], -1), dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_per_matrix_clipping_bound_holds_exactly_for_every_example_and_matrix(dtype):
    grads = [_hard_examples((17, 9), dtype, 0), _hard_examples((33,), dtype, 1), _hard_examples((3, 4, 5), dtype, 2)]
    thresholds = [1.0, 0.5, 2.0]
    clipped = clip_per_example(grads, thresholds, "per_matrix")
    for g, c, t in zip(grads, clipped, thresholds):
        assert c.shape == g.shape
        norms = _norms64(c)
        assert bool(torch.all(norms <= t)), (dtype, t, norms.max().item())  # the bound, in float64, on every example
        before = _norms64(g)
        clipped_rows = before > t
        # clipped examples keep their direction and end up within float rounding of the threshold
        assert bool(torch.all(norms[clipped_rows] >= t * (1 - 1e-5))), norms[clipped_rows]
        small = before < 0.99 * t
        assert torch.equal(c[small], g[small].to(c.dtype))  # examples under the bound are left exactly as they are
    # one threshold for all
    for c in clip_per_example(grads, 0.25, "per_matrix"):
        assert bool(torch.all(_norms64(c) <= 0.25))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flat_clipping_bound_holds_exactly_for_every_example(dtype):
    grads = [_hard_examples((17, 9), dtype, 3), _hard_examples((33,), dtype, 4)]
    clipped = clip_per_example(grads, 1.0, "flat")
    total = torch.sqrt(sum(_norms64(c) ** 2 for c in clipped))
    assert bool(torch.all(total <= 1.0)), total.max().item()
    before = torch.sqrt(sum(_norms64(g) ** 2 for g in grads))
    factors = clip_factors(grads, [1.0], "flat")
    assert torch.equal(factors[0], factors[1])  # one factor per example for the whole gradient
    assert bool(torch.all(factors[0][before < 0.99] == 1))
    with pytest.raises(ValueError, match="flat"):
        Privatize(1.0, [1.0, 2.0], 8, "flat")


def test_privatized_gradient_is_the_clipped_sum_over_the_expected_batch_size():
    grads = [_hard_examples((5, 4), torch.float64, 5), _hard_examples((3,), torch.float64, 6)]
    params = [torch.zeros(5, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)]
    for max_grad_norm in (0.7, (0.7, 0.2), {"w": 0.7, "b": 0.2}):
        hook = Privatize(0.0, max_grad_norm, expected_batch_size=10.0)
        out = hook.privatize(grads, params, ("w", "b"))
        thresholds = hook.thresholds(("w", "b"))
        expected = [c.sum(0) / 10.0 for c in clip_per_example(grads, thresholds)]
        for o, e in zip(out, expected):
            torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="threshold"):
        Privatize(1.0, {"w": 1.0}, 8).thresholds(("w", "b"))
    with pytest.raises(ValueError, match="thresholds"):
        Privatize(1.0, (1.0,), 8).thresholds(("w", "b"))


# ---------------------------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clipping,thresholds,sensitivity", [
    ("per_matrix", (1.0, 2.0), math.sqrt(5.0)),
    ("flat", 1.5, 1.5),
])
def test_noise_mean_and_std_match_the_calibration(clipping, thresholds, sensitivity):
    sigma, batch = 0.8, 50.0
    hook = Privatize(sigma, thresholds, batch, clipping, generator=123)
    params = [torch.zeros(200, 100), torch.zeros(3000)]
    zeros = [torch.zeros(0, 200, 100), torch.zeros(0, 3000)]  # an empty batch: the release is noise only
    std = sigma * sensitivity / batch
    assert hook.gradient_noise_std(("w", "b")) == pytest.approx(std)
    draws = [hook.privatize(zeros, params, ("w", "b")) for _ in range(5)]
    for k in range(2):
        z = torch.stack([d[k] for d in draws]).double().flatten()
        n = z.numel()
        assert abs(z.mean().item()) < 5 * std / math.sqrt(n)
        assert z.std().item() == pytest.approx(std, rel=5 * math.sqrt(0.5 / n) + 1e-3)
    a, b = draws[0][0].flatten()[:3000].double(), draws[0][1].double()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.08  # independent across parameters
    assert not torch.equal(draws[0][0], draws[1][0])  # and across steps
    again = Privatize(sigma, thresholds, batch, clipping, generator=123).privatize(zeros, params, ("w", "b"))
    assert torch.equal(again[0], draws[0][0])  # seeded: reproducible
    fresh = [Privatize(sigma, thresholds, batch, clipping).privatize(zeros, params, ("w", "b"))[1] for _ in range(2)]
    assert not torch.equal(fresh[0], fresh[1])  # default: OS entropy, not the global seed


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
def test_noise_on_other_backends(backend):
    xp = pytest.importorskip(backend)
    hook = Privatize(1.0, 2.0, 4.0, generator=np.random.default_rng(0) if backend == "numpy" else 0)
    g = xp.zeros((0, 400, 50), dtype=xp.float32)
    out = hook.privatize([g], [xp.zeros((400, 50), dtype=xp.float32)], ("w",))[0]
    assert type(out) is type(g) and out.dtype == xp.float32
    assert float(np.std(np.asarray(out))) == pytest.approx(0.5, rel=0.03)


# ---------------------------------------------------------------------------------------------------------------
# Equivalences: DP-Muon without noise or clipping is Muon; DP-SGD is Opacus's DP-SGD
# ---------------------------------------------------------------------------------------------------------------
def _linear_problem(seed=0, batch=8):
    g = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(5, 4, generator=g, dtype=torch.float64), "b": torch.randn(3, 5, generator=g,
                                                                                        dtype=torch.float64)}
    per_example = [{k: torch.randn(batch, *v.shape, generator=g, dtype=torch.float64) for k, v in w.items()}
                   for _ in range(4)]
    return w, per_example


def test_dp_muon_without_noise_or_clipping_is_muon_on_the_same_batch():
    w, batches = _linear_problem()
    private = lo.dp_muon(0.05, noise_multiplier=0.0, max_grad_norm=1e12, expected_batch_size=8, norm=PolarSVD(),
                         weight_decay=0.01)
    plain = lo.muon(0.05, norm=PolarSVD(), weight_decay=0.01)
    x, sx = dict(w), private.init(w)
    y, sy = dict(w), plain.init(w)
    for g in batches:
        x, sx = private.step(x, g, sx)
        y, sy = plain.step(y, {k: v.mean(0) for k, v in g.items()}, sy)
    for k in w:
        torch.testing.assert_close(x[k], y[k], rtol=1e-10, atol=1e-12)


@needs_spectral
def test_dpmuon_torch_without_noise_or_clipping_is_muon_on_the_same_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), torch.nn.Tanh(), torch.nn.Linear(8, 3, bias=False))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), torch.nn.Tanh(), torch.nn.Linear(8, 3, bias=False))
    twin.load_state_dict(model.state_dict())
    dp = lo.DPMuon(model.parameters(), lr=0.02, noise_multiplier=0.0, max_grad_norm=1e9, expected_batch_size=10)
    ref = lo.Muon(twin.parameters(), lr=0.02)
    for _ in range(3):
        x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
        privacy.per_sample_grads(model, torch.nn.functional.cross_entropy, x, y)
        dp.step()
        dp.zero_grad()
        ref.zero_grad()
        torch.nn.functional.cross_entropy(twin(x), y).backward()
        ref.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clipping", ["flat", "per_matrix"])
def test_dp_sgd_step_equals_opacus_dp_sgd_step(clipping):
    opacus = pytest.importorskip("opacus")
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(10, 7), torch.nn.ReLU(), torch.nn.Linear(7, 4))
    twin = torch.nn.Sequential(torch.nn.Linear(10, 7), torch.nn.ReLU(), torch.nn.Linear(7, 4))
    twin.load_state_dict(net.state_dict())
    x, y = torch.randn(16, 10) * 3, torch.randint(0, 4, (16,))
    thresholds = [0.3, 0.2, 0.25, 0.1]
    c = 4.0 if clipping == "flat" else thresholds
    gsm = opacus.GradSampleModule(twin)
    theirs = opacus.optimizers.DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.7), noise_multiplier=0.0,
                                           max_grad_norm=c, expected_batch_size=16) if clipping == "flat" else \
        opacus.optimizers.DPPerLayerOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.7), noise_multiplier=0.0,
                                              max_grad_norm=c, expected_batch_size=16)
    ours = lo.DPOptimizer(net.parameters(), lo.dp_sgd(0.7, noise_multiplier=0.0, max_grad_norm=c,
                                                      expected_batch_size=16, clipping=clipping))
    for _ in range(2):
        theirs.zero_grad()
        torch.nn.functional.cross_entropy(gsm(x), y).backward()
        theirs.step()
        privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y)
        norms = [_norms64(p.grad_sample) for p in net.parameters()]
        if clipping == "flat":  # clipping is active for some examples and not for others
            total = torch.sqrt(sum(n**2 for n in norms))
            assert bool(torch.any(total > c)) and bool(torch.any(total < c))
        else:
            assert all(bool(torch.any(n > t)) for n, t in zip(norms, thresholds))
        ours.step()
        ours.zero_grad()
    for p, q in zip(net.parameters(), gsm._module.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=2e-6)  # Opacus divides by (norm + 1e-6)
    # the calibration of the noise is Opacus's: std = noise_multiplier * ||C||_2
    sens = 4.0 if clipping == "flat" else math.sqrt(sum(t * t for t in thresholds))
    assert Privatize(1.3, c, 16, clipping).noise_std(("a", "b", "c", "d")) == pytest.approx(1.3 * sens)
    gsm._close()


def test_dp_optimizer_matches_the_functional_private_driver_noise_included():
    w, batches = _linear_problem(batch=5)
    make = lambda: lo.dp_muon(0.05, noise_multiplier=0.7, max_grad_norm=(0.5, 1.5), expected_batch_size=5,  # noqa
                              norm=PolarSVD(), generator=11, bias_correction=True, max_correction=0.5,
                              )
    driver = make()
    x, state = dict(w), driver.init(w)
    params = [torch.nn.Parameter(w[k].clone()) for k in w]
    opt = lo.DPOptimizer([{"params": params, "param_names": list(w)}], make(), sample_rate=0.1)
    for g in batches:
        x, state = driver.step(x, g, state)
        for p, k in zip(params, w):
            p.grad_sample = g[k]
        opt.step()
    for p, k in zip(params, w):
        torch.testing.assert_close(p.detach(), x[k], rtol=1e-12, atol=1e-14)
    assert opt.steps == 4
    # BiasCorrection is given the noise of the joint privatisation
    assert opt.noise_std == pytest.approx(0.7 * math.sqrt(0.25 + 2.25) / 5)


# ---------------------------------------------------------------------------------------------------------------
# The private torch optimizers
# ---------------------------------------------------------------------------------------------------------------
def _tiny(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def test_dp_optimizer_privatises_all_groups_jointly():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = lo.DPOptimizer([{"params": [a]}, {"params": [b], "lr": 0.5}],
                         lo.dp_sgd(1.0, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=1,
                                   clipping="flat"))
    a.grad_sample = torch.tensor([[3.0, 0.0]])
    b.grad_sample = torch.tensor([[0.0, 4.0]])  # the example's whole gradient has norm 5: clipped by 1/5 jointly
    opt.step()
    torch.testing.assert_close(a.detach(), torch.tensor([-0.6, 0.0]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b.detach(), torch.tensor([0.0, -0.4]), rtol=1e-6, atol=1e-7)


def test_dp_optimizer_refusals_and_bookkeeping():
    net = _tiny()
    driver = lo.dp_sign_sgd(0.01, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4, generator=0)
    with pytest.raises(ValueError, match="DPOptimizer"):
        lo.LMOOptimizer(net.parameters(), driver)
    with pytest.raises(ValueError, match="private driver"):
        lo.DPOptimizer(net.parameters(), lo.sign_sgd(0.01))
    with pytest.raises(ValueError, match="nonfinite"):
        lo.DPOptimizer(net.parameters(), driver, nonfinite="skip")
    opt = lo.DPOptimizer(net.parameters(), driver, sample_rate=0.01)
    with pytest.raises(ValueError, match="grad_sample"):
        opt.step()
    x, y = torch.randn(4, 4), torch.randint(0, 2, (4,))
    privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y)
    net[0].weight.grad_sample = net[0].weight.grad_sample[:3]
    with pytest.raises(ValueError, match="one batch size"):
        opt.step()
    privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y)
    net[0].bias.grad_sample[1, 0] = float("nan")
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(lo.NonFiniteGradientError):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before)) and opt.steps == 0
    # an empty Poisson batch is a step: noise only, counted
    privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x[:0], y[:0])
    opt.step()
    assert opt.steps == 1 and any(not torch.equal(p, q) for p, q in zip(net.parameters(), before))
    opt.zero_grad()
    assert all(p.grad_sample is None for p in net.parameters())
    with pytest.raises(ValueError, match="sample_rate"):
        lo.DPOptimizer(net.parameters(), driver).epsilon(1e-5)


def test_per_example_driver_checks_shapes():
    driver = lo.dp_sgd(0.1, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=2)
    x = {"w": np.zeros((3, 2)), "b": np.zeros(3)}
    state = driver.init(x)
    with pytest.raises(ValueError, match="per-example"):
        driver.step(x, {"w": np.zeros((3, 2)), "b": np.zeros(3)}, state)
    with pytest.raises(ValueError, match="one batch size"):
        driver.step(x, {"w": np.zeros((2, 3, 2)), "b": np.zeros((4, 3))}, state)
    new, state = driver.step(x, {"w": np.ones((2, 3, 2)), "b": np.ones((2, 3))}, state)
    assert new["w"].shape == (3, 2) and state["step"] == 1


def test_epsilon_reported_as_training_goes_and_kept_across_checkpoints():
    net = _tiny()
    make = lambda: lo.DPOptimizer(net.parameters(), lo.dp_sgd(  # noqa: E731
        0.1, noise_multiplier=1.1, max_grad_norm=1.0, expected_batch_size=4), sample_rate=0.02)
    opt = make()
    assert opt.epsilon(1e-5) == 0.0
    eps = []
    for _ in range(3):
        x, y = torch.randn(4, 4), torch.randint(0, 2, (4,))
        privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y)
        opt.step()
        eps.append(opt.epsilon(1e-5))
    assert eps[0] < eps[1] < eps[2]
    assert eps[2] == pytest.approx(privacy.epsilon(1.1, 0.02, 3, 1e-5))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = make()
    fresh.load_state_dict(torch.load(buffer, weights_only=False))  # LMOOptimizer groups hold a geometry object
    assert fresh.steps == 3 and fresh.epsilon(1e-5) == eps[2]
    other = lo.DPOptimizer(net.parameters(), lo.dp_sgd(0.1, noise_multiplier=0.9, max_grad_norm=1.0,
                                                       expected_batch_size=4), sample_rate=0.02)
    with pytest.raises(ValueError, match="noise_multiplier"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="privacy record"):
        other.load_state_dict(torch.optim.SGD(net.parameters(), lr=0.1).state_dict())


@needs_spectral
def test_dpmuon_is_the_dp_muon_configuration_and_reports_epsilon():
    net = torch.nn.Sequential(torch.nn.Linear(5, 6, bias=False), torch.nn.Tanh(), torch.nn.Linear(6, 3, bias=False))
    twin = torch.nn.Sequential(torch.nn.Linear(5, 6, bias=False), torch.nn.Tanh(), torch.nn.Linear(6, 3, bias=False))
    twin.load_state_dict(net.state_dict())
    kwargs = dict(noise_multiplier=0.9, max_grad_norm=[0.5, 1.0], expected_batch_size=6, generator=5,
                  bias_correction=True)
    opt = lo.DPMuon(net.parameters(), lr=0.01, sample_rate=0.05, **kwargs)
    ref = lo.DPOptimizer(twin.parameters(), lo.dp_muon(0.01, weight_decay=0.1, beta=0.95, **kwargs), sample_rate=0.05)
    for _ in range(3):
        x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
        for model, o in ((net, opt), (twin, ref)):
            privacy.per_sample_grads(model, torch.nn.functional.cross_entropy, x, y)
            o.step()
            o.zero_grad()
    for p, q in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert opt.epsilon(1e-5) == pytest.approx(privacy.epsilon(0.9, 0.05, 3, 1e-5))
    assert isinstance(opt.dp_driver().grad_transform, Privatize)


# ---------------------------------------------------------------------------------------------------------------
# Accounting
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma,q,steps,delta", [(1.1, 256 / 60000, 14040, 1e-5), (0.8, 0.01, 1000, 1e-6),
                                                 (2.0, 0.1, 50, 1e-5)])
def test_epsilon_agrees_with_the_libraries(sigma, q, steps, delta):
    dpa = pytest.importorskip("dp_accounting")
    ours = privacy.epsilon(sigma, q, steps, delta)
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)
    assert ours == dpa.rdp.RdpAccountant().compose(event).get_epsilon(delta)
    opacus_accountants = pytest.importorskip("opacus.accountants")
    theirs = opacus_accountants.RDPAccountant()
    theirs.history = [(sigma, q, steps)]
    assert ours == pytest.approx(theirs.get_epsilon(delta), rel=0.03)  # an independent RDP implementation
    pld = privacy.epsilon(sigma, q, steps, delta, accountant="pld")
    assert pld <= ours * 1.001 and pld > 0.5 * ours  # PLD is tighter than RDP


def test_noise_multiplier_for_a_target_epsilon():
    q, steps, delta, target = 0.01, 2000, 1e-5, 2.0
    sigma = privacy.noise_multiplier_for(target, delta, q, steps)
    assert privacy.epsilon(sigma, q, steps, delta) <= target
    assert privacy.epsilon(sigma - 0.01, q, steps, delta) > target
    opacus_accountants = pytest.importorskip("opacus.accountants.utils")
    theirs = opacus_accountants.get_noise_multiplier(target_epsilon=target, target_delta=delta, sample_rate=q,
                                                     steps=steps, accountant="rdp")
    assert sigma == pytest.approx(theirs, rel=0.03)
    assert privacy.epsilon(0.0, q, 1, delta) == math.inf and privacy.epsilon(1.0, q, 0, delta) == 0.0
    for bad in (dict(sample_rate=0.0), dict(sample_rate=1.5)):
        with pytest.raises(ValueError, match="sample_rate"):
            privacy.epsilon(1.0, steps=1, delta=delta, **bad)
    with pytest.raises(ValueError, match="accountant"):
        privacy.epsilon(1.0, 0.1, 1, delta, accountant="gdp")


# ---------------------------------------------------------------------------------------------------------------
# Poisson sampling
# ---------------------------------------------------------------------------------------------------------------
def test_poisson_sampler_statistics_and_empty_batches():
    n, q = 400, 0.05
    sampler = privacy.PoissonSampler(n, q, steps=2000, generator=0)
    sizes, counts = [], np.zeros(n)
    for batch in sampler:
        sizes.append(len(batch))
        counts[batch] += 1
        assert len(set(batch)) == len(batch)
    sizes = np.array(sizes)
    assert sizes.mean() == pytest.approx(n * q, rel=0.03)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.15)
    assert counts.mean() / 2000 == pytest.approx(q, rel=0.03)
    assert list(privacy.PoissonSampler(n, q, steps=5, generator=1)) == list(privacy.PoissonSampler(n, q, steps=5,
                                                                                                   generator=1))
    assert sampler.expected_batch_size == n * q
    data = torch.utils.data.TensorDataset(torch.randn(30, 3), torch.arange(30))
    loader = privacy.poisson_loader(data, 0.02, steps=60, generator=2)
    shapes = [(xb.shape, yb.shape, yb.dtype) for xb, yb in loader]
    assert ((0, 3), (0,), torch.int64) in shapes  # empty batches come as zero-length tensors
    assert len(loader) == 60
    with pytest.raises(ValueError, match="batch_size"):
        privacy.poisson_loader(data, 0.1, batch_size=4)


# ---------------------------------------------------------------------------------------------------------------
# DP-MuonBC
# ---------------------------------------------------------------------------------------------------------------
def _polar(m):
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


@pytest.mark.parametrize("shape", [(6, 10), (9, 5), (6, 6)])
def test_bias_correction_reduces_the_bias_of_the_noisy_polar_factor(shape):
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g, dtype=torch.float64))
    r = min(shape)
    s = torch.linspace(3.0, 1.0, r, dtype=torch.float64)
    m = u[:, :r] @ torch.diag(s) @ v[:, :r].T
    target = -_polar(m)                                     # the noise-free direction lmo(M)
    std, draws = 0.25, 20000
    noisy = m + std * torch.randn(draws, *shape, generator=g, dtype=torch.float64)
    raw = -_polar(noisy)
    fixed = polar_bias_correction(noisy, raw, std**2, max_correction=1.0)
    bias_raw = torch.linalg.matrix_norm(raw.mean(0) - target).item()
    bias_fixed = torch.linalg.matrix_norm(fixed.mean(0) - target).item()
    mc_error = torch.linalg.matrix_norm(raw.std(0)).item() / math.sqrt(draws)
    assert bias_raw > 10 * mc_error, (bias_raw, mc_error)   # the bias is real, not Monte Carlo noise
    assert bias_fixed < 0.2 * bias_raw, (bias_raw, bias_fixed)  # measured: 0.07-0.09
    # the predicted leading bias is the measured one
    k = torch.tensor([sum(1 / (s[i] + s[j]) ** 2 for j in range(r) if j != i) + abs(shape[0] - shape[1])
                      / (2 * s[i] ** 2) for i in range(r)], dtype=torch.float64)
    predicted = std**2 * torch.linalg.vector_norm(k).item()
    assert bias_raw == pytest.approx(predicted, rel=0.25)


def test_bias_correction_hook_in_the_driver_and_the_noise_it_assumes():
    g = torch.Generator().manual_seed(1)
    noise_free = torch.randn(5, 8, generator=g, dtype=torch.float64)
    bc = BiasCorrection(0.3, polar=lambda norm: True)
    driver = lo.Driver(geometry=PolarSVD(), lr=1.0, direction_transform=bc)
    plain = lo.Driver(geometry=PolarSVD(), lr=1.0)
    x = {"w": torch.zeros(5, 8, dtype=torch.float64)}
    got, _ = driver.step(x, {"w": noise_free}, driver.init(x))
    ref, _ = plain.step(x, {"w": noise_free}, plain.init(x))
    expected = polar_bias_correction(noise_free, ref["w"], 0.09)
    torch.testing.assert_close(got["w"], expected)
    assert not torch.allclose(got["w"], ref["w"])
    # the variance the estimator carries: Monte Carlo over the driver's own EMA
    b1, b2, t = 0.95**2, 0.95, 7
    est = lo.Driver(geometry="l2", lr=0.0, beta1=b1, beta2=b2)
    z = {"w": torch.zeros(20000)}
    state = est.init(z)
    for _ in range(t):
        z, state = est.step(z, {"w": torch.randn(20000, generator=g, dtype=torch.float32)}, state)
    c = b1 * state["slots"]["w"]["momentum_buffer"] + (1 - b1) * torch.randn(20000, generator=g)
    assert c.var().item() == pytest.approx(noise_variance_factor(t, b1, b2), rel=0.05)
    assert noise_variance_factor(0, 0.0, 0.0) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# docs/privacy.md
# ---------------------------------------------------------------------------------------------------------------
def _page_blocks():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "privacy.md").read_text()
    return re.findall(r"```python\n(.*?)```", page, flags=re.S)


def test_privacy_page_code_runs():
    blocks = _page_blocks()
    assert len(blocks) >= 3  # the quick start (its own test below) and the recipes after it
    for block in blocks[1:]:
        exec(compile(block, "docs/privacy.md", "exec"), {})


@needs_spectral
def test_privacy_page_quick_start_spends_at_most_its_target():
    namespace: dict = {}
    exec(compile(_page_blocks()[0], "docs/privacy.md", "exec"), namespace)
    spent = namespace["opt"].epsilon(namespace["delta"])
    assert 0.8 * namespace["target_epsilon"] < spent <= namespace["target_epsilon"]


@needs_spectral
def test_bias_correction_acts_on_spectral_parameters_only():
    g = torch.Generator().manual_seed(2)
    grads = {"w": torch.randn(4, 7, generator=g, dtype=torch.float64), "b": torch.randn(5, generator=g,
                                                                                       dtype=torch.float64)}
    rule = lambda name, shape: lmo.get_norm("spectral") if len(shape) == 2 else lmo.get_norm("l2")  # noqa: E731
    x = {k: torch.zeros_like(v) for k, v in grads.items()}
    with_bc = lo.Driver(geometry=rule, lr=1.0, direction_transform=BiasCorrection(0.4))
    plain = lo.Driver(geometry=rule, lr=1.0)
    a, _ = with_bc.step(x, grads, with_bc.init(x))
    b, _ = plain.step(x, grads, plain.init(x))
    assert torch.equal(a["b"], b["b"])  # not a polar oracle: unchanged
    torch.testing.assert_close(a["w"], polar_bias_correction(grads["w"], b["w"], 0.16))


# ---------------------------------------------------------------------------------------------------------------
# Every parameter is trained privately
# ---------------------------------------------------------------------------------------------------------------
class Tagger(torch.nn.Module):
    """Embedding, biases, a GroupNorm and a LayerNorm gain: every kind of parameter a DP model has."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.embed = torch.nn.Embedding(10, 8)
        self.hidden = torch.nn.Linear(8, 8)
        self.group = torch.nn.GroupNorm(2, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, tokens):
        h = self.embed(tokens).mean(dim=1)
        h = self.group(torch.tanh(self.hidden(h)))
        return self.out(self.norm(h))


@needs_spectral
def test_dpmuon_trains_biases_gains_and_embeddings_privately_never_from_grad():
    net = Tagger()
    x, y = torch.randint(0, 10, (6, 5)), torch.randint(0, 3, (6,))
    opt = lo.DPMuon(net.parameters(), lr=0.05, noise_multiplier=0.0, max_grad_norm=1e6, expected_batch_size=6,
                    weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.full_like(p, float("nan"))  # a step that read p.grad would refuse it or write NaN
    privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, x, y)
    mean = {n: p.grad_sample.mean(dim=0) for n, p in net.named_parameters()}  # sigma = 0, no clipping: the mean
    opt.step()
    vectors = [n for n, p in net.named_parameters() if p.ndim < 2]
    assert {"hidden.bias", "group.weight", "group.bias", "norm.weight", "out.bias"} <= set(vectors)
    for n, p in net.named_parameters():
        assert torch.isfinite(p).all() and not torch.equal(p.detach(), before[n]), n
    for n in vectors:  # the default vector geometry: rms, step -lr c / rms(c), c = (1 - beta^2) g from zero momentum
        g = mean[n]
        expected = before[n] - 0.05 * g / torch.sqrt(torch.mean(g * g))
        torch.testing.assert_close(dict(net.named_parameters())[n].detach(), expected, rtol=1e-5, atol=1e-6)
    # the embedding is a matrix: Muon's step, of spectral norm lr * adjust = 0.05 * sqrt(10 / 8)
    moved = dict(net.named_parameters())["embed.weight"].detach() - before["embed.weight"]
    assert float(torch.linalg.matrix_norm(moved, 2)) == pytest.approx(0.05 * math.sqrt(10 / 8), rel=0.25)
    assert opt.steps == 1


def test_a_batchnorm_model_is_refused_with_the_reason():
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 2))
    with pytest.raises(ValueError, match="BatchNorm.*mixes the examples"):
        privacy.per_sample_grads(net, torch.nn.functional.cross_entropy, torch.randn(5, 4), torch.randint(0, 2, (5,)))
    assert all(getattr(p, "grad_sample", None) is None for p in net.parameters())
