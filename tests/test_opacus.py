"""Opacus interop (docs/privacy.md, "Opacus"): the loss reduction must match GradSampleModule's loss_reduction.

With ``reduction="sum"`` in the loss and the module's default ``loss_reduction="mean"``, Opacus scales every
``grad_sample`` by the batch size B; clipping then hides the mistake (a clipped example has the threshold's norm
whatever its scale). Comparing with :func:`lmo.privacy.per_sample_grads` on one batch catches it."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
opacus = pytest.importorskip("opacus")

import lmo.optimizers as lo  # noqa: E402
from lmo.privacy import clear_grad_sample, per_sample_grads  # noqa: E402

B = 6


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (B,), generator=g)


def _reference(model, x, y):
    per_sample_grads(model, torch.nn.functional.cross_entropy, x, y)
    out = {n: p.grad_sample.clone() for n, p in model.named_parameters()}
    clear_grad_sample(model.parameters())
    return out


def _opacus_grad_sample(model, x, y, loss_reduction, reduction):
    """A user's loop with Opacus: wrap, forward, reduce the loss, backward; returns p.grad_sample by name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus's and torch's notices about the backward hooks
        gsm = opacus.GradSampleModule(model, loss_reduction=loss_reduction)
        try:
            torch.nn.functional.cross_entropy(gsm(x), y, reduction=reduction).backward()
            return {n: p.grad_sample.clone() for n, p in gsm._module.named_parameters()}
        finally:
            gsm._close()
            for p in model.parameters():
                p.grad, p.grad_sample = None, None


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matching_reductions_give_per_sample_grads(reduction):
    model = _model()
    x, y = _batch()
    ours = _reference(model, x, y)
    theirs = _opacus_grad_sample(model, x, y, loss_reduction=reduction, reduction=reduction)
    for n in ours:
        torch.testing.assert_close(theirs[n], ours[n], rtol=1e-10, atol=1e-12, msg=n)


def test_a_sum_loss_under_the_default_mean_module_is_caught_by_the_comparison():
    model = _model()
    x, y = _batch()
    ours = _reference(model, x, y)
    theirs = _opacus_grad_sample(model, x, y, loss_reduction="mean", reduction="sum")  # the mistake
    for n in ours:
        assert not torch.allclose(theirs[n], ours[n])  # the comparison fails ...
        torch.testing.assert_close(theirs[n], B * ours[n], rtol=1e-10, atol=1e-12, msg=n)  # ... by the factor B


def test_clipping_hides_the_mistake_from_the_step():
    # every example clipped (threshold far below the norms): the B-times grad_sample gives the very same step,
    # so neither the loss curve nor the update shows the mistake; only the comparison above does
    x, y = _batch()
    steps = {}
    for name, (loss_reduction, reduction) in {"right": ("mean", "mean"), "mistake": ("mean", "sum")}.items():
        model = _model()
        grads = _opacus_grad_sample(model, x, y, loss_reduction, reduction)
        for n, p in model.named_parameters():
            p.grad_sample = grads[n]
        driver = lo.dp_sgd(0.5, noise_multiplier=0.0, max_grad_norm=1e-4, expected_batch_size=B, clipping="flat")
        opt = lo.DPOptimizer(model.parameters(), driver, sample_rate=0.1)
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        steps[name] = [p.detach() - b for p, b in zip(model.parameters(), before)]
    for right, mistake in zip(steps["right"], steps["mistake"]):
        torch.testing.assert_close(mistake, right, rtol=1e-9, atol=1e-15)
        assert right.abs().max() > 0


def test_the_check_in_docs_privacy_runs():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "privacy.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "GradSampleModule(model)" in b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block, "docs/privacy.md", "exec"), {})
        with pytest.raises(AssertionError):  # the mistake of the comment fails the check
            exec(compile(block.replace("(gsm(x), y)", "(gsm(x), y, reduction='sum')"), "docs/privacy.md", "exec"), {})
