"""The property kit must catch wrong oracles, and say which property they break.

Each broken plugin below is a correct norm with one deliberate mistake. None is registered (no ``name=``), so the
contract suite does not pick them up.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from lmo import Norm
from lmo.backend import safe_divide
from lmo.geometries import L1, L2, Lp, Sign, WeightedSign
from lmo.testing import ContractViolation, arrays_for, check_norm, check_plugin

ROOT = Path(__file__).resolve().parents[1]


class WrongSign(L2):
    """Returns the ascent direction g / ||g|| (what most codebases call the LMO)."""

    def lmo(self, g):
        return -super().lmo(g)


class Infeasible(Sign):
    """Steps twice as far as the unit ball allows."""

    def lmo(self, g):
        return 2 * super().lmo(g)


class NotOptimal(Norm):
    """l1 ball, but lmo = -g / ||g||_1 (feasible, not a vertex) and a dual norm made consistent with it."""

    def norm(self, x):
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.sum(xp.abs(x), axis=-1))

    def dual_norm(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-xp.sum(g * self.lmo(g), axis=-1))

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-safe_divide(xp, g, xp.sum(xp.abs(g), axis=-1, keepdims=True)))


class DualMismatch(Sign):
    """l-infinity norm whose dual is reported as max|g| (the l-infinity norm again) instead of sum|g|."""

    def dual_norm(self, g):
        return Sign.norm(self, g)


class DualTooLarge(L1):
    """Reports sum|g| as the dual of the l1 norm."""

    def dual_norm(self, g):
        return Sign.dual_norm(self, g)


class NaNAtZero(Norm):
    """Euclidean norm written naively: lmo(0) = 0/0."""

    def norm(self, x):
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.sqrt(xp.sum(x * x, axis=-1)))

    dual_norm = norm

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-g / xp.sqrt(xp.sum(g * g, axis=-1, keepdims=True)))


class Overflows(NaNAtZero):
    """Naive Euclidean norm with the zero case fixed: squares still overflow at large scales."""

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-safe_divide(xp, g, xp.sqrt(xp.sum(g * g, axis=-1, keepdims=True))))


class MutatesInput(Sign):
    """Writes into its input."""

    def lmo(self, g):
        out = super().lmo(g)
        g[...] = 0
        return out


class WrongDtype(Sign):
    """Always answers in float64."""

    def lmo(self, g):
        import array_api_compat

        xp = array_api_compat.array_namespace(g)
        return xp.astype(super().lmo(g), xp.float64)


class IgnoresBatch(Sign):
    """Reduces every axis, not just the trailing one."""

    def norm(self, x):
        xp, x, narrow = self._prepare(x, "x")
        return narrow(xp.max(xp.abs(x)))


class NotHomogeneous(Sign):
    """Shrinks small steps: lmo(g) = -sign(g) min(1, ||g||_1)."""

    def lmo(self, g):
        xp, g, narrow = self._prepare(g)
        return narrow(-xp.sign(g) * xp.clip(xp.sum(xp.abs(g), axis=-1, keepdims=True), max=1.0))


class FalseSymmetry(WeightedSign):
    """A weighted norm that claims invariance under every signed permutation."""

    symmetry = "signed_permutation"


class Crashes(Sign):
    def lmo(self, g):
        raise RuntimeError("boom")


BROKEN = [
    (WrongSign, {"optimality"}),
    (Infeasible, {"feasibility"}),
    (NotOptimal, {"optimality"}),
    (DualMismatch, {"optimality", "duality"}),
    (DualTooLarge, {"optimality"}),
    (NaNAtZero, {"finite"}),
    (Overflows, {"extreme scale"}),
    (MutatesInput, {"input unchanged"}),
    (WrongDtype, {"output"}),
    (IgnoresBatch, {"output"}),
    (NotHomogeneous, {"tightness", "homogeneity"}),
    (FalseSymmetry, {"symmetry"}),
    (Crashes, {"crash"}),
]


@pytest.mark.parametrize(("cls", "expected"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_kit_catches_broken_plugin(cls, expected):
    report = check_plugin(cls, backends=["numpy"], max_examples=30)
    assert not report.ok
    caught = {f.property for f in report.failures}
    assert caught & expected, f"{cls.__name__}: expected {expected}, got {caught}\n{report}"
    message = report.failures[0].message
    assert cls.__name__ in message and "input g: shape" in message and "g = " in message


@pytest.mark.parametrize("backend_name", ["numpy", "torch", "array_api_strict"])
def test_input_mutation_is_caught_on_every_backend(backend_name):
    pytest.importorskip(backend_name if backend_name != "numpy" else "numpy")
    report = check_plugin(MutatesInput, backends=[backend_name], max_examples=5)
    assert {f.property for f in report.failures} == {"input unchanged"}


def test_violation_names_property_shape_and_numbers():
    with pytest.raises(ContractViolation) as info:
        check_norm(WrongSign(), np.array([3.0, 4.0]))
    err = info.value
    assert isinstance(err, AssertionError)
    assert err.property == "optimality" and err.shape == (2,) and err.backend == "numpy" and err.dtype == "float64"
    assert err.numbers["<g, lmo(g)>"] == pytest.approx(5.0)
    assert err.numbers["-delta * dual_norm(g)"] == pytest.approx(-5.0)
    assert "[optimality]" in str(err) and "(2,)" in str(err)


def test_correct_plugins_pass_on_every_backend():
    for cls in (L1, L2, Sign):
        report = check_plugin(cls, max_examples=10)
        assert report.ok, str(report)
        assert {r.backend for r in report.rows} >= {"numpy"}


def test_inexact_declarations_are_honoured_and_enforced():
    class HalfStep(Sign):
        """A deliberately inexact oracle that declares what it does: half the optimal step."""

        delta = 0.5

        def lmo(self, g):
            return 0.5 * super().lmo(g)

    assert check_plugin(HalfStep, backends=["numpy"], max_examples=20).ok

    class Overclaims(HalfStep):
        delta = 0.9

    report = check_plugin(Overclaims, backends=["numpy"], max_examples=20)
    assert {f.property for f in report.failures} & {"tightness", "optimality"}


def test_check_plugin_accepts_instances_and_reports_bad_examples():
    assert check_plugin(L2(ndim=2), backends=["numpy"], max_examples=5).ok

    class NeedsArgs(Sign):
        width: float

    report = check_plugin(NeedsArgs, backends=["numpy"])
    assert not report.ok and report.failures[0].property == "examples"
    assert "examples()" in report.failures[0].message
    with pytest.raises(ValueError, match="not available"):
        check_plugin(Sign, backends=["no-such-backend"])


def test_exhaustive_search_finds_the_optimum_of_a_non_vertex_oracle():
    # NotOptimal's value equals its own dual norm, so only an independent search can tell it is not the argmin.
    with pytest.raises(ContractViolation, match="does better than lmo"):
        check_norm(NotOptimal(), np.array([1.0, 2.0, -0.5]))


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmo", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_checks_the_documented_plugin():
    done = _cli("check", "examples/plugin_norm.py:RowSum", "--max-examples", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RowSum()" in done.stdout and "all properties hold" in done.stdout


def test_cli_fails_a_broken_plugin_with_its_reason(tmp_path):
    (tmp_path / "broken_norms.py").write_text(textwrap.dedent('''
        from lmo.geometries import L2

        class Ascent(L2):
            def lmo(self, g):
                return -super().lmo(g)
    '''))
    done = _cli("check", "broken_norms:Ascent", "--backend", "numpy", "--max-examples", "10", cwd=tmp_path)
    assert done.returncode == 1
    assert "FAIL [optimality]" in done.stdout and "<g, lmo(g)>" in done.stdout


def test_cli_help_and_bad_targets():
    done = _cli("--help")
    assert done.returncode == 0 and "check" in done.stdout and "demo" in done.stdout
    done = _cli("check", "no_such_norm")
    assert done.returncode != 0 and "registered norm" in done.stderr


@settings(max_examples=20, deadline=None)
@given(g=arrays_for(Lp(p=3.0), xp="torch", dtype="float32"))
def test_arrays_for_draws_backend_arrays_that_fit(g):
    import torch

    assert isinstance(g, torch.Tensor) and g.dtype == torch.float32 and g.ndim >= 1
    check_norm(Lp(p=3.0), g)


@settings(max_examples=10, deadline=None)
@given(g=arrays_for(WeightedSign(weights=(1.0, 2.0, 3.0)), xp="array_api_strict", shape=(2, 3)))
def test_arrays_for_respects_fixed_shapes(g):
    assert tuple(g.shape) == (2, 3)


def test_check_without_target_checks_the_catalogue():
    # `python -m lmo check` with no target checks every registered norm (the demo was this until issue 10 made it
    # the optimizer comparison; its test is tests/test_reproductions.py::test_demo_command_quick)
    done = _cli("check", "--max-examples", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: every property holds" in done.stdout
    for name in ("L1(", "L2(", "Lp(", "Sign(", "RMS(", "WeightedSign(", "Scaled("):
        assert name in done.stdout
