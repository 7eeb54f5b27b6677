"""Per-example gradients and Poisson sampling for differentially private training with torch.

- :func:`per_sample_grads` fills ``p.grad_sample`` (shape ``(B, *p.shape)``, Opacus's convention) with ``torch.func``
  (``vmap`` of ``grad`` over ``functional_call``), in micro-batches; a model wrapped in Opacus's
  ``GradSampleModule`` is run through its own hooks instead.
- :class:`PoissonSampler` and :func:`poisson_loader`: each example joins each batch independently with probability
  ``sample_rate`` (batch sizes vary, empty batches included), the sampling that the accountant assumes.

The optimizers that use these are :class:`lmo.optimizers.DPMuon` and :class:`lmo.optimizers.DPOptimizer`;
``docs/privacy.md`` walks through a private training run (and the loss reduction to use with Opacus's
``GradSampleModule``). Also importable as :mod:`lmo.privacy`. torch is imported only when used.
"""

from __future__ import annotations

import math
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from . import validation

__all__ = ["per_sample_grads", "clear_grad_sample", "PoissonSampler", "poisson_loader"]


# ---------------------------------------------------------------------------------------------------------------
# Per-example gradients
# ---------------------------------------------------------------------------------------------------------------
def _as_tuple(x: Any) -> tuple:
    if x is None:
        return ()
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _is_grad_sample_module(model: Any) -> bool:
    base = sys.modules.get("opacus.grad_sample.gsm_base")
    return base is not None and isinstance(model, base.AbstractGradSampleModule)


def _check_no_batchnorm(model: Any) -> None:
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"module {name or type(model).__name__!r} is a BatchNorm in training mode: it mixes the examples of a "
                "batch, so per-example gradients (and differential privacy) are undefined; use GroupNorm or "
                "LayerNorm, or put it in eval mode"
            )


def per_sample_grads(
    model: Any,
    loss_fn: Callable[..., Any],
    inputs: Any,
    targets: Any = None,
    *,
    params: Iterable[Any] | None = None,
    micro_batch_size: int | None = None,
    method: str = "auto",
) -> Any:
    """Per-example gradients of ``loss_fn`` for ``model``, stored Opacus-style in ``p.grad_sample``.

    For every example ``i`` of the batch, ``p.grad_sample[i]`` is the gradient with respect to ``p`` of
    ``loss_fn(model(inputs[i:i+1]), targets[i:i+1])`` (the loss of that example alone, as a batch of one), shape
    ``(B, *p.shape)``. ``p.grad`` is left untouched.

    Parameters
    ----------
    model
        A ``torch.nn.Module`` (buffers, tied weights, dropout are handled; BatchNorm in training mode is refused, as it
        mixes examples), or one wrapped in Opacus's ``GradSampleModule``.
    loss_fn
        ``loss_fn(outputs, targets) -> scalar`` (``loss_fn(outputs)`` when ``targets`` is None), e.g.
        ``torch.nn.functional.cross_entropy``. It sees one example at a time, with a batch axis of length 1.
    inputs, targets
        A tensor or a tuple of tensors (several model inputs / targets), batch axis first.
    params
        The parameters to differentiate (default: every parameter with ``requires_grad``); only these get
        ``grad_sample``.
    micro_batch_size
        Compute at most this many examples at once (bounds the memory of the activations and of the
        intermediate results to that of a micro-batch; the result itself holds ``B`` gradients).
    method
        ``"functorch"`` (``torch.func``; not for a ``GradSampleModule``, whose backward hooks cannot run under it),
        ``"opacus"`` (the ``GradSampleModule``'s hooks; the model must be one) or ``"auto"`` (``"opacus"`` for a
        ``GradSampleModule``, else ``"functorch"``).

    Returns
    -------
    torch.Tensor
        The per-example losses, of shape ``(B,)`` (detached).
    """
    import torch

    validation.choice("method", method, ("auto", "functorch", "opacus"))
    gsm = _is_grad_sample_module(model)
    if method == "auto":
        method = "opacus" if gsm else "functorch"
    if method == "opacus" and not gsm:
        raise ValueError("method='opacus' needs a model wrapped in opacus.GradSampleModule")
    if method == "functorch" and gsm:
        raise ValueError("a GradSampleModule computes per-example gradients with its own hooks (method='opacus'); its "
                         "backward hooks cannot run under torch.func: pass the model without the wrapper for "
                         "method='functorch'")
    xs, ys = _as_tuple(inputs), _as_tuple(targets)
    if not xs:
        raise ValueError("inputs must be a tensor or a non-empty tuple of tensors")
    batch = xs[0].shape[0]
    for t in xs + ys:
        if not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != batch:
            raise ValueError(f"every input and target must be a tensor with the batch axis first, of length {batch}")
    if micro_batch_size is not None:
        validation.integer("micro_batch_size", micro_batch_size, 1)
    module = model
    named = [(n, p) for n, p in module.named_parameters()]
    if params is None:
        chosen = [p for _, p in named if p.requires_grad]
    else:
        chosen = list(params)
        known = {id(p) for _, p in named}
        if any(id(p) not in known for p in chosen):
            raise ValueError("params must be parameters of the model")
    if not chosen:
        raise ValueError("no parameter to differentiate (none requires grad)")
    _check_no_batchnorm(module)
    step = max(batch, 1) if micro_batch_size is None else micro_batch_size
    run = _opacus_chunk if method == "opacus" else _functorch_chunk
    grads: dict[Any, list[Any]] = {p: [] for p in chosen}
    losses = []
    for start in range(0, max(batch, 1), step):
        stop = min(batch, start + step)
        part = run(module, loss_fn, tuple(t[start:stop] for t in xs), tuple(t[start:stop] for t in ys),
                   chosen, named, targets is not None)
        for p, g in part[0].items():
            grads[p].append(g)
        losses.append(part[1])
    # one chunk (the default) is used as it is: no second copy of B gradients
    for p in chosen:
        p.grad_sample = grads[p][0] if len(grads[p]) == 1 else torch.cat(grads[p])
    return losses[0] if len(losses) == 1 else torch.cat(losses)


def _one_loss(loss_fn: Callable[..., Any], out: Any, ys: tuple, has_targets: bool) -> Any:
    if not has_targets:
        return loss_fn(out)
    return loss_fn(out, ys[0] if len(ys) == 1 else ys)


def _functorch_chunk(module, loss_fn, xs, ys, chosen, named, has_targets):
    import torch
    from torch.func import functional_call, grad, vmap

    ids = {id(p) for p in chosen}
    train = {n: p.detach() for n, p in named if id(p) in ids}
    frozen = {n: p.detach() for n, p in named if id(p) not in ids}
    buffers = {n: b for n, b in module.named_buffers()}
    nx = len(xs)

    def loss_of_one(train_params, *example):
        x = tuple(t.unsqueeze(0) for t in example[:nx])
        y = tuple(t.unsqueeze(0) for t in example[nx:])
        out = functional_call(module, (train_params, frozen, buffers), x)
        loss = _one_loss(loss_fn, out, y, has_targets)
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar for one example; got shape {tuple(loss.shape)}")
        return loss, loss.detach()

    if xs[0].shape[0] == 0:
        return {p: torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device) for p in chosen}, torch.zeros(0)
    fn = vmap(grad(loss_of_one, has_aux=True), in_dims=(None,) + (0,) * (nx + len(ys)), randomness="different")
    grads, losses = fn(train, *xs, *ys)
    by_name = {n: p for n, p in named if id(p) in ids}
    return {p: grads[n].detach() for n, p in by_name.items()}, losses.detach()


def _opacus_chunk(module, loss_fn, xs, ys, chosen, named, has_targets):
    import torch
    from torch.func import vmap

    params = [p for _, p in named]
    if xs[0].shape[0] == 0:
        return {p: torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device) for p in chosen}, torch.zeros(0)
    saved = {p: p.grad for p in params}
    for p in params:
        p.grad_sample = None
        if hasattr(p, "_current_grad_sample"):
            del p._current_grad_sample
    try:
        with torch.enable_grad():
            out = module(*xs)
            nys = len(ys)

            def one(o, *y):
                return _one_loss(loss_fn, o.unsqueeze(0), tuple(t.unsqueeze(0) for t in y), has_targets)

            per = vmap(one, in_dims=(0,) + (0,) * nys)(out, *ys)
            reduction = getattr(module, "loss_reduction", "mean")
            total = per.sum() if reduction == "sum" else per.mean()
            total.backward()
        result = {}
        for p in chosen:
            gs = p.grad_sample
            if isinstance(gs, list):
                gs = torch.cat(gs, dim=0)
            if gs is None:
                raise ValueError("the GradSampleModule computed no grad_sample for a chosen parameter (is it used "
                                 "in the forward pass, and does Opacus support its layer?)")
            result[p] = gs.detach()
        return result, per.detach()
    finally:
        for p in params:
            p.grad = saved[p]
            p.grad_sample = None


def clear_grad_sample(params: Iterable[Any]) -> None:
    """Set ``p.grad_sample = None`` for every parameter (frees the per-example gradients)."""
    for p in params:
        if hasattr(p, "grad_sample"):
            p.grad_sample = None


# ---------------------------------------------------------------------------------------------------------------
# Poisson sampling
# ---------------------------------------------------------------------------------------------------------------
class PoissonSampler:
    """A batch sampler: each of ``steps`` batches holds every index of ``range(num_samples)`` independently with
    probability ``sample_rate`` (Poisson sampling). Batch sizes vary around ``sample_rate * num_samples`` and a
    batch may be empty; the privacy accountant assumes exactly this sampling.

    ``steps``: batches per pass (default ``ceil(1 / sample_rate)``, one epoch in expectation). ``generator``:
    ``None`` (a generator seeded from the OS's entropy: the default, as the sample must stay secret), an ``int`` seed,
    or a ``torch.Generator`` (CPU). Use as ``DataLoader(dataset, batch_sampler=PoissonSampler(...))`` or through
    :func:`poisson_loader`, which also collates empty batches.
    """

    def __init__(self, num_samples: int, sample_rate: float, *, steps: int | None = None, generator: Any = None):
        import torch

        self.num_samples = validation.integer("num_samples", num_samples, 1)
        self.sample_rate = validation.real("sample_rate", sample_rate, 0.0, 1.0, low_open=True)
        self.steps = validation.integer("steps", math.ceil(1.0 / self.sample_rate) if steps is None else steps, 1)
        if isinstance(generator, torch.Generator):
            self.generator = generator
        elif generator is None or (isinstance(generator, int) and not isinstance(generator, bool)):
            seed = secrets.randbits(63) if generator is None else generator
            self.generator = torch.Generator().manual_seed(seed)
        else:
            raise ValueError(f"generator must be None, an int seed or a torch.Generator; got {generator!r}")

    @property
    def expected_batch_size(self) -> float:
        """``sample_rate * num_samples``: the divisor of the noisy sum in the private optimizers."""
        return self.sample_rate * self.num_samples

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        import torch

        for _ in range(self.steps):
            mask = torch.rand(self.num_samples, generator=self.generator, device=self.generator.device)
            yield torch.nonzero(mask < self.sample_rate).flatten().tolist()


def _empty_like_batch(example_batch: Any) -> Any:
    import torch

    if isinstance(example_batch, torch.Tensor):
        return example_batch.new_empty((0, *example_batch.shape[1:]))
    if isinstance(example_batch, (tuple, list)):
        kind = type(example_batch)
        items = [_empty_like_batch(x) for x in example_batch]
        return kind(*items) if hasattr(example_batch, "_fields") else kind(items)
    if isinstance(example_batch, dict):
        return {k: _empty_like_batch(v) for k, v in example_batch.items()}
    raise ValueError(f"cannot build an empty batch of {type(example_batch).__name__}; pass a collate_fn that handles "
                     "empty batches")


class _EmptySafeCollate:
    """``collate_fn`` that returns zero-length tensors (of the dataset's shapes and dtypes) for an empty batch."""

    def __init__(self, collate: Callable[[list], Any], dataset: Any) -> None:
        self.collate = collate
        self.dataset = dataset
        self._empty = None

    def __call__(self, batch: list) -> Any:
        if batch:
            return self.collate(batch)
        if self._empty is None:
            self._empty = _empty_like_batch(self.collate([self.dataset[0]]))
        return self._empty


def poisson_loader(
    dataset: Sequence[Any],
    sample_rate: float,
    *,
    steps: int | None = None,
    generator: Any = None,
    collate_fn: Callable[[list], Any] | None = None,
    **loader_arguments: Any,
) -> Any:
    """A ``torch.utils.data.DataLoader`` over ``dataset`` with Poisson sampling (:class:`PoissonSampler`): each
    batch holds every example independently with probability ``sample_rate``; an empty batch comes as tensors with
    a batch axis of length 0. ``loader_arguments`` go to the ``DataLoader`` (``num_workers``, ``pin_memory``, ...;
    not ``batch_size``, ``shuffle`` or ``sampler``). The loader's ``batch_sampler.expected_batch_size`` is the
    divisor for the private optimizers."""
    from torch.utils.data import DataLoader, default_collate

    for key in ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"):
        if key in loader_arguments:
            raise ValueError(f"poisson_loader sets the batches itself; do not pass {key}")
    sampler = PoissonSampler(len(dataset), sample_rate, steps=steps, generator=generator)
    collate = _EmptySafeCollate(collate_fn or default_collate, dataset)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, **loader_arguments)


