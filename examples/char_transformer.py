"""A tiny character-level transformer trained on the Python standard library's source with AdamW (torch's) and
with this package's Muon, Scion, Lion and SignSGD: loss per step and per second.

The claim under test (Jordan et al. 2024 for Muon; Pethick et al. 2025 for Scion): on transformer training,
steepest descent under the spectral norm of the hidden matrices (Muon, Scion) reaches a lower loss than AdamW in
the same number of steps, at a small cost per step; sign descent without momentum (SignSGD) trails. Everything is
offline: the text is the installed standard library. The model, the data and the optimizer recipes are those of
``python -m lmo demo`` (:mod:`lmo.optimizers.demo`), here at full size (more steps, more validation batches).

    python examples/char_transformer.py [--out out/] [--quick] [--steps N]
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _repro  # noqa: E402

from lmo.optimizers import demo  # noqa: E402

FULL = demo.Config(steps=600, eval_every=50, eval_batches=8, text_chars=800_000)
QUICK = demo.Config(layers=1, width=32, heads=2, context=32, batch=8, steps=30, eval_every=10, eval_batches=2,
                    text_chars=60_000)


def main(argv: list[str] | None = None) -> dict:
    p = _repro.parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="training steps per optimizer (default 600; 30 quick)")
    args = p.parse_args(argv)
    out = _repro.out_dir(args.out)
    cfg = QUICK if args.quick else FULL
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    result = demo.compare(cfg, show=not args.no_progress)
    png = demo.plot(result, out / "char_transformer.png")
    summary = {
        "config": result["config"], "chars": result["chars"],
        "final": {name: {"lr": r["lr"], "val_loss": r["val_loss"][-1], "best_val_loss": min(r["val_loss"]),
                         "train_loss_last50": sum(r["train_loss"][-50:]) / len(r["train_loss"][-50:]),
                         "seconds": r["seconds"][-1], "ms_per_step": 1000 * r["seconds"][-1] / len(r["seconds"]),
                         "parameters": r["parameters"]}
                  for name, r in result["runs"].items()},
        "curves": {name: {"val_steps": r["val_steps"], "val_loss": r["val_loss"]}
                   for name, r in result["runs"].items()},
    }
    _repro.save_json(out / "char_transformer.json", summary)
    print(demo.table(result))
    print(f"plot: {png}")
    return result


if __name__ == "__main__":
    main()
