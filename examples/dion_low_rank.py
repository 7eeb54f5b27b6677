"""Dion and Orth-Dion against Muon at rank fractions 1/16 to 1: loss against steps and against floats communicated.

The claims under test:

- Dion (Ahn et al., arXiv 2504.05295): amortised power iteration with error feedback gives low-rank orthonormal
  updates whose rank fraction trades quality for communication: the loss degrades gracefully as the rank falls, and
  at an equal number of floats communicated low-rank Dion is ahead of Muon.
- Orth-Dion (arXiv 2605.16341): replacing Dion's column normalisation of the right factor by a QR closes the
  convergence gap to Muon at Dion's communication cost.

Setting (ours): the demo's character-level transformer (:mod:`lmo.optimizers.demo`, 2 layers, width 64) on the
Python standard library's source (train 80% / test 10% / validation 10%). The hidden matrices are stepped by
``lmo.optimizers.muon``, ``dion`` or ``orth_dion`` (in ``LMOOptimizer``), the embeddings, head and gains by the
demo's AdamW in every run. Learning rates are tuned on the validation split (seed 0) for Muon and, at rank fraction
1/4, for Dion and Orth-Dion, then held for all rank fractions. Floats communicated per step and hidden matrix are
those a data-parallel step all-reduces: ``m n`` for Muon (the gradient), ``(m + n) r`` for Dion and Orth-Dion (the
factors ``P`` and ``R``); counted from the shapes, not measured (everything runs in one process).

    python examples/dion_low_rank.py [--out docs/img] [--quick] [--seeds N] [--json PATH]
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro  # noqa: E402
import _training  # noqa: E402
import numpy as np  # noqa: E402

import lmo.optimizers as lo  # noqa: E402
from lmo.optimizers import demo  # noqa: E402

CLAIM = ("Dion (arXiv 2504.05295): low-rank Dion with error feedback trades quality for communication gracefully and "
         "beats Muon per float communicated; Orth-Dion (arXiv 2605.16341): QR of the right factor closes the gap to "
         "Muon at Dion's communication cost.")
FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
FULL = {"cfg": demo.Config(steps=400), "text_chars": 800_000, "eval_batches": 16, "eval_every": 25, "seeds": 2,
        "fractions": FRACTIONS, "tune_fraction": 1 / 4,
        "grids": {"Muon": (0.015, 0.03, 0.06), "Dion": (0.015, 0.03, 0.06), "Orth-Dion": (0.015, 0.03, 0.06)}}
QUICK = {"cfg": demo.Config(layers=1, width=64, heads=4, context=32, batch=16, steps=120), "text_chars": 200_000,
         "eval_batches": 4, "eval_every": 20, "seeds": 1, "fractions": (1 / 16, 1 / 4, 1.0), "tune_fraction": None,
         "lrs": {"Muon": 0.03, "Dion": 0.03, "Orth-Dion": 0.03}}


def driver(method: str, lr: float, fraction: float | None, seed: int) -> lo.Driver:
    if method == "Muon":
        return lo.muon(lr, weight_decay=0.0)
    make = {"Dion": lo.dion, "Orth-Dion": lo.orth_dion}[method]
    return make(lr, rank_fraction=fraction, weight_decay=0.0, seed=seed)


def floats_per_step(model: Any, method: str, fraction: float | None) -> dict[str, int]:
    """Floats a data-parallel step all-reduces: per hidden matrix ``m n`` (Muon) or ``(m + n) r`` (Dion's ``P``, ``R``);
    the AdamW part (embeddings, head, gains) sends its full gradient in every method."""
    from lmo.optimizers.torch import split_muon_params

    matrices, _, others = split_muon_params(model)
    if method == "Muon":
        hidden = sum(p.numel() for _, p in matrices)
    else:
        norm = driver(method, 0.01, fraction, 0).geometry.norm
        hidden = sum((p.shape[0] + p.shape[1]) * norm.rank_of(p.shape[0], p.shape[1]) for _, p in matrices)
    return {"hidden": int(hidden), "rest": int(sum(p.numel() for _, p in others))}


def _key(method: str, fraction: float | None) -> str:
    return method if method == "Muon" else f"{method} r={_frac(fraction)}"


def _frac(f: float) -> str:
    return "1" if f == 1 else f"1/{round(1 / f)}"


def run(sizes: dict, *, show: bool = True) -> dict:
    cfg = sizes["cfg"]
    data = _training.CharData(sizes["text_chars"], cfg.context, cfg.batch, sizes["eval_batches"])
    configs = [("Muon", None)] + [(m, f) for m in ("Dion", "Orth-Dion") for f in sizes["fractions"]]
    seeds = list(range(sizes["seeds"]))
    cache: dict[tuple, dict] = {}
    bar = _repro.progress(desc="runs", disable=not show)

    def train(method: str, fraction: float | None, lr: float, seed: int) -> dict:
        key = (method, fraction, lr, seed)
        if key not in cache:
            build = lambda model: _training.hidden_and_rest(model, driver(method, lr, fraction, seed))  # noqa: E731
            cache[key] = _training.train_lm(build, data, cfg, seed=seed, steps=cfg.steps,
                                            eval_every=sizes["eval_every"])
            bar.update(1)
        return cache[key]

    lrs, tuning = dict(sizes.get("lrs", {})), {}
    for method, grid in sizes.get("grids", {}).items():
        fraction = None if method == "Muon" else sizes["tune_fraction"]
        lrs[method], scores = _training.tune(
            lambda lr, method=method, fraction=fraction: train(method, fraction, lr, 0)["val"], grid)
        tuning[method] = {"val_loss": {f"{k:g}": v for k, v in scores.items()},
                          "best_at_edge": _training.at_edge(lrs[method], scores)}
    import torch

    torch.manual_seed(0)
    model = demo.TinyGPT(data.vocab, cfg)
    results = {}
    for method, fraction in configs:
        runs = [train(method, fraction, lrs[method], s) for s in seeds]
        floats = floats_per_step(model, method, fraction)
        val = np.array([r["val_loss"] for r in runs])
        results[_key(method, fraction)] = {
            "method": method, "rank_fraction": fraction, "lr": lrs[method],
            "floats_per_step": floats, "val_steps": runs[0]["val_steps"], "val_curve": val.mean(0).tolist(),
            "val_curve_min": val.min(0).tolist(), "val_curve_max": val.max(0).tolist(),
            "test": _training.interval([r["test"] for r in runs]), "val": _training.interval([r["val"] for r in runs]),
            "ms_per_step": float(np.mean([r["ms_per_step"] for r in runs])),
        }
    bar.close()
    # a target every configuration reaches: the worst final validation loss (mean over seeds)
    target = max(r["val_curve"][-1] for r in results.values())
    for r in results.values():
        reached = next(s for s, v in zip(r["val_steps"], r["val_curve"]) if v <= target)
        r["steps_to_target"] = reached
        r["hidden_floats_to_target"] = reached * r["floats_per_step"]["hidden"]
    verdicts = _verdicts(results, sizes["fractions"])
    return {
        "claim": CLAIM,
        "setting": (f"char-level GPT ({cfg.layers} layers, width {cfg.width}, context {cfg.context}) on {data.chars} "
                    f"characters of the Python stdlib (train 80% / test 10% / validation 10%), batch {cfg.batch}, "
                    f"{cfg.steps} steps, constant learning rates; hidden matrices by Muon / Dion / Orth-Dion, the rest "
                    f"by AdamW 3e-3; lrs tuned on validation (Muon; Dion and Orth-Dion at rank fraction "
                    f"{sizes['tune_fraction']}) and held across ranks; {len(seeds)} seed(s); metric: test loss at "
                    f"the last step, and validation loss against steps and against floats communicated (counted)"),
        "holds": bool(verdicts["Dion: graceful in rank"] and verdicts["Dion: fewer floats than Muon to the target"]
                      and verdicts["Orth-Dion: at or below Dion at every rank < 1"]),
        "holds_parts": verdicts, "target_val_loss": target, "lrs": lrs, "tuning_val_loss": tuning,
        "results": results, "seeds": seeds, "config": dataclasses.asdict(cfg), "chars": data.chars,
    }


def _verdicts(results: dict, fractions: tuple) -> dict[str, bool]:
    low = [f for f in fractions if f < 1]
    dion = [results[_key("Dion", f)]["test"]["mean"] for f in sorted(fractions)]
    muon = results["Muon"]
    return {
        # the loss at fixed steps rises as the rank falls (non-increasing in the rank, up to 0.01 nats of noise)
        "Dion: graceful in rank": bool(all(a >= b - 0.01 for a, b in zip(dion, dion[1:]))),
        "Dion: fewer floats than Muon to the target": bool(all(
            results[_key("Dion", f)]["hidden_floats_to_target"] < muon["hidden_floats_to_target"] for f in low)),
        "Orth-Dion: at or below Dion at every rank < 1": bool(all(
            results[_key("Orth-Dion", f)]["test"]["mean"] <= results[_key("Dion", f)]["test"]["mean"] for f in low)),
    }


def plot(res: dict, path: Path) -> Path:
    plt = _repro.plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    cmap = plt.get_cmap("viridis")
    fractions = sorted({r["rank_fraction"] for r in res["results"].values() if r["rank_fraction"] is not None})
    for name, r in res["results"].items():
        if r["method"] == "Muon":
            style = {"color": "tab:red", "lw": 2.2}
        else:
            style = {"color": cmap(fractions.index(r["rank_fraction"]) / max(1, len(fractions) - 1)),
                     "ls": "-" if r["method"] == "Dion" else "--"}
        steps = np.array(r["val_steps"])
        axes[0].plot(steps, r["val_curve"], label=name, **style)
        axes[1].plot(steps[1:] * r["floats_per_step"]["hidden"], r["val_curve"][1:], label=name, **style)
    for method, marker in (("Dion", "o"), ("Orth-Dion", "s")):
        rows = [r for r in res["results"].values() if r["method"] == method]
        rows.sort(key=lambda r: r["rank_fraction"])
        axes[2].errorbar([r["rank_fraction"] for r in rows], [r["test"]["mean"] for r in rows],
                         yerr=[r["test"]["half"] for r in rows], marker=marker, capsize=3, label=method)
    m = res["results"]["Muon"]["test"]
    axes[2].axhspan(m["low"], m["high"], color="tab:red", alpha=0.15)
    axes[2].axhline(m["mean"], color="tab:red", label="Muon")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xticks(fractions, [_frac(f) for f in fractions])
    axes[2].minorticks_off()
    axes[1].set_xscale("log")
    axes[1].axhline(res["target_val_loss"], color="grey", lw=0.8, ls=":")
    for ax in axes[:2]:
        ax.set_ylim(top=min(ax.get_ylim()[1], 3.0))
    axes[0].set(xlabel="step", ylabel="validation loss (mean over seeds)")
    axes[1].set(xlabel="floats all-reduced for the hidden matrices (cumulative, counted)",
                ylabel="validation loss")
    axes[2].set(xlabel="rank fraction r / min(m, n)", ylabel="test loss at the last step (95% interval)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    axes[2].legend(fontsize=8)
    cfg = res["config"]
    fig.suptitle(f"Dion / Orth-Dion vs Muon, char-level transformer ({cfg['layers']} layer(s), width {cfg['width']}), "
                 f"{cfg['steps']} steps, {len(res['seeds'])} seed(s); solid Dion, dashed Orth-Dion", fontsize=10)
    return _repro.savefig(fig, path)


def table(res: dict) -> str:
    rows = [f"{'config':16s} {'lr':>6s} {'floats/step':>11s} {'test loss':>15s} {'floats to target':>16s}"]
    for name, r in res["results"].items():
        rows.append(f"{name:16s} {r['lr']:6.3g} {r['floats_per_step']['hidden']:11d} {_training.fmt(r['test']):>15s} "
                    f"{r['hidden_floats_to_target']:16.3g}")
    rows += [f"{k}: {v}" for k, v in res["holds_parts"].items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    args, sizes = _training.parse(__doc__, argv, FULL, QUICK)
    return _training.report(args, "dion_low_rank", run(sizes, show=not args.no_progress), plot, table)


if __name__ == "__main__":
    main()
