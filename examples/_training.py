"""Shared by the training reproductions (DP, char transformer, Dion, schedule-free): the command line with
``--json``, intervals over seeds, learning-rate tuning on a validation split, and a character-level language-model
loop on :mod:`lmo.optimizers.demo`'s model and text with separate train / validation / test splits.

Nothing here is an optimizer: the scripts build theirs from :mod:`lmo.optimizers` (and ``torch.optim.AdamW``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _repro
import numpy as np

__all__ = ["parser", "parse", "report", "write_json", "interval", "paired", "fmt", "tune", "at_edge", "cosine",
           "warmup_constant", "CharData", "hidden_and_rest", "train_lm"]


# ---------------------------------------------------------------------------------------------------------------
# command line and numbers
# ---------------------------------------------------------------------------------------------------------------
def parser(doc: str | None) -> argparse.ArgumentParser:
    """:func:`_repro.parser` (``--out``, ``--quick``, ``--no-progress``) with ``--json PATH`` (default
    ``<out>/<script>.json``)."""
    p = _repro.parser(doc)
    if not any("--json" in action.option_strings for action in p._actions):
        p.add_argument("--json", default=None, help="where the JSON of numbers goes (default: <out>/<script>.json)")
    return p


def parse(doc: str | None, argv: list[str] | None, full: dict, quick: dict,
          configure: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[argparse.Namespace, dict]:
    """Parse a reproduction's command line (:func:`parser`, ``--seeds``, and ``--steps`` where the sizes hold a
    ``demo.Config`` under ``"cfg"``; ``configure`` adds the script's own options); returns the arguments and the
    sizes to run (``quick`` or ``full`` with the overrides)."""
    p = parser(doc)
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds per configuration (default {full['seeds']}; {quick['seeds']} with --quick)")
    if "cfg" in full:
        p.add_argument("--steps", type=int, default=None,
                       help=f"training steps (default {full['cfg'].steps}; {quick['cfg'].steps} with --quick)")
    if configure is not None:
        configure(p)
    args = p.parse_args(argv)
    sizes = dict(quick if args.quick else full)
    if args.seeds:
        sizes["seeds"] = args.seeds
    if getattr(args, "steps", None):
        sizes["cfg"] = dataclasses.replace(sizes["cfg"], steps=args.steps)
    return args, sizes


def report(args: argparse.Namespace, name: str, res: dict, plot: Callable[[dict, Path], Path],
           table: Callable[[dict], str]) -> dict:
    """Write ``<out>/<name>.png`` and the JSON (:func:`write_json`), print the table and the paths; returns ``res``."""
    png = plot(res, _repro.out_dir(args.out) / f"{name}.png")
    path = write_json(args, name, res)
    print(table(res))
    print(f"plot: {png}\nnumbers: {path}")
    return res


def write_json(args: argparse.Namespace, name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` to ``--json`` or to ``<out>/<name>.json``; every reproduction's JSON carries ``claim``,
    ``setting`` and ``holds``."""
    missing = [k for k in ("claim", "setting", "holds") if k not in data]
    if missing:
        raise ValueError(f"a reproduction's JSON needs the keys {missing}")
    path = Path(args.json) if getattr(args, "json", None) else _repro.out_dir(args.out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return _repro.save_json(path, data)


def interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and Student-t interval over seeds: ``mean +- t_{n-1} s / sqrt(n)`` (``half = 0`` for one value)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    half = 0.0
    if v.size > 1:
        half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return {"mean": mean, "half": half, "low": mean - half, "high": mean + half, "n": int(v.size),
            "values": v.tolist()}


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """The interval of the per-seed difference ``a - b`` (the same seed gives both runs the same initialisation and
    data order, so the difference cancels much of the seed-to-seed spread)."""
    return interval(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), level)


def fmt(i: dict[str, Any], digits: int = 3) -> str:
    return f"{i['mean']:.{digits}f} ± {i['half']:.{digits}f}"


def tune(run: Callable[[float], float], grid: Sequence[float], *, extend: int = 2,
         minimize: bool = True) -> tuple[float, dict[float, float]]:
    """The best value of a log-spaced ``grid`` of learning rates for ``run(lr) -> score`` (the validation score);
    while the best is at an end of the grid, the grid is extended by its own ratio (at most ``extend`` times), so
    that the best has a worse neighbour on each side or the extension budget is spent. Returns ``(best, scores)``."""
    grid = sorted(grid)
    if len(grid) < 2:
        raise ValueError(f"tune needs at least two grid points; got grid={grid}")
    ratio = grid[1] / grid[0]
    sign = 1.0 if minimize else -1.0
    scores = {lr: run(lr) for lr in grid}
    for _ in range(extend):
        ordered = sorted(scores)
        best = min(ordered, key=lambda lr: sign * _score(scores[lr]))
        if best == ordered[0]:
            new = ordered[0] / ratio
        elif best == ordered[-1]:
            new = ordered[-1] * ratio
        else:
            break
        scores[new] = run(new)
    best = min(scores, key=lambda lr: sign * _score(scores[lr]))
    return best, dict(sorted(scores.items()))


def at_edge(best: float, scores: dict[float, float]) -> bool:
    """Whether the tuned ``best`` is the smallest or largest value tried (the grid may not bracket the optimum)."""
    return best in (min(scores), max(scores))


def _score(value: float) -> float:
    return value if math.isfinite(value) else math.inf


# ---------------------------------------------------------------------------------------------------------------
# learning-rate schedules (functions of the 0-based step, as the library's drivers take them)
# ---------------------------------------------------------------------------------------------------------------
def cosine(lr: float, steps: int, warmup: int = 0, floor: float = 0.0) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` steps, then cosine decay from ``lr`` to ``floor * lr`` at step ``steps``."""
    def schedule(t: int) -> float:
        if t < warmup:
            return lr * (t + 1) / warmup
        progress = min(1.0, (t - warmup) / max(1, steps - warmup))
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    return schedule


def warmup_constant(lr: float, warmup: int = 0) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` steps, then ``lr`` for ever (no horizon: what schedule-free methods use)."""
    return lambda t: lr * (t + 1) / warmup if t < warmup else lr


# ---------------------------------------------------------------------------------------------------------------
# the character-level language model
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CharData:
    """The installed standard library's source (:func:`lmo.optimizers.demo.load_text`) as character ids, split in
    order into train (the first 80%), test (the next 10%, reported) and validation (the last 10%, for tuning: the
    held-out tail on which :mod:`lmo.optimizers.demo`'s learning rates were tuned), with fixed evaluation batches."""

    text_chars: int
    context: int
    batch: int
    eval_batches: int

    def __post_init__(self) -> None:
        import torch

        from lmo.optimizers import demo

        text = demo.load_text(self.text_chars)
        self.chars = len(text)
        vocab = sorted(set(text))
        self.vocab = len(vocab)
        stoi = {c: i for i, c in enumerate(vocab)}
        data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
        a, b = int(0.8 * len(data)), int(0.9 * len(data))
        self.train, test, val = data[:a], data[a:b], data[b:]
        self.val = self._fixed(val, 12345)
        self.test = self._fixed(test, 54321)

    def _sample(self, data: Any, generator: Any) -> tuple[Any, Any]:
        import torch

        ix = torch.randint(len(data) - self.context - 1, (self.batch,), generator=generator).tolist()
        x = torch.stack([data[i:i + self.context] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + self.context] for i in ix])
        return x, y

    def _fixed(self, data: Any, seed: int) -> list[tuple[Any, Any]]:
        import torch

        gen = torch.Generator().manual_seed(seed)
        return [self._sample(data, gen) for _ in range(self.eval_batches)]

    def batches(self, seed: int) -> Iterator[tuple[Any, Any]]:
        """Training batches in the order fixed by ``seed``."""
        import torch

        gen = torch.Generator().manual_seed(10_000 + seed)
        while True:
            yield self._sample(self.train, gen)


def hidden_and_rest(model: Any, hidden: Any, rest: Any = None, *, adamw_lr: float = 3e-3) -> list[Any]:
    """Two optimizers for ``model``, split as :func:`lmo.optimizers.torch.split_muon_params` does: the driver
    ``hidden`` (in :class:`lmo.optimizers.LMOOptimizer`) on the hidden matrices, and on the embeddings, the output
    layer and the norms' gains either the driver ``rest`` or, if None, ``torch.optim.AdamW`` with the demo's Muon
    recipe (lr ``adamw_lr``, betas (0.9, 0.95), no weight decay)."""
    import torch

    import lmo.optimizers as lo
    from lmo.optimizers.torch import split_muon_params

    matrices, conv1d, others = split_muon_params(model)
    if conv1d:
        raise ValueError("hidden_and_rest: the model has Conv1d kernels; this split is for the demo's transformer")
    group = lambda named: [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}]  # noqa: E731
    first = lo.LMOOptimizer(group(matrices), hidden)
    if rest is None:
        second = torch.optim.AdamW(group(others), lr=adamw_lr, betas=(0.9, 0.95), weight_decay=0.0)
    else:
        second = lo.LMOOptimizer(group(others), rest)
    return [first, second]


def _evaluate(model: Any, batches: list[tuple[Any, Any]], optimizers: Sequence[Any]) -> float:
    import torch

    F = torch.nn.functional
    for opt in optimizers:  # schedule-free and IGT: put the evaluation point into the parameters
        if hasattr(opt, "eval"):
            opt.eval()
    model.eval()
    with torch.no_grad():
        total = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in batches)
    model.train()
    for opt in optimizers:
        if hasattr(opt, "train"):
            opt.train()
    return total / len(batches)


def train_lm(build: Callable[[Any], Sequence[Any]], data: CharData, cfg: Any, *, seed: int, steps: int,
             eval_every: int, test_at: Sequence[int] = (), progress: Callable[[int], None] | None = None) -> dict:
    """Train :func:`lmo.optimizers.demo.TinyGPT` (sizes from ``cfg``, a ``demo.Config``) for ``steps`` steps with the
    optimizers ``build(model)`` returns; ``seed`` fixes the initialisation and the data order.

    Returns the training loss per step, the validation loss every ``eval_every`` steps (and at the end), the test loss
    at the end and at the steps ``test_at``, and the seconds of training (forward, backward, optimizer). A run whose
    loss turns non-finite stops there with validation and test loss ``inf`` (a diverged learning rate)."""
    import torch

    threads = torch.get_num_threads()
    if getattr(cfg, "threads", None):  # the demo's one thread: intra-op parallelism only costs at this size
        torch.set_num_threads(cfg.threads)
    try:
        return _train_lm(build, data, cfg, seed=seed, steps=steps, eval_every=eval_every, test_at=test_at,
                         progress=progress)
    finally:
        torch.set_num_threads(threads)


def _train_lm(build: Callable[[Any], Sequence[Any]], data: CharData, cfg: Any, *, seed: int, steps: int,
              eval_every: int, test_at: Sequence[int], progress: Callable[[int], None] | None) -> dict:
    import torch

    from lmo.optimizers import demo

    torch.manual_seed(seed)
    model = demo.TinyGPT(data.vocab, cfg)
    optimizers = list(build(model))
    val_steps, val_loss = [0], [_evaluate(model, data.val, optimizers)]
    test = {}

    def after(step: int) -> None:
        if step % eval_every == 0 or step == steps:
            val_steps.append(step)
            val_loss.append(_evaluate(model, data.val, optimizers))
        if step in test_at or step == steps:
            test[step] = _evaluate(model, data.test, optimizers)
        if progress is not None:
            progress(1)

    losses, seconds, diverged = demo.fit(model, optimizers, data.batches(seed), steps, after_step=after,
                                         stop_on_nonfinite=True)
    elapsed = seconds[-1] if seconds else 0.0
    if diverged:
        val_steps.append(steps)
        val_loss.append(math.inf)
        test = {s: math.inf for s in (*test_at, steps)}
        if progress is not None:
            progress(steps - len(losses))
    return {"train_loss": losses, "val_steps": val_steps, "val_loss": val_loss, "val": val_loss[-1],
            "test": test[steps], "test_at": test, "seconds": elapsed,
            "ms_per_step": 1000 * elapsed / max(1, len(losses)), "diverged": diverged,
            "parameters": sum(p.numel() for p in model.parameters())}
