"""(a) One Muon step on a GPT-shaped parameter set: lmo.optimizers.Muon vs torch.optim.Muon vs a plain fp32 loop.

The parameter set is the hidden matrices of a 4-layer GPT-2-style transformer of width d (per layer: attention
``c_attn (3d, d)``, ``c_proj (d, d)``, MLP ``c_fc (4d, d)``, ``c_proj (d, 4d)``); the gradients are real: one
backward pass of that model (random init, random tokens). Embeddings, norms and the head belong to AdamW and are
not part of the step. Every configuration steps its own copy of the parameters with the same gradients.

Configurations:

- ``torch.optim.Muon``: torch's reference (Keller's 5 Newton-Schulz steps in bfloat16, one matrix at a time);
- ``fp32 loop``: the same step written per parameter in float32 with fused ``addmm`` (the fair CPU baseline on a
  machine without fast bfloat16);
- ``lmo Muon``: ``lmo.optimizers.Muon`` with the same arguments (iterate dtype by the DESIGN policy: bfloat16 on a
  CPU with AVX512-BF16/AMX, same-shape matrices batched);
- ``lmo Muon, batch=True``: the same driver with same-shape matrices always stacked into one batched chain (the
  default ``batch="auto"`` stacks only small matrices on a CPU: what stacking costs or buys);
- ``lmo Muon, 4 steps, gram scaling``: the spectral geometry with 4 Keller steps and the tighter Gram scaling
  ``||X X^T||_F^(1/2)`` instead of ``||X||_F`` (an option of the same solver), which reaches at least the 5-step
  orthogonality on these gradients (see the orthogonality columns).

Orthogonality: for every matrix, the update's singular values on the gradient's range, ``u_i^T P v_i`` for the
gradient's singular pairs with ``s_i >= 1e-3 s_1`` (for a polynomial iteration these are exactly the update's
singular values ``p(s_i)``), over all matrices: ``[min, max]``; the exact polar factor has all of them 1. Measured on
the first step (fresh state, ``weight_decay=0``), where the update is the oracle of the gradient.

Usage: ``python benchmarks/muon_step.py [--quick] [--json PATH] [--threads N] [--repeats R]``.
"""

from __future__ import annotations

import math
import os
import sys

import torch

import lmo
import lmo.optimizers as lo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved, parser, report, setup  # noqa: E402

KELLER = (3.4445, -4.775, 2.0315)


def gpt_gradients(d: int, layers: int = 4, vocab: int = 512, seq: int = 64, batch: int = 4) -> list[tuple]:
    """``[(name, weight, grad)]`` of the hidden matrices of a small GPT after one backward pass."""
    gen = torch.Generator().manual_seed(d)
    heads = max(1, d // 64)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.c_attn, self.c_proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
            self.c_fc, self.mlp_proj = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.c_attn(self.ln1(x)).split(d, dim=-1)
            q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.mlp_proj(torch.nn.functional.gelu(self.c_fc(self.ln2(x))))

    emb = torch.nn.Embedding(vocab, d)
    blocks = torch.nn.ModuleList(Block() for _ in range(layers))
    head = torch.nn.Linear(d, vocab)
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
    x = emb(tokens[:, :-1])
    for blk in blocks:
        x = blk(x)
    loss = torch.nn.functional.cross_entropy(head(x).reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    loss.backward()
    return [(n, p.detach().clone(), p.grad.detach().clone()) for n, p in blocks.named_parameters() if p.ndim == 2]


class Fp32Loop(torch.optim.Optimizer):
    """torch.optim.Muon's step, per parameter, with the Newton-Schulz iteration in float32 (``addmm``)."""

    def __init__(self, params, lr=0.02, weight_decay=0.1, momentum=0.95, ns_steps=5):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            for p in group["params"]:
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - mu)
                x = p.grad.lerp(buf, mu)
                tall = x.shape[0] > x.shape[1]
                if tall:
                    x = x.T
                x = x / x.norm().clamp(min=1e-7)
                a, b, c = KELLER
                for _ in range(group["ns_steps"]):
                    gram = x @ x.T
                    x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
                if tall:
                    x = x.T
                p.mul_(1 - lr * wd).add_(x, alpha=-lr * math.sqrt(max(1.0, p.shape[0] / p.shape[1])))


def configurations(lr: float, wd: float) -> dict:
    gram4 = lmo.get_norm("spectral", method="newton_schulz", steps=4, coefficients=KELLER, scaling="gram")
    return {
        "torch.optim.Muon": lambda ps: torch.optim.Muon(ps, lr=lr, weight_decay=wd),
        "fp32 loop": lambda ps: Fp32Loop(ps, lr=lr, weight_decay=wd),
        "lmo Muon": lambda ps: lo.Muon(ps, lr=lr, weight_decay=wd),
        "lmo Muon, batch=True": lambda ps: lo.LMOOptimizer(ps, lo.muon(lr, weight_decay=wd, batch=True)),
        "lmo Muon, 4 steps, gram scaling": lambda ps: lo.LMOOptimizer(ps, lo.muon(lr, weight_decay=wd, norm=gram4)),
    }


def orthogonality(make, triples) -> tuple[float, float]:
    """``[min, max]`` of ``u_i^T P v_i`` over the gradients' singular pairs with ``s_i >= 1e-3 s_1``."""
    params = [torch.nn.Parameter(w.clone()) for _, w, _ in triples]
    for p, (_, _, g) in zip(params, triples):
        p.grad = g.clone()
    opt = make(params)
    opt.step()
    lo_, hi = math.inf, 0.0
    for p, (_, w, g) in zip(params, triples):
        adjust = math.sqrt(max(1.0, g.shape[0] / g.shape[1]))
        update = -(p.detach() - w).double() / adjust  # lr = 1: the update is -NS(c), c a multiple of g
        u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
        keep = s >= 1e-3 * s[0]
        diag = torch.diagonal(u.T @ update @ vh.T)[keep]
        lo_, hi = min(lo_, float(diag.min())), max(hi, float(diag.max()))
    return lo_, hi


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    widths = (64,) if args.quick else (256, 512, 768)
    repeats = args.repeats or (2 if args.quick else 5)
    rows = []
    for d in widths:
        triples = gpt_gradients(d, layers=2 if args.quick else 4)
        configs = configurations(0.02, 0.1)
        opts, steps = {}, {}
        for name, make in configs.items():
            params = [torch.nn.Parameter(w.clone()) for _, w, _ in triples]
            for p, (_, _, g) in zip(params, triples):
                p.grad = g.clone()
            opts[name] = make(params)
            steps[name] = opts[name].step
        times = interleaved(steps, repeats)
        unit = configurations(1.0, 0.0)  # lr 1, no decay: the parameter moves by -adjust * NS(c)
        ortho = {name: orthogonality(make, triples) for name, make in unit.items()}
        for name in configs:
            lo_, hi = ortho[name]
            rows.append([d, name, times[name] * 1e3, times[name] / times["torch.optim.Muon"],
                         times[name] / times["fp32 loop"], f"[{lo_:.3f}, {hi:.3f}]", round(max(1 - lo_, hi - 1), 3)])
    report(args, "muon_step", ["d", "optimizer", "step ms", "vs torch.optim.Muon", "vs fp32 loop",
                               "update s.v. on s >= 1e-3 s_1", "max |s.v. - 1|"], rows,
           {"targets": "lmo Muon <= 0.5x torch.optim.Muon at equal or better orthogonality; <= 0.7x fp32 loop"})


if __name__ == "__main__":
    main()
