"""Sign descent can fail on a convex Lipschitz function; error feedback repairs it (arXiv 2605.08980).

    f(x) = eps |x1 + x2| + |x1 - x2|,        0 < eps < 1,   minimum f = 0 at x = 0.

The subgradient is ``g = eps a (1, 1) + s (1, -1)`` with ``a = sign(x1 + x2)`` and ``s`` in ``sign(x1 - x2)``; at a
tie ``x1 = x2`` any ``s`` in ``[-1, 1]`` is a subgradient. Since ``|s| = 1 > eps`` whenever the oracle breaks ties
adversarially (``s = +1`` at 0), ``sign(g) = +-(1, -1)``: every sign step moves across the valley ``x1 = x2``,
never along it, so ``x1 + x2`` -- and with it ``f >= eps |x1 + x2|`` -- never changes, whatever the step sizes.
With a benign tie rule (``s = 0`` at 0) the same method walks down the valley.

Error feedback (Karimireddy et al. 2019, the fix the paper proposes for Muon-type methods) keeps what the sign
compressor dropped -- here the ``eps (1, 1)`` component -- in a buffer and adds it back until it moves the iterate;
with steps ``lr / sqrt(t + 1)`` it converges. All three methods are the library's: ``sign_sgd`` and
``error_feedback(sign_sgd(...))``; only the subgradient oracle (the problem) differs.

    python examples/sign_descent_error_feedback.py [--out out/] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro  # noqa: E402

import lmo.optimizers as lo  # noqa: E402


def objective(x: np.ndarray, eps: float) -> float:
    return float(eps * abs(x[0] + x[1]) + abs(x[0] - x[1]))


def subgradient(x: np.ndarray, eps: float, tie: float) -> np.ndarray:
    """A subgradient of f at x; ``tie`` is the value of sign(x1 - x2) chosen at x1 = x2 (+1: adversarial)."""
    a = np.sign(x[0] + x[1])
    d = x[0] - x[1]
    s = np.sign(d) if d != 0 else tie
    return eps * a * np.array([1.0, 1.0]) + s * np.array([1.0, -1.0])


def trajectory(driver: lo.Driver, x0: np.ndarray, eps: float, tie: float, steps: int, show: bool, desc: str) -> list:
    x, state = {"x": x0.copy()}, None
    state = driver.init(x)
    values = [objective(x["x"], eps)]
    for _ in _repro.progress(range(steps), desc=desc, disable=not show):
        x, state = driver.step(x, {"x": subgradient(x["x"], eps, tie)}, state)
        values.append(objective(x["x"], eps))
    return values


def run(eps: float = 0.1, lr: float = 0.1, steps: int = 4000, show: bool = True) -> dict:
    schedule = lambda t: lr / np.sqrt(t + 1.0)  # noqa: E731  the decreasing steps of the subgradient method
    x0 = np.array([1.0, 1.0])
    methods = {
        "sign descent, adversarial ties": (lo.sign_sgd(schedule), 1.0),
        "sign descent, benign ties (s = 0)": (lo.sign_sgd(schedule), 0.0),
        "sign descent + error feedback, adversarial ties": (lo.error_feedback(lo.sign_sgd(schedule)), 1.0),
    }
    curves = {name: trajectory(driver, x0, eps, tie, steps, show, name) for name, (driver, tie) in methods.items()}
    return {"eps": eps, "lr": lr, "steps": steps, "x0": x0.tolist(), "curves": curves,
            "final": {name: c[-1] for name, c in curves.items()},
            "best": {name: min(c) for name, c in curves.items()}}


def plot(res: dict, path: Path) -> Path:
    fig, ax = _repro.plt.subplots(figsize=(7, 4.2))
    t = np.arange(res["steps"] + 1)
    colors = ("tab:red", "tab:gray", "tab:blue")
    for (name, curve), color in zip(res["curves"].items(), colors):
        ax.plot(t + 1, np.maximum(curve, 1e-12), color=color, label=name)
    ax.axhline(2 * res["eps"], color="black", lw=0.6, ls=":", label="f(x0) = 2 eps")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("f(x)")
    ax.set_title(f"f = eps|x1+x2| + |x1-x2|, eps={res['eps']}, steps lr/sqrt(t+1), lr={res['lr']}", fontsize=10)
    ax.legend(fontsize=8)
    return _repro.savefig(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = _repro.parser(__doc__).parse_args(argv)
    out = _repro.out_dir(args.out)
    res = run(lr=0.5, steps=1000, show=not args.no_progress) if args.quick else run(show=not args.no_progress)
    png = plot(res, out / "sign_descent_error_feedback.png")
    _repro.save_json(out / "sign_descent_error_feedback.json",
                     {k: res[k] for k in ("eps", "lr", "steps", "x0", "final", "best")})
    for name, value in res["final"].items():
        print(f"{name:50s} f after {res['steps']} steps: {value:.3g}")
    print(f"plot: {png}")
    return res


if __name__ == "__main__":
    main()
