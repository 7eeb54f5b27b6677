"""Private test doubles and helpers for the optimizer tests (not part of the library).

``PolarSVD`` is an exact spectral geometry (lmo = -U V^T by SVD) and ``TorchNewtonSchulz`` replicates
torch.optim.Muon's bf16 Newton-Schulz iteration; both stand in for the ``spectral`` geometry in tests that must
run before (or independently of) the registry's own, and are unregistered ``Norm`` subclasses.
"""

from __future__ import annotations

import numpy as np
import pytest

import lmo
from lmo.backend import namespace
from lmo.norm import Norm

NS = (3.4445, -4.775, 2.0315)


class PolarSVD(Norm):
    """The spectral norm with its exact oracle ``-U V^T`` (singular values below ``1e-12 * max`` count as 0)."""

    ndim = 2
    symmetry = "orthogonal"

    def norm(self, x):
        xp = namespace(x)
        return xp.max(xp.linalg.svdvals(x), axis=-1)

    def dual_norm(self, g):
        xp = namespace(g)
        return xp.sum(xp.linalg.svdvals(g), axis=-1)

    def lmo(self, g):
        xp = namespace(g)
        u, s, vh = xp.linalg.svd(g, full_matrices=False)
        keep = xp.astype(s > 1e-12 * xp.max(s, axis=-1, keepdims=True), g.dtype)
        return -((u * keep[..., None, :]) @ vh)


class TorchNewtonSchulz(Norm):
    """torch.optim.Muon's orthogonalisation (bf16 quintic Newton-Schulz), batched over leading axes, negated."""

    ndim = 2
    delta = 0.3
    slack = 0.5
    coefficients: tuple = NS
    steps: int = 5
    eps: float = 1e-7

    def norm(self, x):
        return PolarSVD().norm(x)

    def dual_norm(self, g):
        return PolarSVD().dual_norm(g)

    def lmo(self, g):
        import torch

        a, b, c = self.coefficients
        x = g.bfloat16()
        tall = g.shape[-2] > g.shape[-1]
        if tall:
            x = x.mT
        x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=self.eps)
        for _ in range(self.steps):  # torch.optim.Muon's fused addmm steps (baddbmm for batches)
            gram = x @ x.mT
            if x.ndim == 2:
                x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
            else:
                flat = x.reshape(-1, *x.shape[-2:])
                gr = gram.reshape(flat.shape[0], *gram.shape[-2:])
                x = torch.baddbmm(flat, torch.baddbmm(gr, gr, gr, beta=b, alpha=c), flat, beta=a).reshape(x.shape)
        if tall:
            x = x.mT
        return -x.to(g.dtype)


def has_norm(name: str) -> bool:
    return name in lmo.norms()


def skip_without(*names: str):
    missing = [n for n in names if not has_norm(n)]
    return pytest.mark.skipif(
        bool(missing), reason=f"needs the geometry {', '.join(missing)} (not registered yet: the geom branch)"
    )


# -- backends ----------------------------------------------------------------------------------------------------
def _backends():
    out = ["numpy"]
    try:
        import torch  # noqa: F401

        out.append("torch")
    except ImportError:
        pass
    try:
        import array_api_strict  # noqa: F401

        out.append("array_api_strict")
    except ImportError:
        pass
    return out


BACKENDS = _backends()


def to_backend(name: str, a: np.ndarray, dtype: str = "float64"):
    a = np.asarray(a, dtype=dtype)
    if name == "numpy":
        return a.copy()
    if name == "torch":
        import torch

        return torch.from_numpy(a.copy())
    import array_api_strict as xps

    return xps.asarray(a.copy())


def to_numpy(x) -> np.ndarray:
    if isinstance(x, (np.ndarray, np.generic, float, int)):
        return np.asarray(x)
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.from_dlpack(x)


def like(x, a: np.ndarray):
    """``a`` in the namespace, dtype and device of ``x``."""
    from lmo.backend import device

    xp = namespace(x)
    return xp.asarray(np.asarray(a, dtype=to_numpy(x).dtype), device=device(x))


def quadratic(shapes, seed=0):
    """A separable quadratic ``f(x) = sum 0.5 h (x - t)^2`` over a dict of arrays: ``(f, grad, targets)``."""
    rng = np.random.default_rng(seed)
    targets = {k: rng.standard_normal(s) for k, s in shapes.items()}
    curv = {k: rng.uniform(0.5, 2.0, s) for k, s in shapes.items()}

    def f(x):
        return sum(float(0.5 * np.sum(curv[k] * (to_numpy(x[k]) - targets[k]) ** 2)) for k in shapes)

    def grad(x):
        return {k: (x[k] - like(x[k], targets[k])) * like(x[k], curv[k]) for k in shapes}

    return f, grad, targets


def linear_decay(lr: float, steps: int):
    return lambda t: lr * (1.0 - t / steps)


def tree_numpy(tree):
    return {k: to_numpy(v).copy() for k, v in tree.items()}


def relative_change(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))



