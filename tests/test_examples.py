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
