"""A tiny character-level transformer trained with AdamW (torch's) and with this package's Muon, Scion, Lion,
SignSGD and EF-Muon, over several seeds: test loss with intervals, loss per step and per second.

The claims under test:

- Muon (Jordan et al. 2024): on transformer training, orthogonalised updates of the hidden matrices reach a lower
  loss than AdamW in the same number of steps, at a small cost per step.
- Scion (Pethick et al. 2025, arXiv 2502.07529): the same for the Scion recipe (an LMO per layer type).
- Error feedback (Parshakova et al., arXiv 2605.08980): error feedback restores Muon's convergence on convex
  Lipschitz functions, but *degrades* Muon in practice (their CIFAR-10 and nanoGPT runs): EF-Muon trains worse.

The model, the text (the installed standard library's source, nothing downloaded) and the optimizer recipes are
those of ``python -m lmo demo`` (:mod:`lmo.optimizers.demo`); the text is split into train (the first 80%), test (the
next 10%) and validation (the last 10%, where the demo's learning rates were tuned). EF-Muon is
``lmo.optimizers.error_feedback(lmo.optimizers.muon(...))`` on the hidden matrices with the demo's AdamW on the rest;
its learning rate is tuned by ``--tune EF-Muon`` with the same protocol as the demo's (see docs/reproductions.md).

    python examples/char_transformer.py [--out docs/img] [--quick] [--seeds N] [--json PATH]
    python examples/char_transformer.py --tune EF-Muon --lrs 1 3 10 30     # the learning-rate sweep
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro  # noqa: E402
import _training  # noqa: E402

import lmo.optimizers as lo  # noqa: E402
from lmo.optimizers import demo  # noqa: E402

OPTIMIZERS = (*demo.OPTIMIZERS, "EF-Muon")
EF_MUON_LR = 10.0
"""EF-Muon's learning rate: the best validation loss after 300 steps at the demo's size in the sweep
``--tune EF-Muon`` (factors of about 3, extended until the best had a worse neighbour on each side). Its scale is
SGD's, not Muon's: error feedback steps by the projection of ``lr * c + e`` on the polar factor, whose length is
that of ``lr * c`` on average (see ``lmo.optimizers.hooks.ScaledLMOCompressor``)."""
LRS = {**demo.DEFAULT_LR, "EF-Muon": EF_MUON_LR}

FULL = {"cfg": demo.Config(steps=600), "text_chars": 800_000, "eval_batches": 16, "eval_every": 50, "seeds": 3}
QUICK = {"cfg": demo.Config(layers=1, width=64, heads=4, context=32, batch=16, steps=150), "text_chars": 200_000,
         "eval_batches": 4, "eval_every": 50, "seeds": 2}
CLAIMS = {
    "Muon": "Muon (Jordan et al. 2024) reaches a lower loss than AdamW in the same number of steps",
    "Scion": "Scion (Pethick et al. 2025, arXiv 2502.07529) reaches a lower loss than AdamW in the same steps",
    "EF-Muon": ("error feedback (Parshakova et al., arXiv 2605.08980) restores Muon's convergence on convex Lipschitz "
                "functions but degrades Muon in practice"),
}


def build(name: str, lr: float) -> Any:
    """``model -> optimizers`` for ``name``: the demo's recipes, and EF-Muon (error feedback around Muon on the
    hidden matrices, the demo's AdamW on embeddings, head and gains, as in the demo's Muon recipe)."""
    if name == "EF-Muon":
        return lambda model: _training.hidden_and_rest(model, lo.error_feedback(lo.muon(lr, weight_decay=0.0)))
    if name not in demo.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return lambda model: demo.make_optimizers(name, model, lr)


def run(sizes: dict, names: tuple[str, ...] = OPTIMIZERS, *, lrs: dict | None = None, show: bool = True) -> dict:
    """Every optimizer for ``sizes['seeds']`` seeds (seed s: the same initialisation and data order for all)."""
    lrs = {**LRS, **(lrs or {})}
    cfg = sizes["cfg"]
    data = _training.CharData(sizes["text_chars"], cfg.context, cfg.batch, sizes["eval_batches"])
    seeds = list(range(sizes["seeds"]))
    runs: dict[str, list[dict]] = {}
    with _repro.progress(total=cfg.steps * len(names) * len(seeds), desc="training", disable=not show) as bar:
        for name in names:
            bar.set_postfix_str(name)
            runs[name] = [_training.train_lm(build(name, lrs[name]), data, cfg, seed=s, steps=cfg.steps,
                                             eval_every=sizes["eval_every"], progress=bar.update) for s in seeds]
    summary = {name: {"lr": lrs[name], "test": _training.interval([r["test"] for r in rs]),
                      "val": _training.interval([r["val"] for r in rs]),
                      "train_last50": _training.interval([sum(r["train_loss"][-50:]) / 50 for r in rs]),
                      "ms_per_step": _training.interval([r["ms_per_step"] for r in rs]),
                      "parameters": rs[0]["parameters"], "diverged": any(r["diverged"] for r in rs)}
               for name, rs in runs.items()}
    test = {name: [r["test"] for r in rs] for name, rs in runs.items()}
    comparisons = {f"{a} - {b}": _training.paired(test[a], test[b])
                   for a, b in (("Muon", "AdamW"), ("Scion", "AdamW"), ("EF-Muon", "Muon"), ("Lion", "AdamW"),
                                ("SignSGD", "AdamW")) if a in test and b in test}
    verdicts = {}
    for name, key, sign in (("Muon", "Muon - AdamW", -1), ("Scion", "Scion - AdamW", -1),
                            ("EF-Muon", "EF-Muon - Muon", +1)):
        if key in comparisons:
            c = comparisons[key]
            verdicts[name] = {"claim": CLAIMS[name], "direction": bool(sign * c["mean"] > 0),
                              "resolved": bool(c["low"] > 0 if sign > 0 else c["high"] < 0)}
    return {
        "claim": "; ".join(CLAIMS.values()),
        "setting": (f"char-level GPT ({cfg.layers} layers, width {cfg.width}, {cfg.heads} heads, context {cfg.context},"
                    f" {summary[names[0]]['parameters']} parameters) on {data.chars} characters of the Python "
                    f"stdlib (train 80% / test 10% / validation 10%), batch {cfg.batch}, {cfg.steps} steps, constant "
                    f"learning rates tuned on validation (demo sweep; EF-Muon by --tune), {len(seeds)} seeds "
                    f"(init + data order); metric: test loss (nats/char) at the last step, mean and 95% t-interval"),
        "holds": bool(all(v["direction"] for k, v in verdicts.items() if k != "Scion")),
        "verdicts": verdicts, "summary": summary, "comparisons": comparisons,
        "config": dataclasses.asdict(cfg), "chars": data.chars, "seeds": seeds,
        "curves": {name: {"val_steps": rs[0]["val_steps"], "val_loss": [r["val_loss"] for r in rs],
                          "seconds_per_step": [r["ms_per_step"] / 1000 for r in rs],
                          "train_steps": list(range(1, cfg.steps + 1, 5)),
                          "train_loss_mean": _mean_curve([_smooth(r["train_loss"], 10) for r in rs], 5)}
                   for name, rs in runs.items()},
    }


def sweep(name: str, lrs: list[float], sizes: dict, *, show: bool = True) -> dict:
    """The demo's tuning protocol on the validation split: one seed, each learning rate of ``lrs``."""
    cfg = sizes["cfg"]
    data = _training.CharData(sizes["text_chars"], cfg.context, cfg.batch, sizes["eval_batches"])
    out = {}
    for lr in _repro.progress(lrs, desc=f"sweep {name}", disable=not show):
        r = _training.train_lm(build(name, lr), data, cfg, seed=0, steps=cfg.steps, eval_every=cfg.steps)
        out[lr] = r["val"]
    return out


def _mean_curve(curves: list[list[float]], every: int) -> list[float]:
    """The mean over seeds of equally long curves, every ``every``-th step from the first, to 4 decimals."""
    import numpy as np

    return [round(float(v), 4) for v in np.mean(np.array(curves), axis=0)[::every]]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


COLORS = {"AdamW": "black", "Muon": "tab:red", "Scion": "tab:green", "Lion": "tab:blue", "SignSGD": "tab:orange",
          "EF-Muon": "tab:purple"}


def plot(res: dict, path: Path) -> Path:
    import numpy as np

    plt = _repro.plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, curve in res["curves"].items():
        color = COLORS.get(name)
        vals = np.array(curve["val_loss"])
        label = f"{name} (lr {res['summary'][name]['lr']:g})"
        axes[0].plot(curve["val_steps"], vals.mean(0), "o-", ms=3, color=color, label=label)
        axes[0].fill_between(curve["val_steps"], vals.min(0), vals.max(0), color=color, alpha=0.15)
        seconds = np.array(curve["train_steps"]) * float(np.mean(curve["seconds_per_step"]))
        axes[1].plot(seconds, curve["train_loss_mean"], color=color, label=label)
    names = list(res["summary"])
    ranked = sorted(names, key=lambda n: res["summary"][n]["test"]["mean"])
    for k, name in enumerate(ranked):
        t = res["summary"][name]["test"]
        axes[2].errorbar([t["mean"]], [k], xerr=[[t["half"]]], fmt="o", capsize=4, color=COLORS.get(name))
        axes[2].plot(t["values"], [k] * len(t["values"]), "x", color=COLORS.get(name), alpha=0.6)
    axes[2].set_yticks(range(len(ranked)), ranked)
    axes[0].set(xlabel="step", ylabel="validation loss (nats/char; band: min-max over seeds)")
    axes[1].set(xlabel="seconds (mean time per step x step; wall clock, shared CPU)",
                ylabel="training loss (10-step mean, mean over seeds)")
    axes[2].set(xlabel="test loss at the last step (mean, 95% interval, x: seeds)")
    axes[0].set_ylim(top=min(3.0, axes[0].get_ylim()[1]))
    axes[1].set_ylim(top=min(3.0, axes[1].get_ylim()[1]))
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    cfg = res["config"]
    fig.suptitle(f"char-level transformer on the Python stdlib source: {cfg['layers']} layers, width {cfg['width']}, "
                 f"context {cfg['context']}, batch {cfg['batch']}, {cfg['steps']} steps, {len(res['seeds'])} seeds",
                 fontsize=10)
    return _repro.savefig(fig, path)


def table(res: dict) -> str:
    rows = [f"{'optimizer':9s} {'lr':>7s} {'test loss':>15s} {'val loss':>15s} {'ms/step':>7s}"]
    for name in sorted(res["summary"], key=lambda n: res["summary"][n]["test"]["mean"]):
        s = res["summary"][name]
        rows.append(f"{name:9s} {s['lr']:7.3g} {_training.fmt(s['test']):>15s} {_training.fmt(s['val']):>15s} "
                    f"{s['ms_per_step']['mean']:7.1f}")
    for key, c in res["comparisons"].items():
        rows.append(f"paired {key}: {_training.fmt(c)}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    def options(p: Any) -> None:
        p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
        p.add_argument("--tune", choices=OPTIMIZERS, default=None,
                       help="sweep this optimizer's learning rate at the demo's size and 300 steps, on validation")
        p.add_argument("--lrs", type=float, nargs="+", default=None, help="the learning rates of --tune")

    args, sizes = _training.parse(__doc__, argv, FULL, QUICK, options)
    if args.tune:
        tuning = {**FULL, "cfg": dataclasses.replace(demo.Config(), steps=args.steps or 300)}
        scores = sweep(args.tune, args.lrs or [LRS[args.tune] * f for f in (1 / 3, 1, 3)], tuning,
                       show=not args.no_progress)
        for lr, v in scores.items():
            print(f"{args.tune} lr {lr:g}: validation loss {v:.3f}")
        return {"sweep": scores}
    res = run(sizes, tuple(args.optimizers), show=not args.no_progress)
    return _training.report(args, "char_transformer", res, plot, table)


if __name__ == "__main__":
    main()
