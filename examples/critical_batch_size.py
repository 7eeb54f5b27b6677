"""Critical batch size of Muon: steps and SFO (steps x batch) to a target accuracy against the batch size, for
several momenta beta and weight decays lambda (Sato, Naganuma & Iiduka, "Convergence Bound and Critical Batch Size
of Muon Optimizer", arXiv 2507.01598).

The theory bounds the average gradient norm by ``X/K + Y/b + Z`` after ``K`` steps with batch size ``b``. Reaching a
precision ``eps`` then takes ``K(b) = X b / (eps' b - Y)`` steps: decreasing and convex in ``b``; the SFO complexity
``b K(b)`` is convex with its minimum, the critical batch size, at ``b* = 2 Y / eps'``. The constant ``Y`` carries the
hyperparameters: for Nesterov momentum ``beta`` and weight decay ``lambda``,
``Y = ((2 beta + 1)(1 - beta) + lambda) sigma^2 / 2`` (the form of the bound as restated for steepest descent under
any norm by F. Cesista, who generalises Sato et al.), so the theory predicts the *scaling*
``b* ∝ (2 beta + 1)(1 - beta) + lambda``, not the value (``sigma``, ``eps'`` are not observable).

What we measure: a bias-free MLP 64-128-10 on scikit-learn's digits (ships with scikit-learn, offline), every weight
matrix trained by this package's ``Muon`` (torch adapter; Nesterov, 5 Newton-Schulz steps, constant lr); the number
of steps until the full training set is classified with accuracy >= the target, for batch sizes 4..512, averaged
over seeds. ``K(b) = X b / (eps' b - Y)`` is linear in ``1/b`` (``1/K = eps'/X - (Y/X) / b``), so a least-squares
line through ``(1/b, 1/K)`` gives the fitted ``b* = 2 Y / eps'`` for each (beta, lambda), which we set against the
theory's factor. The lambda scaling shows. The beta scaling does not at a fixed learning rate, because the bound's
constant ``Z`` holds the momentum's lag ``2 beta/(1 - beta) L lr``, which moves ``eps' = eps - Z`` with beta;
``--hold-lag`` scales the learning rate as ``(1 - beta)/beta`` to hold it fixed, and then ``b*`` falls with beta as
predicted (in direction; docs/reproductions.md, section (d)). ``--diagnose`` measures the momentum direction's noise.

    python examples/critical_batch_size.py [--out out/] [--quick] [--lr LR] [--target ACC] [--betas-only]
                                           [--betas B ...] [--hold-lag] [--grad-norm EPS] [--seeds N]
                                           [--max-steps N] [--batches B ...] [--diagnose]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro  # noqa: E402


def load_digits_tensors():
    import torch
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0 - 0.5) / 0.5
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def full_grad_nuclear_norm(model, X, y) -> float:
    """The theorem's measure: the nuclear norm of the full-batch gradient, summed over the weight matrices."""
    import torch

    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(X), y).backward()
    norm = sum(torch.linalg.matrix_norm(p.grad, "nuc").item() for p in model.parameters())
    model.zero_grad(set_to_none=True)
    return norm


def steps_to_target(X, y, *, batch: int, beta: float, weight_decay: float, lr: float, target: float, seed: int,
                    max_steps: int, hidden: int = 128, grad_norm: float | None = None,
                    check_every: int = 5) -> int | None:
    """Steps of Muon (this package's torch adapter) until the training accuracy reaches ``target`` or, with
    ``grad_norm``, until the full-batch gradient's nuclear norm is ``<= grad_norm`` (checked every ``check_every``
    steps)."""
    import torch

    from lmo.optimizers.torch import Muon

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden, bias=False), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 10, bias=False))
    opt = Muon(model.parameters(), lr=lr, momentum=beta, nesterov=True, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed + 1000)
    n = X.shape[0]
    for step in range(1, max_steps + 1):
        idx = torch.randint(n, (batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if grad_norm is not None:
            if step % check_every == 0 and full_grad_nuclear_norm(model, X, y) <= grad_norm:
                return step
            continue
        with torch.no_grad():
            if (model(X).argmax(1) == y).float().mean().item() >= target:
                return step
    return None


def nesterov_variance_factor(beta: float) -> float:
    """``E||c - E c||^2 / sigma^2`` for the Nesterov direction ``c = beta m + (1 - beta) g`` of the EMA buffer
    ``m <- beta m + (1 - beta) g`` with i.i.d. gradients of variance ``sigma^2`` at a fixed point (no lag)."""
    return (1 - beta) ** 2 * (1 + beta) ** 2 + (1 - beta) * beta**4 / (1 + beta)


def direction_error(X, y, *, batch: int, beta: float, lr: float, steps: int = 600, burn_in: int = 100,
                    every: int = 10, seed: int = 0, hidden: int = 128) -> dict:
    """Along one Muon run, the mean squared error of Muon's direction before orthogonalisation (the Nesterov
    combination ``c_t``) against the full-batch gradient ``grad f(W_t)``, and that of the minibatch gradient
    alone, both relative to ``||grad f(W_t)||^2``. Their ratio is what momentum buys: the variance factor
    :func:`nesterov_variance_factor` if the buffer did not lag behind the moving iterate."""
    import torch

    from lmo.optimizers.torch import Muon

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden, bias=False), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 10, bias=False))
    params = list(model.parameters())
    opt = Muon(params, lr=lr, momentum=beta, nesterov=True, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 1000)
    errors, raw = [], []
    for step in range(1, steps + 1):
        check = step > burn_in and step % every == 0
        if check:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(X), y).backward()
            full = [p.grad.clone() for p in params]
        idx = torch.randint(X.shape[0], (batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if check:
            e = r = n = 0.0
            for p, f in zip(params, full):
                buf = opt.state[p].get("momentum_buffer", torch.zeros_like(p))
                m = beta * buf + (1 - beta) * p.grad
                c = beta * m + (1 - beta) * p.grad
                e += float(((c - f) ** 2).sum())
                r += float(((p.grad - f) ** 2).sum())
                n += float((f**2).sum())
            errors.append(e / n)
            raw.append(r / n)
        opt.step()
    direction, minibatch = float(np.mean(errors)), float(np.mean(raw))
    return {"batch": batch, "beta": beta, "lr": lr, "direction_rel_sq_error": direction,
            "minibatch_rel_sq_error": minibatch, "ratio": direction / minibatch,
            "variance_factor": nesterov_variance_factor(beta)}


def fit_critical(batches: np.ndarray, steps: np.ndarray) -> dict:
    """Least squares of ``1/K = a - s / b``; ``K(b) = X b / (eps' b - Y)`` with ``a = eps'/X``, ``s = Y/X``, so
    ``b* = 2 Y / eps' = 2 s / a``. Rows are weighted by ``K`` so that the residuals are relative errors in ``K``
    (``d(1/K) = -dK / K^2``); batch sizes that never reached the target are left out."""
    ok = np.isfinite(steps)
    w = steps[ok]
    A = np.stack([np.ones(ok.sum()), -1.0 / batches[ok]], axis=1) * w[:, None]
    (a, s), *_ = np.linalg.lstsq(A, w / steps[ok], rcond=None)
    b_star = 2 * s / a if a > 0 and s > 0 else float("nan")
    return {"a": float(a), "s": float(s), "b_star": float(b_star)}


def theory_factor(beta: float, weight_decay: float) -> float:
    return (2 * beta + 1) * (1 - beta) + weight_decay


def lag_matched_lr(lr: float, beta: float, reference: float = 0.5) -> float:
    """The learning rate at momentum ``beta`` that keeps the bound's lag term ``2 beta/(1 - beta) L lr`` (in ``Z``)
    at its value for ``lr`` at ``beta = reference``: ``lr * (1 - beta)/beta * reference/(1 - reference)``. With it
    the other ``Z`` terms stay within a factor ``1/beta`` too, so ``eps' = eps - Z`` is about fixed across ``beta``,
    the regime in which ``b* = 2 Y / eps'`` follows the factor ``(2 beta + 1)(1 - beta)`` of ``Y``."""
    return lr * (1 - beta) / beta * reference / (1 - reference)


def run(*, batches=(4, 8, 16, 32, 64, 128, 256, 512), betas=(0.5, 0.9, 0.98), weight_decays=(0.0, 0.3, 1.0),
        base=(0.9, 0.0), lr: float = 0.05, target: float = 0.97, seeds: int = 2, max_steps: int = 3000,
        grad_norm: float | None = None, hold_lag: bool = False, show: bool = True) -> dict:
    """Steps to the target per batch size for each ``(beta, weight_decay)``, and the fitted critical batch size.
    ``hold_lag``: each ``beta`` runs at :func:`lag_matched_lr` (``lr`` is the learning rate at ``beta = 0.5``)
    instead of one ``lr`` for all."""
    import torch

    torch.set_num_threads(1)
    X, y = load_digits_tensors()
    configs = [(b, base[1]) for b in betas] + [(base[0], wd) for wd in weight_decays if wd != base[1]]
    total = len(configs) * len(batches) * seeds
    results = []
    with _repro.progress(total=total, desc="Muon runs", disable=not show) as bar:
        for beta, wd in configs:
            config_lr = lag_matched_lr(lr, beta) if hold_lag else lr
            steps = []
            for b in batches:
                ks = []
                for seed in range(seeds):
                    ks.append(steps_to_target(X, y, batch=b, beta=beta, weight_decay=wd, lr=config_lr, target=target,
                                              seed=seed, max_steps=max_steps, grad_norm=grad_norm))
                    bar.update(1)
                steps.append(float(np.mean(ks)) if all(k is not None for k in ks) else float("nan"))
            steps = np.array(steps)
            sfo = steps * np.array(batches)
            fit = fit_critical(np.array(batches, dtype=float), steps)
            finite = np.isfinite(sfo)
            results.append({
                "beta": beta, "weight_decay": wd, "lr": config_lr, "steps": steps, "sfo": sfo, "fit": fit,
                "measured_b_star": int(np.array(batches)[finite][np.argmin(sfo[finite])]) if finite.any() else None,
                "theory_factor": theory_factor(beta, wd),
            })
    return {"batches": list(batches), "lr": lr, "hold_lag": hold_lag,
            "target_accuracy": None if grad_norm is not None else target, "target_grad_nuclear_norm": grad_norm,
            "seeds": seeds, "max_steps": max_steps, "base": list(base),
            "results": results}


def scaling_agreement(res: dict) -> dict:
    """Rank agreement (Spearman) between fitted b* and the theory's factor, over the beta sweep and the lambda sweep."""
    def spearman(u, v):
        u, v = np.asarray(u, float), np.asarray(v, float)
        ok = np.isfinite(u) & np.isfinite(v)
        if ok.sum() < 3:
            return None
        ru, rv = np.argsort(np.argsort(u[ok])), np.argsort(np.argsort(v[ok]))
        return float(np.corrcoef(ru, rv)[0, 1])

    base_beta, base_wd = res["base"]
    beta_rows = [r for r in res["results"] if r["weight_decay"] == base_wd]
    wd_rows = [r for r in res["results"] if r["beta"] == base_beta]
    return {
        "beta_sweep": {"beta": [r["beta"] for r in beta_rows], "fitted_b_star": [r["fit"]["b_star"] for r in beta_rows],
                       "theory_factor": [r["theory_factor"] for r in beta_rows],
                       "spearman": spearman([r["fit"]["b_star"] for r in beta_rows],
                                            [r["theory_factor"] for r in beta_rows])},
        "weight_decay_sweep": {"weight_decay": [r["weight_decay"] for r in wd_rows],
                               "fitted_b_star": [r["fit"]["b_star"] for r in wd_rows],
                               "theory_factor": [r["theory_factor"] for r in wd_rows],
                               "spearman": spearman([r["fit"]["b_star"] for r in wd_rows],
                                                    [r["theory_factor"] for r in wd_rows])},
    }


def plot(res: dict, agreement: dict, path: Path) -> Path:
    fig, axes = _repro.plt.subplots(1, 3, figsize=(15, 4.2))
    b = np.array(res["batches"], dtype=float)
    grid = np.logspace(np.log10(b[0]), np.log10(b[-1]), 200)
    cmap = _repro.plt.get_cmap("viridis")
    for i, r in enumerate(res["results"]):
        color = cmap(i / max(1, len(res["results"]) - 1))
        label = f"beta={r['beta']}, wd={r['weight_decay']}"
        axes[0].plot(b, r["steps"], "o", color=color, ms=4)
        a, s = r["fit"]["a"], r["fit"]["s"]
        with np.errstate(divide="ignore", invalid="ignore"):
            fitted = np.where(a - s / grid > 0, 1.0 / (a - s / grid), np.nan)
        axes[0].plot(grid, fitted, color=color, lw=1, label=label)
        axes[1].plot(b, r["sfo"], "o-", color=color, ms=4, label=f"{label}: b*={r['fit']['b_star']:.0f}")
        if np.isfinite(r["fit"]["b_star"]):
            axes[1].axvline(r["fit"]["b_star"], color=color, ls=":", lw=1)
    for ax, ylabel in zip(axes[:2], ("steps K to target accuracy", "SFO = K x b")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size b")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    goal = (f"target train acc {res['target_accuracy']}" if res.get("target_grad_nuclear_norm") is None
            else f"target full-batch grad nuclear norm {res['target_grad_nuclear_norm']}")
    rate = (f"lr {res['lr']} x (1-beta)/beta (lag held fixed)" if res.get("hold_lag") else f"lr {res['lr']}")
    axes[0].set_title(f"Muon, digits MLP 64-128-10, {rate}\n{goal}; "
                      "points: measured; lines: fitted K(b) = X b / (eps b - Y)", fontsize=9)
    axes[1].set_title("SFO complexity; dotted: fitted critical batch size b* = 2Y/eps", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    ax = axes[2]
    for key, marker, name in (("beta_sweep", "o", "beta sweep (wd fixed)"),
                              ("weight_decay_sweep", "s", "weight-decay sweep (beta fixed)")):
        sweep = agreement[key]
        if len(sweep["theory_factor"]) < 2:  # a sweep of one point (e.g. --betas-only) shows nothing
            continue
        f = np.array(sweep["theory_factor"])
        bs = np.array(sweep["fitted_b_star"])
        rho = "n/a" if sweep["spearman"] is None else f"{sweep['spearman']:+.2f}"
        ax.plot(f, bs, marker, label=f"{name}: Spearman {rho}")
        labels = sweep["beta"] if key == "beta_sweep" else sweep["weight_decay"]
        for x_, y_, t in zip(f, bs, labels):
            ax.annotate(f"{'b' if key == 'beta_sweep' else 'wd'}={t}", (x_, y_), fontsize=7)
    ax.set_xlabel("theory factor (2 beta + 1)(1 - beta) + lambda")
    ax.set_ylabel("fitted b*")
    ax.set_title("fitted critical batch size vs the theory's scaling", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _repro.savefig(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = _repro.parser(__doc__)
    p.add_argument("--lr", type=float, default=None, help="Muon's constant learning rate (default 0.05)")
    p.add_argument("--target", type=float, default=None, help="target training accuracy (default 0.97)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 4 8 ... 512)")
    p.add_argument("--seeds", type=int, default=None, help="seeds averaged per point (default 2)")
    p.add_argument("--max-steps", type=int, default=None, help="step limit per run (default 3000)")
    p.add_argument("--grad-norm", type=float, default=None,
                   help="target the full-batch gradient's nuclear norm (the theorem's measure) instead of accuracy")
    p.add_argument("--betas", type=float, nargs="+", default=None,
                   help="momenta of the beta sweep (default 0.5 0.9 0.98)")
    p.add_argument("--betas-only", action="store_true", help="run the beta sweep only (weight decay 0)")
    p.add_argument("--hold-lag", action="store_true",
                   help="scale the learning rate with beta so that the bound's momentum-lag term stays fixed "
                        "(--lr is then the rate at beta = 0.5)")
    p.add_argument("--diagnose", action="store_true",
                   help="also measure the error of Muon's momentum direction against the full gradient, per beta")
    args = p.parse_args(argv)
    out = _repro.out_dir(args.out)
    if args.quick:
        kwargs = dict(batches=(4, 16, 64, 256), betas=(0.5, 0.95), weight_decays=(0.0, 1.0), base=(0.95, 0.0),
                      target=0.9, seeds=1, max_steps=1500)
    else:
        kwargs = {}
    for key in ("lr", "target", "batches", "betas", "seeds", "max_steps", "grad_norm"):
        if getattr(args, key) is not None:
            kwargs[key] = tuple(getattr(args, key)) if key in ("batches", "betas") else getattr(args, key)
    kwargs["hold_lag"] = args.hold_lag
    if args.betas_only:
        kwargs["weight_decays"] = (kwargs.get("base", (0.9, 0.0))[1],)
    res = run(show=not args.no_progress, **kwargs)
    if args.diagnose:
        X, y = load_digits_tensors()
        res["direction_error"] = [direction_error(X, y, batch=b, beta=beta, lr=res["lr"])
                                  for b in (8, 64) for beta in (0.5, 0.9, 0.98)]
    agreement = scaling_agreement(res)
    stem = "critical_batch_size_hold_lag" if args.hold_lag else "critical_batch_size"
    png = plot(res, agreement, out / f"{stem}.png")
    _repro.save_json(out / f"{stem}.json", {**res, "scaling_agreement": agreement})
    print(f"{'beta':>5s} {'wd':>5s} {'lr':>8s} {'theory':>7s} {'fit b*':>7s} {'min SFO b':>9s}  steps per batch size "
          f"{res['batches']}")
    for r in res["results"]:
        print(f"{r['beta']:5.2f} {r['weight_decay']:5.2f} {r['lr']:8.3g} {r['theory_factor']:7.3f} "
              f"{r['fit']['b_star']:7.1f} {str(r['measured_b_star']):>9s}  {np.round(r['steps'], 1).tolist()}")
    print(f"rank agreement with the theory: beta sweep {agreement['beta_sweep']['spearman']}, "
          f"weight-decay sweep {agreement['weight_decay_sweep']['spearman']}")
    for row in res.get("direction_error", []):
        print(f"direction error, b={row['batch']:3d} beta={row['beta']:4.2f}: E||c - grad f||^2 / ||grad f||^2 = "
              f"{row['direction_rel_sq_error']:.3g}, minibatch gradient {row['minibatch_rel_sq_error']:.3g}, ratio "
              f"{row['ratio']:.3g} (no-lag variance factor {row['variance_factor']:.3g})")
    print(f"plot: {png}")
    return {**res, "scaling_agreement": agreement}


if __name__ == "__main__":
    main()
