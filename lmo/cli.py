"""Command line: ``python -m lmo check`` (the property kit) and ``python -m lmo demo``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
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


def _check(targets: Sequence[str], backends: Sequence[str] | None, max_examples: int) -> int:
    import lmo
    from lmo.testing import Report, check_plugin

    objects = [load_target(t) for t in targets] if targets else list(lmo.norms().values())
    combined = Report()
    for obj in objects:
        name = getattr(obj, "__qualname__", str(obj))
        print(f"checking {name} ...", end=" ", flush=True)
        report = check_plugin(obj, backends=backends, max_examples=max_examples)
        cases = sum(r.cases for r in report.rows)
        print(f"{'ok' if report.ok else 'FAILED'} ({cases} cases)", flush=True)
        combined.rows += report.rows
    print()
    print(combined)
    print()
    print("FAILED: at least one property is violated" if not combined.ok else "OK: every property holds")
    return 0 if combined.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmo", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="run the property kit on norms (exit 1 on any violation)",
                           description="Run the property kit (lmo.testing.check_plugin) on each target: "
                           "feasibility, tightness, optimality, duality, homogeneity, norm axioms, Hoelder, extreme "
                           "scales, symmetry and backend parity, on every installed backend.")
    check.add_argument("targets", nargs="*", help="module:Name, file.py:Name or a registry name (default: all)")
    check.add_argument("--backend", action="append", dest="backends", metavar="NAME",
                       help="check only this backend (repeatable): numpy, torch, array_api_strict, cupy, ...")
    check.add_argument("--max-examples", type=int, default=50, help="hypothesis examples per backend and dtype")
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
        if args.max_examples < 1:
            parser.error("--max-examples must be >= 1")
        return _check(args.targets, args.backends, args.max_examples)
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
