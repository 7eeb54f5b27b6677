"""The layers: the ``lmo`` core (norm, backend, random, the kit, the CLI, the privacy names, the geometries) imports
neither torch nor ``lmo.optimizers`` when it is imported; torch is imported only by what uses it."""

from __future__ import annotations

import subprocess
import sys

CORE = ["lmo", "lmo.norm", "lmo.backend", "lmo.random", "lmo.testing", "lmo.cli", "lmo.privacy", "lmo.geometries"]


def test_the_core_imports_neither_torch_nor_the_optimizers():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE)
            + "bad = sorted(m for m in ('torch', 'lmo.optimizers') if m in sys.modules)\n"
            + "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
