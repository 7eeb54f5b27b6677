"""(d) Per-sample gradients for DP: ``lmo.privacy.per_sample_grads`` (torch.func) vs Opacus's GradSampleModule.

Both fill ``p.grad_sample`` of shape ``(B, *p.shape)`` (Opacus's convention, which the library follows) for one
batch of a small MLP and of a small conv net. The library's function is ``vmap(grad(loss))`` over the batch
(functional_call on the module's parameters); Opacus runs forward + backward through ``GradSampleModule`` (its
hooks fill ``grad_sample``). Both results are checked against each other before timing.

Usage: ``python benchmarks/dp_per_sample.py [--quick] [--json PATH] [--threads N] [--repeats R]``.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings

import torch

from lmo.privacy import per_sample_grads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved, parser, report, setup  # noqa: E402

warnings.filterwarnings("ignore", message="Full backward hook")


def models(quick: bool) -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
    w = 32 if quick else 256
    b = 8 if quick else 64
    mlp = torch.nn.Sequential(torch.nn.Linear(w, 2 * w), torch.nn.ReLU(), torch.nn.Linear(2 * w, 2 * w),
                              torch.nn.ReLU(), torch.nn.Linear(2 * w, 10))
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8 if quick else 32, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8 if quick else 32, 16 if quick else 64, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(16 if quick else 64, 10))
    side = 8 if quick else 32
    return {
        f"MLP {w}-{2 * w}-{2 * w}-10, batch {b}": (mlp, torch.randn(b, w), torch.randint(0, 10, (b,))),
        f"conv net on 3x{side}x{side}, batch {b}": (conv, torch.randn(b, 3, side, side), torch.randint(0, 10, (b,))),
    }


def func_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    per_sample_grads(model, torch.nn.functional.cross_entropy, x, y, method="functorch")
    return {k: p.grad_sample for k, p in model.named_parameters()}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    try:
        from opacus import GradSampleModule
    except ImportError:
        print("opacus is not installed: pip install opacus")
        raise SystemExit(2) from None
    repeats = args.repeats or (2 if args.quick else 7)
    rows = []
    for label, (model, x, y) in models(args.quick).items():
        plain = copy.deepcopy(model)  # torch.func runs on an unhooked copy with the same weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gsm = GradSampleModule(model, loss_reduction="sum")

        def opacus_grads(gsm=gsm, x=x, y=y):
            gsm.zero_grad(set_to_none=True)
            for p in gsm.parameters():
                p.grad_sample = None
            torch.nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
            return {k.removeprefix("_module."): p.grad_sample for k, p in gsm.named_parameters()}

        ours, theirs = func_grads(plain, x, y), opacus_grads()
        worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
        times = interleaved({"func": lambda p=plain, x=x, y=y: func_grads(p, x, y), "opacus": opacus_grads}, repeats)
        rows.append([label, times["func"] * 1e3, times["opacus"] * 1e3, times["func"] / times["opacus"],
                     f"{worst:.1e}"])
    report(args, "dp_per_sample", ["model", "lmo.privacy ms", "Opacus ms", "lmo.privacy / Opacus",
                                   "max |difference|"], rows, {"target": "lmo.privacy / Opacus <= 1"})


if __name__ == "__main__":
    main()
