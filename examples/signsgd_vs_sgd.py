"""SignSGD vs SGD on quadratics with one noisy or one stiff coordinate (Tao, Yu & Zhang, arXiv 2605.06615).

Claim reproduced: when the gradient noise sits on ONE coordinate (sparse, "separable" noise), sign descent pays for
the noise once, not once per dimension, and beats SGD by a large factor; each method gets its best constant step
from a grid, and we count the steps until the expected loss E f(x_t) (mean over independent runs) is <= 1.

1. ``f(x) = ||x||^2 / 2`` in d = 100 dimensions, stochastic gradient ``x + xi e_1`` with ``xi ~ N(0, 100^2)``.
2. An ill-conditioned quadratic ``f(x) = (L x_1^2 + sum_{i>1} x_i^2) / 2`` with one large curvature ``L = d`` and
   exact gradients: SGD's step is capped by ``2 / L``, sign descent's is not.
3. Problem 1 at d = 10 ... 1000 (:func:`sweep`): the step-count ratio SGD / SignSGD against d and its log-log
   slope. On this instance the ratio does not grow like d (it falls slowly): SGD's count is set by its noise floor
   ``lr sigma^2 / 4`` (``~ sigma^2 log d``), sign descent's grows like ``sqrt(d log d)``; docs/reproductions.md.

Both methods are configurations of the one driver of this package:

* SignSGD is :func:`lmo.optimizers.sign_sgd` (the l-infinity geometry, ``x <- x - lr sign(g)``);
* SGD is ``Driver(geometry="l2", rule="sharp")``: the sharp step of the l2 ball is ``-||g||_2 lmo(g) = -g``, so the
  update is ``x <- x - lr g``, plain SGD (the test checks it against ``x - lr g`` to rounding error).

    python examples/signsgd_vs_sgd.py [--out out/] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro  # noqa: E402

import lmo.optimizers as lo  # noqa: E402


def sgd(lr: float) -> lo.Driver:
    """Plain SGD as a configuration of the driver: the l2 geometry with the sharp rule (``x <- x - lr g``)."""
    return lo.Driver(geometry="l2", lr=lr, rule="sharp")


def signsgd(lr: float) -> lo.Driver:
    return lo.sign_sgd(lr)


METHODS = {"SGD": sgd, "SignSGD": signsgd}
QUICK_DIMS = (32, 64, 128, 256)


def steps_to_target(driver: lo.Driver, curvature: np.ndarray, x0: np.ndarray, *, sigma: float, runs: int,
                    max_steps: int, target: float = 1.0, seed: int = 0) -> tuple[int | None, np.ndarray]:
    """Run ``runs`` independent copies (rows) from ``x0``; return the first step at which the mean loss is
    ``<= target`` (None if never within ``max_steps``) and the mean-loss curve."""
    rng = np.random.default_rng(seed)
    x = np.tile(x0, (runs, 1))
    state = driver.init(x)
    curve = []
    for t in range(max_steps + 1):
        loss = float(np.mean(0.5 * np.sum(curvature * x * x, axis=1)))
        curve.append(loss)
        if not np.isfinite(loss) or loss > 1e12:
            return None, np.array(curve)
        if loss <= target:
            return t, np.array(curve)
        if t == max_steps:
            break
        grad = curvature * x
        if sigma:
            grad[:, 0] += sigma * rng.standard_normal(runs)
        x, state = driver.step(x, grad, state)
    return None, np.array(curve)


def race(name: str, curvature: np.ndarray, x0: np.ndarray, grids: dict[str, np.ndarray], *, sigma: float,
         runs: int, max_steps: int, show: bool) -> dict:
    """Grid-search each method's constant step; return the best step, its step count and curve. A grid row's
    ``steps`` is None when that step did not reach the target within its ``max_steps`` (the best count so far)."""
    result: dict = {}
    for method, lrs in grids.items():
        table = []
        best = (None, None, None)
        for lr in _repro.progress(lrs, desc=f"{name}: {method}", disable=not show):
            # a step that cannot beat the best so far is stopped there: the best (and the argmin) are unchanged
            cap = max_steps if best[0] is None else best[0] - 1
            steps, curve = steps_to_target(METHODS[method](float(lr)), curvature, x0, sigma=sigma, runs=runs,
                                           max_steps=cap)
            table.append({"lr": float(lr), "steps": steps, "max_steps": cap})
            if steps is not None and (best[0] is None or steps < best[0]):
                best = (steps, float(lr), curve)
        result[method] = {"best_steps": best[0], "best_lr": best[1], "grid": table,
                          "curve": best[2] if best[2] is not None else np.array([])}
    s, g = result["SGD"]["best_steps"], result["SignSGD"]["best_steps"]
    result["ratio_sgd_over_sign"] = (s / g) if (s is not None and g) else None
    return result


def run(d: int = 100, sigma: float = 100.0, runs: int = 64, max_steps: int = 20000, show: bool = True,
        points: int = 13) -> dict:
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal(d)
    isotropic = race(
        "noisy", np.ones(d), x0,
        {"SGD": np.logspace(-5, -1, points), "SignSGD": np.logspace(-3, 0, points)},
        sigma=sigma, runs=runs, max_steps=max_steps, show=show,
    )
    stiff = np.ones(d)
    stiff[0] = float(d)
    ill = race(
        "stiff", stiff, x0,
        {"SGD": np.logspace(-4, np.log10(2.0 / d), points), "SignSGD": np.logspace(-3, 0, points)},
        sigma=0.0, runs=1, max_steps=max_steps, show=show,
    )
    return {"d": d, "sigma": sigma, "runs": runs, "max_steps": max_steps, "f0": float(0.5 * x0 @ x0),
            "noisy_coordinate": isotropic, "one_large_curvature": ill}


def sweep(dims=(10, 30, 100, 300, 1000), sigma: float = 100.0, runs: int = 64, max_steps: int = 20000,
          sgd_points: int = 7, sign_points: int = 9, show: bool = True) -> dict:
    """The noisy problem of :func:`run` at several dimensions ``d``: the step-count ratio SGD / SignSGD against ``d``
    and its log-log slope (1 if the ratio grows like ``d``).

    The grids are coarser than :func:`run`'s and centred on where the best steps lie: SGD's noise floor on the noisy
    coordinate is ``lr sigma^2 / 4``, so its best step has ``lr sigma^2 / 4`` of order the target (grid
    ``[0.25, 16] / sigma^2``); sign descent's grid is ``[0.01, 1]``. Every best step is checked to be inside its
    grid."""
    rows = []
    for d in dims:
        x0 = np.random.default_rng(1).standard_normal(d)
        r = race(f"d={d}", np.ones(d), x0,
                 {"SGD": np.logspace(np.log10(0.25 / sigma**2), np.log10(16.0 / sigma**2), sgd_points),
                  "SignSGD": np.logspace(-2, 0, sign_points)},
                 sigma=sigma, runs=runs, max_steps=max_steps, show=show)
        rows.append({"d": d, "f0": float(0.5 * x0 @ x0),
                     **{f"{m}_{k}": r[m][k] for m in METHODS for k in ("best_steps", "best_lr")},
                     **{f"{m}_best_inside_grid": r[m]["best_lr"] is not None
                        and r[m]["grid"][0]["lr"] < r[m]["best_lr"] < r[m]["grid"][-1]["lr"] for m in METHODS},
                     "ratio": r["ratio_sgd_over_sign"]})
    ok = [row for row in rows if row["ratio"] is not None]
    slope = (float(np.polyfit(np.log([row["d"] for row in ok]), np.log([row["ratio"] for row in ok]), 1)[0])
             if len(ok) >= 2 else None)
    return {"sigma": sigma, "runs": runs, "max_steps": max_steps, "rows": rows, "loglog_slope": slope}


def plot(res: dict, path: Path) -> Path:
    scaling = res.get("d_sweep")
    fig, axes = _repro.plt.subplots(1, 3 if scaling else 2, figsize=(16, 4.2) if scaling else (11, 4))
    titles = {
        "noisy_coordinate": f"$\\|x\\|^2/2$, d={res['d']}, noise N(0, {res['sigma']:g}$^2$) on $x_1$",
        "one_large_curvature": f"one curvature L={res['d']}, others 1, exact gradients",
    }
    for ax, key in zip(axes, titles):
        for method, color in (("SGD", "tab:blue"), ("SignSGD", "tab:red")):
            r = res[key][method]
            curve = np.asarray(r["curve"])
            if curve.size:
                ax.plot(np.arange(curve.size), curve, color=color,
                        label=f"{method} (best lr {r['best_lr']:.2g}): {r['best_steps']} steps")
        ax.axhline(1.0, color="gray", ls="--", lw=1)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("mean loss E f(x_t)" if key == "noisy_coordinate" else "loss f(x_t)")
        ratio = res[key]["ratio_sgd_over_sign"]
        ax.set_title(titles[key] + (f"\nSGD needs {ratio:.0f}x the steps" if ratio else ""), fontsize=10)
        ax.legend(fontsize=8)
    if scaling:
        ax = axes[2]
        rows = [row for row in scaling["rows"] if row["ratio"] is not None]
        d = np.array([row["d"] for row in rows], dtype=float)
        ratio = np.array([row["ratio"] for row in rows])
        ax.plot(d, ratio, "o-", color="tab:purple",
                label=f"measured SGD / SignSGD steps (log-log slope {scaling['loglog_slope']:.2f})")
        for x_, y_, row in zip(d, ratio, rows):
            ax.annotate(f"{row['SGD_best_steps']}/{row['SignSGD_best_steps']}", (x_, y_), fontsize=7,
                        textcoords="offset points", xytext=(3, 4))
        mid = len(d) // 2
        ax.plot(d, ratio[mid] * d / d[mid], "--", color="gray", label="reference: proportional to d")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("dimension d")
        ax.set_ylabel("steps to E f <= 1: SGD / SignSGD")
        ax.set_title(f"noise N(0, {scaling['sigma']:g}$^2$) on $x_1$, each method's best step per d", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    return _repro.savefig(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = _repro.parser(__doc__)
    p.add_argument("--d", type=int, default=None, help="dimension (default 100; 20 with --quick)")
    p.add_argument("--no-sweep", action="store_true", help="skip the sweep over the dimension d")
    args = p.parse_args(argv)
    out = _repro.out_dir(args.out)
    if args.quick:
        res = run(d=args.d or 20, sigma=10.0, runs=16, max_steps=3000, show=not args.no_progress, points=7)
        if not args.no_sweep:
            res["d_sweep"] = sweep(QUICK_DIMS, sigma=10.0, runs=16, max_steps=3000, show=not args.no_progress)
    else:
        res = run(d=args.d or 100, show=not args.no_progress)
        if not args.no_sweep:
            res["d_sweep"] = sweep(show=not args.no_progress)
    png = plot(res, out / "signsgd_vs_sgd.png")
    summary = {k: v for k, v in res.items()}
    for key in ("noisy_coordinate", "one_large_curvature"):
        summary[key] = {m: ({kk: vv for kk, vv in r.items() if kk != "curve"} if isinstance(r, dict) else r)
                        for m, r in res[key].items()}
    _repro.save_json(out / "signsgd_vs_sgd.json", summary)
    for key in ("noisy_coordinate", "one_large_curvature"):
        r = res[key]
        print(f"{key:22s} SGD {r['SGD']['best_steps']} steps (lr {r['SGD']['best_lr']:.3g}) | SignSGD "
              f"{r['SignSGD']['best_steps']} steps (lr {r['SignSGD']['best_lr']:.3g}) | ratio "
              f"{r['ratio_sgd_over_sign']}")
    if "d_sweep" in res:
        sw = res["d_sweep"]
        print(f"{'d':>6s} {'f0':>7s} {'SGD steps':>9s} {'SGD lr':>8s} {'Sign steps':>10s} {'Sign lr':>8s} "
              f"{'ratio':>8s}")
        for row in sw["rows"]:
            ratio = f"{row['ratio']:.1f}" if row["ratio"] is not None else "-"
            print(f"{row['d']:6d} {row['f0']:7.1f} {str(row['SGD_best_steps']):>9s} {row['SGD_best_lr'] or 0:8.2g} "
                  f"{str(row['SignSGD_best_steps']):>10s} {row['SignSGD_best_lr'] or 0:8.2g} {ratio:>8s}")
        print(f"log-log slope of the ratio in d: {sw['loglog_slope']:.2f} (1 would be 'proportional to d')")
    print(f"plot: {png}")
    return res


if __name__ == "__main__":
    main()
