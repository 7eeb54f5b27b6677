"""Muon is SignSGD on a diagonal embedding, step for step (arXiv 2605.06615, Sec. on matrices; 2605.08980).

Take any ``f: R^d -> R`` and orthogonal ``Q, P`` and define ``F(W) = f(diag(Q W P^T))`` on d x d matrices. Its
gradient at ``W = Q^T diag(x) P`` is ``Q^T diag(grad f(x)) P``, whose polar factor is ``Q^T diag(sign(grad f(x))) P``.
So Muon with an exact polar factor (the ``spectral`` geometry with ``method="svd"``) started at ``Q^T diag(x_0) P``
follows ``W_t = Q^T diag(x_t) P``, where ``x_t`` are the iterates of SignSGD on ``f`` -- with the same momentum,
Nesterov and weight decay, because all of them are linear and preserve the embedding.

We check it on the noisy quadratic of ``signsgd_vs_sgd.py`` (the same stochastic gradients feed both methods):
``max_t |x_t - diag(Q W_t P^T)|`` stays at rounding level. Muon with its usual 5 Newton-Schulz steps (an inexact
polar factor, singular values mapped into roughly [0.7, 1.2]) is shown for contrast: it departs from SignSGD.

    python examples/muon_diagonal.py [--out out/] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro  # noqa: E402

import lmo.optimizers as lo  # noqa: E402


def orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def pair(lr: float, beta: float, weight_decay: float, method: str) -> tuple[lo.Driver, lo.Driver]:
    """(Muon on matrices, SignSGD on vectors) with the same estimator and weight decay."""
    muon = lo.muon(lr, beta=beta, nesterov=True, weight_decay=weight_decay, method=method, adjust_lr="none")
    sign = lo.sign_sgd(lr, weight_decay=weight_decay, beta1=muon.beta1, beta2=muon.beta2)
    return muon, sign


def compare(d: int, steps: int, lr: float, beta: float, weight_decay: float, method: str, sigma: float = 1.0,
            seed: int = 0, show: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    Q, P = orthogonal(d, rng), orthogonal(d, rng)
    x = rng.standard_normal(d)
    W = Q.T @ np.diag(x) @ P
    muon, sign = pair(lr, beta, weight_decay, method)
    ms, ss = muon.init({"W": W}), sign.init({"x": x})
    deviation, loss_sign, loss_muon = [], [], []
    for _ in _repro.progress(range(steps), desc=f"muon[{method}] vs signsgd", disable=not show):
        noise = np.zeros(d)
        noise[0] = sigma * rng.standard_normal()
        g = x + noise                                    # stochastic gradient of f(x) = ||x||^2 / 2
        z = np.diag(Q @ W @ P.T)                         # the vector that W embeds
        G = Q.T @ np.diag(z + noise) @ P                 # the same stochastic gradient of F at W
        xs, ss = sign.step({"x": x}, {"x": g}, ss)
        Ws, ms = muon.step({"W": W}, {"W": G}, ms)
        x, W = xs["x"], Ws["W"]
        z = np.diag(Q @ W @ P.T)
        deviation.append(float(np.max(np.abs(z - x))))
        loss_sign.append(0.5 * float(x @ x))
        loss_muon.append(0.5 * float(np.sum(W * W)))     # = ||z||^2 / 2 + off-diagonal mass (0 when exact)
    return {"method": method, "max_deviation": max(deviation), "deviation": deviation, "loss_signsgd": loss_sign,
            "loss_muon": loss_muon}


def run(d: int = 32, steps: int = 300, lr: float = 0.02, beta: float = 0.9, weight_decay: float = 0.1,
        show: bool = True) -> dict:
    results = {m: compare(d, steps, lr, beta, weight_decay, m, show=show) for m in ("svd", "newton_schulz")}
    plain = compare(d, steps, lr, 0.0, 0.0, "svd", show=show)
    return {"d": d, "steps": steps, "lr": lr, "beta": beta, "weight_decay": weight_decay,
            "svd": results["svd"], "newton_schulz": results["newton_schulz"], "svd_no_momentum": plain}


def plot(res: dict, path: Path) -> Path:
    fig, axes = _repro.plt.subplots(1, 2, figsize=(11, 4))
    t = np.arange(1, res["steps"] + 1)
    ax = axes[0]
    ax.plot(t, res["svd"]["loss_signsgd"], color="black", lw=3, alpha=0.35, label="SignSGD on f (vector)")
    ax.plot(t, res["svd"]["loss_muon"], color="tab:red", ls="--", label="Muon, exact polar (svd) on F")
    ax.plot(t, res["newton_schulz"]["loss_muon"], color="tab:blue", lw=1, label="Muon, 5 Newton-Schulz steps on F")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("||W||_F^2 / 2  (= f(x) when W embeds x)")
    ax.set_title(f"d={res['d']}, beta={res['beta']} (Nesterov), weight decay {res['weight_decay']}", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    for key, color, label in (("svd", "tab:red", "Muon (svd), momentum + wd"),
                              ("svd_no_momentum", "tab:orange", "Muon (svd), plain"),
                              ("newton_schulz", "tab:blue", "Muon (Newton-Schulz)")):
        ax.plot(t, np.maximum(res[key]["deviation"], 1e-18), color=color, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("max_i |x_t - diag(Q W_t P^T)|_i")
    ax.set_title("distance between the two trajectories", fontsize=10)
    ax.legend(fontsize=8)
    return _repro.savefig(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = _repro.parser(__doc__).parse_args(argv)
    out = _repro.out_dir(args.out)
    res = run(d=8, steps=60, show=not args.no_progress) if args.quick else run(show=not args.no_progress)
    png = plot(res, out / "muon_diagonal.png")
    _repro.save_json(out / "muon_diagonal.json", {
        "d": res["d"], "steps": res["steps"], "lr": res["lr"], "beta": res["beta"],
        "weight_decay": res["weight_decay"],
        "max_deviation": {k: res[k]["max_deviation"] for k in ("svd", "svd_no_momentum", "newton_schulz")},
        "final_loss": {"signsgd": res["svd"]["loss_signsgd"][-1], "muon_svd": res["svd"]["loss_muon"][-1],
                       "muon_newton_schulz": res["newton_schulz"]["loss_muon"][-1]},
    })
    for k in ("svd", "svd_no_momentum", "newton_schulz"):
        print(f"max |x_t - diag(Q W_t P^T)| over {res['steps']} steps, Muon[{k}]: {res[k]['max_deviation']:.3g}")
    print(f"plot: {png}")
    return res


if __name__ == "__main__":
    main()
