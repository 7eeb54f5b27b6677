"""Li & Hong, "A Note on the Convergence of Muon" (arXiv 2502.02900), in the note's stochastic setting.

The note analyses two versions of Muon on an L-smooth ``f`` with stochastic gradients of a minibatch of size ``B``
(variance ``sigma^2 / B``):

* **version A** (Muon): ``M_t = beta M_{t-1} + (1 - beta) G_t``, ``W_{t+1} = W_t - eta U V^T`` (``M_t = U S V^T``).
  With ``eta ~ T^{-3/4}`` and ``1 - beta ~ T^{-1/2}`` the average gradient norm ``(1/T) sum_t E ||grad f(W_t)||_F``
  is ``O(T^{-1/4})``, with a noise term that shrinks with ``B``;
* **version B** (steepest descent in the spectral norm, the sharp step): ``W_{t+1} = W_t - (1/L) ||G_t||_* U V^T``.
  Its bound keeps a noise term of order ``sigma^2 / B`` that does not fall with ``T``: without large batches it
  plateaus; it converges only as ``B`` grows.

The note's constants (the ``c`` in ``eta = c T^{-3/4}``, ``1 - beta = c' T^{-1/2}``) could not be read from the
material available to us, so we compare slopes and orderings, not values: ``eta = T^{-3/4}``, ``1 - beta =
T^{-1/2}``.

Problem: matrix least squares ``f(W) = ||X W - Y||_F^2 / (2n)``, ``W`` 32 x 16, ``n = 4096`` rows with a decaying
input spectrum and label noise; the stochastic gradient is that of ``B`` rows drawn uniformly (``B`` in {1, 8, 64});
the full gradient ``H W - C`` (``H = X^T X / n``) is exact and cheap, and ``L = tr(H)`` is the smoothness constant in
the spectral norm (``||H D||_* <= tr(H) ||D||_op``). Version A is :func:`lmo.optimizers.exact_muon`, version B
:func:`lmo.optimizers.spectral_descent`, both on a stack of independent runs (the leading axis of one array).

    python examples/muon_sharp_sgd.py [--out out/] [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro  # noqa: E402

import lmo.optimizers as lo  # noqa: E402

CLAIM = ("arXiv 2502.02900 (Li & Hong): with minibatch noise of variance sigma^2/B, Muon (version A: EMA momentum, "
         "exact polar factor) with eta ~ T^(-3/4) and 1 - beta ~ T^(-1/2) has (1/T) sum_t E||grad f(W_t)||_F = "
         "O(T^(-1/4)), its noise term shrinking with B; the spectral sharp step (version B) keeps a sigma^2/B term "
         "that does not vanish with T, so it needs large batches to converge.")
BATCHES = (1, 8, 64)


def problem(n: int = 4096, m: int = 32, k: int = 16, noise: float = 1.0, seed: int = 0) -> dict:
    """A least-squares matrix regression with input spectrum ``i^{-1/2}`` and label noise ``noise``."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, m)))
    V, _ = np.linalg.qr(rng.standard_normal((m, m)))
    X = np.sqrt(n) * (U * (1.0 / np.arange(1, m + 1) ** 0.5)) @ V.T
    Y = X @ rng.standard_normal((m, k)) + noise * rng.standard_normal((n, k))
    H, C = X.T @ X / n, X.T @ Y / n
    return {"X": X, "Y": Y, "H": H, "C": C, "L": float(np.trace(H)), "shape": (m, k)}


def full_gradient(prob: dict, W: np.ndarray) -> np.ndarray:
    return prob["H"] @ W - prob["C"]


def minibatch_gradient(prob: dict, W: np.ndarray, B: int, rng: np.random.Generator) -> np.ndarray:
    """For each run (leading axis of ``W``), the gradient of the loss of ``B`` rows drawn with replacement."""
    idx = rng.integers(prob["X"].shape[0], size=(W.shape[0], B))
    Xb, Yb = prob["X"][idx], prob["Y"][idx]
    residual = np.einsum("rbm,rmk->rbk", Xb, W) - Yb
    return np.einsum("rbm,rbk->rmk", Xb, residual) / B


def average_gradient_norm(prob: dict, driver: lo.Driver, T: int, B: int, runs: int, seed: int) -> np.ndarray:
    """``(1/t) sum_{s<t} ||grad f(W_s)||_F`` for ``t = 1..T``, averaged over ``runs`` runs from ``W_0 = 0``."""
    rng = np.random.default_rng(seed)
    W = np.zeros((runs, *prob["shape"]))
    state = driver.init(W)
    total = np.zeros(T)
    for t in range(T):
        total[t] = np.linalg.norm(full_gradient(prob, W), axis=(1, 2)).mean()
        W, state = driver.step(W, minibatch_gradient(prob, W, B, rng), state)
    return np.cumsum(total) / np.arange(1, T + 1)


def version_a(T: int) -> lo.Driver:
    """Muon as the note analyses it: EMA momentum ``1 - beta = T^{-1/2}``, exact polar factor, ``eta = T^{-3/4}``."""
    return lo.exact_muon(T ** -0.75, beta=1.0 - T ** -0.5)


def version_b(L: float) -> lo.Driver:
    """The sharp step ``W <- W - (1/L) ||G||_* U V^T``, no momentum."""
    return lo.spectral_descent(1.0 / L)


def slope(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def run(horizons=(256, 512, 1024, 2048, 4096, 8192), batches=BATCHES, runs: int = 16, show: bool = True) -> dict:
    prob = problem()
    jobs = [("A", B, T) for B in batches for T in horizons] + [("B", B, max(horizons)) for B in batches]
    a: dict = {B: {} for B in batches}
    b: dict = {}
    for version, B, T in _repro.progress(jobs, desc="Li & Hong", disable=not show):
        if version == "A":
            a[B][T] = float(average_gradient_norm(prob, version_a(T), T, B, runs, seed=T + B)[-1])
        else:
            b[B] = average_gradient_norm(prob, version_b(prob["L"]), T, B, runs, seed=B)
    hs = list(horizons)
    table_a = {B: {"T": hs, "avg_grad_norm": [a[B][T] for T in hs], "slope": slope(hs, [a[B][T] for T in hs])}
               for B in batches}
    table_b = {}
    for B in batches:
        curve = b[B]
        at = {T: float(curve[T - 1]) for T in hs}
        table_b[B] = {"T": hs, "avg_grad_norm": [at[T] for T in hs], "slope": slope(hs, [at[T] for T in hs]),
                      "curve": curve}
    return {"L": prob["L"], "shape": list(prob["shape"]), "n": int(prob["X"].shape[0]), "runs": runs,
            "horizons": hs, "batches": list(batches), "version_a": table_a, "version_b": table_b}


def verdict(res: dict) -> dict:
    """Version A: slope in T near -1/4 (within [-0.45, -0.15]) at every B, and the average gradient norm at the
    longest horizon falls with B. Version B: its slope at B = 1 is flatter than version A's and its level falls with
    B (a plateau that larger batches lower)."""
    A, Bv, bs = res["version_a"], res["version_b"], res["batches"]
    a_slopes = [A[B]["slope"] for B in bs]
    a_final = [A[B]["avg_grad_norm"][-1] for B in bs]
    b_final = [Bv[B]["avg_grad_norm"][-1] for B in bs]
    checks = {
        "A: slope within [-0.45, -0.15] at every B": all(-0.45 <= s <= -0.15 for s in a_slopes),
        "A: improves with B at the longest horizon": all(x > y for x, y in zip(a_final, a_final[1:])),
        "B: flatter than A at B = 1 (plateau)": Bv[bs[0]]["slope"] > A[bs[0]]["slope"] + 0.1,
        "B: plateau falls with B": all(x > y for x, y in zip(b_final, b_final[1:])),
    }
    return {"checks": checks, "holds": all(checks.values())}


def plot(res: dict, path: Path) -> Path:
    fig, axes = _repro.plt.subplots(1, 2, figsize=(12, 4.3))
    colors = dict(zip(res["batches"], ("tab:red", "tab:green", "tab:blue")))
    ax = axes[0]
    hs = np.array(res["horizons"], dtype=float)
    for B, t in res["version_a"].items():
        ax.plot(hs, t["avg_grad_norm"], "o-", color=colors[B], label=f"B = {B}: slope {t['slope']:.2f}")
    ref = res["version_a"][res["batches"][0]]["avg_grad_norm"][0]
    ax.plot(hs, ref * (hs / hs[0]) ** -0.25, ":", color="gray", label="T^(-1/4)")
    ax.set_title("version A (Muon, EMA, exact polar): eta = T^(-3/4), 1 - beta = T^(-1/2)", fontsize=9)
    ax.set_xlabel("horizon T")
    ax.set_xscale("log", base=2)
    ax.set_xticks(hs, [str(int(h)) for h in hs])
    ax.minorticks_off()
    ax = axes[1]
    for B, t in res["version_b"].items():
        curve = np.asarray(t["curve"])
        ax.plot(np.arange(1, curve.size + 1), curve, color=colors[B], label=f"B = {B}: slope {t['slope']:.2f}")
    ax.set_title(f"version B (sharp step, lr 1/L, L = tr(H) = {res['L']:.3g})", fontsize=9)
    ax.set_xlabel("step T")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylabel("(1/T) sum_t ||grad f(W_t)||_F (mean of runs)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"matrix least squares, W {res['shape'][0]}x{res['shape'][1]}, n = {res['n']}, minibatch noise, "
                 f"{res['runs']} runs", fontsize=10)
    return _repro.savefig(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = _repro.parser(__doc__).parse_args(argv)
    out = _repro.out_dir(args.out)
    if args.quick:
        res = run(horizons=(128, 256, 512, 1024), runs=8, show=not args.no_progress)
    else:
        res = run(show=not args.no_progress)
    res.update(verdict(res))
    res["claim"] = CLAIM
    res["setting"] = (f"f(W) = ||XW - Y||^2/(2n), W {res['shape'][0]}x{res['shape'][1]}, n = {res['n']}, label noise, "
                      f"minibatch of B rows drawn with replacement, B in {res['batches']}; version A = exact_muon with "
                      f"eta = T^(-3/4), beta = 1 - T^(-1/2) (the note's rates; its constants not read), one run per "
                      f"horizon T in {res['horizons']}; version B = spectral_descent(1/L), L = tr(X^T X/n); metric "
                      f"(1/T) sum_t ||grad f(W_t)||_F, mean of {res['runs']} runs, W_0 = 0")
    png = plot(res, out / "muon_sharp_sgd.png")
    summary = {**res, "version_b": {B: {k: v for k, v in t.items() if k != "curve"}
                                    for B, t in res["version_b"].items()}}
    _repro.save_evidence(args, out, "muon_sharp_sgd", summary)
    for name, key in (("A", "version_a"), ("B", "version_b")):
        for B, t in res[key].items():
            print(f"version {name}, B = {B:3d}: avg ||grad f||_F at T = {t['T']}: "
                  f"{[round(v, 4) for v in t['avg_grad_norm']]}, slope {t['slope']:.3f}")
    for check, ok in res["checks"].items():
        print(f"{'ok ' if ok else 'NO '} {check}")
    print(f"holds: {res['holds']}")
    print(f"plot: {png}")
    return res


if __name__ == "__main__":
    main()
