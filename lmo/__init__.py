"""lmo-optim: optimisation by linear minimisation oracles (steepest descent under a chosen norm).

Sign convention: ``lmo(g) = argmin_{||d|| <= 1} <g, d>``, so ``<g, lmo(g)> = -dual_norm(g)`` and an optimizer
step is ``x <- x + lr * radius * lmo(c)``.

>>> import numpy as np, lmo
>>> lmo.get_norm("sign").lmo(np.array([3.0, -0.5]))
array([-1.,  1.])
"""

from .norm import ENTRY_POINT_GROUP, Norm, get_norm, norms

__all__ = ["Norm", "get_norm", "norms", "ENTRY_POINT_GROUP", "__version__"]

try:
    from importlib.metadata import version as _version

    __version__ = _version("lmo-optim")
except Exception:  # pragma: no cover - running from a tree that is not installed
    __version__ = "0+unknown"
