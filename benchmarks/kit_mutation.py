"""Mutation score of the property kit: single-point mutants of the built-in geometries, and the share the kit kills.

Each mutant changes one thing in one function of the catalogue (``geometries/vector.py``, ``columns.py``,
``spectral.py``, ``product.py``, ``manifold.py`` and the solvers of ``polar_solvers.py``): an arithmetic operator
(``+ -``, ``* /``, ``** -> *``), a dropped unary minus, a comparison (``< <=``, ``> >=``, ``== !=``), a numeric
constant (an int ``c -> c + 1, c - 1``: axes, shapes, counts; a float ``c -> 2 c, 0``), a flipped boolean
(``keepdims``, flags), ``max <-> min``, a dropped ``abs``, ``and <-> or``. Declarations that only weaken a promise
(``delta``, ``slack``, the bound analysis and coefficient generation of the polar solvers), ``examples()``,
parameter validation and the references themselves are not mutated.

The mutated function replaces the original in the running process (methods on their class, module functions in
every module that holds them), and ``lmo.testing.check_plugin`` runs on every registered geometry that executes the
function (found by tracing the hard inputs of each), numpy first, then every backend. A mutant is killed when the
kit reports a violation; it survives when every affected geometry passes. The original is restored after each
mutant. Survivors are printed with their place and change; ``--equivalent PATH`` (default
``benchmarks/kit_mutation_equivalent.json``) names the survivors judged equivalent (no input can tell them from the
original, or they change only an undocumented choice), and the score is killed / (all - equivalent).

Usage: ``python benchmarks/kit_mutation.py [--quick] [--json PATH] [--jobs N] [--module vector ...] [--sample N]``
(``--sample N``: a uniform random sample of N mutants, seeded by ``--seed``; the score gets a 95% Wilson interval)
(``--quick``: the mutants of two small methods, numpy only: a smoke test).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import importlib
import inspect
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import table  # noqa: E402

MODULES = ("vector", "columns", "spectral", "product", "manifold", "polar_solvers")
# functions that are declarations, validation, references or coefficient generation: not the oracles' math
SKIP = {
    "__post_init__", "__init_subclass__", "examples", "reference", "reference_cases", "delta", "slack", "bounds",
    "bounds_for", "schedule", "exact", "_possible_dtypes", "solver", "polar", "polar_express_coefficients",
    "_pe_coefficients", "_odd_poly", "_remez_odd", "_scalar_map", "_two_level", "_polynomial_bounds",
    "_coefficient_schedule", "_as_schedule", "_as_sequence", "q",
}
SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
            ast.FloorDiv: ast.Div}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq}
SWAP_CALL = {"max": "min", "min": "max", "amax": "amin", "amin": "amax", "maximum": "minimum",
             "minimum": "maximum"}
DEFAULT_EQUIVALENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kit_mutation_equivalent.json")


@dataclasses.dataclass(frozen=True)
class Mutant:
    module: str  # e.g. "vector"
    owner: str | None  # class name, or None for a module function
    function: str
    index: int  # which mutation point within the function (in walk order)
    variant: int
    line: int
    change: str
    first_line: int  # where the function starts (its first decorator): how the coverage trace knows it

    @property
    def key(self) -> str:
        where = f"{self.owner}.{self.function}" if self.owner else self.function
        return f"{self.module}:{where}#{self.index}.{self.variant} {self.change}"


# -- finding and applying mutations -------------------------------------------------------------------------------
def _variants(node: ast.AST) -> list[tuple[str, Any]]:
    """``(description, replacement)`` for each way to mutate ``node`` (empty if it is not a mutation point)."""
    out: list[tuple[str, Any]] = []
    if isinstance(node, ast.BinOp) and type(node.op) in SWAP_BIN:
        new = SWAP_BIN[type(node.op)]
        out.append((f"{type(node.op).__name__} -> {new.__name__}", ("binop", new)))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        out.append(("drop unary minus", ("unary", None)))
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAP_CMP:
        new = SWAP_CMP[type(node.ops[0])]
        out.append((f"{type(node.ops[0]).__name__} -> {new.__name__}", ("compare", new)))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append((f"{type(node.op).__name__} -> {new.__name__}", ("boolop", new)))
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append((f"{node.value} -> {not node.value}", ("const", not node.value)))
    elif isinstance(node, ast.Constant) and isinstance(node.value, int):
        out += [(f"{node.value} -> {node.value + 1}", ("const", node.value + 1)),
                (f"{node.value} -> {node.value - 1}", ("const", node.value - 1))]
    elif isinstance(node, ast.Constant) and isinstance(node.value, float):
        out.append((f"{node.value!r} -> {2 * node.value!r}", ("const", 2 * node.value)))
        if node.value != 0:
            out.append((f"{node.value!r} -> 0.0", ("const", 0.0)))
    elif isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name in SWAP_CALL:
            out.append((f"{name} -> {SWAP_CALL[name]}", ("call", SWAP_CALL[name])))
        if name == "abs" and len(node.args) == 1:
            out.append(("drop abs", ("dropcall", None)))
    return out


def _points(func: ast.FunctionDef) -> list[ast.AST]:
    """The mutation points of ``func`` in a fixed order (decorators, docstrings and annotations excluded)."""
    body = func.body[1:] if (func.body and isinstance(func.body[0], ast.Expr)
                             and isinstance(func.body[0].value, ast.Constant)) else func.body
    found = []
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                continue
            if _variants(node):
                found.append(node)
    return found


def _replace(func: ast.FunctionDef, index: int, variant: int) -> ast.FunctionDef:
    new = copy.deepcopy(func)
    node = _points(new)[index]
    kind, value = _variants(node)[variant][1]
    if kind == "binop":
        node.op = value()
    elif kind == "compare":
        node.ops = [value()]
    elif kind == "boolop":
        node.op = value()
    elif kind == "const":
        node.value = value
    elif kind == "call":
        if isinstance(node.func, ast.Attribute):
            node.func.attr = value
        else:
            node.func.id = value
    elif kind in ("unary", "dropcall"):
        target = node.operand if kind == "unary" else node.args[0]
        for parent in ast.walk(new):  # splice the operand in place of the node
            for field, old in ast.iter_fields(parent):
                if old is node:
                    setattr(parent, field, target)
                elif isinstance(old, list):
                    for i, item in enumerate(old):
                        if item is node:
                            old[i] = target
    return new


class _ExplicitSuper(ast.NodeTransformer):
    """``super()`` -> ``super(Owner, self)``: the compiled function lives outside its class body."""

    def __init__(self, owner: str, first: str) -> None:
        self.owner, self.first = owner, first

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "super" and not node.args:
            node.args = [ast.Name(self.owner, ast.Load()), ast.Name(self.first, ast.Load())]
        return node


def _functions(module_name: str) -> Iterator[tuple[str | None, ast.FunctionDef]]:
    """``(class name or None, FunctionDef)`` for every mutable function of the module."""
    module = importlib.import_module(f"lmo.geometries.{module_name}")
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name not in SKIP:
            yield None, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name not in SKIP:
                    yield node.name, item


def mutants(modules: tuple[str, ...] = MODULES, only: set[str] | None = None) -> list[Mutant]:
    out = []
    for module_name in modules:
        for owner, func in _functions(module_name):
            where = f"{owner}.{func.name}" if owner else func.name
            if only is not None and where not in only:
                continue
            first = min([d.lineno for d in func.decorator_list] + [func.lineno])
            for index, node in enumerate(_points(func)):
                for variant, (change, _) in enumerate(_variants(node)):
                    out.append(Mutant(module_name, owner, func.name, index, variant, node.lineno, change, first))
    return out


def _live_modules() -> list[Any]:
    import lmo.geometries

    return [m for name, m in sys.modules.items() if name.startswith("lmo.geometries") and m is not None
            ] + [lmo.geometries]


@dataclasses.dataclass
class _Applied:
    restore: list[tuple[Any, str, Any]]

    def undo(self) -> None:
        for target, name, value in reversed(self.restore):
            setattr(target, name, value)


def apply(mutant: Mutant) -> _Applied:
    """Put the mutant in place; ``.undo()`` restores the original."""
    module = importlib.import_module(f"lmo.geometries.{mutant.module}")
    func = next(f for o, f in _functions(mutant.module) if o == mutant.owner and f.name == mutant.function)
    new = _replace(func, mutant.index, mutant.variant)
    if mutant.owner is not None:
        first = new.args.args[0].arg if new.args.args else "self"
        new = _ExplicitSuper(mutant.owner, first).visit(new)
    code = compile(ast.fix_missing_locations(ast.Module(body=[new], type_ignores=[])), module.__file__, "exec")
    namespace = module.__dict__
    previous = namespace.get(new.name, _MISSING)
    exec(code, namespace)  # noqa: S102 - the mutant is our own source, changed in one place
    made = namespace[new.name]
    if previous is _MISSING:
        del namespace[new.name]
    else:
        namespace[new.name] = previous
    restore = []
    if mutant.owner is not None:
        cls = getattr(module, mutant.owner)
        restore.append((cls, mutant.function, cls.__dict__[mutant.function]))
        setattr(cls, mutant.function, made)
    else:
        original = getattr(module, mutant.function)
        for live in _live_modules():
            if getattr(live, mutant.function, None) is original:
                restore.append((live, mutant.function, original))
                setattr(live, mutant.function, made)
    return _Applied(restore)


_MISSING = object()


# -- which geometries run which function -------------------------------------------------------------------------
def coverage(only: set[str] | None = None) -> dict[tuple[str, int], set[str]]:
    """``(file, first line) -> registry names`` of the geometries (all, or those in ``only``) whose kit run
    executes the function there."""
    import lmo
    from lmo.testing import available_backends, check_hard_inputs, check_manifold, is_manifold, manifold_inputs

    found: dict[tuple[str, str], set[str]] = {}
    backends = [b for name, b in available_backends().items() if name in ("numpy", "torch")]
    for name, cls in lmo.norms().items():
        if not cls.__module__.startswith("lmo.geometries") or (only is not None and name not in only):
            continue
        seen: set[tuple[str, int]] = set()

        def profile(frame: Any, event: str, arg: Any, seen: set = seen) -> None:
            if event == "call" and "geometries" in frame.f_code.co_filename:
                seen.add((os.path.basename(frame.f_code.co_filename), frame.f_code.co_firstlineno))

        sys.setprofile(profile)
        try:
            for norm in cls.examples():
                for backend in backends:
                    check_hard_inputs(norm, backend)
                    if is_manifold(norm):
                        label, x0, g = manifold_inputs(norm)[1]
                        check_manifold(norm, backend.asarray(x0), backend.asarray(g))
        except AssertionError:
            pass  # a geometry with a known bug still tells which functions it runs
        finally:
            sys.setprofile(None)
        for key in seen:
            found.setdefault(key, set()).add(name)
    return found


# -- running the kit on a mutant ---------------------------------------------------------------------------------
class _Timeout(BaseException):  # not an Exception: the kit reports a crashing method as a failure and goes on
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def outcome(name: str, backends: list[str] | None) -> dict[tuple[str, str], str | None]:
    """``(row label, backend) -> failure ("method: property") or None`` of the kit on the geometry ``name``."""
    import lmo
    from lmo.testing import check_plugin

    report = check_plugin(lmo.norms()[name], backends=backends)
    return {(r.norm, r.backend): None if r.failure is None else f"{r.failure.method}: {r.failure.property}"
            for r in report.rows}


def run(mutant: Mutant, names: list[str], backends: list[str] | None, timeout: int,
        baseline: dict[str, dict]) -> dict[str, Any]:
    """Apply ``mutant``, run the kit on the geometries ``names`` (numpy first), restore; the verdict as a dict.

    Killed means: some row of the kit's report fails where the original passes, or fails differently (the rows of
    a geometry with a known bug fail already; ``baseline`` holds the original's outcomes)."""
    start = time.perf_counter()
    verdict: dict[str, Any] = {"key": mutant.key, "line": mutant.line, "geometries": names}
    try:
        applied = apply(mutant)
    except SyntaxError as err:
        return {**verdict, "status": "killed", "by": f"does not compile: {err}", "seconds": 0.0}
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        rounds = [["numpy"]] + ([backends] if backends != ["numpy"] else [])
        for selected in rounds:
            for name in names:
                before = baseline[name]
                for row, failure in outcome(name, selected).items():
                    if failure is not None and before.get(row if row in before else (row[0], "all")) != failure:
                        return {**verdict, "status": "killed", "by": f"{row[0]} on {row[1]}: [{failure}]",
                                "seconds": time.perf_counter() - start}
        return {**verdict, "status": "survived", "seconds": time.perf_counter() - start}
    except _Timeout:
        return {**verdict, "status": "timeout", "seconds": time.perf_counter() - start}
    finally:
        signal.alarm(0)
        applied.undo()


def _worker(args: tuple) -> dict[str, Any]:
    mutant, names, backends, timeout, skip_nonfinite, baseline = args
    if skip_nonfinite:
        _skip_nonfinite()
    return run(mutant, names, backends, timeout, baseline)


def _skip_nonfinite() -> None:
    """Leave out the NaN/inf policy check: the built-ins of this tree predate it (issue 15 item 5), so it would
    "kill" every mutant; with it left out, a mutant counts as killed only by a property the original keeps."""
    import lmo.testing._plugin as plugin

    plugin.check_nonfinite = lambda *a, **k: 0


def _init_worker() -> None:
    # a mutant can grow memory without bound (a loop that never ends, appending): a cap turns that into a
    # MemoryError, which the kit reports as a failure of the mutated method
    try:
        import resource

        cap = 6 * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ImportError, ValueError, OSError):
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share ``k / n`` (a sample of the mutants; the whole set gives the share)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the mutants of Sign.lmo and L1.dual_norm, numpy only")
    p.add_argument("--json", metavar="PATH", help="write every mutant's verdict and the score as JSON to PATH")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--module", action="append", choices=MODULES, help="mutate only this module (repeatable)")
    p.add_argument("--timeout", type=int, default=300, help="seconds per mutant before it counts as a timeout")
    p.add_argument("--equivalent", default=DEFAULT_EQUIVALENT,
                   help="JSON file: {mutant key: why it is equivalent} (default: %(default)s)")
    p.add_argument("--sample", type=int, default=0,
                   help="run a uniform random sample of this many mutants (the score then has a 95%% interval)")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed")
    p.add_argument("--rescore", metavar="JSON",
                   help="score the verdicts of an earlier --json run again with the current --equivalent file")
    p.add_argument("--with-nonfinite", action="store_true",
                   help="keep the NaN/inf policy check (once the geometries keep the policy)")
    args = p.parse_args()
    if args.rescore:
        with open(args.rescore, encoding="utf-8") as f:
            earlier = json.load(f)
        summarise(args, earlier["results"], earlier["modules"], earlier["population"], earlier.get("seed", 0),
                  bool(earlier["quick"]), earlier.get("seconds", 0.0))
        return
    only = {"Sign.lmo", "L1.dual_norm"} if args.quick else None
    modules = ("vector",) if args.quick else tuple(args.module or MODULES)
    backends = ["numpy"] if args.quick else None
    start = time.perf_counter()
    if not args.with_nonfinite:
        _skip_nonfinite()
    cov = coverage({"sign", "l1"} if args.quick else None)
    found = mutants(modules, only)
    population = len(found)
    if args.sample and args.sample < population:
        picked = set(random.Random(args.seed).sample(range(population), args.sample))
        found = [m for i, m in enumerate(found) if i in picked]
    involved = sorted({n for m in found for n in cov.get((f"{m.module}.py", m.first_line), set())})
    baseline = {}
    for name in involved:  # the original's outcome: rows that fail already (known bugs) do not count as kills
        baseline[name] = outcome(name, backends)
        baseline[name].update({(row, "all"): f for (row, b), f in baseline[name].items() if b == "numpy"})
        known = {k: v for k, v in baseline[name].items() if v is not None}
        if known:
            print(f"the original {name} fails already: {known}", flush=True)
    jobs = []
    for m in found:
        names = sorted(cov.get((f"{m.module}.py", m.first_line), set()))
        jobs.append((m, names, backends, args.timeout, not args.with_nonfinite, baseline))
    print(f"{len(found)} mutants (of {population}) of {', '.join(modules)}; "
          f"{sum(1 for j in jobs if not j[1])} in code no geometry runs; {args.jobs} worker(s)", flush=True)
    results = []
    runnable = [j for j in jobs if j[1]]
    for m, *_ in (j for j in jobs if not j[1]):
        results.append({"key": m.key, "line": m.line, "geometries": [], "status": "not run",
                        "seconds": 0.0})
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.jobs, initializer=_init_worker, maxtasksperchild=50) as pool:
        for i, verdict in enumerate(pool.imap_unordered(_worker, runnable), 1):
            results.append(verdict)
            if verdict["status"] != "killed" or i % 50 == 0:
                print(f"[{i}/{len(runnable)}] {verdict['status']:<8} {verdict['key']} (line {verdict['line']})"
                      + (f" by {verdict['by']}" if "by" in verdict and verdict["status"] != "killed" else ""),
                      flush=True)
    summarise(args, results, list(modules), population, args.seed, bool(args.quick), time.perf_counter() - start)


def summarise(args: argparse.Namespace, results: list[dict[str, Any]], modules: list[str], population: int,
              seed: int, quick: bool, seconds: float) -> None:
    """Score the verdicts (killed / non-equivalent), print the table and the unexplained survivors, write JSON."""
    equivalent = {}
    if os.path.exists(args.equivalent):
        with open(args.equivalent, encoding="utf-8") as f:
            equivalent = json.load(f)
    for r in results:
        if r["status"] in ("survived", "not run") and r["key"] in equivalent:
            r["equivalent"] = equivalent[r["key"]]
    counts = {s: sum(1 for r in results if r["status"] == s) for s in ("killed", "timeout", "survived", "not run")}
    judged = sum(1 for r in results if "equivalent" in r)
    killed = counts["killed"] + counts["timeout"]
    score = killed / max(1, len(results) - judged)
    low, high = wilson(killed, len(results) - judged)
    rows = [[s, n] for s, n in counts.items()] + [["equivalent (judged)", judged],
                                                   ["kill share of the non-equivalent", f"{score:.1%}"],
                                                   ["its 95% interval (Wilson)", f"{low:.1%} - {high:.1%}"]]
    print()
    sampled = f"; a sample of {len(results)} of {population} mutants, seed {seed}" if len(results) < population else ""
    print(f"# kit_mutation  ({', '.join(modules)}{', quick' if quick else ''}{sampled}; "
          f"{seconds:.0f}s)")
    print(table(["mutants", "count"], rows))
    unexplained = [r for r in results if r["status"] in ("survived", "not run") and "equivalent" not in r]
    if unexplained:
        print("\nsurvivors not judged equivalent:")
        for r in sorted(unexplained, key=lambda r: r["key"]):
            print(f"  {r['key']}  (line {r['line']}; geometries: {', '.join(r['geometries']) or 'none'})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"benchmark": "kit_mutation", "quick": bool(quick), "modules": list(modules),
                       "population": population, "sample": len(results), "seed": seed, "seconds": seconds,
                       "headers": ["mutants", "count"], "rows": rows, "score": score, "results": results},
                      f, indent=1)


if __name__ == "__main__":
    main()
