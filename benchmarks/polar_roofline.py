"""(b) Each polar solver against the GEMM roofline of its FLOP count, and its accuracy per FLOP.

For every solver of ``lmo.geometries.polar_solvers`` (in the iterate dtype that the DESIGN policy picks on this
machine, unless the solver pins one) on one wide matrix with a geometric spectrum (condition number 1e3):

- FLOPs: the matrix-product FLOPs that torch's ``FlopCounterMode`` counts during the call;
- roofline: those FLOPs at the GEMM rate measured in the same run (interleaved with the solvers), in the same
  dtype, on the solver's own product shapes (``X X^T`` and ``B X``); ``time / roofline`` is the overhead beyond
  the products;
- accuracy: ``max |s_i - 1|`` over the output's singular values (the exact polar factor has all of them 1), and the
  same per GFLOP spent;
- the fastest configuration that reaches Keller's 5-step accuracy on this input, and its time against Keller's.

Usage: ``python benchmarks/polar_roofline.py [--quick] [--json PATH] [--threads N] [--repeats R]``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmo.geometries.polar_solvers import PolarSolver, polar_express_coefficients
from lmo.geometries.precision import iterate_dtype

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved, parser, report, setup  # noqa: E402


def test_matrix(m: int, n: int, cond: float = 1e3) -> torch.Tensor:
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.standard_normal((m, m)))[0]
    v = np.linalg.qr(rng.standard_normal((n, m)))[0]
    return torch.tensor((u * np.geomspace(1, 1 / cond, m)) @ v.T, dtype=torch.float32)


def solvers(quick: bool) -> dict[str, PolarSolver]:
    out = {
        "newton_schulz (Keller) x5": PolarSolver("newton_schulz"),
        "newton_schulz (Keller) x5, compile": PolarSolver("newton_schulz", compile=True),
        "cubic x10": PolarSolver("cubic"),
        "quintic x5": PolarSolver("quintic"),
        "polar_express x8": PolarSolver("polar_express"),
        "gram_newton_schulz x8 (float32)": PolarSolver("gram_newton_schulz"),
        "svd (float32)": PolarSolver("svd"),
    }
    for k in (3, 4, 5):
        for scaling in ("frobenius", "gram"):
            out[f"polar_express x{k}, {scaling}"] = PolarSolver(
                "polar_express", coefficients=polar_express_coefficients(1e-3 if k > 3 else 1e-2, k), scaling=scaling
            )
    if quick:
        out.pop("newton_schulz (Keller) x5, compile")
    return out


def error(p: torch.Tensor) -> float:
    s = torch.linalg.svdvals(p.double())
    return float((s - 1).abs().max())


def gemm_calls(m: int, n: int, dtype: torch.dtype) -> dict:
    """The solver's two product shapes, ``(m, n) x (n, m)`` and ``(m, m) x (m, n)``, in ``dtype`` (timed together
    with the solvers, interleaved, so that the rate and the solvers see the same machine load)."""
    x = torch.randn(m, n).to(dtype)
    b = torch.randn(m, m).to(dtype)
    name = str(dtype).replace("torch.", "")
    return {f"gemm {name} xxt": lambda: x @ x.T, f"gemm {name} bx": lambda: b @ x}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    m, n = (64, 256) if args.quick else (768, 3072)
    repeats = args.repeats or (2 if args.quick else 7)
    g = test_matrix(m, n)
    configs = solvers(args.quick)
    flops, err, dtypes = {}, {}, {}
    for name, solver in configs.items():
        with FlopCounterMode(display=False) as counter:
            out = solver(g)  # also compiles where asked, outside the timing
        flops[name] = counter.get_total_flops()
        err[name] = error(out)
        gram = solver.method == "gram_newton_schulz"
        dtypes[name] = torch.float32 if gram or solver.exact else iterate_dtype(torch, g, solver.dtype)
    calls = {name: (lambda s=s: s(g)) for name, s in configs.items()}
    for dt in set(dtypes.values()):
        calls.update(gemm_calls(m, n, dt))
    times = interleaved(calls, repeats)
    rates = {}
    for dt in set(dtypes.values()):
        name = str(dt).replace("torch.", "")
        rates[dt] = 4.0 * m * m * n / (times[f"gemm {name} xxt"] + times[f"gemm {name} bx"])
    keller = "newton_schulz (Keller) x5"
    rows = []
    for name in configs:
        roof = flops[name] / rates[dtypes[name]] if flops[name] else float("nan")
        rows.append([name, str(dtypes[name]).replace("torch.", ""), round(flops[name] / 1e9, 3), times[name] * 1e3,
                     roof * 1e3, times[name] / roof if flops[name] else "-", f"{err[name]:.3g}",
                     f"{err[name] / (flops[name] / 1e9):.3g}" if flops[name] else "-",
                     times[name] / times[keller]])
    reach = [k for k in configs if err[k] <= err[keller] and k != keller and not configs[k].exact]
    best = min(reach, key=lambda k: times[k]) if reach else None
    notes = {
        "matrix": f"{m} x {n}, singular values geomspace(1, 1e-3)",
        "gemm_rate_gflops": {str(k).replace("torch.", ""): round(v / 1e9, 1) for k, v in rates.items()},
        "keller_accuracy": round(err[keller], 4),
        "fastest_reaching_keller_accuracy": best,
        "its_time_vs_keller": round(times[best] / times[keller], 3) if best else None,
        "targets": "time <= 1.1x roofline; Keller's 5-step accuracy in <= 0.5x its time",
    }
    report(args, "polar_roofline", ["solver", "iterate", "GFLOP", "time ms", "roofline ms", "time / roofline",
                                    "max |s-1|", "max |s-1| per GFLOP", "time vs Keller x5"], rows, notes)


if __name__ == "__main__":
    main()
