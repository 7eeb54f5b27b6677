"""The training examples run and train (small size)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import lmo

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("numpy_training", ROOT / "examples" / "numpy_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _needs_spectral(name):
    return pytest.param(name, marks=pytest.mark.skipif("spectral" not in lmo.norms(),
                                                       reason="needs the spectral geometry (geom branch)"))


@pytest.mark.parametrize("optimizer", ["lion", "signum", "sign_sgd", _needs_spectral("muon"),
                                       _needs_spectral("uscion")])
def test_numpy_example_trains(optimizer):
    losses = _example().train(optimizer, steps=150, hidden=16)
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_numpy_example_uses_numpy_only():
    code = ("import sys, runpy; sys.argv = ['x', '--steps', '5', '--hidden', '4']; "
            f"runpy.run_path({str(ROOT / 'examples' / 'numpy_training.py')!r}, run_name='__main__'); "
            "assert 'torch' not in sys.modules, 'the numpy example imported torch'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "final loss" in out.stdout


def _dp_example():
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    pytest.importorskip("dp_accounting")
    spec = importlib.util.spec_from_file_location("dp_training", ROOT / "examples" / "dp_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dp_training_example_runs_small(tmp_path):
    import json

    methods = ["dp_sgd", "dp_muon"] if "spectral" in lmo.norms() else ["dp_sgd"]  # DP-Muon needs the geom branch
    import torch

    threads = torch.get_num_threads()
    try:
        records = _dp_example().main(["--quick", "--epsilons", "4", "--epochs", "2", "--no-progress", "--out",
                                      str(tmp_path), "--methods", *methods])
    finally:
        torch.set_num_threads(threads)  # the example sets one thread
    assert [(r["method"], r["target_epsilon"]) for r in records] == [(m, e) for m in methods
                                                                     for e in (float("inf"), 4.0)]
    for r in records:
        assert r["test_accuracy"] > 0.5, r  # ten classes: chance is 0.1
        if r["noise_multiplier"] > 0:
            assert r["epsilon"] <= 4.0 + 1e-9 and r["epsilon"] > 3.0, r  # the budget is spent, not exceeded
    saved = json.loads((tmp_path / "dp_training.json").read_text())
    assert len(saved["records"]) == len(records)
    assert (tmp_path / "dp_training.png").stat().st_size > 10_000
