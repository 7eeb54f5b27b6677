"""Polar-factor solvers: exactness of SVD, declared bounds of the iterations on hard inputs, the Polar Express
generator, Gram == plain Newton-Schulz, batching, backends, dtypes, and the dtype policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lmo
from lmo.geometries import polar_solvers as P
from lmo.geometries.polar_solvers import PolarSolver, polar, polar_express_coefficients
from lmo.geometries.precision import fast_bf16, iterate_dtype
from lmo.testing import to_numpy

ITERATIVE = ["newton_schulz", "cubic", "quintic", "polar_express", "gram_newton_schulz", "auto"]


def matrix(rng, m, n, cond=1.0, scale=1.0, rank=None, batch=()):
    """A matrix (or stack) with log-spaced singular values from 1 to 1/cond, optionally of lower rank."""
    r = min(m, n)
    s = np.geomspace(1.0, 1.0 / cond, r)
    if rank is not None:
        s[rank:] = 0.0
    u = np.linalg.qr(rng.standard_normal((*batch, m, r)))[0]
    v = np.linalg.qr(rng.standard_normal((*batch, n, r)))[0]
    return scale * (u * s[..., None, :]) @ np.swapaxes(v, -1, -2)


HARD = [
    dict(m=12, n=12, cond=1e6),
    dict(m=6, n=20, cond=1e6, scale=1e-30),
    dict(m=24, n=7, cond=1e3, scale=1e30),
    dict(m=10, n=10, cond=10.0, rank=3),
    dict(m=16, n=40, cond=1e6, rank=9),
    dict(m=9, n=9, cond=1.0, scale=1e-30),
]


def quality(g, p):
    """(<g, p> / ||g||_*, ||p||_2) in float64: what delta and slack bound."""
    g = g / np.abs(g).max()
    s = np.linalg.svd(g, compute_uv=False)
    return float(np.sum(g * p) / s.sum()), float(np.linalg.norm(p, 2))


def test_svd_is_exact_on_every_backend(backend):
    rng = np.random.default_rng(0)
    g = matrix(rng, 5, 3, cond=30.0, batch=(2,))
    u, _, vh = np.linalg.svd(g, full_matrices=False)
    out = polar(backend.asarray(g, "float32"), "svd")
    assert type(out) is type(backend.asarray(g)) and tuple(out.shape) == g.shape
    np.testing.assert_allclose(to_numpy(out), u @ vh, atol=2e-5)


def test_svd_rank_deficient_gives_minimum_frobenius_factor():
    rng = np.random.default_rng(1)
    g = matrix(rng, 7, 5, cond=4.0, rank=2)
    u, _, vh = np.linalg.svd(g)
    expected = u[:, :2] @ vh[:2]
    np.testing.assert_allclose(polar(g, "svd"), expected, atol=1e-10)
    # zero on the null spaces: the pseudo-inverse annihilates it from both sides
    np.testing.assert_allclose(polar(g, "svd") @ (np.eye(5) - np.linalg.pinv(g) @ g), 0, atol=1e-10)


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("dtype", [None, "float32", "bfloat16"])
def test_declared_bounds_hold_on_hard_inputs(method, dtype):
    import torch

    if method == "gram_newton_schulz" and dtype == "bfloat16":
        dtype = None
    solver = PolarSolver(method, dtype=dtype)
    rng = np.random.default_rng(2)
    for case in HARD:
        g = matrix(rng, **case)
        delta, slack = solver.bounds(min(g.shape))
        assert (delta, slack) >= (solver.bounds()[0], 0.0)  # small inputs: at least the declared bound
        inputs = (torch.tensor(g, dtype=torch.float32),) if dtype == "bfloat16" else (g, torch.tensor(g))
        for x in inputs:
            value, top = quality(g, to_numpy(solver(x)))
            assert value >= delta, (method, dtype, case, value, delta)
            assert top <= 1 + slack, (method, dtype, case, top, slack)


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express", "gram_newton_schulz", "auto"])
@pytest.mark.parametrize("dtype", [None, "float32", "bfloat16"])
def test_declared_bounds_hold_on_subnormal_inputs(method, dtype):
    """Every entry subnormal in float32, down to the smallest (2^-149; hypothesis found ``auto`` returning 0 for a
    2 x 2 matrix of those: the start of such an input has its largest entry at 2^-24, and the float32 sum of
    squares of its ``A^2`` underflowed). The bounds hold for the float32 matrix the solver was given."""
    torch = pytest.importorskip("torch")
    if method == "gram_newton_schulz" and dtype == "bfloat16":
        dtype = None
    solver = PolarSolver(method, dtype=dtype)
    rng = np.random.default_rng(7)
    for g, exponent in ((np.ones((2, 2)), -149), (matrix(rng, 6, 9, cond=10.0), -140), (matrix(rng, 9, 4), -130)):
        x = torch.tensor(g * 2.0**exponent / np.abs(g).max(), dtype=torch.float32)
        given = x.double().numpy()
        assert 0 < np.abs(given).max() < 2.0**-126
        delta, slack = solver.bounds(min(g.shape))
        value, top = quality(given, to_numpy(solver(x)).astype(np.float64))
        assert value >= delta, (method, dtype, g.shape, value, delta)
        assert top <= 1 + slack, (method, dtype, g.shape, top, slack)


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express", "cubic"])
def test_iteration_maps_singular_values_by_the_scalar_composition(method):
    """In float64 the matrix iteration equals the scalar map on the singular values (what ``bounds`` analyses)."""
    rng = np.random.default_rng(3)
    g = matrix(rng, 8, 6, cond=1e4)
    solver = PolarSolver(method, dtype="float64")
    s = np.linalg.svd(g, compute_uv=False)
    expected = P._scalar_map(solver.schedule, s / np.linalg.norm(s))
    got = np.linalg.svd(solver(g), compute_uv=False)
    np.testing.assert_allclose(np.sort(got), np.sort(expected), atol=1e-9)


def test_two_level_spectra_respect_the_rank_bound_and_it_is_nearly_attained():
    """The bound for rank r holds on every two-level spectrum of rank r, and some spectrum comes close to it."""
    solver = PolarSolver("newton_schulz", dtype="float64", steps=3)
    rank = 32
    delta = P._polynomial_bounds(solver.schedule, 2, rank)[0]
    rng = np.random.default_rng(4)
    worst = np.inf
    for t in np.geomspace(1e-4, 0.3, 40):
        for m in (1, 4, 16, 31):
            s = np.concatenate(([1.0], np.full(m, t)))
            u = np.linalg.qr(rng.standard_normal((rank, m + 1)))[0]
            v = np.linalg.qr(rng.standard_normal((rank, m + 1)))[0]
            g = (u * s) @ v.T
            worst = min(worst, quality(g, solver(g))[0])
    assert worst >= delta - 1e-9
    assert worst <= delta + 0.05


def test_keller_iteration_matches_torch_muon(monkeypatch):
    import torch
    from torch.optim._muon import _zeropower_via_newtonschulz

    rng = np.random.default_rng(5)
    for shape in [(16, 48), (40, 12)]:
        g = torch.tensor(rng.standard_normal(shape), dtype=torch.float32)
        ref = _zeropower_via_newtonschulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7).float()
        ours = polar(g, "newton_schulz", steps=5, coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, dtype="bfloat16")
        assert ours.dtype == torch.float32
        assert float(torch.linalg.norm(ours - ref) / torch.linalg.norm(ref)) < 0.08  # two bf16 runs
    # the same arithmetic: torch's iteration run in float64 (its bf16 cast redirected) equals ours in float64
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self: self.double())
    g = torch.tensor(rng.standard_normal((24, 10)))
    ref = _zeropower_via_newtonschulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7)
    ours = polar(g, "newton_schulz", dtype="float64")
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


def test_polar_express_generator_reproduces_the_paper_and_equioscillates():
    # Amsel et al. (2025), Algorithm 1 with l = 1e-3 and no safety factor: the first steps of their published table
    c = polar_express_coefficients(1e-3, 8, safety=0.0)
    np.testing.assert_allclose(c[0], (8.28721201814563, -23.595886519098837, 17.300387312530933), rtol=1e-6)
    np.testing.assert_allclose(c[1], (4.107059111542203, -2.9478499167379106, 0.5448431082926601), rtol=1e-6)
    np.testing.assert_allclose(c[-1], (1.875, -1.25, 0.375), rtol=1e-6)
    # a Remez fit equioscillates: |1 - p| reaches its maximum E at l, at two interior points, and at u
    coeffs = P._remez_odd(0.1, 1.0, 5)
    x = np.linspace(0.1, 1.0, 200001)
    err = 1 - P._odd_poly(coeffs, x)
    e = np.abs(err).max()
    peaks = x[np.abs(np.abs(err) - e) < 1e-6 * e]
    assert abs(err[0] - e) < 1e-9 and abs(err[-1] + e) < 1e-9
    assert len(np.unique(np.round(peaks, 3))) >= 4
    # composing the 8 steps maps [1e-3, 1] into [1 - 1e-6, 1 + 1e-6]
    y = P._scalar_map(c, np.geomspace(1e-3, 1, 2000))
    assert np.abs(y - 1).max() < 1e-6
    # degree 3 and 7 are supported, and bad arguments are named
    assert len(polar_express_coefficients(1e-2, 4, degree=3)[0]) == 2
    assert len(polar_express_coefficients(1e-2, 4, degree=7)[0]) == 4
    with pytest.raises(ValueError, match="lower"):
        polar_express_coefficients(0.0)
    with pytest.raises(ValueError, match="degree"):
        polar_express_coefficients(1e-3, degree=4)


def test_gram_newton_schulz_equals_the_plain_iteration():
    rng = np.random.default_rng(6)
    g = matrix(rng, 6, 50, cond=1e3, batch=(3,))
    plain = polar(g, "polar_express", dtype="float64")
    gram = polar(g, "gram_newton_schulz", dtype="float64")
    np.testing.assert_allclose(gram, plain, atol=1e-10)
    np.testing.assert_allclose(polar(np.swapaxes(g, -1, -2), "gram_newton_schulz", dtype="float64"),
                               np.swapaxes(plain, -1, -2), atol=1e-10)


@pytest.mark.parametrize("method", ["svd", "newton_schulz", "polar_express", "gram_newton_schulz"])
def test_batched_equals_looped_and_inputs_are_left_alone(backend, method):
    rng = np.random.default_rng(7)
    g = matrix(rng, 5, 8, cond=100.0, batch=(2, 3))
    x = backend.asarray(g, "float32")
    before = to_numpy(x).copy()
    solver = PolarSolver(method, dtype=None if method == "svd" else "float32")
    out = to_numpy(solver(x))
    np.testing.assert_array_equal(to_numpy(x), before)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(out[i, j], to_numpy(solver(backend.asarray(g[i, j], "float32"))), atol=1e-4)


def test_half_precision_zero_and_scaling_options(backend):
    rng = np.random.default_rng(8)
    g = matrix(rng, 6, 4, cond=10.0)
    for dtype in backend.dtypes:
        out = polar(backend.asarray(g, dtype), "polar_express")
        assert str(out.dtype).endswith(dtype)
        assert np.all(np.isfinite(to_numpy(out)))
        zero = polar(backend.asarray(np.zeros((3, 2)), dtype), "newton_schulz")
        assert np.all(to_numpy(zero) == 0)
    gram = PolarSolver("polar_express", scaling="gram", dtype="float32")
    value, top = quality(g, to_numpy(gram(backend.asarray(g, "float32"))))
    assert value >= gram.bounds(4)[0] and top <= 1 + gram.bounds(4)[1]
    assert gram.bounds(4)[0] >= PolarSolver("polar_express", dtype="float32").bounds(4)[0]


@pytest.mark.parametrize("scaling", P.SCALINGS)
@pytest.mark.parametrize("method", [m for m in P.METHODS if m != "svd"])
def test_zero_maps_to_zero_for_every_method_and_scaling(method, scaling, backend):
    """A zero gradient (a frozen or unused parameter) gives a zero direction, never NaN: the tighter scalings once
    divided by a floored bound (1 / tiny), and 0 * inf made "auto" return NaN on zeros."""
    solver = PolarSolver(method, scaling=scaling, dtype="float32")
    for shape in ((3, 2), (2, 4, 9)):
        out = to_numpy(solver(backend.asarray(np.zeros(shape), "float32")))
        assert np.all(out == 0), (method, scaling, shape)


@pytest.mark.parametrize("method", ["newton_schulz", "cubic", "polar_express", "gram_newton_schulz", "auto"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_workspace_changes_the_memory_only(method, dtype):
    """``iterate(g, workspace)``: bit for bit the result without one, for wide, tall (written in the tall layout)
    and stacked inputs, on every route (plain, the s8 first factor, the Gram runs); a second call reuses the
    memory (the same buffers, nothing new) and gives its own input's result."""
    torch = pytest.importorskip("torch")
    from lmo.geometries import Workspace

    if method == "gram_newton_schulz" and dtype == "bfloat16":
        pytest.skip("the Gram recursion iterates in at least float32")
    solver = PolarSolver(method, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    for shape in ((12, 5), (5, 12), (3, 12, 5), (4, 6, 6), (2, 5, 13)):
        ws = Workspace()
        g1, g2 = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        first = solver.iterate(g1, ws)
        held, kept, pointer = first.clone(), ws.nbytes, first.data_ptr()
        assert torch.equal(held, solver.iterate(g1)), (method, shape)
        if shape[-2] > shape[-1]:
            assert first.is_contiguous(), (method, shape)  # the last step wrote the tall layout
        second = solver.iterate(g2, ws)
        assert torch.equal(second, solver.iterate(g2)), (method, shape)
        assert ws.nbytes == kept and second.data_ptr() == pointer, (method, shape)
        roles = {role for role, _, _ in ws._buffers}
        if solver.scaling == "s8" and dtype == "bfloat16":  # the first factor's Q in A^2's buffer, free by then
            assert "a2" in roles and "q" not in roles, (method, shape, roles)


@pytest.mark.parametrize("work", ["bfloat16", "float32"])
def test_the_start_is_torchs_prelude_at_every_scale(work):
    """The fast start (float32 input on a CPU) is torch.optim.Muon's prelude ``X = G.to(work); X / X.norm()`` bit
    for bit, per matrix of a batch and for transposed views; scaling the input by any power of two from 2^-100 to
    2^124 (where the prelude's own float32 sum of squares under- or overflows) gives the same bits; a zero matrix
    gives zeros; ``unit=False`` is the scaled cast alone, largest magnitude in [1/2, 1); an input the workspace does
    not hold is only read."""
    torch = pytest.importorskip("torch")
    from lmo.geometries import Workspace
    from lmo.geometries._torch import frobenius_normalized

    dt = getattr(torch, work)
    gen = torch.Generator().manual_seed(4)
    for g in (torch.randn(12, 30, generator=gen) * 1e-3, torch.randn(30, 12, generator=gen).mT,
              torch.randn(3, 8, 20, generator=gen) * 50, torch.zeros(5, 7)):  # rows of a batch of different scales
        before = g.clone()
        prelude = g.to(dt)
        prelude = prelude / (prelude.norm(dim=(-2, -1), keepdim=True) + 1e-30)
        for ws in (None, Workspace()):
            start = frobenius_normalized(torch, g, dt, ws)
            assert start.dtype == dt and start.shape == g.shape
            assert torch.equal(start, prelude), (tuple(g.shape), ws)
            assert torch.equal(g, before)
        top = math.floor(math.log2(float(g.abs().max()))) if bool(g.any()) else 0
        for k in (-100, -60, 60, 126):  # the largest magnitude in [2^k, 2^(k+1)): up to 1.7e38 (bfloat16's max 3.4e38)
            scaled = (g.double() * 2.0 ** (k - top)).float()  # exact (a float32 factor 2^135 would be inf)
            assert torch.equal(frobenius_normalized(torch, scaled, dt), prelude), (tuple(g.shape), k)
        cast = frobenius_normalized(torch, g, dt, unit=False)
        peak = g.double().abs().amax(dim=(-2, -1), keepdim=True)
        exponent = torch.where(peak > 0, torch.floor(torch.log2(peak)) + 1, -125.0)
        assert torch.equal(cast, (g.double() * 2.0**-exponent).to(dt))  # largest magnitude in [1/2, 1)


@pytest.mark.parametrize("method", ["newton_schulz", "auto"])
def test_an_input_in_the_workspace_is_scratch(method):
    """An input the workspace holds (the optimizer's estimates, in its buffer ``"c"``) is scaled in place before the
    cast to the iterate dtype (no float32 temporary): the result is bit for bit that of a copy of it without a
    workspace; an input it does not hold is left alone."""
    torch = pytest.importorskip("torch")
    from lmo.geometries import Workspace

    solver = PolarSolver(method, dtype="bfloat16")
    gen = torch.Generator().manual_seed(4)
    for shape in ((12, 30), (30, 12), (3, 8, 20)):
        g = torch.randn(shape, generator=gen) * 1e-3
        ws = Workspace()
        held = ws.take("c", shape, torch.float32, torch.device("cpu"))
        held.copy_(g)
        assert ws.holds(held) and ws.holds(held[0]) and not ws.holds(g)
        got = solver.iterate(held, ws)
        assert torch.equal(got, solver.iterate(g)), (method, shape)
        assert not torch.equal(held, g)  # scratch: overwritten
        lent_bytes = ws.nbytes
        before = g.clone()
        solver.iterate(g, ws)
        assert torch.equal(g, before)
        # the scratch hosted the first factor's float32 Gram matrices ("auto": its s8 start), which an input that is
        # not scratch needs buffers of its own for
        m = min(shape[-2:])
        gram_bytes = 2 * math.prod((*shape[:-2], m, m)) * 4 if method == "auto" else 0
        assert ws.nbytes == lent_bytes + gram_bytes, (method, shape)


def test_a_lent_buffer_serves_requests_in_turn_until_it_is_full():
    """``Workspace.lend``: the buffer holding a scratch input serves ``take_spare`` requests of its dtype and device
    one after another without overlap, while it has room; then (or for another dtype, or after ``lend(None)``) a
    request gets its role's own buffer. A lent buffer that grows drops the views of its old memory."""
    torch = pytest.importorskip("torch")
    from lmo.geometries import Workspace

    cpu, f32 = torch.device("cpu"), torch.float32
    ws = Workspace()
    c = ws.take("c", (10,), f32, cpu)
    ws.lend(c[2:])  # any view of the buffer lends all of it
    first = ws.take_spare("u", (2, 3), f32, cpu)
    second = ws.take_spare("v", (4,), f32, cpu)
    assert first.data_ptr() == c.data_ptr() and second.data_ptr() == c.data_ptr() + 6 * 4
    assert ws.nbytes == 10 * 4  # nothing new
    third = ws.take_spare("w", (2,), f32, cpu)  # 6 + 4 of 10 used: its own buffer
    other = ws.take_spare("b", (2,), torch.bfloat16, cpu)
    assert ws.nbytes == 10 * 4 + 2 * 4 + 2 * 2
    assert third.untyped_storage().data_ptr() != c.untyped_storage().data_ptr()
    assert other.untyped_storage().data_ptr() != c.untyped_storage().data_ptr()
    ws.lend(c)  # a new call: the lent memory is served from its start again
    assert ws.take_spare("u", (2, 3), f32, cpu).data_ptr() == c.data_ptr()
    ws.lend(None)
    assert ws.take_spare("u", (2, 3), f32, cpu).untyped_storage().data_ptr() != c.untyped_storage().data_ptr()
    grown = ws.take("c", (20,), f32, cpu)
    ws.lend(grown)
    assert ws.take_spare("u", (2, 3), f32, cpu).data_ptr() == grown.data_ptr()


def test_a_workspace_is_shared_by_shapes_in_turn():
    """One buffer per role, as large as the largest request: a smaller or differently shaped request is a view of
    it (the parts of a plan alternate between shapes without reallocating)."""
    torch = pytest.importorskip("torch")
    from lmo.geometries import Workspace

    ws = Workspace()
    big = ws.take("x", (4, 6), torch.float32, torch.device("cpu"), reserve=30)
    assert big.shape == (4, 6) and ws.nbytes == 30 * 4
    small = ws.take("x", (3, 2), torch.float32, torch.device("cpu"))
    assert small.shape == (3, 2) and small.data_ptr() == big.data_ptr() and ws.nbytes == 30 * 4
    other = ws.take("x", (2, 3), torch.bfloat16, torch.device("cpu"))
    assert other.dtype == torch.bfloat16 and len(ws) == 2
    grown = ws.take("x", (8, 8), torch.float32, torch.device("cpu"))  # grows
    assert ws.nbytes == 64 * 4 + 6 * 2
    again = ws.take("x", (3, 2), torch.float32, torch.device("cpu"))  # a view of the new buffer, not the old one
    assert again.data_ptr() == grown.data_ptr() and again is ws.take("x", (3, 2), torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_symmetric_products_are_formed_by_their_upper_triangle(dtype, monkeypatch):
    """``matmul(..., symmetric=True)`` and ``scaled_add_matmul(..., symmetric=True)`` on a CPU: a product large
    enough for panels (even and uneven cuts, up to the most panels) has each block below the diagonal the exact
    transpose of its mirror image and equals the plain product within the dtype's rounding (in ``out=`` if given),
    also for an operand that is a transposed view (the tall layout); a stack of such products is formed matrix by
    matrix where each takes at least ``SYMMETRIC_STACK_PANELS`` panels; small and non-CPU operands and stacks of
    fewer panels keep the plain product."""
    torch = pytest.importorskip("torch")
    from lmo.geometries import _torch as T

    dt = getattr(torch, dtype)
    rows, entries = T.SYMMETRIC_PANEL[dt.itemsize]
    tol = {"bfloat16": 1e-2, "float32": 1e-5, "float64": 1e-12}[dtype]
    gen = torch.Generator().manual_seed(5)
    fused_panels = 0
    sizes = [(2 * rows, max(2 * rows, entries // rows)), (2 * rows + 3, 4 * (2 * rows + 3)),
             (T.SYMMETRIC_PANELS * rows + 7, entries // rows)]
    for m, n in sizes:
        for tall in (False, True):
            store = torch.randn((n, m) if tall else (m, n), generator=gen).to(dt)
            x = store.mT if tall else store
            cuts = T._panels(x)
            assert cuts is not None and len(cuts) >= 3 and cuts[0] == 0 and cuts[-1] == m, (m, n, cuts)
            plain = (x.double() @ x.double().mT)
            out = torch.empty((m, m), dtype=dt)
            a = T.matmul(torch, x, x.mT, out=out, symmetric=True)
            assert a.data_ptr() == out.data_ptr(), (dtype, m, n, tall)
            for lo, hi in zip(cuts[1:], cuts[2:]):
                assert torch.equal(a[lo:hi, :lo], a[:lo, lo:hi].mT), (dtype, m, n, tall, lo)
            assert float((a.double() - plain).abs().max() / plain.abs().max()) <= tol, (dtype, m, n, tall)
            a = a / plain.abs().max().to(dt)
            fused = T.scaled_add_matmul(torch, 1.5, a, a, -0.5, symmetric=True)
            want = 1.5 * a.double() - 0.5 * (a.double() @ a.double())
            square = T._panels(a)
            if square is not None:
                fused_panels += 1
                assert torch.equal(fused[square[1]:, :square[1]], fused[:square[1], square[1]:].mT), (dtype, m, n)
            assert float((fused.double() - want).abs().max() / want.abs().max()) <= 4 * tol, (dtype, m, n)
    assert fused_panels >= 2
    small = torch.ones((rows, rows), dtype=dt)
    assert T._panels(small) is None and T._panels(torch.ones((2 * rows, 8), dtype=dt)) is None
    big = torch.ones((4 * rows, 4 * rows), dtype=dt, device="meta")
    assert T._panels(big) is None  # an accelerator (any non-CPU device) keeps the plain product
    # a stack: matrix by matrix in panels from SYMMETRIC_STACK_PANELS on (the 2-D product of each, bit for bit, in
    # out=, wide and tall layouts), else the batched product; an empty stack is an empty product
    few = T.SYMMETRIC_STACK_PANELS - 1
    stack = torch.randn((2, few * rows, entries // rows), generator=gen).to(dt)
    assert len(T._panels(stack[0])) - 1 == few
    formed = []
    upper = T._upper_triangle
    monkeypatch.setattr(T, "_upper_triangle", lambda *a, **k: formed.append(a[0].shape) or upper(*a, **k))
    assert torch.equal(T.matmul(torch, stack, stack.mT, symmetric=True), torch.bmm(stack, stack.mT))
    assert formed == []
    many = T.SYMMETRIC_STACK_PANELS * rows
    for tall in (False, True):
        store = torch.randn((3, 2 * many, many) if tall else (3, many, 2 * many), generator=gen).to(dt)
        x = store.mT if tall else store
        cuts = T._panels(x[0])
        assert len(cuts) - 1 >= T.SYMMETRIC_STACK_PANELS, cuts
        out = torch.empty((3, many, many), dtype=dt)
        formed.clear()
        a = T.matmul(torch, x, x.mT, out=out, symmetric=True)
        assert a.data_ptr() == out.data_ptr() and formed == [(many, 2 * many)] * 3, formed
        for k in range(3):
            assert torch.equal(a[k], T.matmul(torch, x[k], x[k].mT, symmetric=True)), (dtype, tall, k)
        plain = x.double() @ x.double().mT
        assert float((a.double() - plain).abs().max() / plain.abs().max()) <= tol, (dtype, tall)
        assert torch.equal(T.matmul(torch, x, x.mT, symmetric=True), a)  # without out=
    empty = torch.ones((0, many, 2 * many), dtype=dt)
    assert T.matmul(torch, empty, empty.mT, symmetric=True).shape == (0, many, many)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_symmetrized_is_the_mean_with_the_transpose_bit_for_bit(dtype):
    """``symmetrized(R, out)`` (the Gram iteration's re-symmetrisation) is ``lerp(R, R^T, 1/2)`` bit for bit: for a
    contiguous CPU ``R`` (a matrix, a stack, a 4-D batch; the transposes copied matrix by matrix into ``out``) and for
    a strided one (read transposed); exactly symmetric in bfloat16 (each entry the rounded mean of two bfloat16
    numbers); without ``out`` the array-API expression."""
    torch = pytest.importorskip("torch")
    from lmo.backend import namespace
    from lmo.geometries import _torch as T

    dt, xp = getattr(torch, dtype), namespace(torch.zeros(1))
    gen = torch.Generator().manual_seed(7)
    for shape in ((70, 70), (4, 64, 64), (2, 3, 9, 9)):
        for strided in (False, True):
            store = torch.randn(shape, generator=gen).to(dt)
            r = store.mT if strided else store
            out = torch.empty(shape, dtype=dt)
            got = T.symmetrized(xp, r, out)
            assert got.data_ptr() == out.data_ptr(), (dtype, shape, strided)
            assert torch.equal(got, torch.lerp(r, r.mT, 0.5)), (dtype, shape, strided)
            if dtype == "bfloat16":
                assert torch.equal(got, got.mT), (shape, strided)
            assert torch.allclose(T.symmetrized(xp, r), 0.5 * (r + r.mT)), (dtype, shape, strided)


@pytest.mark.parametrize("method", ["newton_schulz", "auto"])
def test_the_upper_triangle_products_change_only_the_rounding(method, monkeypatch):
    """The iteration with the symmetric products in panels against the same iteration with plain products
    (``SYMMETRIC_PANELS = 1``), on matrices large enough for panels, wide and tall, bfloat16 and float32."""
    torch = pytest.importorskip("torch")
    from lmo.geometries import _torch as T

    gen = torch.Generator().manual_seed(6)
    for dtype, tol in (("bfloat16", 2e-2), ("float32", 1e-4)):
        side = 2 * T.SYMMETRIC_PANEL[getattr(torch, dtype).itemsize][0]
        solver = PolarSolver(method, dtype=dtype)
        for shape in ((side, 4 * side), (4 * side, side)):
            g = torch.randn(shape, generator=gen)
            wide = g if shape[0] < shape[1] else g.mT
            assert T._panels(wide.to(getattr(torch, dtype))) is not None
            split = solver(g)
            with monkeypatch.context() as patch:
                patch.setattr(T, "SYMMETRIC_PANELS", 1)
                plain = solver(g)
            assert float((split - plain).norm() / plain.norm()) <= tol, (method, dtype, shape)


def test_errors_name_the_parameter():
    with pytest.raises(ValueError, match="method"):
        PolarSolver("newton")
    with pytest.raises(ValueError, match="steps"):
        PolarSolver("newton_schulz", steps=0)
    with pytest.raises(ValueError, match="coefficients"):
        PolarSolver("newton_schulz", coefficients=(1.0,))
    with pytest.raises(ValueError, match="dtype"):
        PolarSolver("newton_schulz", dtype="int8")
    with pytest.raises(ValueError, match="svd"):
        PolarSolver("svd", steps=3)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        polar(np.ones(3))
    with pytest.raises(ValueError, match="bfloat16"):
        polar(np.ones((2, 2)), "newton_schulz", dtype="bfloat16")  # numpy has no bfloat16


def test_dtype_policy_is_decided_per_device():
    import torch

    assert not fast_bf16(__import__("array_api_compat").array_namespace(np.ones(1)), np.ones(1))
    t = torch.ones(2, 2)
    xp = __import__("array_api_compat").array_namespace(t)
    expected = torch.bfloat16 if P.iterate_dtype(xp, t) == torch.bfloat16 else torch.float32
    assert iterate_dtype(xp, t) == expected
    assert iterate_dtype(xp, t, "float64") == torch.float64
    # the declared bound of an unpinned solver covers both possible iterate dtypes
    assert PolarSolver("newton_schulz").bounds()[0] <= PolarSolver("newton_schulz", dtype="bfloat16").bounds()[0]


def _torch_compile_works() -> bool:
    import torch

    try:
        return bool(torch.compile(lambda t: t + 1)(torch.ones(2))[0] == 2)
    except Exception:  # no C++ compiler / inductor toolchain on this machine
        return False


@pytest.mark.slow
def test_compile_option_runs_the_same_iteration_through_torch_compile():
    """A tiny compile (one 6 x 10 float32 Newton-Schulz chain): tens of seconds of compilation on a CPU."""
    torch = pytest.importorskip("torch")
    if not _torch_compile_works():
        pytest.skip("torch.compile has no working toolchain here")
    g = torch.tensor(matrix(np.random.default_rng(5), 6, 10, cond=10.0))
    plain = PolarSolver("newton_schulz", dtype="float32")
    fast = PolarSolver("newton_schulz", dtype="float32", compile=True)
    assert fast != plain and fast.schedule == plain.schedule
    torch.testing.assert_close(fast(g.float()), plain(g.float()), atol=1e-5, rtol=1e-5)
    # other namespaces ignore the flag; a non-bool is rejected
    x = np.asarray(g)
    np.testing.assert_allclose(polar(x, "newton_schulz", compile=True), polar(x, "newton_schulz"))
    with pytest.raises(ValueError, match="compile"):
        PolarSolver("newton_schulz", compile=1)
    assert lmo.get_norm("spectral", method="newton_schulz", compile=True).solver.compile
