"""(a) One Muon step on a GPT-shaped parameter set: lmo.optimizers.Muon (default and ``method="auto"``) vs
torch.optim.Muon vs a plain fp32 loop, with the update's agreement and orthogonality.

The parameter set is the hidden matrices of a 4-layer GPT-style transformer of width d (per layer: four ``d x d``
attention projections ``q, k, v, o``, the MLP's ``4d x d`` and ``d x 4d``); the gradients are real: one backward
pass of that model (random init, random tokens). Embeddings, norms and the head belong to AdamW and are not part of
the step. Every configuration steps its own copy of the parameters with the same gradients.

Configurations:

- ``torch.optim.Muon``: torch's reference (Keller's 5 Newton-Schulz steps in bfloat16, one matrix at a time);
- ``fp32 loop``: the same step written per parameter in float32 with fused ``addmm`` (the CPU baseline of a machine
  without fast bfloat16);
- ``lmo Muon``: ``lmo.optimizers.Muon`` with the same arguments (iterate dtype by the DESIGN policy: bfloat16 on a
  CPU with AVX512-BF16/AMX; same-shape matrices batched);
- ``lmo Muon, method="auto"``: the spectral geometry's fastest solver at least as orthogonal as the default
  (docs/polar_solvers.md).

``page faults / step``: the process's minor page faults per timed step (fresh memory mappings: a step that
allocates megabyte temporaries faults them in every time, which costs system time on top of the arithmetic).

Columns, on the first step (fresh state, ``weight_decay=0``, ``lr=1``: the update is ``-adjust * O``, ``O`` the
orthogonalised estimate), over all matrices:

- ``vs torch update``: ``max ||O - O_torch||_F / ||O_torch||_F``;
- ``vs fp64 update``: ``max ||O - O_64||_F / ||O_64||_F`` against the same 5-step Keller iteration in float64: the
  rounding of the configuration (torch.optim.Muon's row is torch's own bf16 rounding). "Within torch's rounding"
  means a default row not above torch's. Two independent bf16 roundings of the same size are ``sqrt(2)`` times it
  apart, so ``vs torch update`` alone cannot say which of them is the more accurate;
- ``s.v. min``: the smallest ``u_i^T O v_i`` over the gradient's singular pairs with ``s_i >= 1e-3 s_1`` (for a
  polynomial iteration these are the update's singular values ``p(s_i)``; 1 for the exact polar factor);
- ``dist UV^T``: ``max ||O - U V^T||_F / ||U V^T||_F`` (the reduced SVD over the same singular pairs);
- ``||O||_2 rescaled``: ``max ||c O||_2`` with ``c = <O, UV^T> / ||O||_F^2``, the best rescaling towards ``U V^T``
  (1 for the exact factor; larger means a stretched update).

Usage: ``python benchmarks/muon_step.py [--quick] [--json PATH] [--threads N] [--repeats R] [--widths 64,256]
[--device cuda]`` (on a GPU the clock is the wall clock, synchronised; ``benchmarks/gpu.sh`` runs it there).
"""

from __future__ import annotations

import math
import os
import sys

import torch

import lmo.optimizers as lo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved, parser, report, setup  # noqa: E402

KELLER = (3.4445, -4.775, 2.0315)


def gpt_gradients(d: int, layers: int = 4, vocab: int = 512, seq: int = 64, batch: int = 4,
                  device: str = "cpu") -> list[tuple]:
    """``[(name, weight, grad)]`` of the hidden matrices of a small GPT after one backward pass (on ``device``)."""
    gen = torch.Generator().manual_seed(d)
    heads = max(1, d // 64)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d, bias=False) for _ in range(4))
            self.fc, self.proj = torch.nn.Linear(d, 4 * d, bias=False), torch.nn.Linear(4 * d, d, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            h = self.ln1(x)
            q, k, v = (m(h).view(b, t, heads, d // heads).transpose(1, 2) for m in (self.q, self.k, self.v))
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(y.transpose(1, 2).reshape(b, t, d))
            return x + self.proj(torch.nn.functional.gelu(self.fc(self.ln2(x))))

    torch.manual_seed(d)
    emb = torch.nn.Embedding(vocab, d)
    blocks = torch.nn.ModuleList(Block() for _ in range(layers))
    head = torch.nn.Linear(d, vocab)
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
    x = emb(tokens[:, :-1])
    for blk in blocks:
        x = blk(x)
    loss = torch.nn.functional.cross_entropy(head(x).reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    loss.backward()
    return [(n, p.detach().to(device), p.grad.detach().to(device)) for n, p in blocks.named_parameters()
            if p.ndim == 2]


class Fp32Loop(torch.optim.Optimizer):
    """torch.optim.Muon's step, per parameter, with the Newton-Schulz iteration in float32 (``addmm``)."""

    def __init__(self, params, lr=0.02, weight_decay=0.1, momentum=0.95, ns_steps=5, dtype=torch.float32):
        self.dtype = dtype
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            for p in group["params"]:
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - mu)
                x = p.grad.lerp(buf, mu).to(self.dtype)
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
    return {
        "torch.optim.Muon": lambda ps: torch.optim.Muon(ps, lr=lr, weight_decay=wd),
        "fp32 loop": lambda ps: Fp32Loop(ps, lr=lr, weight_decay=wd),
        "lmo Muon": lambda ps: lo.Muon(ps, lr=lr, weight_decay=wd),
        'lmo Muon, method="auto"': lambda ps: lo.Muon(ps, lr=lr, weight_decay=wd, method="auto"),
    }


def updates(make, triples) -> list[torch.Tensor]:
    """Each matrix's ``O`` (the update divided by ``-adjust``) on the first step, lr 1 and no decay."""
    params = [torch.nn.Parameter(w.clone()) for _, w, _ in triples]
    for p, (_, _, g) in zip(params, triples):
        p.grad = g.clone()
    make(params).step()
    out = []
    for p, (_, w, g) in zip(params, triples):
        adjust = math.sqrt(max(1.0, g.shape[0] / g.shape[1]))
        out.append(-(p.detach() - w).double() / adjust)
    return out


def spectra(triples) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each gradient's singular vectors over its range (``s_i >= 1e-3 s_1``), in float64: ``(U, V^T)``."""
    out = []
    for _, _, g in triples:
        u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
        keep = s >= 1e-3 * s[0]
        out.append((u[:, keep], vh[keep]))
    return out


def measures(update: list[torch.Tensor], reference: list[torch.Tensor], bases) -> dict[str, float]:
    """The four columns of the table for one configuration's updates ``O`` (see the module docstring)."""
    worst = {"vs torch update": 0.0, "s.v. min": math.inf, "dist UV^T": 0.0, "||O||_2 rescaled": 0.0}
    for o, ref, (u, vh) in zip(update, reference, bases):
        polar = u @ vh
        worst["vs torch update"] = max(worst["vs torch update"], float((o - ref).norm() / ref.norm()))
        worst["s.v. min"] = min(worst["s.v. min"], float(torch.diagonal(u.T @ o @ vh.T).min()))
        worst["dist UV^T"] = max(worst["dist UV^T"], float((o - polar).norm() / polar.norm()))
        c = float((o * polar).sum() / (o * o).sum())
        worst["||O||_2 rescaled"] = max(worst["||O||_2 rescaled"], float(torch.linalg.matrix_norm(c * o, 2)))
    return worst


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--widths", default=None, help="comma-separated widths d (default 64,256,512; quick: 32)")
    args = p.parse_args()
    setup(args)
    widths = [int(w) for w in args.widths.split(",")] if args.widths else ([32] if args.quick else [64, 256, 512])
    rows = []
    for d in widths:
        repeats = args.repeats or (2 if args.quick else (61 if d <= 64 else 31 if d <= 256 else 15))
        triples = gpt_gradients(d, layers=2 if args.quick else 4, device=args.device)
        bases = spectra(triples)
        configs = configurations(0.02, 0.1)
        steps = {}
        for name, make in configs.items():
            params = [torch.nn.Parameter(w.clone()) for _, w, _ in triples]
            for q, (_, _, g) in zip(params, triples):
                q.grad = g.clone()
            steps[name] = make(params).step
        faults: dict[str, float] = {}
        times = interleaved(steps, repeats, faults=faults)
        unit = configurations(1.0, 0.0)
        torch_update = updates(unit["torch.optim.Muon"], triples)
        fp32_update = updates(lambda ps: Fp32Loop(ps, lr=1.0, weight_decay=0.0, dtype=torch.float64), triples)
        for name, make in unit.items():
            update = updates(make, triples)
            m = measures(update, torch_update, bases)
            rounding = measures(update, fp32_update, bases)["vs torch update"]
            rows.append([d, name, times[name] * 1e3, times[name] / times["torch.optim.Muon"],
                         times[name] / times["fp32 loop"], round(faults[name]), round(m["vs torch update"], 4),
                         round(rounding, 4), round(m["s.v. min"], 3), round(m["dist UV^T"], 3),
                         round(m["||O||_2 rescaled"], 3)])
    report(args, "muon_step", ["d", "optimizer", "step ms", "vs torch.optim.Muon", "vs fp32 loop",
                               "page faults / step", "vs torch update", "vs fp64 update", "s.v. min", "dist UV^T",
                               "||O||_2 rescaled"], rows,
           {"targets": "lmo Muon <= 1.0x torch.optim.Muon at d=256, 512 with the update within torch's bf16 rounding "
                       "(vs fp64 update not above torch's); "
                       "<= 0.4x at d=64; method='auto' <= 0.75x at d=256, 512, at least as orthogonal (s.v. min "
                       "not smaller, dist UV^T and ||O||_2 rescaled not larger)"})


if __name__ == "__main__":
    main()
