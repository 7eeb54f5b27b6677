"""The demo of ``python -m lmo demo``: a tiny character-level transformer trained on the Python standard library's
own source, with AdamW (torch's) and with this package's Muon, Scion, Lion and SignSGD, compared per step and per
second on the CPU.

Needs torch, matplotlib and tqdm (``pip install "torch==2.13.0" -e ".[demo]"``); nothing is downloaded: the text
is read from the installed standard library (``sysconfig.get_paths()["stdlib"]``). ``examples/char_transformer.py``
runs the same comparison at full size.
"""

from __future__ import annotations

import math
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Config", "load_text", "TinyGPT", "make_optimizers", "train", "compare", "plot", "OPTIMIZERS", "main"]

OPTIMIZERS = ("AdamW", "Muon", "Scion", "Lion", "SignSGD")


@dataclass(frozen=True)
class Config:
    """Sizes of the comparison. The defaults are the demo's (about a minute on two CPU cores)."""

    layers: int = 2
    width: int = 64
    heads: int = 4
    context: int = 64
    batch: int = 32
    steps: int = 300
    eval_every: int = 50
    eval_batches: int = 4
    text_chars: int = 400_000
    seed: int = 0
    threads: int | None = 1
    lrs: dict[str, float] = field(default_factory=dict)  # overrides of DEFAULT_LR


DEFAULT_LR = {"AdamW": 9e-3, "Muon": 0.03, "Scion": 5.6e-3, "Lion": 9e-3, "SignSGD": 8e-3}
"""Learning rates, each the best validation loss after 300 steps at the demo's size in a sweep over factors of 3,
extended until the best value had a worse neighbour on both sides (the sweep is in docs/reproductions.md)."""


def load_text(max_chars: int = 400_000) -> str:
    """Concatenate the ``.py`` files at the top of the installed standard library (sorted by name), ASCII only."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        text = "".join(c for c in text if c == "\n" or 32 <= ord(c) < 127)
        chunks.append(text)
        total += len(text)
        if total >= max_chars:
            break
    text = "".join(chunks)[:max_chars]
    if len(text) < 10_000:
        raise RuntimeError(f"found only {len(text)} characters of Python source under {root}")
    return text


def _torch():
    import torch

    return torch


def TinyGPT(vocab: int, cfg: Config):  # noqa: N802 - a class factory, so that torch is imported lazily
    """A GPT-style decoder: token and position embeddings, ``cfg.layers`` pre-norm blocks, a separate output head."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(cfg.width)
            self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
            self.proj = nn.Linear(cfg.width, cfg.width, bias=False)
            self.ln2 = nn.LayerNorm(cfg.width)
            self.fc = nn.Linear(cfg.width, 4 * cfg.width, bias=False)
            self.fc2 = nn.Linear(4 * cfg.width, cfg.width, bias=False)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, cfg.heads, C // cfg.heads).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.proj(y)
            return x + self.fc2(F.gelu(self.fc(self.ln2(x))))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(vocab, cfg.width)
            self.wpe = nn.Embedding(cfg.context, cfg.width)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.ln_f = nn.LayerNorm(cfg.width)
            self.lm_head = nn.Linear(cfg.width, vocab, bias=False)

        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    return Model()


def make_optimizers(name: str, model: Any, lr: float) -> list[Any]:
    """The optimizer(s) for ``name``: torch's AdamW, or this package's Muon (+AdamW for embeddings, head and gains,
    as in Muon's recipe), Scion (the Scion recipe over all parameters), Lion, SignSGD."""
    torch = _torch()
    from lmo.optimizers import ScionRecipe, scion
    from lmo.optimizers.torch import Lion, LMOOptimizer, SignSGD, muon_with_adamw

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if name == "AdamW":
        return [torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)]
    if name == "Muon":
        return list(muon_with_adamw(model, lr=lr, weight_decay=0.0, adamw_lr=3e-3, adamw_weight_decay=0.0))
    if name == "Scion":
        recipe = ScionRecipe(radius=3.0, output_radius=30.0, embedding_radius=1.0, bias_radius=1.0,
                             embedding=("wte", "wpe"))
        group = {"params": [p for _, p in named], "param_names": [n for n, _ in named]}
        return [LMOOptimizer([group], scion(lr, beta=0.9, geometry=recipe))]
    if name == "Lion":
        return [Lion(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.1)]
    if name == "SignSGD":
        return [SignSGD(model.parameters(), lr=lr)]
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def _batches(data: Any, cfg: Config, generator: Any):
    torch = _torch()
    while True:
        ix = torch.randint(len(data) - cfg.context - 1, (cfg.batch,), generator=generator)
        x = torch.stack([data[i:i + cfg.context] for i in ix.tolist()])
        y = torch.stack([data[i + 1:i + 1 + cfg.context] for i in ix.tolist()])
        yield x, y


def fit(model: Any, optimizers: list[Any], batches: Any, steps: int, *,
        after_step: Callable[[int], None] | None = None,
        stop_on_nonfinite: bool = False) -> tuple[list[float], list[float], bool]:
    """The training loop of the demo and of the reproductions: per step, the next ``(x, y)`` of ``batches``, the
    cross-entropy of ``model(x)``, ``zero_grad``, ``backward`` and ``step`` of each optimizer, then
    ``after_step(step)`` (untimed: evaluation, progress). Returns the training loss per step (``nan`` where it was
    not finite), the seconds of training up to each step, and whether the loss turned non-finite; with
    ``stop_on_nonfinite`` the loop stops there, before stepping (a diverged learning rate)."""
    F = _torch().nn.functional
    losses: list[float] = []
    seconds: list[float] = []
    elapsed = 0.0
    for step in range(1, steps + 1):
        x, y = next(batches)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if not math.isfinite(value) and stop_on_nonfinite:
            return losses, seconds, True
        for opt in optimizers:
            opt.step()
        elapsed += time.perf_counter() - start
        losses.append(value if math.isfinite(value) else float("nan"))
        seconds.append(elapsed)
        if after_step is not None:
            after_step(step)
    return losses, seconds, any(math.isnan(v) for v in losses)


def train(name: str, cfg: Config, text: str | None = None, *, progress: Callable[[int], None] | None = None,
          make: Callable[[Any], list[Any]] | None = None) -> dict:
    """Train one model with optimizer ``name``; returns per-step training losses, wall-clock seconds, and the
    validation loss every ``cfg.eval_every`` steps (on fixed held-out batches). ``make(model)``, if given, builds
    the optimizers instead (``name`` then only labels the run; benchmarks/defaults.py measures defaults so)."""
    torch = _torch()
    F = torch.nn.functional
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    text = text if text is not None else load_text(cfg.text_chars)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    torch.manual_seed(cfg.seed)
    model = TinyGPT(len(chars), cfg)
    lr = cfg.lrs.get(name, DEFAULT_LR.get(name))
    optimizers = make_optimizers(name, model, lr) if make is None else make(model)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    batches = _batches(train_data, cfg, gen)
    val_gen = torch.Generator().manual_seed(12345)
    val = [next(_batches(val_data, cfg, val_gen)) for _ in range(cfg.eval_batches)]

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            total = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in val)
        model.train()
        return total / len(val)

    val_steps, val_losses = [0], [evaluate()]

    def after(step: int) -> None:
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val_steps.append(step)
            val_losses.append(evaluate())
        if progress is not None:
            progress(1)

    losses, seconds, _ = fit(model, optimizers, batches, cfg.steps, after_step=after)
    return {"optimizer": name, "lr": lr, "train_loss": losses, "seconds": seconds, "val_steps": val_steps,
            "val_loss": val_losses, "parameters": sum(p.numel() for p in model.parameters()), "vocab": len(chars)}


def compare(cfg: Config, names: tuple[str, ...] = OPTIMIZERS, *, show: bool = True) -> dict:
    """Train one model per optimizer (same data order, same initialisation) with a progress bar."""
    from tqdm.auto import tqdm

    text = load_text(cfg.text_chars)
    runs = {}
    with tqdm(total=cfg.steps * len(names), desc="training", disable=not show, dynamic_ncols=True) as bar:
        for name in names:
            bar.set_postfix_str(name)
            runs[name] = train(name, cfg, text, progress=bar.update)
    return {"config": {k: v for k, v in cfg.__dict__.items()}, "chars": len(text), "runs": runs}


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot(result: dict, path: str | Path, title: str = "") -> Path:
    """Training loss per step and per second, and validation loss per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"AdamW": "black", "Muon": "tab:red", "Scion": "tab:green", "Lion": "tab:blue", "SignSGD": "tab:orange"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, run in result["runs"].items():
        smooth = _smooth(run["train_loss"], 10)
        steps = range(1, len(smooth) + 1)
        label = f"{name} (lr {run['lr']:g})"
        axes[0].plot(steps, smooth, color=colors.get(name), label=label)
        axes[1].plot(run["seconds"], smooth, color=colors.get(name), label=label)
        axes[2].plot(run["val_steps"], run["val_loss"], "o-", ms=3, color=colors.get(name), label=label)
    for ax, xlabel, ylabel in zip(axes, ("step", "seconds (optimizer + forward/backward)", "step"),
                                  ("training loss (nats/char, 10-step mean)", "training loss", "validation loss")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(title or (f"char-level transformer on the Python stdlib source: {cfg['layers']} layers, "
                           f"width {cfg['width']}, context {cfg['context']}, batch {cfg['batch']}"), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(result: dict) -> str:
    """A short text table: final validation loss, best validation loss, seconds, seconds per step."""
    rows = [f"{'optimizer':9s} {'lr':>8s} {'val loss':>9s} {'best':>7s} {'seconds':>8s} {'ms/step':>8s}"]
    ranked = sorted(result["runs"].values(), key=lambda r: r["val_loss"][-1])
    for r in ranked:
        secs = r["seconds"][-1]
        rows.append(f"{r['optimizer']:9s} {r['lr']:8.2g} {r['val_loss'][-1]:9.3f} {min(r['val_loss']):7.3f} "
                    f"{secs:8.1f} {1000 * secs / len(r['seconds']):8.1f}")
    return "\n".join(rows)


def main(out: str | Path = "out", *, quick: bool = False, steps: int | None = None, show: bool = True) -> int:
    """Run the demo: train, write ``demo.png`` and ``demo.json`` under ``out``, print the table and the paths."""
    import json

    cfg = Config(steps=20, eval_every=10, eval_batches=1, batch=8, context=32, text_chars=60_000) if quick else Config()
    if steps is not None:
        cfg = Config(**{**cfg.__dict__, "steps": steps, "eval_every": max(1, min(cfg.eval_every, steps))})
    print(f"Training a {cfg.layers}-layer, width-{cfg.width} character-level transformer on the Python standard "
          f"library's source, {cfg.steps} steps each with {', '.join(OPTIMIZERS)} (CPU) ...", flush=True)
    result = compare(cfg, show=show)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = plot(result, out / "demo.png")
    (out / "demo.json").write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(table(result))
    print()
    print(f"plot:    {png.resolve()}")
    print(f"numbers: {(out / 'demo.json').resolve()}")
    return 0
