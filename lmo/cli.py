"""Command line: ``python -m lmo check`` (the property kit) and ``python -m lmo demo``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "load_target"]

DESCRIPTION = """\
lmo-optim: optimisation by linear minimisation oracles.

  python -m lmo check package.module:Name   prove a norm plugin keeps the Norm contract (exit 1 if not)
  python -m lmo check path/to/file.py:Name  the same, for a class in a file
  python -m lmo check spectral              a registered norm, by name
  python -m lmo check                       every registered norm (the whole catalogue)
  python -m lmo demo                        the main demo: a tiny character-level transformer trained on the
                                            Python standard library's source with AdamW, Muon, Scion, Lion and
                                            SignSGD on the CPU (about a minute); writes out/demo.png and prints
                                            a table (needs the demo extra: torch, matplotlib, tqdm)
"""


def load_target(target: str) -> Any:
    """Resolve ``module:Name``, ``file.py:Name`` or a registry name to the object to check."""
    import lmo

    if ":" not in target:
        if target in lmo.norms():
            return type(lmo.get_norm(target))
        raise SystemExit(f"error: {target!r} is neither module:Name nor a registered norm ({', '.join(lmo.norms())})")
    module_name, _, attribute = target.rpartition(":")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise SystemExit(f"error: no file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"error: {module_name} has no attribute {attribute!r}") from None
    return obj


def _cache_dir() -> Path:
    """Where the kit's hypothesis storage goes: ``$LMO_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmo``, else ``~/.cache/lmo``
    (never the working directory)."""
    if os.environ.get("LMO_CACHE_DIR"):
        return Path(os.environ["LMO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lmo"


def _use_cache_dir() -> None:
    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        return  # the user chose where hypothesis writes
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(_cache_dir() / "hypothesis")


def _worker_init() -> None:
    _use_cache_dir()
    try:  # small matrices: one thread per process is faster than two fighting over two cores
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _check_one(obj: Any, backends: Sequence[str] | None, max_examples: int | None, profile: str) -> Any:
    from lmo.testing import check_plugin

    return check_plugin(obj, backends=backends, max_examples=max_examples, profile=profile)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _check(targets: Sequence[str], backends: Sequence[str] | None, max_examples: int | None, profile: str,
           jobs: int) -> int:
    import lmo
    from lmo.testing import Report, instances_of

    _use_cache_dir()
    objects = [load_target(t) for t in targets] if targets else list(lmo.norms().values())
    names = [getattr(obj, "name", None) or getattr(obj, "__qualname__", str(obj)) for obj in objects]
    # the estimate counts example instances (a geometry's cost is roughly proportional to them)
    weights = []
    for obj in objects:
        try:
            weights.append(max(1, len(instances_of(obj))))
        except Exception:
            weights.append(1)
    total = sum(weights)
    print(f"checking {len(objects)} geometr{'y' if len(objects) == 1 else 'ies'} ({total} example instances, profile "
          f"{profile}, {jobs} process{'es' if jobs > 1 else ''})", flush=True)
    start = time.perf_counter()
    done_weight = 0
    reports: dict[int, Any] = {}

    def finished(i: int, report: Any) -> None:
        nonlocal done_weight
        reports[i] = report
        done_weight += weights[i]
        elapsed = time.perf_counter() - start
        left = elapsed / done_weight * (total - done_weight)
        cases = sum(r.cases for r in report.rows)
        verdict = "ok" if report.ok else f"FAILED ({len(report.failures)} row{'s' if len(report.failures) > 1 else ''})"
        seconds = sum(r.seconds for r in report.rows)
        print(f"[{len(reports):{len(str(len(objects)))}d}/{len(objects)}] {names[i]:<16} {verdict:<16} "
              f"{cases:6d} cases {_duration(seconds):>6}   elapsed {_duration(elapsed)}, about "
              f"{_duration(left)} left", flush=True)

    # a worker process finds a geometry again by its registry name; a class loaded from a file is checked here
    portable = [_portable(obj) for obj in objects]
    if jobs > 1 and len(objects) > 1 and all(isinstance(p, str) for p in portable):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # the slowest geometries first, so that the pool is not left waiting on one at the end
        order = sorted(range(len(objects)), key=lambda i: -weights[i])
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init) as pool:
            futures = {pool.submit(_check_one, portable[i], backends, max_examples, profile): i for i in order}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    else:
        for i, obj in enumerate(objects):
            finished(i, _check_one(obj, backends, max_examples, profile))
    combined = Report()
    for i in range(len(objects)):
        combined.rows += reports[i].rows
    print()
    print(combined)
    print()
    print(f"{'FAILED: at least one property is violated' if not combined.ok else 'OK: every property holds'} "
          f"({_duration(time.perf_counter() - start)})")
    return 0 if combined.ok else 1


def _portable(obj: Any) -> Any:
    """What a worker process can unpickle: a registered norm by name (its class is found again there)."""
    name = getattr(obj, "name", None)
    if isinstance(obj, type) and isinstance(name, str):
        import lmo.norm

        if lmo.norm._REGISTRY.get(name) is obj:
            return name
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmo", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="run the property kit on norms (exit 1 on any violation)",
                           description="Run the property kit (lmo.testing.check_plugin) on each target, on every "
                           "installed backend and dtype: reference values, feasibility, tightness, optimality, "
                           "duality, homogeneity, norm axioms, Hoelder, sharp, extreme scales, NaN and inf inputs, "
                           "symmetry, separability, real sizes and memory layouts, manifold methods (lmo_at, retract, "
                           "project), and backend parity. Hypothesis keeps its files in ~/.cache/lmo (or "
                           "$LMO_CACHE_DIR), not in the working directory.")
    check.add_argument("targets", nargs="*", help="module:Name, file.py:Name or a registry name (default: all)")
    check.add_argument("--backend", action="append", dest="backends", metavar="NAME",
                       help="check only this backend (repeatable): numpy, torch, array_api_strict, cupy, ...")
    check.add_argument("--max-examples", type=int, default=None,
                       help="hypothesis examples per backend and dtype (default: the profile's)")
    check.add_argument("--thorough", action="store_true",
                       help="the thorough profile: 200 examples per dtype, every input in every memory layout, large "
                       "sizes (256 and 512) for exact oracles too; takes several times longer")
    check.add_argument("--jobs", "-j", type=int, default=None,
                       help="worker processes for several geometries (default: 2 when checking more than one, "
                       "at most the number of CPUs)")
    demo = sub.add_parser(
        "demo", help="train a tiny transformer with AdamW, Muon, Scion, Lion, SignSGD; plot and table (~1 min)",
        description="Train a tiny character-level transformer (2 layers, width 64) on the source of the installed "
        "Python standard library (nothing is downloaded) with torch's AdamW and with this package's Muon, Scion, "
        "Lion and SignSGD, on the CPU, with a progress bar; write the loss curves per step and per second to "
        "OUT/demo.png and the numbers to OUT/demo.json, and print a table. Needs torch, matplotlib and tqdm: "
        'pip install "torch==2.13.0" -e ".[demo]". The full-size run is examples/char_transformer.py.')
    demo.add_argument("--out", default="out", help="folder for demo.png and demo.json (default: out/)")
    demo.add_argument("--steps", type=int, default=None, help="training steps per optimizer (default 300)")
    demo.add_argument("--quick", action="store_true", help="a few seconds: a smaller model, 20 steps each")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.command == "check":
        if args.max_examples is not None and args.max_examples < 1:
            parser.error("--max-examples must be >= 1")
        if args.jobs is not None and args.jobs < 1:
            parser.error("--jobs must be >= 1")
        jobs = args.jobs or min(2, os.cpu_count() or 1)
        return _check(args.targets, args.backends, args.max_examples, "thorough" if args.thorough else "default", jobs)
    return _demo(args, parser)


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    missing = [m for m in ("torch", "matplotlib", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"error: the demo needs {', '.join(missing)}; install them with\n"
              f'  pip install "torch==2.13.0" -e ".[demo]"\n'
              "(python -m lmo check needs only numpy and hypothesis)", file=sys.stderr)
        return 2
    from lmo.optimizers import demo

    return demo.main(args.out, quick=args.quick, steps=args.steps, show=not args.no_progress)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
