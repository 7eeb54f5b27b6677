"""The point-dependent oracle of a manifold geometry as a driver geometry (manifold Muon).

:class:`Tangent` wraps a manifold geometry of :mod:`lmo.geometries.manifold` (``sphere``, ``stiefel``,
``spectral_sphere``) so that the driver's oracle is ``lmo_at(x, c)``, the LMO over the tangent space at the
parameter ``x`` (:func:`lmo.optimizers.stateful_oracle`, with no state), instead of the ambient ``lmo(c)``.
``norm``, ``dual_norm``, ``lmo``, ``retract``, ``project`` and ``tangent_residual`` are the manifold's.
"""

from __future__ import annotations

from typing import Any

from lmo.backend import Array
from lmo.norm import Norm, get_norm

__all__ = ["Tangent"]


class Tangent(Norm):
    """``manifold``'s tangent-space oracle for the driver: ``lmo_stateful(x, c, {}, t) = manifold.lmo_at(x, c)``.

    At step 0 the parameter is first projected onto the manifold (``manifold.project``), so that the first oracle
    call sees a point of the manifold even when the parameter was initialised off it; the retraction hook
    (:class:`lmo.optimizers.hooks.Retract`) keeps every later iterate on it.
    """

    manifold: Any = None

    def __post_init__(self) -> None:
        manifold = get_norm(self.manifold) if isinstance(self.manifold, str) else self.manifold
        if not isinstance(manifold, Norm) or not all(
            callable(getattr(manifold, m, None)) for m in ("lmo_at", "retract", "project")
        ):
            raise ValueError(
                "Tangent: manifold must be a manifold geometry (a Norm with lmo_at, retract and project: 'sphere', "
                f"'stiefel', 'spectral_sphere'); got manifold={self.manifold!r}"
            )
        object.__setattr__(self, "manifold", manifold)

    @property
    def ndim(self) -> int:  # type: ignore[override]
        return self.manifold.ndim

    @property
    def infinite_input(self) -> str:  # type: ignore[override]
        return self.manifold.infinite_input

    def norm(self, x: Array) -> Array:
        return self.manifold.norm(x)

    def dual_norm(self, g: Array) -> Array:
        return self.manifold.dual_norm(g)

    def lmo(self, g: Array) -> Array:
        return self.manifold.lmo(g)

    def retract(self, x: Array, step: Array) -> Array:
        return self.manifold.retract(x, step)

    def project(self, x: Array) -> Array:
        return self.manifold.project(x)

    def tangent_residual(self, x: Array, v: Array) -> Array:
        return self.manifold.tangent_residual(x, v)

    def init_state(self, name: str, x: Array) -> dict[str, Array]:
        return {}

    def lmo_stateful(self, x: Array, g: Array, state: dict[str, Array], step: int) -> tuple[Array, dict[str, Array]]:
        if step == 0:
            x = self.manifold.project(x)
        return self.manifold.lmo_at(x, g), state
