"""Each benchmark script runs in --quick mode and produces its table and its JSON (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every script of benchmarks/ keeps the contract (--quick, --json, a table), except these, tested elsewhere:
ELSEWHERE = {
    "kit_mutation": "its own test below (the quick run's mutants must all be killed)",
    "muon_compile": "tests/test_compile.py compiles the same step (its quick run costs a minute of inductor)",
    "polar_accuracy": "writes docs/polar_solvers.md rather than a JSON table; tests/test_polar.py holds the bounds",
    "distributed_scaling": "launches its own ranks; tests/test_distributed.py runs the distributed step on 2 processes",
}
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_")
                 and p.stem not in ELSEWHERE)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_quick_mode_writes_its_table_and_json(script, tmp_path):
    pytest.importorskip("torch")
    if script == "dp_per_sample" and importlib.util.find_spec("opacus") is None:
        pytest.skip("opacus is not installed (pip install opacus)")
    out = tmp_path / f"{script}.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"# {script}" in done.stdout and "|---|" in done.stdout, done.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == script and data["quick"] is True
    assert data["rows"] and all(len(r) == len(data["headers"]) for r in data["rows"])
    assert data["machine"]["torch"] and data["machine"]["cores"]


def test_kit_mutation_quick_mode_kills_the_mutants_of_two_methods(tmp_path):
    out = tmp_path / "kit_mutation.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kit_mutation.py"), "--quick", "--jobs", "1",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["results"] and all(r["status"] == "killed" for r in data["results"]), done.stdout
    assert data["score"] == 1.0 and "| killed |" in done.stdout


def test_a_cuda_benchmark_without_a_cuda_device_says_so():
    """``--device cuda`` where torch sees no CUDA device stops with one line naming the device and the torch build,
    not a traceback from the first tensor moved there (on a GPU machine, ``benchmarks/gpu.sh`` runs it)."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "muon_step.py"), "--device", "cuda", "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "--device cuda" in done.stderr and "no CUDA device" in done.stderr and "Traceback" not in done.stderr
