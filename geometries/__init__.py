"""The catalogue of geometries. Importing this package registers every built-in norm.

Each geometry is one class in one module; :func:`lmo.norms` lists them by registry name and
:func:`lmo.get_norm` builds one from its name and keyword parameters. See ``docs/geometries.md`` for the table.
"""

from ._torch import Workspace
from .columns import BiasRMS, ColNorm, RowNorm, ScionSign
from .manifold import SpectralSphere, Sphere, Stiefel, StiefelInfo
from .polar_solvers import PolarSolver, polar, polar_express_coefficients
from .product import Product
from .spectral import Frobenius, Nuclear, Schatten, Spectral, SpectralConv
from .vector import L1, L2, RMS, Lp, Scaled, Sign, WeightedSign

__all__ = [
    "Sign", "L1", "L2", "Lp", "RMS", "WeightedSign", "Scaled",
    "Spectral", "SpectralConv", "Nuclear", "Schatten", "Frobenius",
    "ColNorm", "RowNorm", "ScionSign", "BiasRMS",
    "Product", "Sphere", "Stiefel", "StiefelInfo", "SpectralSphere",
    "polar", "PolarSolver", "polar_express_coefficients", "Workspace",
]
