"""Train a two-layer MLP in numpy alone with the functional API of lmo.optimizers (no torch, no autograd).

The optimizer is a ``Driver``: ``state = opt.init(params)``, then ``params, state = opt.step(params, grads, state)``,
pure, over plain numpy arrays (CuPy arrays work by the same code). Run::

    python examples/numpy_training.py --optimizer lion --steps 300

``--optimizer`` picks a configuration: ``lion``, ``signum``, ``sign_sgd``, or (with the spectral geometry
installed) ``muon`` for the weight matrices and ``uscion`` with Scion's per-layer recipe.
"""

from __future__ import annotations

import argparse

import numpy as np

import lmo.optimizers as lo


def make_data(n: int = 512, d_in: int = 8, d_out: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth nonlinear regression problem: y = sin(x A) with a random A."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in))
    a = rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)
    return x, np.sin(2 * x @ a)


def init_params(d_in: int, hidden: int, d_out: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    return {
        "hidden.weight": rng.standard_normal((hidden, d_in)) / np.sqrt(d_in),
        "hidden.bias": np.zeros(hidden),
        "head.weight": rng.standard_normal((d_out, hidden)) / np.sqrt(hidden),
    }


def loss_and_grads(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean squared error of ``head(tanh(hidden(x)))`` and its gradients (hand-written backpropagation)."""
    pre = x @ params["hidden.weight"].T + params["hidden.bias"]
    h = np.tanh(pre)
    out = h @ params["head.weight"].T
    err = out - y
    n = x.shape[0]
    loss = float(np.sum(err**2) / n)
    d_out = 2 * err / n
    d_h = d_out @ params["head.weight"]
    d_pre = d_h * (1 - h**2)
    grads = {
        "hidden.weight": d_pre.T @ x,
        "hidden.bias": d_pre.sum(axis=0),
        "head.weight": d_out.T @ h,
    }
    return loss, grads


def make_optimizer(name: str, steps: int) -> lo.Driver:
    """A configuration with a linearly decaying learning rate (a schedule of the 0-based step index)."""

    def decay(lr: float):
        return lambda t: lr * (1 - t / steps)

    if name == "lion":
        return lo.lion(decay(0.01), betas=(0.9, 0.99))
    if name == "signum":
        return lo.signum(decay(0.01), beta=0.9)
    if name == "sign_sgd":
        return lo.sign_sgd(decay(0.005))
    if name == "muon":
        # Muon for matrices and, in the same driver, a vector geometry (rms) for the bias, chosen per parameter
        muon = lo.muon(decay(0.05), weight_decay=0.0)

        def geometry(param_name: str, shape: tuple[int, ...]):
            return lo.ParamGeometry("rms", radius=0.1) if len(shape) == 1 else muon.geometry(param_name, shape)

        return muon.replace(geometry=geometry)
    if name == "uscion":
        recipe = lo.ScionRecipe(radius=1.0, output_radius=10.0, bias_radius=1.0, output=("head",))
        return lo.uscion(decay(0.02), beta=0.9, geometry=recipe)
    raise ValueError(f"unknown optimizer {name!r}")


def train(optimizer: str = "lion", steps: int = 300, hidden: int = 32, batch: int = 64, seed: int = 0) -> list[float]:
    """Train with minibatches; returns the full-data loss after every step (and before the first)."""
    x, y = make_data(seed=seed)
    params = init_params(x.shape[1], hidden, y.shape[1], seed)
    opt = make_optimizer(optimizer, steps)
    state = opt.init(params)
    rng = np.random.default_rng(seed + 2)
    losses = [loss_and_grads(params, x, y)[0]]
    for _ in range(steps):
        idx = rng.choice(x.shape[0], size=batch, replace=False)
        _, grads = loss_and_grads(params, x[idx], y[idx])
        params, state = opt.step(params, grads, state)
        losses.append(loss_and_grads(params, x, y)[0])
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="lion", choices=["lion", "signum", "sign_sgd", "muon", "uscion"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()
    losses = train(args.optimizer, args.steps, args.hidden)
    for t in range(0, len(losses), max(1, len(losses) // 10)):
        print(f"step {t:5d}  loss {losses[t]:.5f}")
    print(f"final loss {losses[-1]:.5f} (from {losses[0]:.5f})")


if __name__ == "__main__":
    main()
