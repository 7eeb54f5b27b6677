"""(c) Gram Newton-Schulz vs Newton-Schulz on rectangular matrices, at equal accuracy.

Both run the same coefficient schedule (so the same polynomial of the singular values: equal accuracy in exact
arithmetic; the measured ``max |s_i - 1|`` of both is reported), in the same dtype, float32 (the Gram recursion
does not self-correct, so the library never runs it below float32). Shapes are those of transformer MLP and attention
matrices (aspect ratios 3 and 4), on a spectrum with condition number 1e3. The plain iteration in the
policy dtype (bfloat16 on a CPU with AVX512-BF16/AMX) is reported too, as a reference point.

Usage: ``python benchmarks/gram_vs_ns.py [--quick] [--json PATH] [--threads N] [--repeats R]``.
"""

from __future__ import annotations

import os
import sys

import torch

from lmo.geometries.polar_solvers import KELLER, PolarSolver, polar_express_coefficients
from lmo.geometries.precision import iterate_dtype

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved, parser, report, setup  # noqa: E402
from polar_roofline import error, test_matrix  # noqa: E402


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    shapes = [(64, 256)] if args.quick else [(512, 2048), (768, 3072), (768, 2304), (1024, 4096)]
    repeats = args.repeats or (2 if args.quick else 5)
    schedules = {"Keller x5": (KELLER,) * 5, "Polar Express x8": polar_express_coefficients(1e-3, 8)}
    policy = str(iterate_dtype(torch, torch.zeros(1, 1), None)).replace("torch.", "")
    rows = []
    for m, n in shapes:
        g = test_matrix(m, n)
        for label, sched in schedules.items():
            solvers = {
                "ns": PolarSolver("newton_schulz", coefficients=sched, dtype="float32"),
                "gram": PolarSolver("gram_newton_schulz", coefficients=sched, dtype="float32"),
                "ns_policy": PolarSolver("newton_schulz", coefficients=sched),
            }
            times = interleaved({k: (lambda s=s, g=g: s(g)) for k, s in solvers.items()}, repeats)
            errs = {k: error(s(g)) for k, s in solvers.items()}
            rows.append([f"{m}x{n}", label, times["ns"] * 1e3, times["gram"] * 1e3, times["gram"] / times["ns"],
                         f"{errs['ns']:.3g}", f"{errs['gram']:.3g}", times["ns_policy"] * 1e3,
                         times["gram"] / times["ns_policy"]])
    report(args, "gram_vs_ns", ["shape", "schedule", "NS fp32 ms", "Gram NS fp32 ms", "Gram / NS",
                                "NS max|s-1|", "Gram max|s-1|", f"NS {policy} ms", f"Gram fp32 / NS {policy}"],
           rows, {"target": "Gram / NS <= 0.65 at equal accuracy"})


if __name__ == "__main__":
    main()
