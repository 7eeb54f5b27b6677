"""The code in the README and in docs/ runs, and says what it claims."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lmo
from lmo import norm as norm_module
from lmo.testing import check_plugin

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _unregister(*names: str) -> None:
    for name in names:
        norm_module._REGISTRY.pop(name, None)


def test_readme_code_runs_and_its_plugin_passes_the_kit():
    namespace: dict = {}
    try:
        for block in _python_blocks(ROOT / "README.md"):
            exec(compile(block, "README.md", "exec"), namespace)
        box = lmo.get_norm("box", width=2.0)
        assert box.width == 2.0
        report = check_plugin(namespace["Box"], backends=["numpy", "torch"], max_examples=10)
        assert report.ok, str(report)
    finally:
        _unregister("box")


def test_plugin_page_matches_the_example_file():
    page = _python_blocks(ROOT / "docs" / "plugins.md")[0]
    assert page.strip() in (ROOT / "examples" / "plugin_norm.py").read_text()
    namespace: dict = {}
    try:
        exec(compile(page, "docs/plugins.md", "exec"), namespace)
        assert lmo.get_norm("row_sum") == namespace["RowSum"]()
    finally:
        _unregister("row_sum")


@pytest.mark.skipif("spectral" not in lmo.norms(), reason="the recipes need the spectral geometry")
def test_optimizers_page_code_runs():
    """docs/optimizers.md: the CNN and GPT recipes and the numpy example run as printed."""
    pytest.importorskip("torch")
    blocks = _python_blocks(ROOT / "docs" / "optimizers.md")
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block, "docs/optimizers.md", "exec"), {})


def test_documentation_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "testing" / "index.html").is_file()
