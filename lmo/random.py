"""Random numbers for each array backend: the one module that knows how each library draws them.

Differential privacy needs Gaussian noise in the namespace, device and dtype of the gradients, from a generator that
the user can seed (for reproducible research) and that is *not* the library's global generator by default (a
``torch.manual_seed`` set for data order or initialisation must not make the privacy noise predictable).

:class:`RandomSource` wraps the generators: ``RandomSource(generator).normal(like, std)``.

``generator``:

- ``None`` (default): for each backend and device, a generator seeded from the operating system's entropy
  (:mod:`secrets`); the noise cannot be reproduced.
- an ``int``: for each backend and device, a generator seeded with it (reproducible).
- a ``torch.Generator``: used for torch arrays (noise is drawn on the generator's device, then moved).
- a ``numpy.random.Generator``: used for numpy and array-api-strict arrays.
- a ``cupy.random.Generator``: used for CuPy arrays.

Supported backends: torch, numpy, array-api-strict (drawn by numpy, then wrapped), CuPy.

.. warning::
   These are the libraries' statistical generators (Philox, PCG64, Mersenne Twister), not cryptographically secure
   ones, and floating-point Gaussian samples are open to Mironov's (2012) least-significant-bit attack. This is the
   standard of DP training libraries (Opacus outside its ``secure_mode``); a deployment whose threat model includes
   these attacks needs a secure sampler.
"""

from __future__ import annotations

import secrets
from typing import Any

import array_api_compat

from .backend import Array, device, namespace

__all__ = ["RandomSource"]


def _kind(x: Array) -> str:
    if array_api_compat.is_torch_array(x):
        return "torch"
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    if type(x).__module__.split(".")[0] == "array_api_strict":
        return "array_api_strict"
    raise ValueError(
        f"no random number generator for arrays of type {type(x).__module__}.{type(x).__name__}; "
        "supported: torch, numpy, CuPy, array-api-strict"
    )


def _generator_kind(generator: Any) -> str | None:
    module = type(generator).__module__.split(".")[0]
    if module == "torch":
        return "torch"
    if module == "numpy":
        return "numpy"
    if module == "cupy":
        return "cupy"
    return None


class RandomSource:
    """Gaussian noise in the namespace, device and dtype of an array, from a seedable generator per backend.

    See the module docstring for ``generator``. One ``RandomSource`` keeps its generators (one per backend and
    device) across calls, so successive draws are independent. It is not thread-safe.
    """

    def __init__(self, generator: Any = None) -> None:
        if isinstance(generator, RandomSource):
            generator = generator.generator
        if isinstance(generator, bool) or not (
            generator is None or isinstance(generator, int) or _generator_kind(generator) is not None
        ):
            raise ValueError(
                "generator must be None, an int seed, a torch.Generator, a numpy.random.Generator or a "
                f"cupy.random.Generator; got generator={generator!r}"
            )
        if isinstance(generator, int) and generator < 0:
            raise ValueError(f"a seed must be >= 0; got generator={generator!r}")
        self.generator = generator
        self._cache: dict[tuple[str, str], Any] = {}

    def __repr__(self) -> str:
        what = "OS entropy" if self.generator is None else repr(self.generator)
        return f"RandomSource({what})"

    def _seed(self) -> int:
        return secrets.randbits(63) if self.generator is None else int(self.generator)

    def _get(self, kind: str, where: Any) -> Any:
        """The generator for arrays of backend ``kind`` on device ``where``."""
        given = self.generator
        if given is not None and not isinstance(given, int):
            gkind = _generator_kind(given)
            if gkind == kind or (gkind == "numpy" and kind == "array_api_strict"):
                return given
            raise ValueError(f"a {gkind} generator cannot draw noise for {kind} arrays; pass a {kind} generator, "
                             "an int seed or None")
        key = (kind, str(where))
        if key not in self._cache:
            if kind == "torch":
                import torch

                self._cache[key] = torch.Generator(device=where).manual_seed(self._seed())
            elif kind in ("numpy", "array_api_strict"):
                import numpy as np

                self._cache[key] = np.random.default_rng(self._seed())
            else:  # cupy
                import cupy

                with cupy.cuda.Device(where.id if hasattr(where, "id") else where):
                    self._cache[key] = cupy.random.default_rng(self._seed())
        return self._cache[key]

    def normal(self, like: Array, std: float = 1.0) -> Array:
        """Independent ``N(0, std^2)`` entries with the shape, dtype, namespace and device of ``like``.

        ``like`` must have a real floating dtype of at least 32 bits (draw half-precision noise in float32 and cast).
        """
        xp = namespace(like)
        if not xp.isdtype(like.dtype, "real floating") or xp.finfo(like.dtype).bits < 32:
            raise ValueError(f"noise is drawn in float32 or float64; got dtype {like.dtype}")
        kind = _kind(like)
        shape = tuple(like.shape)
        where = device(like)
        gen = self._get(kind, where)
        if kind == "torch":
            import torch

            z = torch.randn(shape, generator=gen, device=gen.device, dtype=like.dtype)
            z = z.to(where)
        elif kind in ("numpy", "array_api_strict"):
            import numpy as np

            z = gen.standard_normal(shape, dtype=np.float64 if xp.finfo(like.dtype).bits == 64 else np.float32)
            if kind == "array_api_strict":
                z = xp.asarray(z, device=where)
        else:
            import cupy

            with cupy.cuda.Device(where.id if hasattr(where, "id") else where):
                z = gen.standard_normal(shape, dtype=like.dtype)
        return z * std if std != 1.0 else z
