"""Muon with momentum does not converge on a convex Lipschitz function, for any of four learning-rate schedules;
error feedback (EF-Muon) does (Parshakova, Khaled, Crawshaw, Garrigos & Gower, arXiv 2605.08980).

    f(x) = eps |x1 + x2| + |x1 - x2|,     eps = 0.002,     minimum f* = 0 at x = 0,

lifted to 2 x 2 matrices by ``F(W) = f(diag(Q W P^T))`` (``Q``, ``P`` orthogonal). Muon with an exact polar factor
follows signed momentum on ``f`` there, step for step (reproduction (b); checked again below). Away from the valley
``x1 = x2`` the subgradient is unique, ``g = eps a (1, 1) + s (1, -1)`` with ``a = sign(x1 + x2)``,
``s = sign(x1 - x2)``, and ``sign(g) = s (1, -1)``: a sign step only moves *across* the valley, never along it, so
``x1 + x2`` is frozen -- whatever the tie rule, because off the valley there is no tie. Momentum averages the
crossings: its cross component ``m_u`` shrinks towards ``+-(1 - beta)/(1 + beta)`` as the iterate zig-zags over the
valley, and a step *along* the valley happens only when ``|m_u| < eps`` (Muon's Nesterov direction
``beta^2 m + (1 - beta^2) g`` keeps an even larger share of the current crossing). With ``eps`` below that residual
(``eps = 0.002`` against 0.026 for ``beta = 0.95``), momentum does not rescue the method: the counterexample that
defeats momentum. Error feedback keeps the dropped ``eps (1, 1)`` part in its buffer until it moves the iterate.
One fixed function need not stop every schedule (the theorem's function may depend on it): with EMA momentum and
the 1/t schedule at base rates near ``D`` the valley of ``eps = 0.002`` does move; the full run repeats that case on
a flatter valley, ``eps = 5e-4``, which stops it.

Methods (all from :mod:`lmo.optimizers`): Muon = :func:`muon` (``method="svd"``, Nesterov, no weight decay,
``adjust_lr="none"``) and its EMA form (``nesterov=False``, the signed momentum of the paper's reduction), for
``beta`` in {0, 0.9, 0.95}; EF-Muon = :func:`error_feedback` of that Muon. Schedules: constant, ``1/sqrt(t+1)``,
``1/(1 + t/10)`` and cosine to zero over the horizon. The grid runs on the vector form (``sign_sgd`` with Muon's
``(beta1, beta2)``, and its error feedback), which is exactly Muon on the diagonal embedding -- the script checks
that on every configuration, against Muon itself on 2 x 2 matrices, to rounding.

Base learning rates: ``f`` is positively homogeneous and sign steps are scale-free, so running from ``x0 / c`` is
running with every learning rate multiplied by ``c``: one driver per (method, beta, schedule) covers the base rates
``lr/D`` in {1, 0.3, 0.1, 0.03, 0.01, 0.003} through the scale of the start (``D = |x0|``), with 32 runs each
(starts ``D (1, 1) + 0.01 D N(0, I)``). Metric: ``f(x_T) / (eps |x1 + x2|_0)``, the last iterate's gap against the
valley's initial value (1: no progress along the valley), median over runs; "converges" means it keeps falling
with the horizon T.

    python examples/sign_descent_error_feedback.py [--out out/] [--quick] [--json PATH]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro  # noqa: E402

import lmo.optimizers as lo  # noqa: E402

CLAIM = ("arXiv 2605.08980 (Parshakova et al.): Muon does not converge on the class of convex Lipschitz functions, "
         "regardless of the learning-rate schedule; error feedback restores convergence of Muon (and of every "
         "non-Euclidean subgradient method with momentum).")
EPS = 0.002
BETAS = (0.0, 0.9, 0.95)
SCALES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
SCHEDULES: dict[str, Callable[[int, int], float]] = {  # (step t, horizon T) -> lr at unit base rate
    "constant": lambda t, T: 1.0,
    "1/sqrt(t)": lambda t, T: 1.0 / math.sqrt(t + 1.0),
    "1/t": lambda t, T: 1.0 / (1.0 + t / 10.0),
    "cosine": lambda t, T: 0.5 * (1.0 + math.cos(math.pi * t / T)),
}
ANYTIME = ("constant", "1/sqrt(t)", "1/t")  # one run gives every horizon; cosine needs one run per horizon


def objective(x: np.ndarray, eps: float = EPS) -> np.ndarray:
    return eps * np.abs(x[..., 0] + x[..., 1]) + np.abs(x[..., 0] - x[..., 1])


def subgradient(x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """A subgradient of f at each row of x, breaking ties adversarially (``sign(0) = +1``). Off the valley there is
    no tie; the rule only matters at an exact ``x1 = x2`` (counted by :func:`run`)."""
    a = np.where(x[..., 0] + x[..., 1] >= 0, 1.0, -1.0)
    s = np.where(x[..., 0] - x[..., 1] >= 0, 1.0, -1.0)
    return np.stack([eps * a + s, eps * a - s], axis=-1)


def muon(schedule: Callable[[int], float], beta: float, nesterov: bool) -> lo.Driver:
    """Muon with the exact polar factor, no weight decay, no shape factor."""
    return lo.muon(schedule, beta=beta, nesterov=nesterov, weight_decay=0.0, method="svd", adjust_lr="none")


def sign_form(driver: lo.Driver) -> lo.Driver:
    """The same estimator, schedule and error feedback on vectors: Muon on a diagonal embedding is this, exactly."""
    return lo.sign_sgd(driver.lr, beta1=driver.beta1, beta2=driver.beta2, error_feedback=driver.error_feedback)


def methods(beta: float, schedule: Callable[[int], float]) -> dict[str, lo.Driver]:
    """Muon (Nesterov, and EMA when beta > 0) and EF-Muon (Nesterov) for one beta and schedule."""
    out = {"Muon": muon(schedule, beta, nesterov=True)}
    if beta > 0:
        out["Muon (EMA)"] = muon(schedule, beta, nesterov=False)
    out["EF-Muon"] = lo.error_feedback(out["Muon"])
    return out


def starts(runs: int, scales=SCALES, seed: int = 0) -> np.ndarray:
    """``(len(scales) * runs, 2)`` starts near the valley; the rows of scale ``c`` start at distance ``~ 1.4 / c``."""
    rng = np.random.default_rng(seed)
    base = np.array([1.0, 1.0]) + 0.01 * rng.standard_normal((runs, 2))
    return (base[None] / np.asarray(scales)[:, None, None]).reshape(-1, 2)


def run(driver: lo.Driver, x0: np.ndarray, steps: int, checkpoints=(), eps: float = EPS) -> dict:
    """``steps`` steps of the vector form of ``driver`` from every row of ``x0`` on ``f`` with slope ``eps`` along the
    valley; ``f(x_t)`` at the checkpoints and the number of exact ties met."""
    drv = sign_form(driver)
    x, state = x0.copy(), drv.init(x0)
    out, ties = {}, 0
    for t in range(steps):
        ties += int(np.count_nonzero(x[:, 0] == x[:, 1]) + np.count_nonzero(x[:, 0] == -x[:, 1]))
        x, state = drv.step(x, subgradient(x, eps), state)
        if t + 1 in checkpoints:
            out[t + 1] = objective(x, eps)
    return {"f": out, "ties": ties, "x": x}


def embedding_check(driver: lo.Driver, x0: np.ndarray, steps: int, seed: int = 0) -> float:
    """Largest ``|x_t - diag(Q W_t P^T)|`` over ``steps`` steps of ``driver`` on the 2 x 2 lift against its vector form:
    Muon (or EF-Muon) on matrices is signed momentum (or its error feedback) on vectors."""
    rng = np.random.default_rng(seed)
    Q, P = (np.linalg.qr(rng.standard_normal((2, 2)))[0] for _ in range(2))
    embed = lambda v: np.einsum("ji,rj,jk->rik", Q, v, P)  # noqa: E731
    diag = lambda W: np.einsum("ij,rjk,ik->ri", Q, W, P)  # noqa: E731
    vec = sign_form(driver)
    x, W = x0.copy(), embed(x0)
    sx, sW = vec.init(x), driver.init(W)
    worst = 0.0
    for _ in range(steps):
        x, sx = vec.step(x, subgradient(x), sx)
        W, sW = driver.step(W, embed(subgradient(diag(W))), sW)
        worst = max(worst, float(np.max(np.abs(diag(W) - x))))
    return worst


def grid_row(method: str, beta: float, name: str, x0: np.ndarray, scales, runs: int, horizon: int,
             cosine_horizons, checkpoints, eps: float = EPS) -> dict:
    """One (method, beta, schedule) over the base rates: the median gap ratio per scale at each horizon."""
    valley0 = (eps * np.abs(x0[:, 0] + x0[:, 1])).reshape(len(scales), runs)
    ratios: dict[int, list[float]] = {}
    ties = 0
    for T in (cosine_horizons if name == "cosine" else (horizon,)):
        drv = methods(beta, lambda t, T=T: SCHEDULES[name](t, T))[method]
        res = run(drv, x0, T, checkpoints if name in ANYTIME else (T,), eps=eps)
        ties += res["ties"]
        for t, f in res["f"].items():
            ratios[t] = np.median(f.reshape(len(scales), runs) / valley0, axis=1).tolist()
    return {"method": method, "beta": beta, "schedule": name, "eps": eps, "scales": list(scales),
            "median_ratio": {str(t): r for t, r in ratios.items()},
            "best_over_lr": {str(t): float(min(r)) for t, r in ratios.items()},
            "best_lr_over_D": {str(t): scales[int(np.argmin(r))] for t, r in ratios.items()}, "ties": ties}


def sweep(*, runs: int = 32, horizon: int = 20000, cosine_horizons=(200, 2000, 20000), scales=SCALES,
          check_steps: int = 300, flatter: float | None = 5e-4, show: bool = True) -> dict:
    """The grid on ``f`` (slope ``EPS``), and, for the one case it does not stop (EMA momentum with 1/t at large base
    rates), the same runs on a flatter valley ``flatter``: the theorem's function may depend on the schedule."""
    x0 = starts(runs, scales)
    checkpoints = tuple(sorted({horizon // 100, horizon // 10, horizon, *cosine_horizons}))
    rows, deviations = [], {}
    jobs = [(beta, name) for beta in BETAS for name in SCHEDULES]
    for beta, name in _repro.progress(jobs, desc="convex Lipschitz", disable=not show):
        for method in methods(beta, lambda t: 1.0):
            rows.append(grid_row(method, beta, name, x0, scales, runs, horizon, cosine_horizons, checkpoints))
            # the same schedule at unit rate, Muon on matrices against its vector form, from the rows at scale 0.1
            drv = methods(beta, lambda t, name=name: SCHEDULES[name](t, check_steps))[method]
            deviations[f"{method}, beta={beta}, {name}"] = embedding_check(drv, x0[2 * runs: 3 * runs], check_steps)
    if flatter is not None:
        for beta in BETAS[1:]:
            rows.append(grid_row("Muon (EMA)", beta, "1/t", x0, scales, runs, horizon, cosine_horizons, checkpoints,
                                 eps=flatter))
    return {"eps": EPS, "flatter_eps": flatter, "runs_per_lr": runs, "horizon": horizon,
            "cosine_horizons": list(cosine_horizons), "rows": rows, "embedding_deviation": deviations}


def verdict(res: dict) -> dict:
    """Muon: at the final horizon no base rate brings the median below half the valley's start (for each beta,
    schedule and both momentum forms). EF-Muon: with the cosine schedule some base rate brings it below 5% of it
    (with 1/sqrt(t) it falls too, but slowly: the valley's slope is eps, so the subgradient rate G D / sqrt(T) reaches
    the valley's gap eps D only after T ~ (G / eps)^2 ~ 10^6 steps)."""
    def last(r: dict) -> float:
        return r["best_over_lr"][str(res["horizon"] if r["schedule"] != "cosine" else max(res["cosine_horizons"]))]

    stuck: dict[str, bool] = {}  # a method is defeated on the class if one f of the family (some eps) stops it
    for r in res["rows"]:
        if r["method"] != "EF-Muon":
            key = f"{r['method']}, beta={r['beta']}, {r['schedule']}"
            stuck[key] = stuck.get(key, False) or last(r) >= 0.5
    ef = {f"EF-Muon, beta={r['beta']}, {r['schedule']}": last(r) <= 0.05
          for r in res["rows"] if r["method"] == "EF-Muon" and r["schedule"] == "cosine"}
    return {"muon_stuck": stuck, "ef_converges": ef, "holds": all(stuck.values()) and all(ef.values()),
            "embedding_max_deviation": max(res["embedding_deviation"].values())}


def plot(res: dict, path: Path) -> Path:
    fig, axes = _repro.plt.subplots(1, len(BETAS), figsize=(5.4 * len(BETAS), 4.3), sharey=True)
    colors = dict(zip(SCHEDULES, ("tab:gray", "tab:blue", "tab:green", "tab:purple")))
    styles = {"Muon": "-", "Muon (EMA)": ":", "EF-Muon": "--"}
    for ax, beta in zip(axes, BETAS):
        for r in res["rows"]:
            if r["beta"] != beta:
                continue
            pts = sorted((int(t), b) for t, b in r["best_over_lr"].items())
            if r["eps"] == res["eps"]:
                ax.plot(*zip(*pts), styles[r["method"]], marker="o", ms=3, color=colors[r["schedule"]],
                        label=f"{r['method']}, {r['schedule']}")
            else:  # the flatter valley
                ax.plot(*zip(*pts), ":", marker="x", ms=6, color="black",
                        label=f"{r['method']}, {r['schedule']}, eps = {r['eps']:g}")
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("horizon T")
        ax.set_title(f"beta = {beta}: best base lr per horizon (median of {res['runs_per_lr']} runs)", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("f(x_T) / (eps |x1 + x2| at start)")
    fig.suptitle(f"f = eps|x1+x2| + |x1-x2|, eps = {res['eps']}, Muon (exact polar) on its 2x2 lift: solid Nesterov, "
                 "dotted EMA, dashed EF-Muon", fontsize=10)
    return _repro.savefig(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = _repro.parser(__doc__).parse_args(argv)
    out = _repro.out_dir(args.out)
    if args.quick:
        res = sweep(runs=16, horizon=2000, cosine_horizons=(2000,), scales=(1.0, 0.1, 0.03, 0.01), check_steps=100,
                    flatter=None, show=not args.no_progress)
    else:
        res = sweep(show=not args.no_progress)
    res.update(verdict(res))
    res["claim"] = CLAIM
    res["setting"] = (f"f = eps|x1+x2| + |x1-x2| with eps = {EPS} (convex, Lipschitz), lifted to 2x2 matrices; Muon "
                      f"with exact polar factor, beta in {list(BETAS)} (Nesterov and EMA), EF-Muon (Nesterov); "
                      f"schedules {list(SCHEDULES)}; base lr/D in {res['rows'][0]['scales']} via the scale of the "
                      f"start; {res['runs_per_lr']} runs per base lr; metric: median f(x_T)/(eps|x1+x2|_0) at the "
                      f"horizons, the best base lr per horizon; for EMA momentum with 1/t also "
                      f"eps = {res['flatter_eps']}; "
                      f"adversarial tie rule (ties met: "
                      f"{sum(r['ties'] for r in res['rows'])})")
    png = plot(res, out / "sign_descent_error_feedback.png")
    _repro.save_evidence(args, out, "sign_descent_error_feedback", res)
    T = str(res["horizon"])
    for r in res["rows"]:
        chosen = r["best_lr_over_D"].get(T, "-")
        print(f"{r['method']:11s} beta={r['beta']:<5} {r['schedule']:10s} eps={r['eps']:<7} best over lr: "
              + " ".join(f"T={t}: {b:.3g}" for t, b in r["best_over_lr"].items()) + f"  (lr/D {chosen})")
    print(f"Muon on matrices vs its vector form: max deviation {res['embedding_max_deviation']:.2g}")
    print(f"holds: {res['holds']}")
    print(f"plot: {png}")
    return res


if __name__ == "__main__":
    main()
