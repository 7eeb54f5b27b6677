"""Measure the polar-factor solvers on hard inputs and write the table of docs/polar_solvers.md.

For each method, iteration count and iterate dtype, on a set of hard matrices (condition numbers up to 1e6,
rank-deficient, entries of 1e-30 and 1e30, two-level spectra), it reports

- the range ``[min, max]`` of the output's singular values on the input's range (what the iteration made of the
  nonzero singular values; the exact polar factor has all of them equal to 1),
- the measured suboptimality ``1 - <G, P> / ||G||_*`` (worst case over the inputs) and ``||P||_2 - 1``,
- the declared bounds: ``delta`` and ``slack`` for min(m, n) <= 4096 (what ``get_norm("spectral", ...)``
  declares) and the exact-arithmetic bound for the largest test size,
- the rounding cost against exact arithmetic on the same input: the larger of the loss in ``<G, P> / ||G||_*``
  and the excess of ``||P||_2`` over the exact map's ``max p(s)``.

Usage: ``python benchmarks/polar_accuracy.py [--out docs/polar_solvers.md] [--quick]``. Needs numpy and torch.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from lmo.geometries import polar_solvers as P
from lmo.geometries.polar_solvers import BOUND_RANK, PolarSolver

CONFIGS = [
    ("newton_schulz", (3, 5, 8)),
    ("cubic", (5, 10, 20)),
    ("quintic", (5, 8, 12)),
    ("polar_express", (5, 6, 8, 10)),
    ("gram_newton_schulz", (5, 8)),
    ("auto", (4, 5)),
]


def inputs(rng: np.random.Generator, quick: bool) -> list[tuple[str, np.ndarray]]:
    def make(m, n, s):
        r = min(m, n)
        s = np.asarray(s, dtype=np.float64)
        u = np.linalg.qr(rng.standard_normal((m, r)))[0]
        v = np.linalg.qr(rng.standard_normal((n, r)))[0]
        return (u * s) @ v.T

    size = 64 if quick else 256
    out = []
    for m, n in ((size, size), (size // 4, size * 2), (size * 2, size // 4)):
        r = min(m, n)
        out.append((f"{m}x{n} cond 1e6", make(m, n, np.geomspace(1, 1e-6, r))))
        out.append((f"{m}x{n} cond 1e3 x1e-30", 1e-30 * make(m, n, np.geomspace(1, 1e-3, r))))
        out.append((f"{m}x{n} cond 1e2 x1e30", 1e30 * make(m, n, np.geomspace(1, 1e-2, r))))
        s = np.geomspace(1, 1e-2, r)
        s[r // 3 :] = 0
        out.append((f"{m}x{n} rank {r // 3}", make(m, n, s)))
        out.append((f"{m}x{n} 1 + tail 1e-3", make(m, n, np.concatenate(([1.0], np.full(r - 1, 1e-3))))))
    return out


def measure(solver: PolarSolver, cases, dtype: str):
    lo, hi, worst, top, dev = np.inf, 0.0, 0.0, 0.0, 0.0
    for _, g in cases:
        x = torch.tensor(g, dtype=torch.float32 if dtype == "bfloat16" else getattr(torch, dtype))
        p = solver(x).double().numpy()
        gn = g / np.abs(g).max()
        s = np.linalg.svd(gn, compute_uv=False)
        r = int(np.sum(s > max(g.shape) * np.finfo(np.float64).eps * s[0]))
        ps = np.linalg.svd(p, compute_uv=False)
        lo, hi = min(lo, ps[r - 1]), max(hi, ps[0])
        worst = max(worst, 1 - np.sum(gn * p) / s.sum())
        top = max(top, ps[0] - 1)
        power = P._SCALING_POWER[solver.scaling]
        scale = np.sum(s**power) ** (1 / power)
        ideal = np.sort(P._scalar_map(solver.schedule, s / scale))[::-1]
        # what rounding costs: the loss in <G, P> / ||G||_* against exact arithmetic on the same input, and the
        # excess of the largest singular value over the exact map's
        exact_ratio = float(np.sum(s * P._scalar_map(solver.schedule, s / scale)) / s.sum())
        measured_ratio = float(np.sum(gn * p) / s.sum())
        dev = max(dev, exact_ratio - measured_ratio, ps[0] - ideal.max())
    return lo, hi, worst, top, dev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/polar_solvers.md")
    ap.add_argument("--quick", action="store_true", help="64-wide inputs instead of 256 (for a smoke test)")
    ap.add_argument("--methods", default=None, help="comma-separated methods to measure (default: all)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = inputs(rng, args.quick)
    size = max(min(g.shape) for _, g in cases)
    rows = []
    t0 = time.perf_counter()
    chosen = None if args.methods is None else set(args.methods.split(","))
    for method, step_list in CONFIGS:
        if chosen is not None and method not in chosen:
            continue
        for steps in step_list:
            for dtype in ("float32", "bfloat16"):
                if method == "gram_newton_schulz" and dtype == "bfloat16":
                    continue  # the Gram recursion iterates in at least float32
                solver = PolarSolver(method, steps=steps, dtype=dtype)
                lo, hi, worst, top, dev = measure(solver, cases, dtype)
                d_decl, s_decl = solver.bounds(BOUND_RANK)
                d_size = P._polynomial_bounds(solver.schedule, P._SCALING_POWER[solver.scaling], size)[0]
                rows.append((method, steps, dtype, lo, hi, worst, top, 1 - d_decl, s_decl, 1 - d_size, dev))
                print(f"{method:20s} {steps:3d} {dtype:9s} sv [{lo:.3g}, {hi:.4f}] subopt {worst:.2e} "
                      f"declared 1-delta {1 - d_decl:.3f} slack {s_decl:.3f} dev {dev:.1e}", flush=True)
    lines = [
        "# Polar-factor solvers: measured accuracy",
        "",
        "Produced by `python benchmarks/polar_accuracy.py` (torch "
        f"{torch.__version__}, {platform.machine()}, {time.perf_counter() - t0:.0f} s). Inputs: "
        f"{len(cases)} matrices up to {size} on the small side — condition numbers 1e2 to 1e6, rank-deficient, "
        "entries scaled by 1e-30 and 1e30, and a spectrum `1, 1e-3, ..., 1e-3` (the hard case for fixed-step "
        "polynomials); square, wide and tall.",
        "",
        "Columns: the range of the output's singular values on the input's range (1 for the exact polar factor); the "
        "worst measured suboptimality `1 - <G,P>/||G||_*` and infeasibility `||P||_2 - 1`; the declared bounds "
        "`1 - delta` and `slack` that `get_norm(\"spectral\", method=..., steps=..., dtype=...)` makes for every input "
        f"with min(m, n) <= {BOUND_RANK} (exact-arithmetic worst case over all spectra plus the rounding allowance "
        "of the dtype); the exact-arithmetic `1 - delta` for the test size; and the rounding cost against the exact "
        "scalar map on the same input — the larger of the loss in `<G,P>/||G||_*` and the excess of `||P||_2` over "
        "the exact map's maximum; this is what the rounding allowance in the declared bounds covers (float32 2e-3, "
        "bfloat16 0.2).",
        "",
        "| method | steps | iterate | singular values | measured 1-delta | measured slack | declared 1-delta "
        f"| declared slack | exact 1-delta (rank {size}) | rounding cost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, steps, dtype, lo, hi, worst, top, dd, sd, ds, dev in rows:
        lines.append(f"| {method} | {steps} | {dtype} | [{lo:.3g}, {hi:.4f}] | {worst:.2e} | {max(top, 0):.2e} | "
                     f"{dd:.3f} | {sd:.3f} | {ds:.2e} | {dev:.1e} |")
    lines += [
        "",
        "Reading the table: Keller's coefficients (`newton_schulz`) trade convergence for speed — singular values end "
        "in about [0.7, 1.2] whatever the step count, so its slack is 0.2 and its delta near 0.7 on moderate ranks; "
        "the classical cubic and quintic iterations converge to 1 but slowly from small singular values; Polar "
        "Express reaches the polar factor to float32 accuracy in 8 steps on every input with singular values above "
        "1e-3 of the Frobenius norm. Declared bounds are worst cases over all spectra of rank <= 4096, so they are "
        "looser than what these inputs show; `Spectral.bounds_for(shape)` gives the bound for a given shape. In "
        "bfloat16 the rounding cost stays below 0.01 once an iteration has converged, but an unconverged schedule "
        "with large slopes (Polar Express cut to 5 steps, Keller at 8 steps) loses up to 0.1.",
        "",
    ]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
