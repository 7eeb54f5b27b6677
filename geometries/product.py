"""Product geometries: one norm on a tuple of blocks, each block with its own norm and radius.

Array layout: a product acts on a flat trailing axis of length ``sum_i prod(shape_i)`` (``ndim = 1``; leading axes are
batch axes). The axis is cut, in order, into the declared blocks, and block ``i`` is reshaped to ``(*batch,
*shape_i)`` for its norm (which acts on exactly ``len(shape_i)`` trailing axes). To use it on a list of parameter
arrays, flatten each one (C order) and concatenate; :meth:`Product.split` and :meth:`Product.join` do both.

With the scaled block norms ``n_i(x_i) / r_i`` (``r_i``: the block radius), block duals ``a_i = r_i n_i^*(g_i)`` and
block oracles ``r_i lmo_i(g_i)``:

``combine="max"`` (layer-wise, the modular norm of Scion/modula)
    ``||x|| = max_i n_i(x_i) / r_i``; dual ``sum_i a_i``; ``lmo`` = every block's ``r_i lmo_i(g_i)``.
``combine="sum"``
    ``||x|| = sum_i n_i(x_i) / r_i``; dual ``max_i a_i``; ``lmo`` puts all mass on the block of largest ``a_i``
    (ties: split equally among the tied blocks, as ``l1`` does; 0 elsewhere).
``combine="l2"``
    ``||x|| = sqrt(sum_i (n_i(x_i) / r_i)^2)``; dual ``sqrt(sum_i a_i^2)``; block ``i`` of ``lmo`` is
    ``(a_i / dual) r_i lmo_i(g_i)``.

Each block inherits its norm's conventions at zero; ``lmo(0) = 0``. Declarations: ``delta = min_i delta_i``,
``slack = max_i slack_i`` (each formula above keeps them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from lmo.backend import Array, Namespace, namespace, safe_divide
from lmo.norm import Norm, Reference, get_norm

from . import _references

__all__ = ["Product"]

COMBINE = ("max", "sum", "l2")


class Product(Norm, name="product"):
    """A product of block norms combined by ``"max"``, ``"sum"`` or ``"l2"`` (module docstring for the formulas).

    ``blocks``: a sequence of ``(norm, shape)`` pairs (a norm instance or registry name, and the block's shape,
    with ``len(shape) == norm.ndim``). ``radii``: one radius ``r_i > 0`` per block (default all 1). Example:
    ``get_norm("product", blocks=[("spectral", (64, 32)), ("rms", (64,))], radii=(1.0, 0.1))``.
    """

    blocks: Sequence[Any] = ()
    radii: Sequence[float] | None = None
    combine: str = "max"

    def __post_init__(self) -> None:
        try:
            blocks = tuple((get_norm(n), tuple(int(s) for s in shape)) for n, shape in self.blocks)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Product: blocks must be (norm, shape) pairs; got {self.blocks!r} ({err})") from None
        if not blocks:
            raise ValueError("Product: blocks must not be empty")
        for norm, shape in blocks:
            if len(shape) != norm.ndim or any(s < 1 for s in shape):
                raise ValueError(f"Product: block {norm!r} needs a shape of {norm.ndim} positive sizes; got {shape}")
            core = norm.core_shape()
            if core is not None and tuple(core) != shape[len(shape) - len(core):]:
                raise ValueError(f"Product: block {norm!r} requires trailing shape {core}; got {shape}")
        radii = (1.0,) * len(blocks) if self.radii is None else tuple(self.radii)
        if len(radii) != len(blocks) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < math.inf for r in radii
        ):
            raise ValueError(f"Product: radii must be {len(blocks)} finite numbers > 0; got radii={self.radii!r}")
        if self.combine not in COMBINE:
            raise ValueError(f"Product: combine must be one of {COMBINE}; got combine={self.combine!r}")
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "radii", tuple(float(r) for r in radii))

    @classmethod
    def examples(cls) -> Iterable[Norm]:
        mixed = (("spectral", (3, 2)), ("l2", (4,)), ("sign", (2,)))
        return (
            cls(blocks=mixed, radii=(1.0, 0.5, 2.0), combine="max"),
            cls(blocks=mixed, combine="sum"),
            cls(blocks=(("l1", (3,)), ("colnorm", (2, 2))), radii=(3.0, 1.0), combine="l2"),
        )

    @property
    def delta(self) -> float:  # type: ignore[override]
        return min(n.delta for n, _ in self.blocks)

    @property
    def slack(self) -> float:  # type: ignore[override]
        return max(n.slack for n, _ in self.blocks)

    @property
    def infinite_input(self) -> str:  # type: ignore[override]
        """``"limit"`` for ``combine="max"`` when every block takes the limit (the blocks' oracles are independent,
        each block applies the policy itself); ``"nan"`` otherwise (with ``"sum"`` / ``"l2"`` the weights of tied
        infinite blocks depend on the finite parts)."""
        limit = self.combine == "max" and all(n.infinite_input == "limit" for n, _ in self.blocks)
        return "limit" if limit else "nan"

    def _at_infinity(self, xp: Namespace, x: Array) -> Array:
        return x  # the blocks apply the policy to their raw parts

    def core_shape(self) -> tuple[int, ...]:
        return (sum(math.prod(s) for _, s in self.blocks),)

    # -- layout ------------------------------------------------------------------------------------------------
    def split(self, x: Array) -> list[Array]:
        """The blocks of ``x`` (shape ``(*batch, total)``), each reshaped to ``(*batch, *shape_i)``."""
        xp = namespace(x)
        batch = tuple(x.shape[:-1])
        out, start = [], 0
        for _, shape in self.blocks:
            size = math.prod(shape)
            out.append(xp.reshape(x[..., start : start + size], (*batch, *shape)))
            start += size
        return out

    def join(self, parts: Sequence[Array]) -> Array:
        """Inverse of :meth:`split`: flatten each block's trailing axes and concatenate."""
        xp = namespace(*parts)
        flat = [
            xp.reshape(p, (*p.shape[: p.ndim - len(shape)], math.prod(shape)))
            for p, (_, shape) in zip(parts, self.blocks)
        ]
        return xp.concat(flat, axis=-1)

    def reference(self, g: Any) -> Reference | None:
        """The blocks' references (cut from ``g`` as :meth:`split` cuts it), combined by the product formulas."""
        batch, blocks, start = g.shape[:-1], [], 0
        for norm, shape in self.blocks:
            size = math.prod(shape)
            blocks.append((norm.reference(g[..., start : start + size].reshape(*batch, *shape)), shape))
            start += size
        return _references.product(g, blocks, self.radii, self.combine)

    # -- the contract ------------------------------------------------------------------------------------------
    def _stack(self, xp: Namespace, values: list[Array]) -> Array:
        return xp.stack(values, axis=-1)

    def norm(self, x: Array) -> Array:
        xp, x, narrow = self._prepare(x, "x")
        vals = self._stack(xp, [n.norm(b) / r for (n, _), b, r in zip(self.blocks, self.split(x), self.radii)])
        return narrow(self._combine(xp, vals, dual=False))

    def dual_norm(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        return narrow(self._combine(xp, self._block_duals(xp, g), dual=True))

    def _block_duals(self, xp: Namespace, g: Array) -> Array:
        return self._stack(xp, [n.dual_norm(b) * r for (n, _), b, r in zip(self.blocks, self.split(g), self.radii)])

    def _combine(self, xp: Namespace, vals: Array, *, dual: bool) -> Array:
        kind = self.combine if not dual else {"max": "sum", "sum": "max", "l2": "l2"}[self.combine]
        if kind == "max":
            return xp.max(vals, axis=-1)
        if kind == "sum":
            return xp.sum(vals, axis=-1)
        peak = xp.max(vals, axis=-1, keepdims=True)
        u = safe_divide(xp, vals, peak)
        return peak[..., 0] * xp.sqrt(xp.sum(u * u, axis=-1))

    def lmo(self, g: Array) -> Array:
        xp, g, narrow = self._prepare(g)
        parts = self.split(g)
        dirs = [n.lmo(b) * r for (n, _), b, r in zip(self.blocks, parts, self.radii)]
        if self.combine != "max":
            # the block duals choose the winning block ("sum") or weigh the blocks ("l2"): only their ratios count,
            # so they are taken of g at unit scale, where subnormal rounding cannot blur them (the directions come
            # from g itself: at unit scale an entry 2^-149 below the largest would round to 0)
            unit = safe_divide(xp, g, xp.max(xp.abs(g), axis=-1, keepdims=True))
            a = self._block_duals(xp, unit)  # (*batch, k)
            if self.combine == "sum":
                peak = xp.max(a, axis=-1, keepdims=True)
                win = xp.astype((a == peak) & (peak > 0), a.dtype)
                w = safe_divide(xp, win, xp.sum(win, axis=-1, keepdims=True))
            else:
                w = safe_divide(xp, a, xp.reshape(self._combine(xp, a, dual=True), (*a.shape[:-1], 1)))
            dirs = [
                d * xp.reshape(w[..., i], (*w.shape[:-1],) + (1,) * len(shape))
                for i, (d, (_, shape)) in enumerate(zip(dirs, self.blocks))
            ]
        return narrow(self.join(dirs))
