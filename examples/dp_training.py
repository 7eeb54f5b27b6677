"""Private training of a small classifier on scikit-learn's digits: accuracy against epsilon, DP-SGD vs DP-Muon.

For each target epsilon (at delta = 1e-5) the noise multiplier is calibrated with dp-accounting for the planned
number of steps of Poisson sampling; a two-layer network is trained with DP-SGD (``lmo.optimizers.dp_sgd`` in
``DPOptimizer``, flat clipping, as Opacus does it) and with DP-Muon (``lmo.optimizers.DPMuon``, per-matrix clipping),
each reporting the epsilon it spent. A non-private run of each method (epsilon = inf) is the reference.

    python examples/dp_training.py                 # full run (a few minutes on two CPU cores)
    python examples/dp_training.py --quick         # seconds
    python examples/dp_training.py --out results/  # where dp_training.png and dp_training.json go

Needs: torch, scikit-learn, matplotlib, tqdm, dp-accounting (``pip install "lmo-optim[privacy,examples]"``).
DP-Muon needs the registry's ``spectral`` geometry.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

import lmo
import lmo.optimizers as lo
from lmo.privacy import noise_multiplier_for, per_sample_grads, poisson_loader

DELTA = 1e-5
METHODS = ("dp_sgd", "dp_muon")


def load_digits(seed: int) -> tuple[torch.utils.data.TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 8x8 digits (ships with the package), standardised, split 80/20."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    x, y = _load(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    as_x = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    train = torch.utils.data.TensorDataset(as_x(x_train), torch.tensor(y_train))
    return train, (as_x(x_test), torch.tensor(y_test))


def make_model(hidden: int, seed: int) -> torch.nn.Module:
    """64 -> hidden -> 10 without biases: every parameter is a matrix (Muon's domain)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden, bias=False), torch.nn.Tanh(),
                               torch.nn.Linear(hidden, 10, bias=False))


def make_optimizer(method: str, model: torch.nn.Module, sigma: float, expected: float, rate: float, seed: int):
    if method == "dp_sgd":  # flat clipping to C = 1, as Opacus's default; lr from {0.25, 0.5, 1, 2} (0.25 best private)
        driver = lo.dp_sgd(0.25, noise_multiplier=sigma, max_grad_norm=1.0, expected_batch_size=expected,
                           clipping="flat", generator=seed)
        return lo.DPOptimizer(model.parameters(), driver, sample_rate=rate)
    # per-matrix clipping, C_W = 1 for both matrices (sensitivity sqrt(2))
    return lo.DPMuon(model.parameters(), lr=0.02, weight_decay=0.0, momentum=0.9, noise_multiplier=sigma,
                     max_grad_norm=1.0, expected_batch_size=expected, sample_rate=rate, generator=seed)


def accuracy(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    with torch.no_grad():
        return float((model(data[0]).argmax(1) == data[1]).float().mean())


def train(method: str, target_epsilon: float, *, epochs: int, batch: int, hidden: int, seed: int,
          data=None, progress: bool = True) -> dict:
    """Train one model privately to ``target_epsilon`` (``inf``: no noise, no clipping budget); returns the record."""
    train_set, test = data if data is not None else load_digits(seed)
    n = len(train_set)
    rate = batch / n
    steps = int(round(epochs / rate))
    sigma = 0.0 if math.isinf(target_epsilon) else noise_multiplier_for(target_epsilon, DELTA, rate, steps)
    model = make_model(hidden, seed)
    opt = make_optimizer(method, model, sigma, rate * n, rate, seed)
    loader = poisson_loader(train_set, rate, steps=steps, generator=seed + 1)
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"{method} eps={target_epsilon:g}", leave=False, disable=not progress)
    for xb, yb in bar:
        per_sample_grads(model, torch.nn.functional.cross_entropy, xb, yb)
        opt.step()
        opt.zero_grad()
    spent = opt.epsilon(DELTA) if sigma > 0 else math.inf
    return {"method": method, "target_epsilon": target_epsilon, "epsilon": spent, "delta": DELTA,
            "noise_multiplier": sigma, "sample_rate": rate, "steps": steps, "test_accuracy": accuracy(model, test),
            "seconds": time.perf_counter() - start}


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in zip(METHODS, "os"):
        rows = [r for r in records if r["method"] == method]
        private = [r for r in rows if math.isfinite(r["target_epsilon"])]
        if private:
            ax.plot([r["epsilon"] for r in private], [r["test_accuracy"] for r in private], marker=marker,
                    label=method.replace("_", "-").upper().replace("MUON", "Muon"))
        for r in rows:
            if not math.isfinite(r["target_epsilon"]):
                name = method.replace("_", "-").upper().replace("MUON", "Muon")
                ax.axhline(r["test_accuracy"], ls=":", lw=1, color=ax.lines[-1].get_color() if private else "grey",
                           label=f"{name[3:]} without privacy")
    ax.set_xscale("log")
    finite = sorted({r["epsilon"] for r in records if math.isfinite(r["epsilon"])})
    if finite:
        ax.set_xticks(finite, [f"{e:.3g}" for e in finite])
        ax.minorticks_off()
    ax.set_xlabel(f"epsilon (delta = {DELTA:g}, dp-accounting RDP)")
    ax.set_ylabel("test accuracy")
    ax.set_title("digits: private training, accuracy against epsilon")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (seconds): 2 epsilons, 3 epochs")
    parser.add_argument("--epsilons", type=float, nargs="+", default=None, help="target epsilons (default 0.5 1 2 4 8)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64, help="expected batch size (Poisson sampling)")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--no-baseline", action="store_true", help="skip the non-private runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the model is tiny, intra-op parallelism only costs here)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's notes on RDP orders it leaves out
    epsilons = args.epsilons or ([2.0, 8.0] if args.quick else [0.5, 1.0, 2.0, 4.0, 8.0])
    epochs = args.epochs or (3 if args.quick else 30)
    hidden = args.hidden or (32 if args.quick else 128)
    if "dp_muon" in args.methods and "spectral" not in lmo.norms():
        parser.error("dp_muon needs the spectral geometry, which is not registered; use --methods dp_sgd")
    data = load_digits(args.seed)
    runs = [(m, e) for m in args.methods for e in ([] if args.no_baseline else [math.inf]) + epsilons]
    records = []
    for method, eps in tqdm(runs, desc="runs", disable=args.no_progress):
        records.append(train(method, eps, epochs=epochs, batch=args.batch, hidden=hidden, seed=args.seed, data=data,
                             progress=not args.no_progress))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dp_training.json").write_text(json.dumps(
        {"delta": DELTA, "epochs": epochs, "hidden": hidden, "batch": args.batch, "records": records},
        indent=2, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v))
    plot(records, args.out / "dp_training.png")
    print(f"{'method':8s} {'target eps':>10s} {'spent eps':>9s} {'sigma':>7s} {'accuracy':>8s}")
    for r in records:
        print(f"{r['method']:8s} {r['target_epsilon']:10g} {r['epsilon']:9.3f} {r['noise_multiplier']:7.3f} "
              f"{r['test_accuracy']:8.3f}")
    print(f"wrote {args.out / 'dp_training.png'} and {args.out / 'dp_training.json'}")
    return records


if __name__ == "__main__":
    main()
