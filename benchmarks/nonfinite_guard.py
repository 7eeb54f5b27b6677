"""The cost of the non-finite input policy on Muon's hot path: ``Spectral(method="newton_schulz").lmo``.

Every oracle call finds the batch entries that hold a NaN or an infinity (``max x`` and ``min x`` over each matrix),
replaces them by 0 and overwrites their results (``Norm._prepare``, see :class:`lmo.Norm`). This times the oracle
with the guard against the same oracle with the guard bypassed, interleaved, on Muon-sized matrices in float32
(the iterate dtype is pinned to float32 so that both time the same iteration on every CPU).

Usage: ``python benchmarks/nonfinite_guard.py [--quick] [--json PATH] [--threads N] [--repeats R]``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from lmo.backend import namespace, widen
from lmo.geometries import Spectral
from lmo.norm import _guard_nonfinite

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved, parser, report, setup  # noqa: E402


class _Unguarded(Spectral):
    """The oracle without the guard: ``_prepare`` only widens (what it did before the policy)."""

    def _prepare(self, x: Any, name: str = "g") -> tuple[Any, Any, Any]:
        xp = namespace(x)
        return (xp, *widen(xp, x, name=name))


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    shapes = [(64, 64)] if args.quick else [(256, 256), (768, 3072)]
    repeats = args.repeats or (3 if args.quick else 15)
    params = {"method": "newton_schulz", "steps": 5, "coefficients": (3.4445, -4.775, 2.0315), "dtype": "float32"}
    guarded, bare = Spectral(**params), _Unguarded(**params)
    xp = namespace(torch.zeros(1))
    rows = []
    for m, n in shapes:
        g = torch.randn(m, n)
        assert torch.equal(guarded.lmo(g), bare.lmo(g))  # the guard changes no finite result

        def guard_alone(g: Any = g) -> Any:  # the guard's own work: find, clean, and overwrite an output
            clean, narrow = _guard_nonfinite(xp, g, _identity, 2, "nan", None)
            return narrow(clean)

        times = interleaved({"guarded": lambda g=g: guarded.lmo(g), "bare": lambda g=g: bare.lmo(g),
                             "guard": guard_alone}, repeats)
        rows.append([f"{m}x{n}", times["bare"] * 1e3, times["guarded"] * 1e3, times["guarded"] / times["bare"],
                     times["guard"] * 1e3, times["guard"] / times["bare"]])
    report(args, "nonfinite_guard",
           ["shape", "without guard ms", "with guard ms", "ratio", "guard alone ms", "guard / oracle"], rows,
           {"target": "guard / oracle <= 0.01 (two reductions and two element-wise passes beside five Newton-Schulz "
                      "steps); the ratio of the two oracle timings is within the noise of a shared machine"})


def _identity(y: Any) -> Any:
    return y


if __name__ == "__main__":
    main()
