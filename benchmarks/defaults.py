"""(g) Every optimizer at its defaults, on the models people have: a small CNN on scikit-learn's digits and the
demo's character-level transformer.

- ``cnn``: ``load_digits`` (8x8 images, pixel values / 16), a stratified 80/20 split per seed; ``nn.Sequential`` of
  two 3x3 convolutions (16 and 32 channels, padding 1, ReLU), a hidden linear layer (2048 -> 64, ReLU) and an
  output layer (64 -> 10); 8 epochs, batch 64, cross-entropy; the test accuracy after the last epoch, per seed
  (the seed fixes the split, the initialisation and the batch order).
- ``gpt``: :mod:`lmo.optimizers.demo` at its size (2 layers, width 64, 300 steps of batch 32, context 64): the
  validation loss (nats per character) after the last step, per seed.

Each row is one optimizer as a new user builds it: AdamW at two learning rates, :func:`muon_with_adamw` and the
library's factories through ``LMOOptimizer(model.named_parameters(), factory())`` at their defaults, and the drop-in
classes at their references' defaults. ``--lr-factors 0.25,1,4`` also runs each factory at multiples of its
default learning rate (the range that works). No timing: the numbers are accuracies and losses.

Usage: ``python benchmarks/defaults.py [--task cnn|gpt|both] [--seeds N] [--only NAME,...] [--quick] [--json PATH]``.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import lmo.optimizers as lo
from lmo.optimizers import demo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parser, report, setup  # noqa: E402

Make = Callable[[torch.nn.Module], list[Any]]


def _one(optimizer: Any) -> list[Any]:
    return [optimizer]


def _factory(factory: Callable[..., lo.Driver], factor: float = 1.0) -> Make:
    """``LMOOptimizer(model.named_parameters(), factory(lr))`` at ``factor`` times the factory's default lr."""
    import inspect

    lr = inspect.signature(factory).parameters["lr"].default * factor
    return lambda model: _one(lo.LMOOptimizer(model.named_parameters(), factory(lr)))


def _initialised(model: torch.nn.Module, driver: lo.Driver) -> list[Any]:
    """Scion's initialisation of the model (lmo.optimizers.scion_init, the default recipe), then the driver."""
    model.load_state_dict(lo.scion_init(model.named_parameters(), seed=0), strict=False)
    return _one(lo.LMOOptimizer(model.named_parameters(), driver))


FACTORIES: dict[str, Callable[..., lo.Driver]] = {
    "scion()": lo.scion, "uscion()": lo.uscion, "muon()": lo.muon, "lion()": lo.lion, "signum()": lo.signum,
    "sign_sgd()": lo.sign_sgd,
}
VARIANTS: dict[str, Callable[..., lo.Driver]] = {
    "spectral_descent()": lo.spectral_descent, "exact_muon()": lo.exact_muon, "normuon()": lo.normuon,
    "dion()": lo.dion, "orth_dion()": lo.orth_dion, "low_rank_muon()": lo.low_rank_muon,
    "randomized_muon()": lo.randomized_muon, "heavy_tailed_muon()": lo.heavy_tailed_muon,
}
OPTIMIZERS: dict[str, Make] = {
    "AdamW lr=1e-3": lambda m: _one(torch.optim.AdamW(m.parameters(), lr=1e-3)),
    "AdamW lr=3e-3": lambda m: _one(torch.optim.AdamW(m.parameters(), lr=3e-3)),
    "muon_with_adamw()": lambda m: list(lo.muon_with_adamw(m)),
    **{name: _factory(f) for name, f in FACTORIES.items()},
    "scion() + scion_init": lambda m: _initialised(m, lo.scion()),
    "uscion() + scion_init": lambda m: _initialised(m, lo.uscion()),
    "Scion (reference defaults)": lambda m: _one(lo.Scion(m.parameters())),
    "Muon (torch.optim.Muon defaults, vectors='rms')": lambda m: _one(lo.Muon(m.parameters(), vectors="rms")),
    "Lion (lion-pytorch defaults)": lambda m: _one(lo.Lion(m.parameters())),
}


# -- the digits CNN --------------------------------------------------------------------------------------------
def digits(seed: int, limit: int | None = None) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    if limit:
        x, y = x[:limit], y[:limit]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    images = lambda a: torch.tensor(a / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)  # noqa: E731
    return images(x_train), torch.tensor(y_train), images(x_test), torch.tensor(y_test)


def digits_cnn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 64, 64), nn.ReLU(), nn.Linear(64, 10))


def train_cnn(make: Make, seed: int, epochs: int = 8, batch: int = 64, limit: int | None = None) -> float:
    """Test accuracy of the digits CNN after ``epochs`` epochs with the optimizers ``make(model)``."""
    x_train, y_train, x_test, y_test = digits(seed, limit)
    model = digits_cnn(seed)
    optimizers = make(model)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x_train), generator=order)
        for start in range(0, len(x_train), batch):
            idx = perm[start:start + batch]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers:
                opt.step()
    with torch.no_grad():
        return float((model(x_test).argmax(1) == y_test).float().mean())


# -- the char transformer --------------------------------------------------------------------------------------
def train_gpt(make: Make, seed: int, cfg: demo.Config, text: str) -> float:
    """Validation loss of the demo's transformer after ``cfg.steps`` steps with the optimizers ``make(model)``."""
    cfg = demo.Config(**{**cfg.__dict__, "seed": seed})
    run = demo.train("custom", cfg, text, make=make)
    return float(run["val_loss"][-1])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--task", choices=("cnn", "gpt", "both"), default="both")
    p.add_argument("--seeds", type=int, default=None, help="seeds per row (default: cnn 5, gpt 2; quick 1)")
    p.add_argument("--only", default="", help="comma-separated row names (prefixes) to run")
    p.add_argument("--lr-factors", default="", help="also run each factory at these multiples of its default lr")
    p.add_argument("--variants", action="store_true", help="also the research variants (docs/variants.md)")
    args = p.parse_args()
    setup(args)
    factories = {**FACTORIES, **(VARIANTS if args.variants else {})}
    rows_to_run = {**OPTIMIZERS, **{name: _factory(f) for name, f in factories.items() if name not in OPTIMIZERS}}
    for factor in [float(f) for f in args.lr_factors.split(",") if f]:
        if factor != 1.0:
            for name, f in factories.items():
                rows_to_run[f"{name[:-2]}(lr={f.__defaults__[0] * factor:.3g})"] = _factory(f, factor)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        rows_to_run = {k: v for k, v in rows_to_run.items() if any(k.startswith(w) for w in wanted)}
    if args.quick:  # a smoke test: two rows, a fraction of the data, one epoch / a few steps
        rows_to_run = {k: rows_to_run[k] for k in list(rows_to_run)[:1] + ["scion()"] if k in rows_to_run}
    tasks = ("cnn", "gpt") if args.task == "both" else (args.task,)
    cfg = (demo.Config(layers=1, width=32, heads=2, context=32, batch=8, steps=10, eval_every=10, eval_batches=1,
                       text_chars=20_000) if args.quick else demo.Config())
    text = demo.load_text(cfg.text_chars) if "gpt" in tasks else ""
    rows = []
    for name, make in rows_to_run.items():
        row: list[Any] = [name]
        for task in tasks:
            seeds = args.seeds or (1 if args.quick else {"cnn": 5, "gpt": 2}[task])
            if task == "cnn":
                values = [train_cnn(make, s, epochs=1 if args.quick else 8, limit=400 if args.quick else None)
                          for s in range(seeds)]
            else:
                values = [train_gpt(make, s, cfg, text) for s in range(seeds)]
            row += [statistics.mean(values), " ".join(f"{v:.3f}" for v in values)]
        rows.append(row)
        print(" | ".join(str(c) if not isinstance(c, float) else f"{c:.3f}" for c in row), flush=True)
    headers = ["optimizer"]
    for task in tasks:
        headers += (["CNN test accuracy (mean)", "per seed"] if task == "cnn"
                    else ["GPT val loss (mean)", "per seed"])
    report(args, "defaults", headers, rows, {
        "cnn": "digits / 16, Sequential(conv3x3 16, conv3x3 32, linear 2048->64, linear 64->10), "
               f"{1 if args.quick else 8} epoch(s), batch 64, test accuracy",
        "gpt": f"lmo.optimizers.demo ({cfg.layers} layers, width {cfg.width}, {cfg.steps} steps, batch {cfg.batch}, "
               f"context {cfg.context}), validation loss",
    })


if __name__ == "__main__":
    main()
