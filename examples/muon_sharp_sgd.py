"""Muon vs spectral sharp steps vs SGD on a matrix regression (Li & Hong, "A Note on the Convergence of Muon",
arXiv 2502.02900).

Li & Hong read Muon as steepest descent under the spectral norm and prove convergence of both forms:

* the **sharp step** (steepest descent on the quadratic model, step ``1/L``)
  ``W <- W - (1/L) ||G||_nuc U V^T``: ``min_{t<T} ||grad f(W_t)||_nuc^2 <= 2 L (f(W_0) - f*) / T``;
* the **LMO step** (Muon's normalised step, constant ``eta``) ``W <- W - eta U V^T``:
  ``min_{t<T} ||grad f(W_t)||_nuc <= (f(W_0) - f*) / (eta T) + L eta / 2``,

where ``L`` is the smoothness constant in the spectral norm (``||grad f(W) - grad f(V)||_nuc <= L ||W - V||_op``).
For ``f(W) = ||X W - Y||_F^2 / (2n)``, ``L = tr(X^T X / n)``; plain gradient descent (SGD with the full batch) has
``L_F = lambda_max(X^T X / n)`` and the bound ``min ||grad f||_F^2 <= 2 L_F (f(W_0) - f*) / T``.

We run all three as configurations of the one driver -- the sharp step is :func:`lmo.optimizers.spectral_descent`
(the spectral geometry with ``rule="sharp"``), Muon is :func:`lmo.optimizers.muon` (exact polar factor, no momentum,
for the theorem; and the library default, Nesterov momentum 0.95 with Newton-Schulz, for reference), SGD is the
Frobenius geometry with ``rule="sharp"`` (``W <- W - lr G``) -- and plot the gradient's nuclear norm against each
theorem's bound, computed from the measured ``f(W_0) - f*``.

    python examples/muon_sharp_sgd.py [--out out/] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro  # noqa: E402

import lmo.optimizers as lo  # noqa: E402


def problem(n: int, m: int, k: int, seed: int = 0) -> dict:
    """A least-squares matrix regression with decaying input spectrum and label noise."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, m)))
    V, _ = np.linalg.qr(rng.standard_normal((m, m)))
    X = np.sqrt(n) * (U * (1.0 / np.arange(1, m + 1) ** 0.5)) @ V.T
    W_true = rng.standard_normal((m, k))
    Y = X @ W_true + 0.1 * rng.standard_normal((n, k))
    W_star = np.linalg.lstsq(X, Y, rcond=None)[0]
    H = X.T @ X / n
    return {"X": X, "Y": Y, "n": n, "f_star": loss(W_star, X, Y), "L_spectral": float(np.trace(H)),
            "L_frobenius": float(np.linalg.eigvalsh(H)[-1]), "W0": np.zeros((m, k))}


def loss(W: np.ndarray, X: np.ndarray, Y: np.ndarray) -> float:
    R = X @ W - Y
    return float(np.sum(R * R) / (2 * X.shape[0]))


def grad(W: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return X.T @ (X @ W - Y) / X.shape[0]


def drivers(prob: dict, steps: int) -> dict[str, lo.Driver]:
    L, LF = prob["L_spectral"], prob["L_frobenius"]
    gap = loss(prob["W0"], prob["X"], prob["Y"]) - prob["f_star"]
    eta = float(np.sqrt(2 * gap / (L * steps)))  # minimises the LMO bound (f0 - f*)/(eta T) + L eta / 2
    return {
        "SGD (full batch), lr 1/L_F": lo.Driver(geometry="frobenius", lr=1.0 / LF, rule="sharp"),
        "spectral sharp step, lr 1/L": lo.spectral_descent(1.0 / L),
        f"Muon (exact polar, no momentum), lr {eta:.3g}": lo.muon(eta, beta=0.0, nesterov=False, weight_decay=0.0,
                                                                  method="svd", adjust_lr="none"),
        f"Muon (default: Nesterov 0.95, Newton-Schulz), lr {eta:.3g}": lo.muon(eta, weight_decay=0.0,
                                                                               adjust_lr="none"),
    }, eta


def run(n: int = 256, m: int = 32, k: int = 16, steps: int = 400, show: bool = True) -> dict:
    prob = problem(n, m, k)
    X, Y, fstar = prob["X"], prob["Y"], prob["f_star"]
    opts, eta = drivers(prob, steps)
    gap0 = loss(prob["W0"], X, Y) - fstar
    curves: dict[str, dict] = {}
    for name, driver in opts.items():
        W = prob["W0"].copy()
        state = driver.init(W)
        nuc, fro, gaps = [], [], []
        for _ in _repro.progress(range(steps), desc=name.split(", lr")[0], disable=not show):
            G = grad(W, X, Y)
            nuc.append(float(np.linalg.norm(G, "nuc")))
            fro.append(float(np.linalg.norm(G)))
            gaps.append(loss(W, X, Y) - fstar)
            W, state = driver.step(W, G, state)
        curves[name] = {"nuclear": nuc, "frobenius": fro, "gap": gaps}
    T = np.arange(1, steps + 1)
    L, LF = prob["L_spectral"], prob["L_frobenius"]
    bounds = {
        "sharp": np.sqrt(2 * L * gap0 / T),                 # on min_{t<T} ||G_t||_nuc
        "muon": gap0 / (eta * T) + L * eta / 2,             # on min_{t<T} ||G_t||_nuc
        "sgd": np.sqrt(2 * LF * gap0 / T),                  # on min_{t<T} ||G_t||_F
    }
    names = list(opts)
    checks = {
        "sharp": _holds(curves[names[1]]["nuclear"], bounds["sharp"]),
        "muon": _holds(curves[names[2]]["nuclear"], bounds["muon"]),
        "sgd": _holds(curves[names[0]]["frobenius"], bounds["sgd"]),
    }
    return {"n": n, "m": m, "k": k, "steps": steps, "L_spectral": L, "L_frobenius": LF, "f0_minus_fstar": gap0,
            "muon_lr": eta, "curves": curves, "bounds": {k_: v.tolist() for k_, v in bounds.items()},
            "bound_holds": checks, "names": names}


def _holds(values: list[float], bound: np.ndarray) -> dict:
    running_min = np.minimum.accumulate(np.asarray(values))
    slack = bound - running_min
    return {"holds": bool(np.all(slack >= -1e-9 * bound)), "min_slack_ratio": float(np.min(running_min / bound))
            if np.all(bound > 0) else None, "final_min": float(running_min[-1]), "final_bound": float(bound[-1])}


def plot(res: dict, path: Path) -> Path:
    fig, axes = _repro.plt.subplots(1, 2, figsize=(12, 4.3))
    colors = ["tab:blue", "tab:green", "tab:red", "tab:purple"]
    T = np.arange(1, res["steps"] + 1)
    ax = axes[0]
    for name, color in zip(res["names"], colors):
        ax.plot(T, res["curves"][name]["nuclear"], color=color, label=name)
    ax.plot(T, res["bounds"]["sharp"], color="tab:green", ls=":", label="bound (sharp): sqrt(2 L gap0 / T)")
    ax.plot(T, res["bounds"]["muon"], color="tab:red", ls=":", label="bound (Muon): gap0/(eta T) + L eta/2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("||grad f(W_t)||_nuc")
    ax.set_title(f"matrix regression X W ~ Y, W: {res['m']}x{res['k']}, n={res['n']}", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1]
    for name, color in zip(res["names"], colors):
        ax.plot(T, np.maximum(res["curves"][name]["gap"], 1e-16), color=color, label=name.split(", lr")[0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("f(W_t) - f*")
    ax.legend(fontsize=7)
    return _repro.savefig(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = _repro.parser(__doc__).parse_args(argv)
    out = _repro.out_dir(args.out)
    res = run(n=64, m=12, k=6, steps=80, show=not args.no_progress) if args.quick else run(show=not args.no_progress)
    png = plot(res, out / "muon_sharp_sgd.png")
    summary = {k: v for k, v in res.items() if k not in ("curves", "bounds")}
    summary["final"] = {name: {"grad_nuclear": c["nuclear"][-1], "gap": c["gap"][-1]}
                        for name, c in res["curves"].items()}
    _repro.save_json(out / "muon_sharp_sgd.json", summary)
    for name, c in res["curves"].items():
        print(f"{name:58s} ||grad||_nuc {c['nuclear'][0]:.3g} -> {c['nuclear'][-1]:.3g}   f-f* {c['gap'][-1]:.3g}")
    for key, check in res["bound_holds"].items():
        print(f"bound for {key:5s}: holds={check['holds']}  final min {check['final_min']:.3g} <= "
              f"{check['final_bound']:.3g}")
    print(f"plot: {png}")
    return res


if __name__ == "__main__":
    main()
