"""The kit's reference values are independent, and right: solvers and closed forms agree with them, and a geometry
that changes the math of the class it inherits from is caught by the inherited reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _broken import ConsistentlyDoubled, InvertedRMSFactor, RMSIsL2

import lmo
from lmo.geometries import _references as refs
from lmo.norm import Reference
from lmo.testing import ContractViolation, available_backends, check_norm, check_references

cp = pytest.importorskip("cvxpy")
pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")


def _solve(problem) -> float:
    # Clarabel's default tolerances (1e-8); on the 16 x 12 SDP it reports "optimal_inaccurate" while its value
    # agrees with tighter solves to 1e-9, so both statuses are accepted and the values compared at 1e-7
    problem.solve(solver="CLARABEL")
    assert problem.status in ("optimal", "optimal_inaccurate"), problem.status
    return float(problem.value)


def _stiefel_optimum(w: np.ndarray, g: np.ndarray) -> float:
    """min <G, A> over tangent A (A = W (K - K^T) + W_perp B) with ||A||_2 <= 1."""
    m, n = w.shape
    k = cp.Variable((n, n))
    a = w @ (k - k.T)
    if m > n:
        a = a + np.linalg.qr(w, mode="complete")[0][:, n:] @ cp.Variable((m - n, n))
    return _solve(cp.Problem(cp.Minimize(cp.sum(cp.multiply(g, a))), [cp.sigma_max(a) <= 1]))


def _spectral_sphere_optimum(w: np.ndarray, g: np.ndarray) -> float:
    """min <G, A> with ||A||_2 <= 1 and <Theta, A> = 0, Theta = u_1 v_1^T of W."""
    u, _, vh = np.linalg.svd(w)
    theta = np.outer(u[:, 0], vh[0])
    a = cp.Variable(w.shape)
    return _solve(cp.Problem(cp.Minimize(cp.sum(cp.multiply(g, a))),
                             [cp.sigma_max(a) <= 1, cp.sum(cp.multiply(theta, a)) == 0]))


@pytest.mark.parametrize("shape", list(refs.STIEFEL_OPTIMA))
def test_stiefel_optima_are_what_cvxpy_finds(shape):
    k, optimum = refs.STIEFEL_OPTIMA[shape]
    w, g = refs.polar(refs.table(shape, 2 * k)), refs.table(shape, 2 * k + 1)
    assert _stiefel_optimum(w, g) == pytest.approx(optimum, rel=1e-7)


@pytest.mark.parametrize("shape", list(refs.SPECTRAL_SPHERE_OPTIMA))
def test_spectral_sphere_optima_are_what_cvxpy_finds(shape):
    k, optimum = refs.SPECTRAL_SPHERE_OPTIMA[shape]
    y, g = refs.table(shape, 2 * k), refs.table(shape, 2 * k + 1)
    assert _spectral_sphere_optimum(y / np.linalg.norm(y, 2), g) == pytest.approx(optimum, rel=1e-7)


def test_the_solver_agrees_with_the_closed_forms():
    # the square Stiefel case and the single column are known exactly: the solver is within its stated accuracy
    stiefel = lmo.get_norm("stiefel")
    closed = [r for r in stiefel.reference_cases() if r.point is not None and "closed form" in r.source]
    assert len(closed) == 2
    for ref in closed:
        assert _stiefel_optimum(np.asarray(ref.point), np.asarray(ref.g)) == pytest.approx(ref.tangent_value,
                                                                                           rel=1e-7)


def test_closed_forms_agree_with_linear_programs():
    # the polyhedral dual norms by scipy's LP, from the definition max <g, d> over the unit ball alone
    from scipy.optimize import linprog

    g = refs.table((7,), 3)
    n = g.size
    # l1 ball: d = p - q, p, q >= 0, sum(p + q) <= 1
    l1 = linprog(np.concatenate([-g, g]), A_ub=np.ones((1, 2 * n)), b_ub=[1.0], bounds=(0, None))
    assert -l1.fun == pytest.approx(float(refs.l1(g, 1).dual_norm), rel=1e-9)
    # weighted l-infinity ball: |d_i| <= 1 / w_i
    w = np.arange(1.0, n + 1)
    box = linprog(-g, bounds=list(zip(-1 / w, 1 / w)))
    assert -box.fun == pytest.approx(float(refs.weighted_sign(g, tuple(w)).dual_norm), rel=1e-9)
    # scion_sign(normalized=True) on a 3 x 4 matrix: |d_ij| <= 1 / d_in
    m = refs.table((3, 4), 5)
    ball = linprog(-m.ravel(), bounds=(-1 / 4, 1 / 4))
    assert -ball.fun == pytest.approx(float(lmo.get_norm("scion_sign").reference(m).dual_norm), rel=1e-9)


def test_spectral_reference_agrees_with_cvxpy_on_a_wide_scaled_matrix():
    g = refs.table((4, 7), 9)
    for scale in ("none", "rms", "rms_max", "l2_rms"):
        f = refs.spectral_factor(scale, 4, 7)
        d = cp.Variable((4, 7))
        value = -_solve(cp.Problem(cp.Minimize(cp.sum(cp.multiply(g, d))), [cp.sigma_max(d) <= f]))
        assert float(lmo.get_norm("spectral", scale=scale).reference(g).dual_norm) == pytest.approx(value, rel=1e-7)


@pytest.mark.parametrize("cls", [RMSIsL2, InvertedRMSFactor, ConsistentlyDoubled])
def test_a_subclass_that_changes_the_math_fails_the_inherited_reference(cls):
    norm = next(iter(cls.examples()))
    with pytest.raises(ContractViolation) as info:
        check_norm(norm, np.random.default_rng(0).standard_normal((2, 6, 4)))
    assert info.value.property == "reference" and info.value.method in ("norm", "dual_norm")


def test_scaled_and_normalised_variants_have_references_at_non_square_shapes():
    g = refs.table((5, 3), 1)
    want = {
        ("spectral", (("scale", "rms"),)): math.sqrt(5 / 3) * np.linalg.svd(g, compute_uv=False).sum(),
        ("colnorm", (("rms", True), ("normalized", True))): np.linalg.norm(g, axis=0).sum() * math.sqrt(5) / 3,
        ("rownorm", (("normalized", True),)): np.linalg.norm(g, axis=1).sum() / math.sqrt(3),
        ("scion_sign", ()): np.abs(g).sum() / 3,
    }
    for (name, params), dual in want.items():
        norm = lmo.get_norm(name, **dict(params))
        assert float(norm.reference(g).dual_norm) == pytest.approx(dual, rel=1e-12), name
        check_norm(norm, g)


def test_a_wrong_declared_reference_is_reported():
    class Lies(type(lmo.get_norm("sign"))):
        def reference(self, g):
            return Reference(g, dual_norm=np.sum(np.abs(g), axis=-1) * 1.01, source="a wrong table")

    with pytest.raises(ContractViolation, match="a wrong table"):
        check_norm(Lies(), np.array([1.0, -2.0, 3.0]))


def test_reference_cases_of_every_manifold_run_on_every_backend():
    backends = available_backends()
    sphere = lmo.get_norm("sphere")
    for backend in backends.values():
        if "float64" in backend.dtypes:
            assert check_references(sphere, backend, "float64") == len(list(sphere.reference_cases()))
