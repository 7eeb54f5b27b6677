"""Polar-factor solvers: ``polar(G) = U V^T`` for ``G = U S V^T`` (reduced SVD), batched over leading axes.

One interface, :func:`polar` (and the reusable, hashable :class:`PolarSolver` behind it), with these methods:

``"svd"``
    Exact: ``U_r V_r^T`` over the numerical rank ``r`` (singular values above ``max(m, n) * eps * s_max``), so a
    rank-deficient input gives the minimum-Frobenius polar factor, zero on the null spaces.
``"newton_schulz"``
    The odd polynomial iteration ``X <- c0 X + c1 (X X^T) X + c2 (X X^T)^2 X + ...`` with Keller Jordan's quintic
    coefficients ``(3.4445, -4.7750, 2.0315)`` and 5 steps by default (the Muon iteration): the input is transposed
    so that the Gram matrix is the small side, and divided by its Frobenius norm (floored at ``eps``) as
    ``torch.optim.Muon`` does. ``coefficients`` may be one tuple (used at every step) or one tuple per step.
``"cubic"``, ``"quintic"``
    The classical Newton-Schulz family: ``(3/2, -1/2)`` and ``(15/8, -10/8, 3/8)`` (the Taylor polynomials of
    ``(1 - t)^(-1/2)``), which converge to ``U V^T`` for singular values in ``(0, sqrt(3))`` resp. ``(0, ...)``.
``"polar_express"``
    Per-step minimax ("Polar Express", Amsel, Persson, Musco, Gower 2025, arXiv 2505.16932) coefficients, made by
    :func:`polar_express_coefficients` from the interval ``[1e-3, 1]`` (8 steps by default); pass
    ``coefficients=polar_express_coefficients(lower, steps, ...)`` for your own schedule.
``"gram_newton_schulz"``
    The same polynomial iteration run on the Gram matrix ``A = X X^T`` of the small side only:
    ``Q <- h(R) Q``, ``R <- R h(R)^2`` with ``h(R) = c0 + c1 R + c2 R^2``, and ``X = Q X0`` once at the end. For an
    ``m x n`` input with ``m << n`` each step costs ``O(m^3)`` instead of ``O(m^2 n)``. The recursion has no
    self-correction, so it iterates in at least float32. Polar Express coefficients by default.
``"auto"``
    The fastest solver at least as orthogonal as the default (:data:`AUTO_STEPS` Polar Express steps from
    ``[AUTO_LOWER, 1]`` after the ``s8`` scaling, in the iterate dtype): the Gram variant in runs of
    :data:`AUTO_RUNS` steps on matrices of aspect ratio at least :data:`AUTO_GRAM_ASPECT` (2), the plain one
    otherwise.

Scale safety: every input is first divided by its largest entry (in the input's wide dtype), so ``1e-30`` and
``1e30`` matrices give the same factor as unit ones and nothing overflows; a zero matrix gives zero. Then the input is
divided by a bound on its spectral norm (``scaling="frobenius"``: ``||X||_F``; ``scaling="gram"``:
``||X X^T||_F^(1/2) = (sum s^4)^(1/4)``, tighter, from the Gram matrix that the first step needs anyway).

Each iterative solver maps every singular value ``s`` (after scaling) through the scalar composition ``p(s)`` of its
step polynomials, exactly in exact arithmetic. :meth:`PolarSolver.bounds` turns that map into the ``delta``
(optimality) and ``slack`` (feasibility) that the spectral-norm oracle declares; see its docstring.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmo.backend import Array, Namespace, device, namespace, safe_divide, widen

from ._torch import (
    Workspace,
    add_diagonal,
    buffer,
    cast,
    combine,
    compiled,
    frobenius_normalized,
    matmul,
    power_of_two_below,
    scaled,
    scaled_add_matmul,
    symmetrized,
    usable,
)
from .precision import DTYPES, iterate_dtype

__all__ = [
    "polar",
    "PolarSolver",
    "polar_express_coefficients",
    "METHODS",
    "KELLER",
    "CUBIC",
    "QUINTIC",
    "BOUND_RANK",
]

METHODS = ("svd", "newton_schulz", "cubic", "quintic", "polar_express", "gram_newton_schulz", "auto")
#: Spectral-norm bounds of the start: (sum s^2)^(1/2), (sum s^4)^(1/4) = ||X X^T||_F^(1/2), (sum s^8)^(1/8)
SCALINGS = ("frobenius", "gram", "s8")
_SCALING_POWER = {"frobenius": 2, "gram": 4, "s8": 8}
KELLER = (3.4445, -4.7750, 2.0315)
CUBIC = (1.5, -0.5)
QUINTIC = (15 / 8, -10 / 8, 3 / 8)
PE_LOWER = 1e-3
PE_STEPS = 8
PE_CUSHION = 0.02407327424182761
PE_SAFETY = 0.01
#: "auto": 4 Polar Express steps from [AUTO_LOWER, 1] after the s8 scaling; Gram Newton-Schulz (runs AUTO_RUNS, in
#: the iterate dtype) on matrices of aspect ratio >= AUTO_GRAM_ASPECT (benchmarks/muon_step.py, polar_accuracy.py)
AUTO_LOWER = 4e-3
AUTO_STEPS = 4
AUTO_GRAM_ASPECT = 2
AUTO_RUNS = (1, 1, 2)
_GRAM_RUNS = (4,)  # "gram_newton_schulz" (float32 or wider): a restart every 4 steps

#: Declared bounds of the iterative solvers hold for every input whose smaller side is at most this (see ``bounds``).
BOUND_RANK = 4096

# Rounding allowance added to the exact-arithmetic bounds, per iterate dtype: benchmarks/polar_accuracy.py measures the
# loss against exact arithmetic on the same hard inputs (condition number 1e6, rank-deficient, 1e-30/1e30 scales);
# the worst seen is 4e-5 in float32 and 0.10 in bfloat16 (Polar Express cut to 5 steps), and the allowance is at least
# twice that. float16 (unmeasured; 3 more mantissa bits than bfloat16) is taken as 0.05.
_ROUNDING = {"float64": 1e-6, "float32": 2e-3, "bfloat16": 0.2, "float16": 0.05, "bfloat16_gram": 0.1}


def _coefficient_schedule(method: str, steps: int | None, coefficients: Any) -> tuple[tuple[float, ...], ...]:
    """Resolve ``(method, steps, coefficients)`` to one coefficient tuple per step.

    Defaults: Keller's quintic x 5 steps (``newton_schulz``), ``(15/8, -10/8, 3/8)`` x 5 (``quintic``),
    ``(3/2, -1/2)`` x 10 (``cubic``), Polar Express from ``[1e-3, 1]`` x 8 (the others). Given ``coefficients``: one
    tuple repeats ``steps`` (default 5) times; a sequence runs as given (``steps`` truncates it, or repeats its last
    tuple).
    """
    if coefficients is None:
        if method in ("newton_schulz", "quintic", "cubic"):
            seq = _as_schedule({"newton_schulz": KELLER, "quintic": QUINTIC, "cubic": CUBIC}[method])
            default = 10 if method == "cubic" else 5
        elif method == "auto":
            seq = polar_express_coefficients(AUTO_LOWER, steps if steps is not None else AUTO_STEPS)
            default = len(seq)
        else:  # polar_express, gram_newton_schulz
            seq = polar_express_coefficients(PE_LOWER, steps if steps is not None else PE_STEPS)
            default = len(seq)
    else:
        seq = _as_schedule(coefficients)
        default = 5 if len(seq) == 1 else len(seq)
    steps = default if steps is None else steps
    seq = seq[:steps]
    return tuple(seq) + (seq[-1],) * (steps - len(seq))


def _as_schedule(coefficients: Any) -> tuple[tuple[float, ...], ...]:
    """One tuple ``(c0, c1, ...)`` or a sequence of them -> a tuple of float tuples (validated)."""
    bad = ValueError(
        f"coefficients must be a tuple (c0, c1, ...) of an odd polynomial c0 x + c1 x^3 + ..., or a sequence of "
        f"such tuples (one per step); got {coefficients!r}"
    )
    if isinstance(coefficients, (str, bytes)) or not isinstance(coefficients, Sequence) or not coefficients:
        raise bad
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coefficients):
        seq = [coefficients]
    else:
        seq = list(coefficients)
    out = []
    for c in seq:
        if isinstance(c, (str, bytes)) or not isinstance(c, Sequence) or len(c) < 2:
            raise bad
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in c):
            raise bad
        out.append(tuple(float(v) for v in c))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class PolarSolver:
    """A configured polar-factor solver; ``solver(g)`` returns ``U V^T`` with ``g``'s namespace, dtype and shape.

    Parameters are those of :func:`polar`. Instances are immutable and hashable, so a norm can hold one.
    """

    method: str = "svd"
    steps: int | None = None
    coefficients: Any = None
    eps: float = 1e-7
    dtype: str | None = None
    scaling: str | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.compile, bool):
            raise ValueError(f"polar: compile must be a bool; got compile={self.compile!r}")
        if self.method not in METHODS:
            raise ValueError(f"polar: unknown method={self.method!r}; choose one of {', '.join(METHODS)}")
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 100
        ):
            raise ValueError(f"polar: steps must be an int in [1, 100] or None; got steps={self.steps!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0 < self.eps < 1:
            raise ValueError(f"polar: eps must be a number in (0, 1); got eps={self.eps!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"polar: dtype must be None or one of {', '.join(DTYPES)}; got dtype={self.dtype!r}")
        if self.scaling is None:
            object.__setattr__(self, "scaling", "s8" if self.method == "auto" else "frobenius")
        if self.scaling not in SCALINGS:
            raise ValueError(f"polar: scaling must be one of {', '.join(SCALINGS)}; got scaling={self.scaling!r}")
        if self.method == "svd":
            if self.steps is not None or self.coefficients is not None:
                raise ValueError("polar: method='svd' is exact and takes neither steps nor coefficients")
            return
        object.__setattr__(self, "eps", float(self.eps))
        if self.coefficients is not None:
            object.__setattr__(self, "coefficients", _as_schedule(self.coefficients))
        object.__setattr__(self, "_schedule", _coefficient_schedule(self.method, self.steps, self.coefficients))

    @property
    def schedule(self) -> tuple[tuple[float, ...], ...]:
        """The coefficient tuple of each step (empty for ``"svd"``)."""
        return getattr(self, "_schedule", ())

    @property
    def exact(self) -> bool:
        return self.method == "svd"

    # -- declared accuracy -----------------------------------------------------------------------------------
    def bounds(self, rank: int = BOUND_RANK) -> tuple[float, float]:
        """``(delta, slack)`` that this solver honours on every matrix whose smaller side is at most ``rank``.

        With ``P = polar_approx(G)``: ``<G, P> >= delta * ||G||_nuclear`` and ``||P||_2 <= 1 + slack``. In exact
        arithmetic every singular value ``s`` of the scaled input becomes ``p(s)``, the composition of the step
        polynomials, so ``||P||_2 = max p`` on ``[0, 1]`` and ``<G, P> / ||G||_* = sum s p(s) / sum s``. The slack
        is the maximum of ``p`` on a fine grid of ``[0, 1]``; delta is the minimum of the ratio over all spectra of
        rank ``<= rank`` with the scaling constraint (``sum s^2 = 1`` or ``sum s^4 = 1``): by a Lagrange argument the
        worst spectrum has at most two distinct non-zero values, which are searched exhaustively (levels on a grid,
        multiplicities over all splits). Fixed-step polynomials cannot lift arbitrarily small singular values, so
        the bound necessarily decays with the rank; ``BOUND_RANK`` (4096) is the rank the norms declare for. A
        rounding allowance for the iterate dtype (float32 unless the solver is pinned to another) is then
        subtracted from delta and added to the slack.
        """
        if self.exact:
            return 1.0, 0.0
        delta, slack = _polynomial_bounds(self.schedule, _SCALING_POWER[self.scaling], int(rank))
        worst = max(_ROUNDING[d] for d in self._possible_dtypes())
        return delta - worst, slack + worst

    def _possible_dtypes(self) -> tuple[str, ...]:
        """The dtypes the iteration may run in (their rounding allowances bound the declaration): the pinned
        dtype, else float32 or bfloat16 by device; ``gram_newton_schulz`` at least float32; "auto"'s Gram runs in
        the iterate dtype with restarts, and its bfloat16 rounding has an allowance of its own."""
        plain = (self.dtype,) if self.dtype is not None else ("float32", "bfloat16")
        if self.method == "gram_newton_schulz":
            return ("float64",) if self.dtype == "float64" else ("float32",)
        if self.method == "auto":
            return tuple("bfloat16_gram" if d == "bfloat16" else d for d in plain)
        return plain

    # -- the solver ------------------------------------------------------------------------------------------
    def __call__(self, g: Array) -> Array:
        xp = namespace(g)
        x, narrow = self._check(xp, g)
        p = self._polar(xp, x)
        return narrow(p if p.dtype == x.dtype else xp.astype(p, x.dtype))

    def iterate(self, g: Array, workspace: Workspace | None = None) -> Array:
        """The polar factor as the solver produced it: ``g``'s shape, in the iterate dtype (e.g. bfloat16; the
        input's dtype, at least float32, for ``"svd"``), possibly a transposed view. ``solver(g)`` is this cast to
        ``g``'s dtype; an optimizer adds it to its parameters directly (:meth:`lmo.Norm.lmo_factored`).

        ``workspace`` (torch): the iteration's temporaries and its result live in its buffers (see
        :class:`lmo.geometries._torch.Workspace`), so the result is valid until the next call with it."""
        xp = namespace(g)
        x, _ = self._check(xp, g)
        return self._polar(xp, x, usable(xp, workspace))

    def _check(self, xp: Namespace, g: Array) -> tuple[Array, Any]:
        if g.ndim < 2:
            raise ValueError(f"polar: g must have at least 2 axes (a matrix or a stack); got shape {tuple(g.shape)}")
        if any(n == 0 for n in g.shape[-2:]):
            raise ValueError(f"polar: g has an empty matrix core {tuple(g.shape[-2:])} (shape {tuple(g.shape)})")
        return widen(xp, g, name="g", where="polar: ")

    def _polar(self, xp: Namespace, x: Array, ws: Workspace | None = None) -> Array:
        if self.method == "svd":
            return _svd_polar(xp, x)
        m, n = x.shape[-2], x.shape[-1]
        wide = max(m, n) / min(m, n)
        if self.method == "auto":
            return self._iterate(xp, x, gram=wide >= AUTO_GRAM_ASPECT, runs=AUTO_RUNS, gram_dtype=None, ws=ws)
        return self._iterate(xp, x, gram=self.method == "gram_newton_schulz", runs=_GRAM_RUNS, gram_dtype="float32",
                             ws=ws)

    def _iterate(self, xp: Namespace, x: Array, *, gram: bool, runs: tuple[int, ...], gram_dtype: str | None,
                 ws: Workspace | None = None) -> Array:
        """The polynomial iteration on the wide orientation of ``x``. ``gram``: on the Gram side
        (:func:`_gram_newton_schulz`, in runs of ``runs`` steps, in at least ``gram_dtype`` if given)."""
        tall = x.shape[-2] > x.shape[-1]
        if tall:
            x = xp.matrix_transpose(x)
        if gram and gram_dtype is not None:  # a Gram recursion restarted rarely does not self-correct
            work = xp.float64 if self.dtype == "float64" else getattr(xp, gram_dtype)
        else:
            work = iterate_dtype(xp, x, self.dtype)
        start = self._start(xp, x, work, ws)
        if ws is not None:  # the input's memory, if it is scratch that the start has read, hosts temporaries
            scratch = ws.holds(x) and start.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
            ws.lend(x if scratch else None)
        x = start
        run = _gram_newton_schulz if gram else _newton_schulz
        if self.compile:  # torch.compile plans the memory of what it compiles
            run, ws = compiled(xp, run), None
        # a tall input is iterated in its own (tall) layout: every step reads and writes contiguous memory, and the
        # result is a contiguous tall matrix, which the update reads in one pass (a transposed bfloat16 view read
        # into a float32 parameter is 10x slower, and a fused product copying a strided addend 5x)
        x = run(xp, x, self.schedule, self.scaling, runs, ws, tall)
        return xp.matrix_transpose(x) if tall else x

    def _start(self, xp: Namespace, x: Array, work: Any, ws: Workspace | None = None) -> Array:
        """The iteration's start in the dtype ``work``: ``x / ||x||_F``, or for the tighter scalings ``gram`` and
        ``s8`` (applied in the first step, from the Gram matrix it forms anyway, whatever the start's norm) ``x``
        divided by its largest magnitude only (two passes fewer).

        Scale safety: any scale from subnormal to near-overflow gives the same start as a unit one, and a zero
        matrix stays zero. float32 torch inputs (the common case) take one fused pass
        (:func:`lmo.geometries._torch.frobenius_normalized`); others are divided by their largest entry in their
        own dtype first."""
        unit = self.scaling == "frobenius"
        fast = frobenius_normalized(xp, x, work, ws, unit=unit)
        if fast is not None:
            return fast
        peak = xp.max(xp.abs(x), axis=(-2, -1), keepdims=True)
        x = x / xp.where(peak > 0, peak, xp.ones_like(peak))
        if not unit:
            return xp.astype(x, work)
        bound = xp.linalg.vector_norm(x, axis=(-2, -1), keepdims=True)
        floor = xp.asarray(self.eps, dtype=bound.dtype, device=device(bound))
        return xp.astype(x * (1 / xp.maximum(bound, floor)), work)


def polar(
    g: Array,
    method: str = "svd",
    *,
    steps: int | None = None,
    coefficients: Any = None,
    eps: float = 1e-7,
    dtype: str | None = None,
    scaling: str = "frobenius",
    compile: bool = False,
) -> Array:
    """The orthogonal polar factor ``U V^T`` of ``g`` (shape ``(*batch, m, n)``), batched over leading axes.

    ``method``: one of ``"svd"`` (exact), ``"newton_schulz"``, ``"cubic"``, ``"quintic"``, ``"polar_express"``,
    ``"gram_newton_schulz"``, ``"auto"`` (see the module docstring). ``steps``: iterations (default: 5 for the
    Newton-Schulz family, 10 for cubic, 8 for Polar Express, or the length of a per-step ``coefficients``
    sequence). ``coefficients``: a tuple ``(c0, c1, c2, ...)`` of the odd polynomial
    ``c0 x + c1 x^3 + c2 x^5 + ...`` used at every step, or one such tuple per step (the last one repeats).
    ``eps``: floor of the normaliser (only a zero matrix reaches it). ``dtype``: iterate dtype (``None``: the
    device policy of :mod:`lmo.geometries.precision`). ``scaling``: ``"frobenius"`` or ``"gram"``. ``compile``: run
    the iteration through ``torch.compile`` for torch tensors (see :mod:`lmo.geometries._torch`; other backends
    run it as is).

    The result has ``g``'s namespace, device, dtype and shape; ``polar(0) = 0``.
    """
    return PolarSolver(method, steps, coefficients, eps, dtype, scaling, compile)(g)


# -- the iterations ------------------------------------------------------------------------------------------------
def _svd_polar(xp: Namespace, x: Array) -> Array:
    peak = xp.max(xp.abs(x), axis=(-2, -1), keepdims=True)
    x = safe_divide(xp, x, peak)
    u, s, vh = xp.linalg.svd(x, full_matrices=False)
    tol = max(x.shape[-2], x.shape[-1]) * xp.finfo(x.dtype).eps
    keep = s > tol * s[..., :1]
    u = u * xp.astype(keep, u.dtype)[..., None, :]
    return xp.matmul(u, vh)


def _poly_tail(xp: Namespace, a: Array, coeffs: tuple[float, ...], ws: Workspace | None = None,
               role: str | None = None) -> Array:
    """``c1 A + c2 A^2 + ... + ck A^k`` (``k >= 2``) by Horner's rule, each step one fused product
    (``c_j A + T A``; the first ``c_{k-1} A + c_k A A``): ``k - 1`` products and no element-wise pass (into the
    buffers ``t0``, ``t1`` of ``ws`` by turns; the last into ``role`` if given). ``A`` is symmetric, so the first
    product ``A A`` is formed as a symmetric one (:func:`lmo.geometries._torch.matmul`); the later ``T A`` are
    symmetric only in exact arithmetic, and mirroring their rounding measurably stretched ``"auto"``'s Gram runs."""
    products = len(coeffs) - 2
    t = a
    for j in range(products):
        c, alpha = (coeffs[-2], coeffs[-1]) if j == 0 else (coeffs[-2 - j], 1.0)
        name = role if role is not None and j == products - 1 else f"t{j % 2}"
        t = scaled_add_matmul(xp, c, a, t, alpha, out=buffer(xp, ws, name, a.shape, a.dtype, a), symmetric=j == 0)
    return t


def _poly_step(xp: Namespace, x: Array, a: Array, coeffs: tuple[float, ...], ws: Workspace | None = None,
               role: str = "x1", transposed: bool = False) -> Array:
    """``c0 X + T X`` with ``T = c1 A + ... + ck A^k`` for ``A = X X^T``: fused products only (torch.optim.Muon's
    form); the result into the buffer ``role`` of ``ws``. ``transposed``: computed as ``(c0 X^T + X^T T^T)^T``, the
    transposed view of a result stored in the transposed layout (the same products)."""
    t, alpha = (a, coeffs[1]) if len(coeffs) == 2 else (_poly_tail(xp, a, coeffs, ws), 1.0)
    if transposed:
        xt = xp.matrix_transpose(x)
        out = buffer(xp, ws, role, xt.shape, x.dtype, x)
        return xp.matrix_transpose(scaled_add_matmul(xp, coeffs[0], xt, xp.matrix_transpose(t), alpha, out=out,
                                                     right=True))
    return scaled_add_matmul(xp, coeffs[0], x, t, alpha, out=buffer(xp, ws, role, x.shape, x.dtype, x))


def _left(xp: Namespace, q: Array, x: Array, ws: Workspace | None, role: str, transposed: bool) -> Array:
    """``Q X`` into the buffer ``role``; ``transposed``: as ``(X^T Q^T)^T`` (see :func:`_poly_step`)."""
    if transposed:
        xt = xp.matrix_transpose(x)
        out = buffer(xp, ws, role, xt.shape, x.dtype, x)
        return xp.matrix_transpose(matmul(xp, xt, xp.matrix_transpose(q), out=out))
    return matmul(xp, q, x, out=buffer(xp, ws, role, x.shape, x.dtype, x))


def _gram_shape(x: Array) -> tuple[int, ...]:
    return (*x.shape[:-1], x.shape[-2])


def _first_factor(xp: Namespace, x: Array, coeffs: tuple[float, ...], scaling: str,
                  ws: Workspace | None = None) -> tuple[Array, Array]:
    """The first step for the scalings ``gram`` and ``s8`` as ``(Q, A)``: ``X_1 = Q X_0`` and ``A = X_0 X_0^T``.

    The start ``X_0`` has Frobenius norm 1; the tighter bound ``t`` of its spectral norm comes from the Gram matrix
    the step forms anyway: ``t^2 = ||A||_F`` (``gram``: ``t = (sum s^4)^(1/4)``) or ``t^2 = ||A^2||_F^(1/2)``
    (``s8``: ``t = (sum s^8)^(1/8)``, with the ``A^2`` the quintic needs). The step on ``X = X_0 / t`` is
    ``X_1 = (c0 + c1 A/t^2 + c2 A^2/t^4 + ...) X_0 / t``: the per-matrix factors act on the small ``m x m`` side.

    ``A`` and ``A^2`` are formed in the iterate's dtype (products at its speed: in float32 the ``m x m`` product
    costs 5x the bfloat16 one on a CPU with AVX512-BF16, a third of a square matrix's step), the factor from them
    in at least float32: the first step's coefficients cancel (Polar Express from ``[1e-3, 1]``:
    ``8.2 - 22.5 + 15.9`` at ``s = 1``), and a factor summed in bfloat16 blew up (``||X_1||_2`` of ``4e6`` on a 7 x 2
    matrix under the gram scaling, ``2e3`` under ``"auto"``). ``A^2`` rounded to bfloat16 adds an error of the size
    that ``A``'s own rounding has already (benchmarks/polar_accuracy.py: the same worst case on every input).
    ``ws``: ``A`` in its buffer ``a``, ``A^2`` in ``a2``, ``Q`` in ``a2`` too (``s8``: its float32 copy holds
    ``A^2`` by then) or in ``q``, the float32 work in ``a32`` and ``t32``, in the memory of the iteration's input
    where that is scratch with room (:meth:`Workspace.lend`: the optimizer's float32 estimates, which the start has
    read; at width 256 ``a32`` of every stack and ``t32`` of the rectangles' fit there, of "auto"'s 21 MiB)."""
    shape = _gram_shape(x)
    a = matmul(xp, x, xp.matrix_transpose(x), out=buffer(xp, ws, "a", shape, x.dtype, x), symmetric=True)
    low = xp.finfo(a.dtype).bits < 32
    # a float32 copy of A in a buffer: a mixed-dtype combination reading the bfloat16 A (the same bits) makes that
    # copy itself, as a fresh temporary at every call (optimizer_memory.py: the step's peak 0.4 -> 3.8 MiB, width 256)
    wide = cast(xp, a, xp.float32, out=buffer(xp, ws, "a32", shape, xp.float32, a, spare=True)) if low else a
    if scaling == "s8":
        a2 = matmul(xp, a, a, out=buffer(xp, ws, "a2", shape, a.dtype, a), symmetric=True)
        if low:
            a2 = cast(xp, a2, xp.float32, out=buffer(xp, ws, "t32", shape, xp.float32, a, spare=True))
        # A^2 divided by the power of two at its largest entry (on its diagonal: A^2 is positive semidefinite): the
        # sum of squares of A^2 itself underflows for the start of an input whose every entry is subnormal (largest
        # start entry down to 2^-24, A^2's 2^-96; the first step then gave 0). Exact, so that the bound and the
        # factor below have the same bits as without it for every other input.
        power = power_of_two_below(xp, xp.max(xp.linalg.diagonal(a2), axis=-1)[..., None, None])
        a2 = scaled(xp, a2, 1 / power)
        bound = xp.sqrt(_frobenius(xp, a2) * power)  # t^2
    else:
        a2 = power = None
        bound = _frobenius(xp, wide)
    # 1 / t^2, and 0 for a zero input (X_0 = 0: the step must give 0, where 1 / tiny would give 0 * inf = NaN);
    # a nonzero X_0 of unit Frobenius norm has t^2 >= 1 / min(m, n)
    inv = safe_divide(xp, xp.ones_like(bound), bound)
    root = xp.sqrt(inv)  # 1 / t
    if a2 is not None and len(coeffs) == 3:  # the quintic: element-wise only, in place on A^2 / power
        tail = combine(xp, wide, coeffs[1] * inv * root, a2, coeffs[2] * inv * inv * root * power)
    else:
        unit = wide * inv
        tail = (coeffs[1] * unit if len(coeffs) == 2 else _poly_tail(xp, unit, coeffs)) * root
    q = add_diagonal(xp, tail, coeffs[0] * root)
    if q.dtype != a.dtype:  # a low iterate dtype: A^2's own buffer is free once its float32 copy is made
        q = cast(xp, q, a.dtype, out=buffer(xp, ws, "a2" if scaling == "s8" else "q", shape, a.dtype, a))
    return q, a


def _frobenius(xp: Namespace, a: Array) -> Array:
    return xp.astype(xp.linalg.vector_norm(a, axis=(-2, -1), keepdims=True), a.dtype)


def _newton_schulz(xp: Namespace, x: Array, schedule: tuple[tuple[float, ...], ...], scaling: str = "frobenius",
                   runs: tuple[int, ...] = (), ws: Workspace | None = None, transposed: bool = False) -> Array:
    """``X <- c0 X + (c1 A + c2 A^2 + ...) X`` with ``A = X X^T``; ``X`` is wide (``m <= n``), ``||X||_F = 1``.
    ``scaling`` ``gram``/``s8`` rescales in the first step (:func:`_first_factor`); ``runs`` is unused. ``ws``: the
    iterates alternate between its buffers ``x0`` (the start's) and ``x1``, ``A`` in ``a``, the tail in ``t0``/``t1``.
    ``transposed``: every step stores its result in the transposed layout (:func:`_poly_step`; for a tall input,
    whose start is stored so)."""
    start = 0
    if scaling != "frobenius":
        q, _ = _first_factor(xp, x, schedule[0], scaling, ws)
        x, start = _left(xp, q, x, ws, "x1", transposed), 1
    shape = _gram_shape(x)
    for k, coeffs in enumerate(schedule[start:], start):  # step k reads the buffer x{k % 2}, writes the other
        a = matmul(xp, x, xp.matrix_transpose(x), out=buffer(xp, ws, "a", shape, x.dtype, x), symmetric=True)
        x = _poly_step(xp, x, a, coeffs, ws, "x0" if k % 2 else "x1", transposed)
    return x


def _gram_newton_schulz(xp: Namespace, x: Array, schedule: tuple[tuple[float, ...], ...], scaling: str = "frobenius",
                        runs: tuple[int, ...] = (4,), ws: Workspace | None = None, transposed: bool = False) -> Array:
    """The Newton-Schulz iteration on the Gram side: ``X_k = Q_k X_0`` with ``Q_k`` a polynomial in ``A = X_0 X_0^T``.

    ``R_k = X_k X_k^T = Q_k A Q_k``; ``h_k = c0 + c1 R_k + ...``; ``Q_{k+1} = h_k Q_k``, ``R_{k+1} = R_k h_k^2``
    (all of them commute). The steps are grouped in runs (``runs``: their lengths, the last one repeating): each
    run starts from ``X = Q X`` and a freshly formed ``R = X X^T``, and ``R`` is re-symmetrised each step. Without
    restarts rounding in ``R`` is amplified by the large early slopes (in float32 at condition number 1e6:
    spectral-norm errors up to 0.14 without restarts, 2e-6 with a restart every 4 steps; in bfloat16 the steep first
    Polar Express steps must run alone: "auto"'s runs (1, 1, 2) stay within the plain iteration's error on every
    input of benchmarks/polar_accuracy.py, a first run of two steps reached a spectral norm of 5).

    Products: a run of ``L`` quintic steps costs two ``m x n`` products (``X X^T`` and ``Q X``) and about ``3 L``
    ``m x m`` ones, against ``2 L`` and ``L`` for the plain iteration: it pays on matrices of aspect ratio >= 2.
    ``ws``: the iterates in its buffers ``x0``/``x1``, ``R`` in ``r``, ``Q`` in ``qa``/``qb`` by turns, the
    temporaries in ``hh``, ``rh`` and the tail's; ``transposed`` as for :func:`_newton_schulz`.
    """
    steps = len(schedule)
    lengths, left = [], steps
    while left > 0:
        lengths.append(min(runs[min(len(lengths), len(runs) - 1)], left))
        left -= lengths[-1]
    shape = _gram_shape(x)

    def out(role: str) -> Any:
        return buffer(xp, ws, role, shape, x.dtype, x)

    q, q_role, r, i = None, "", None, 0
    for run, length in enumerate(lengths):
        for k in range(length):
            coeffs = schedule[i]
            if i == 0 and scaling != "frobenius":  # the first step, its scaling folded in: Q_1 and R_1 = Q A Q
                q, a = _first_factor(xp, x, coeffs, scaling, ws)  # Q in _first_factor's buffers, none of the loop's
                if k + 1 < length:
                    qq = matmul(xp, q, q, out=out("hh"), symmetric=True)
                    r = symmetrized(xp, matmul(xp, qq, a, out=out("rh")), out("r"))
            else:
                if k == 0:  # a run starts
                    if q is not None:
                        x = _left(xp, q, x, ws, f"x{run % 2}", transposed)
                    r, q = matmul(xp, x, xp.matrix_transpose(x), out=out("r"), symmetric=True), None
                fresh = "qa" if q_role != "qa" else "qb"  # the buffer Q does not occupy
                if len(coeffs) > 2:
                    h = _poly_tail(xp, r, coeffs, ws, fresh if q is None else "h")
                else:
                    h = cast(xp, coeffs[1] * r, r.dtype, out=out(fresh if q is None else "h"))
                h = add_diagonal(xp, h, coeffs[0])
                q, q_role = h if q is None else matmul(xp, h, q, out=out(fresh)), fresh
                if k + 1 < length:  # R is needed by the run's next step
                    hh = matmul(xp, h, h, out=out("hh"), symmetric=True)
                    r = symmetrized(xp, matmul(xp, r, hh, out=out("rh")), out("r"))
            i += 1
    return _left(xp, q, x, ws, f"x{len(lengths) % 2}", transposed)


# -- Polar Express coefficients -------------------------------------------------------------------------------------
def polar_express_coefficients(
    lower: float = PE_LOWER,
    steps: int = PE_STEPS,
    *,
    degree: int = 5,
    cushion: float = PE_CUSHION,
    safety: float = PE_SAFETY,
) -> tuple[tuple[float, ...], ...]:
    """Per-step minimax ("Polar Express") coefficients for singular values in ``[lower, 1]``.

    Greedy optimal composition (arXiv 2505.16932, Thm. 3.1): with the current interval ``[l, u]`` (``[lower, 1]`` at
    the start) each step takes the odd polynomial ``p`` of ``degree`` (3, 5, 7, ...) that minimises
    ``max_{x in [l, u]} |1 - p(x)|``, found by the Remez exchange algorithm on the equioscillation points
    ``l < x_1 < ... < u``; the next interval is the image ``[p(l), 2 - p(l)]``. Two guards from the paper:
    ``cushion`` fits the polynomial on ``[max(l, cushion * u), u]`` and recentres it on ``[l, u]`` (a polynomial
    fitted on a tiny ``l`` has a huge slope and amplifies rounding), and ``safety`` replaces ``p(x)`` by
    ``p(x / (1 + safety))`` on every step but the last, so that singular values pushed slightly above the interval by
    rounding are still mapped inside it.

    Returns one tuple ``(c0, c1, ...)`` per step, for ``polar(..., coefficients=...)``.
    """
    if not (isinstance(lower, (int, float)) and 0 < lower < 1):
        raise ValueError(f"polar_express_coefficients: lower must be in (0, 1); got lower={lower!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100:
        raise ValueError(f"polar_express_coefficients: steps must be an int in [1, 100]; got steps={steps!r}")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 3 or degree % 2 == 0:
        raise ValueError(f"polar_express_coefficients: degree must be an odd int >= 3; got degree={degree!r}")
    if not 0 <= cushion < 1:
        raise ValueError(f"polar_express_coefficients: cushion must be in [0, 1); got cushion={cushion!r}")
    if not 0 <= safety < 1:
        raise ValueError(f"polar_express_coefficients: safety must be in [0, 1); got safety={safety!r}")
    return _pe_coefficients(float(lower), steps, degree, float(cushion), float(safety))


@functools.lru_cache(maxsize=64)
def _pe_coefficients(lower: float, steps: int, degree: int, cushion: float, safety: float) -> tuple:
    lo, hi = lower, 1.0
    out = []
    for _ in range(steps):
        c = _remez_odd(max(lo, cushion * hi), hi, degree)
        # recentre on [lo, hi]: scale p so that its image [min p, max p] of [lo, hi] is symmetric about 1
        vals = _odd_poly(c, np.linspace(lo, hi, 4001))
        pmin, pmax = float(vals.min()), float(vals.max())
        c = c * (2.0 / (pmin + pmax))
        lo, hi = 2.0 * pmin / (pmin + pmax), 2.0 * pmax / (pmin + pmax)
        out.append(c)
    damp = [(1.0 + safety) ** -(2 * j + 1) for j in range(len(out[0]))]
    return tuple(
        tuple(float(v * (w if k < steps - 1 else 1.0)) for v, w in zip(c, damp)) for k, c in enumerate(out)
    )


def _odd_poly(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    x2 = x * x
    acc = np.zeros_like(x)
    for v in c[::-1]:
        acc = acc * x2 + v
    return acc * x


def _remez_odd(low: float, u: float, degree: int) -> np.ndarray:
    """Coefficients of the odd polynomial of ``degree`` best approximating 1 on ``[low, u]`` in the sup norm."""
    k = (degree + 1) // 2  # number of coefficients
    if low / u > 1 - 1e-6:  # degenerate interval: the Taylor (Newton-Schulz) polynomial of (1-t)^(-1/2) at u
        taylor = [1.0]
        for j in range(1, k):
            taylor.append(taylor[-1] * (2 * j - 1) / (2 * j))
        # p(x) = x/u * sum_j binom(-1/2, j)(-1)^j (1 - x^2/u^2)^j, truncated: expand in powers of x^2
        coeffs = np.zeros(k)
        for j, t in enumerate(taylor):
            poly = np.polynomial.polynomial.polypow([1.0, -1.0 / u**2], j)
            coeffs[: len(poly)] += t * poly
        return coeffs / u
    # k coefficients + the level E: k + 1 alternation points low = x_0 < ... < x_k = u
    pts = low + (u - low) * (1 - np.cos(np.pi * np.arange(k + 1) / k)) / 2
    signs = -((-1.0) ** np.arange(k + 1))  # p(low) = 1 - E, then alternate
    coeffs = np.zeros(k)
    err_prev = math.inf
    for _ in range(100):
        lhs = np.empty((k + 1, k + 1))
        for j in range(k):
            lhs[:, j] = pts ** (2 * j + 1)
        lhs[:, k] = -signs
        sol = np.linalg.solve(lhs, np.ones(k + 1))
        coeffs, err = sol[:k], sol[k]
        # new interior points: the critical points of p in (low, u), i.e. roots of p'(x) in x^2
        dcoef = np.array([(2 * j + 1) * coeffs[j] for j in range(k)])  # p'(x) = sum dcoef_j x^(2j)
        roots = np.roots(dcoef[::-1])
        roots = np.sort(roots[(np.abs(roots.imag) < 1e-12) & (roots.real > 0)].real)
        crit = np.sqrt(roots)
        crit = crit[(crit > low) & (crit < u)]
        if len(crit) != k - 1:
            break
        pts = np.concatenate(([low], crit, [u]))
        if abs(err - err_prev) <= 1e-15 * max(1.0, abs(err)):
            break
        err_prev = err
    return coeffs


# -- exact-arithmetic bounds of a schedule --------------------------------------------------------------------------
def _scalar_map(schedule: tuple[tuple[float, ...], ...], x: np.ndarray) -> np.ndarray:
    """The composition ``p(x)`` of the step polynomials (what each singular value becomes), in float64."""
    for c in schedule:
        x = _odd_poly(np.asarray(c), x)
    return x


def _two_level(schedule: tuple, q: int, rank: int, t: np.ndarray, k: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``sum s p(s) / sum s`` for ``k`` singular values at ``s`` and ``m`` at ``t``, ``k s^q + m t^q = 1``."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        rest = 1.0 - m * t**q
        valid = (rest > 0) & (k + m <= rank)
        s = np.where(valid, rest / k, 0.0) ** (1.0 / q)
        ratio = (k * s * _scalar_map(schedule, s) + m * t * _scalar_map(schedule, t)) / (k * s + m * t)
    return np.where(valid, ratio, np.inf)


@functools.lru_cache(maxsize=128)
def _polynomial_bounds(schedule: tuple[tuple[float, ...], ...], q: int, rank: int) -> tuple[float, float]:
    """``(delta, slack)`` in exact arithmetic over spectra of rank ``<= rank`` with ``sum s^q = 1`` (see ``bounds``)."""
    fine = np.unique(np.concatenate((np.geomspace(1e-12, 1.0, 20000), np.linspace(0.0, 1.0, 20001))))
    slack = max(float(np.max(_scalar_map(schedule, fine))) - 1.0, 0.0)
    # two levels: k values at s, m values at t, k s^q + m t^q = 1, k + m <= rank; a coarse search, then a fine one
    # around the best coarse configurations
    grid = np.unique(np.concatenate((np.geomspace(1e-9, 1.0, 700), np.linspace(0.0, 1.0, 301))))
    grid = grid[grid > 0]
    counts = np.unique(np.concatenate((np.arange(1, 9), np.round(np.geomspace(1, rank, 40)))))
    counts = counts[counts <= rank]
    others = np.append(0.0, counts)
    ratio = _two_level(schedule, q, rank, grid[:, None, None], counts[None, :, None], others[None, None, :])
    delta = float(np.min(ratio))
    flat = np.argsort(ratio, axis=None)[:8]
    for i, j, k in zip(*np.unravel_index(flat, ratio.shape)):
        t0, k0, m0 = grid[i], counts[j], others[k]
        ts = np.geomspace(t0 / 1.2, min(t0 * 1.2, 1.0), 400)[:, None, None]
        ks = np.unique(np.round(np.geomspace(max(k0 / 1.6, 1), k0 * 1.6, 60)))[None, :, None]
        ms = np.unique(np.round(np.concatenate(([0.0], np.geomspace(max(m0 / 1.6, 1), max(m0, 1) * 1.6, 60)))))
        delta = min(delta, float(np.min(_two_level(schedule, q, rank, ts, ks, ms[None, None, :]))))
    return delta, slack
