"""Shared plumbing of the reproduction scripts: command line, output folder, JSON, progress bar.

Nothing here touches an optimizer: each script builds its optimizers from :mod:`lmo.optimizers`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["parser", "out_dir", "save_json", "save_evidence", "progress", "savefig", "plt"]


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with ``--out`` (default ``out/``), ``--quick`` (small sizes) and ``--json PATH``."""
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    p.add_argument("--out", default="out", help="folder for the PNG plot and the JSON of numbers (default: out/)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="where to write the JSON of numbers (claim, setting, holds, ...); default: next to the plot")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def out_dir(path: str | os.PathLike) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def save_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(_plain(data), indent=2) + "\n")
    return path


def save_evidence(args: argparse.Namespace, out: Path, name: str, summary: dict[str, Any]) -> Path:
    """Write a reproduction's JSON to ``--json`` (default ``out/<name>.json``), after checking the Evidence contract:
    ``claim`` (the paper's claim, with its arXiv id), ``setting`` (what was held fixed, the metric, the tuning) and
    ``holds`` (whether the qualitative claim reproduced in this run)."""
    missing = [key for key in ("claim", "setting", "holds") if key not in summary]
    if missing:
        raise ValueError(f"the JSON of {name} lacks {missing}: every reproduction states claim, setting and holds")
    if "arXiv" not in summary["claim"]:
        raise ValueError(f"the claim of {name} must name its arXiv id; got {summary['claim']!r}")
    return save_json(Path(args.json) if args.json else out / f"{name}.json", summary)


def progress(iterable=None, *, total: int | None = None, desc: str = "", disable: bool = False):
    """A tqdm progress bar (on stderr)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


class _LazyPyplot:
    def __getattr__(self, name: str) -> Any:
        return getattr(_pyplot(), name)


plt = _LazyPyplot()


def savefig(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
