"""The property kit must catch wrong oracles, and say which property of which method they break.

The broken plugins live in ``tests/_broken.py`` (one deliberate mistake each, with the blind spot it covers).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _broken import BROKEN, Box, LimitBox, MutatesInput, NotOptimal, WrongSign
from conftest import NONFINITE_PENDING, pending_failures, registry_name
from hypothesis import given, settings

from lmo import get_norm
from lmo.geometries import L1, L2, Lp, Sign, WeightedSign
from lmo.testing import ContractViolation, arrays_for, check_norm, check_plugin

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("cls", "backends", "expected", "method", "blind_spot"), BROKEN,
                         ids=[c.__name__ for c, *_ in BROKEN])
def test_kit_catches_broken_plugin(cls, backends, expected, method, blind_spot):
    report = check_plugin(cls, backends=backends, max_examples=10)
    assert not report.ok, f"{cls.__name__} ({blind_spot}) passed the kit"
    first = report.failures[0]
    assert first.property in expected and first.method == method, (
        f"{cls.__name__} ({blind_spot}): expected {expected} in {method}, got {first.property} in {first.method}\n"
        f"{first.message}")
    assert cls.__name__ in first.message and "input g: shape" in first.message and "g = " in first.message
    assert f".{method}:" in first.message.splitlines()[0]  # the first line names the method that is wrong


def test_there_are_at_least_forty_broken_plugins_with_distinct_blind_spots():
    assert len(BROKEN) >= 40
    assert len({spot for *_, spot in BROKEN}) == len(BROKEN)


def test_nan_is_called_nan_and_a_triangle_bug_is_a_norm_bug():
    from _broken import PlantedNaN, QuasiNorm

    message = check_plugin(PlantedNaN, backends=["numpy"], max_examples=5).failures[0].message
    assert "NaN" in message.splitlines()[0] and "overflow" not in message
    first = check_plugin(QuasiNorm, backends=["numpy"], max_examples=5).failures[0]
    assert first.method == "norm" and "triangle" in first.message and "outside the unit ball" not in first.message


@pytest.mark.parametrize("cls", [Box, LimitBox])
def test_plugins_that_keep_the_nan_policy_pass(cls):
    report = check_plugin(cls, backends=["numpy", "torch"], max_examples=10)
    assert report.ok, str(report)


def test_a_failing_row_says_how_many_cases_ran():
    report = check_plugin(WrongSign, backends=["numpy"], max_examples=5)
    row = report.rows[0]
    assert row.failure is not None and row.cases > 0
    assert f"after {row.cases} cases" in report.table()


def test_report_rows_are_short():
    from lmo.geometries import Spectral

    report = check_plugin(Spectral(method="newton_schulz", steps=5, coefficients=(3.4445, -4.775, 2.0315),
                                   scale="rms_max"), backends=["numpy"], max_examples=2)
    assert max(len(line) for line in report.table().splitlines()[:3]) <= 150, report.table()
    assert report.rows[0].norm.startswith("spectral(method='newton_schulz'")


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
        assert not pending_failures(report), str(report)
        assert {r.backend for r in report.rows} >= {"numpy", "parity"}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_correct_norms_pass_at_the_smallest_normal_scale_and_with_a_large_ball(dtype):
    """Two false alarms the kit raised on correct norms: Hölder at the smallest normal input of Scaled(Sign, 1e-3)
    (its dual norm is subnormal, and norm(d) multiplies that number's absolute error: found by the contract suite's
    hypothesis search at g = 2.2e-308), and a "finite" failure of sharp for a ball of radius 1000 just below
    overflow (sharp(g) = ||g||_* (-lmo(g)) is 1e6 g there: beyond the dtype, so not owed)."""
    tiny = np.finfo(dtype).tiny
    small = get_norm("scaled", base=get_norm("sign"), scale=0.001)
    large = get_norm("scaled", base=get_norm("l2"), scale=1000.0)
    for norm in (small, large):
        for g in (np.array([tiny], dtype), np.array([tiny, -3 * tiny, 0.5 * tiny], dtype),
                  np.array([1.0, -2.0, 0.5], dtype)):
            check_norm(norm, g)


def test_inexact_declarations_are_honoured_and_enforced():
    class HalfStep(Box):
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
    assert check_plugin(Box(), backends=["numpy"], max_examples=5).ok

    class NeedsArgs(Box):
        width: float

    report = check_plugin(NeedsArgs, backends=["numpy"])
    assert not report.ok and report.failures[0].property == "examples"
    assert "examples()" in report.failures[0].message
    with pytest.raises(ValueError, match="not available"):
        check_plugin(Sign, backends=["no-such-backend"])


def test_exhaustive_search_finds_the_optimum_of_a_non_vertex_oracle():
    # NotOptimal's value equals its own dual norm, so only an independent search can tell that both are wrong.
    with pytest.raises(ContractViolation, match="smaller than <g, x>/norm.x. for a point x found by exhaustive"):
        check_norm(NotOptimal(), np.array([1.0, 2.0, -0.5]))


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmo", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_checks_the_documented_plugin():
    done = _cli("check", "examples/plugin_norm.py:RowSum", "--max-examples", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "row_sum()" in done.stdout and "all properties hold" in done.stdout


def test_cli_fails_a_broken_plugin_with_its_reason(tmp_path):
    (tmp_path / "broken_norms.py").write_text(textwrap.dedent('''
        from lmo.geometries import L2

        class Ascent(L2):
            def lmo(self, g):
                return -super().lmo(g)
    '''))
    done = _cli("check", "broken_norms:Ascent", "--backend", "numpy", "--max-examples", "10", cwd=tmp_path)
    assert done.returncode == 1
    assert re.search(r"FAIL \[lmo: optimality\] after [1-9][0-9]* cases", done.stdout), done.stdout
    assert "<g, lmo(g)>" in done.stdout


def test_cli_help_and_bad_targets():
    done = _cli("--help")
    assert done.returncode == 0 and "check" in done.stdout and "demo" in done.stdout
    done = _cli("check", "no_such_norm")
    assert done.returncode != 0 and "registered norm" in done.stderr
    done = _cli("check", "--help")
    assert "--thorough" in done.stdout and "--jobs" in done.stdout


def test_cli_progress_short_rows_and_no_files_in_the_working_directory(tmp_path):
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-m", "lmo", "check", "lp", "weighted_sign", "--backend", "numpy",
                           "--max-examples", "3", "--jobs", "2"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, env={**os.environ, "LMO_CACHE_DIR": str(cache)})
    lines = done.stdout.splitlines()
    progress = [line for line in lines if re.match(r"\[ *\d+/\d+\] ", line)]
    assert len(progress) == 2 and all("cases" in line and "left" in line for line in progress), done.stdout
    assert "lp(p=1.5)" in done.stdout and "weighted_sign(weights=(1, 2, 0.5, 4))" in done.stdout
    table = lines[lines.index(next(line for line in lines if line.startswith("norm "))):][:8]
    assert max(len(line) for line in table) <= 150, "\n".join(table)
    assert not (tmp_path / ".hypothesis").exists() and (cache / "hypothesis").is_dir()
    for line in lines:  # today the only failures are the built-ins' pending NaN/inf policy
        if " FAIL [" in line:
            assert registry_name(line.split()[0]) in NONFINITE_PENDING and "non-finite input" in line, line
    assert done.returncode == (1 if {"lp", "weighted_sign"} & NONFINITE_PENDING else 0), done.stdout


def test_check_without_target_checks_the_catalogue(monkeypatch, capsys):
    # every registered norm, in this process with --jobs 1 (each geometry's kit run has its own tests); the
    # profile is passed through
    import lmo
    import lmo.testing
    from lmo.cli import main
    from lmo.testing import Report
    from lmo.testing._plugin import Row

    seen = []

    def fake(obj, *, backends=None, max_examples=None, profile="default"):
        seen.append((obj, profile))
        return Report([Row(getattr(obj, "name", str(obj)) + "()", "numpy", ("float64",), 1, 0.0)])

    monkeypatch.setattr(lmo.testing, "check_plugin", fake)
    assert main(["check", "--jobs", "1", "--thorough"]) == 0
    out = capsys.readouterr().out
    assert {obj for obj, _ in seen} == set(lmo.norms().values()) and {p for _, p in seen} == {"thorough"}
    assert out.count("] ") >= len(lmo.norms()) and "OK: every property holds" in out


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
