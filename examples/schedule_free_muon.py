"""Schedule-free Muon and SF-NorMuon against a cosine schedule at the same tuning budget, with checkpoints at
every horizon.

The claims under test:

- Schedule-free (Defazio et al. 2024, "The Road Less Scheduled", arXiv 2405.15682): without a learning-rate
  schedule or a stopping time, schedule-free averaging matches or beats a tuned schedule that knows the horizon;
  its iterate is good at any step ("anytime").
- SF-NorMuon (Apte et al. 2026, arXiv 2605.23061): schedule-free NorMuon matches or exceeds tuned AdamW (with a
  schedule for the horizon) on language models, at every horizon.

Setting (ours): the demo's character-level transformer (:mod:`lmo.optimizers.demo`, 2 layers, width 64) on the
Python standard library's source (train 80% / test 10% / validation 10%). Each optimizer's hidden matrices get a
Muon-family driver, the embeddings, head and gains a sign-descent driver at a fifth of the learning rate (every
update then has RMS ``0.2 lr``: Muon's ``adjust_lr="match_rms_adamw"``), so that the whole optimizer is an LMO
driver that ``lmo.optimizers.schedule_free`` can wrap:

- Muon + cosine: ``muon`` (momentum 0.95, Nesterov) and ``signum`` (0.9), cosine decay to 0 at the horizon;
- NorMuon + cosine: ``normuon`` and ``signum``, the same schedule;
- SF-Muon: ``schedule_free(muon(beta=0))`` and ``schedule_free(sign_sgd)`` (the interpolation ``beta = 0.9`` takes
  the place of momentum, as in Defazio et al.), constant learning rate;
- SF-NorMuon: ``schedule_free(normuon(beta=0))`` and ``schedule_free(sign_sgd)``;
- AdamW + cosine: ``torch.optim.AdamW`` on all parameters (the demo's betas and weight decay), cosine schedule.

Every run has the same 20-step linear warmup and no weight decay in the LMO drivers. Each method's learning rate is
tuned on the validation split (seed 0; a 3-point grid, doubled, extended while the best is at an edge: the same
budget for each); then 3 seeds. The schedule-free runs are tuned once, at the full horizon, and evaluated (at their
averaged iterate) at a quarter, half and all of it; the cosine runs are repeated for each of those horizons, each
with its learning rate tuned for that horizon.

    python examples/schedule_free_muon.py [--out docs/img] [--quick] [--seeds N] [--json PATH]
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

CLAIM = ("Schedule-free (Defazio et al. 2024, arXiv 2405.15682) matches or beats a tuned schedule without knowing the "
         "horizon, at every horizon; SF-NorMuon (arXiv 2605.23061) matches or exceeds tuned AdamW with a schedule.")
METHODS = ("Muon + cosine", "SF-Muon", "NorMuon + cosine", "SF-NorMuon", "AdamW + cosine")
SCHEDULE_FREE = ("SF-Muon", "SF-NorMuon")
WARMUP = 20
FULL = {"cfg": demo.Config(steps=400), "text_chars": 800_000, "eval_batches": 16, "eval_every": 25, "seeds": 3,
        "tune_horizons": True,
        "grids": {"Muon + cosine": (0.02, 0.04, 0.08), "NorMuon + cosine": (0.02, 0.04, 0.08),
                  "SF-Muon": (0.16, 0.32, 0.64), "SF-NorMuon": (0.16, 0.32, 0.64),
                  "AdamW + cosine": (4.5e-3, 9e-3, 1.8e-2)}}
QUICK = {"cfg": demo.Config(layers=1, width=64, heads=4, context=32, batch=16, steps=160), "text_chars": 200_000,
         "eval_batches": 4, "eval_every": 20, "seeds": 1,
         "lrs": {"Muon + cosine": 0.04, "NorMuon + cosine": 0.04, "SF-Muon": 0.32, "SF-NorMuon": 0.32,
                 "AdamW + cosine": 9e-3}}


def build(method: str, lr: float, horizon: int) -> Any:
    """``model -> optimizers`` for ``method`` at base learning rate ``lr`` (cosine methods decay to 0 at ``horizon``;
    schedule-free methods ignore it)."""
    if method == "AdamW + cosine":
        def adamw(model: Any) -> list[Any]:
            import torch

            opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
            schedule = _training.cosine(1.0, horizon, WARMUP)
            return [_Scheduled(opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule))]
        return adamw
    base = lo.normuon if "NorMuon" in method else lo.muon
    if method in SCHEDULE_FREE:
        hidden_lr, rest_lr = _training.warmup_constant(lr, WARMUP), _training.warmup_constant(0.2 * lr, WARMUP)
        hidden = lo.schedule_free(base(hidden_lr, beta=0.0, nesterov=False, adjust_lr="match_rms_adamw",
                                       weight_decay=0.0), beta=0.9)
        rest = lo.schedule_free(lo.sign_sgd(rest_lr), beta=0.9)
    else:
        hidden_lr, rest_lr = _training.cosine(lr, horizon, WARMUP), _training.cosine(0.2 * lr, horizon, WARMUP)
        hidden = base(hidden_lr, adjust_lr="match_rms_adamw", weight_decay=0.0)
        rest = lo.signum(rest_lr, beta=0.9)
    return lambda model: _training.hidden_and_rest(model, hidden, rest)


class _Scheduled:
    """An optimizer whose ``step`` also steps its LR scheduler (so the training loop needs no schedule logic)."""

    def __init__(self, opt: Any, scheduler: Any) -> None:
        self.opt, self.scheduler = opt, scheduler

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.opt.step()
        self.scheduler.step()


def run(sizes: dict, *, show: bool = True) -> dict:
    cfg = sizes["cfg"]
    T = cfg.steps
    horizons = (T // 4, T // 2, T)
    data = _training.CharData(sizes["text_chars"], cfg.context, cfg.batch, sizes["eval_batches"])
    seeds = list(range(sizes["seeds"]))
    cache: dict[tuple, dict] = {}
    bar = _repro.progress(desc="runs", disable=not show)

    def train(method: str, lr: float, seed: int, horizon: int = T) -> dict:
        key = (method, lr, seed, horizon)
        if key not in cache:
            test_at = horizons if method in SCHEDULE_FREE else ()
            cache[key] = _training.train_lm(build(method, lr, horizon), data, cfg, seed=seed, steps=horizon,
                                            eval_every=sizes["eval_every"], test_at=test_at)
            bar.update(1)
        return cache[key]

    # one learning rate per method at the full horizon; with "tune_horizons", the cosine methods get one more
    # tuning per shorter horizon (a schedule that knows its horizon is tuned for it; schedule-free is tuned once)
    lrs = {m: {h: lr for h in horizons} for m, lr in sizes.get("lrs", {}).items()}
    tuning: dict[str, dict] = {}
    for method, grid in sizes.get("grids", {}).items():
        tuned = [h for h in horizons if h == T or (sizes.get("tune_horizons") and method not in SCHEDULE_FREE)]
        lrs[method], tuning[method] = {}, {}
        for h in tuned:
            best, scores = _training.tune(lambda lr, method=method, h=h: train(method, lr, 0, h)["val"], grid)
            lrs[method][h] = best
            tuning[method][str(h)] = {"val_loss": {f"{k:g}": v for k, v in scores.items()},
                                      "best_at_edge": _training.at_edge(best, scores)}
        for h in horizons:
            lrs[method].setdefault(h, lrs[method][T])
    results = {}
    for method in METHODS:
        runs = [train(method, lrs[method][T], s) for s in seeds]
        at = {}
        for h in horizons:
            if method in SCHEDULE_FREE:
                at[h] = [r["test_at"][h] for r in runs]
            else:
                at[h] = [train(method, lrs[method][h], s, h)["test"] for s in seeds]
        val = np.array([r["val_loss"] for r in runs])
        results[method] = {"lr": lrs[method][T], "lr_at_horizon": {str(h): lrs[method][h] for h in horizons},
                           "test": _training.interval(at[T]),
                           "val": _training.interval([r["val"] for r in runs]),
                           "test_at_horizon": {str(h): _training.interval(v) for h, v in at.items()},
                           "val_steps": runs[0]["val_steps"], "val_curve": val.mean(0).tolist(),
                           "ms_per_step": float(np.mean([r["ms_per_step"] for r in runs]))}
    bar.close()
    comparisons = {}
    for sf, cos in (("SF-Muon", "Muon + cosine"), ("SF-NorMuon", "NorMuon + cosine"), ("SF-NorMuon", "AdamW + cosine")):
        comparisons[f"{sf} - {cos}"] = {
            str(h): _training.paired(results[sf]["test_at_horizon"][str(h)]["values"],
                                     results[cos]["test_at_horizon"][str(h)]["values"]) for h in horizons}
    tolerance = 0.01  # "matches": within 0.01 nats/char of the mean, or better
    parts = {
        f"{name} at or below (+{tolerance}) at every horizon": bool(all(c[str(h)]["mean"] <= tolerance
                                                                         for h in horizons))
        for name, c in comparisons.items()
    }
    return {
        "claim": CLAIM,
        "setting": (f"char-level GPT ({cfg.layers} layers, width {cfg.width}, context {cfg.context}) on {data.chars} "
                    f"characters of the Python stdlib (train 80% / test 10% / validation 10%), batch {cfg.batch}; "
                    f"horizons {list(horizons)} steps; {WARMUP}-step warmup; lr tuned per method on validation at "
                    f"{T} steps (3-point doubling grid + up to 2 extensions)"
                    f"{' and, for the cosine methods, at each shorter horizon' if sizes.get('tune_horizons') else ''}"
                    f", {len(seeds)} seed(s); metric: test loss at each horizon (cosine: a run per horizon; "
                    f"schedule-free: one run, averaged iterate)"),
        "holds": bool(all(parts.values())), "holds_parts": parts, "tolerance": tolerance,
        "horizons": list(horizons), "tuning_val_loss": tuning, "results": results,
        "comparisons": comparisons, "seeds": seeds, "config": dataclasses.asdict(cfg), "chars": data.chars,
    }


COLORS = {"Muon + cosine": "tab:red", "SF-Muon": "tab:red", "NorMuon + cosine": "tab:blue", "SF-NorMuon": "tab:blue",
          "AdamW + cosine": "black"}


def plot(res: dict, path: Path) -> Path:
    plt = _repro.plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for method, r in res["results"].items():
        style = {"color": COLORS[method], "ls": "--" if method in SCHEDULE_FREE else "-"}
        label = f"{method} (lr {r['lr']:g})"
        axes[0].plot(r["val_steps"], r["val_curve"], label=label, **style)
        hs = res["horizons"]
        rows = [r["test_at_horizon"][str(h)] for h in hs]
        shift = 1 + 0.03 * (list(res["results"]).index(method) - 2)
        axes[1].errorbar([h * shift for h in hs], [x["mean"] for x in rows], yerr=[x["half"] for x in rows],
                         marker="s" if method in SCHEDULE_FREE else "o", capsize=3, label=method, **style)
    axes[0].set_ylim(top=min(axes[0].get_ylim()[1], 3.0))
    axes[0].set(xlabel="step", ylabel="validation loss (mean over seeds; full-horizon runs)")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(res["horizons"], [str(h) for h in res["horizons"]])
    axes[1].minorticks_off()
    axes[1].set(xlabel="horizon (steps)", ylabel="test loss at the horizon (95% interval)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    cfg = res["config"]
    fig.suptitle(f"schedule-free vs cosine, char-level transformer ({cfg['layers']} layer(s), width {cfg['width']}), "
                 f"{len(res['seeds'])} seed(s): cosine runs know their horizon, schedule-free runs do not", fontsize=10)
    return _repro.savefig(fig, path)


def table(res: dict) -> str:
    hs = res["horizons"]
    rows = [f"{'method':17s} {'lr':>7s} " + " ".join(f"{'test @' + str(h):>15s}" for h in hs)]
    for method, r in res["results"].items():
        rows.append(f"{method:17s} {r['lr']:7.3g} " + " ".join(
            f"{_training.fmt(r['test_at_horizon'][str(h)]):>15s}" for h in hs))
    for name, c in res["comparisons"].items():
        rows.append(f"paired {name}: " + ", ".join(f"@{h} {_training.fmt(c[str(h)])}" for h in hs))
    rows += [f"{k}: {v}" for k, v in res["holds_parts"].items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    args, sizes = _training.parse(__doc__, argv, FULL, QUICK)
    return _training.report(args, "schedule_free_muon", run(sizes, show=not args.no_progress), plot, table)


if __name__ == "__main__":
    main()
