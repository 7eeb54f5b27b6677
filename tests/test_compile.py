"""``torch.compile(optimizer.step)``: one compilation under an LR schedule with a tensor lr, results equal to eager.

The test compiles with dynamo's ``"eager"`` backend: recompilations are dynamo's decision (its guards), whatever
backend then compiles the graphs, and inductor's C++ compilation would cost this suite a minute.
``benchmarks/muon_compile.py`` measures the inductor compilation (warm-up, steady step, agreement with eager)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from _doubles import skip_without  # noqa: E402

import lmo.optimizers as lo  # noqa: E402

SHAPES = [(8, 8), (8, 8), (16, 8), (8, 16), (5,)]  # two stacked pairs (a tall matrix with a wide one), a vector


def _run(make, grads, compiled):
    import torch._dynamo as dynamo

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.1 * torch.randn(s, generator=gen)) for s in SHAPES]
    opt = make(params)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + t))
    dynamo.reset()
    dynamo.utils.counters.clear()
    step = torch.compile(opt.step, backend="eager") if compiled else opt.step
    graphs = []
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        step()
        schedule.step()
        graphs.append(dynamo.utils.counters["stats"]["unique_graphs"])
    return params, graphs, opt


@skip_without("spectral")
def test_compiled_muon_step_compiles_once_under_a_schedule_and_equals_eager():
    def make(params):
        return lo.Muon(params, lr=torch.tensor(0.05), vectors="rms")

    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(6)]
    compiled, graphs, opt = _run(make, grads, compiled=True)
    eager, _, _ = _run(make, grads, compiled=False)
    # the first step creates the momenta, the second steps them: compiled by then, and never again
    assert graphs[1] > 0 and graphs[-1] == graphs[1], f"recompiled after warm-up: graphs per step {graphs}"
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.05 / 7)  # the schedule moved the tensor lr
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # compiled code keeps no memory of its own between steps: buffers shared by the stacks in turn would be aliased
    # graph inputs (inductor refused them: "expected size 131072 == 65536")
    assert opt.kept_nbytes() == 0
