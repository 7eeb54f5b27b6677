"""Hypothesis strategies for inputs that fit a norm, and the hard inputs every oracle must survive."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as err:  # pragma: no cover - exercised only without the kit extra
    raise ImportError(
        "lmo.testing draws its inputs with hypothesis; install the kit extra: pip install 'lmo-optim[kit]'"
    ) from err

from lmo.norm import Norm

from ._backends import backend_for

__all__ = ["arrays_for", "numpy_inputs", "hard_inputs", "large_inputs", "KINDS"]

# How structured inputs are made. Each one targets a way oracles fail: ties, zeros, dynamic range, rank deficiency.
KINDS = ("gaussian", "sparse", "ties", "scaled", "wide_range", "low_rank", "ill_conditioned", "one_hot")

# Largest power of ten that a dtype can scale unit-sized data by while its squares still fit (and likewise small).
_SAFE_EXPONENT = {"float64": 60, "float32": 9, "bfloat16": 9, "float16": 2}


def _sides(ndim: int, max_side: int) -> st.SearchStrategy[int]:
    """A core side: mostly small (shrinkable, readable counter-examples), one draw in four beyond ``max_side`` (up to
    160 entries for vectors, 40 per matrix side), where bugs that need a side of 7 or more live."""
    large = {1: 160, 2: 40}.get(ndim, 4)
    small = st.integers(1, max_side if ndim <= 2 else 3)
    if large <= (max_side if ndim <= 2 else 3):
        return small
    return st.one_of(small, small, small, st.integers((max_side if ndim <= 2 else 3) + 1, large))


def _core_shapes(norm: Norm, max_side: int) -> st.SearchStrategy[tuple[int, ...]]:
    fixed = norm.core_shape()
    if fixed is not None:
        return st.just(tuple(fixed))
    return st.tuples(*[_sides(norm.ndim, max_side)] * norm.ndim)


def _batch_shapes(core: tuple[int, ...], max_entries: int = 6000) -> st.SearchStrategy[tuple[int, ...]]:
    """Up to two batch axes of up to 6 entries each, within a budget of ``max_entries`` entries in all."""
    budget = max(1, max_entries // max(1, math.prod(core)))
    side = min(6, budget)
    return st.lists(st.integers(1, side), max_size=2).filter(lambda b: math.prod(b) <= budget).map(tuple)


def _structured(rng: np.random.Generator, kind: str, shape: tuple[int, ...], ndim: int, exponent: int) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal(shape)
    if kind == "sparse":
        return rng.standard_normal(shape) * (rng.random(shape) < 0.25)
    if kind == "ties":
        return rng.integers(-2, 3, size=shape).astype(np.float64)
    if kind == "scaled":
        return rng.standard_normal(shape) * 10.0 ** rng.integers(-exponent, exponent + 1)
    if kind == "wide_range":
        return rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(-exponent / 2, exponent / 2, size=shape)
    if kind == "one_hot":
        x = np.zeros(shape)
        flat = x.reshape(-1)
        flat[rng.integers(flat.size)] = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 10.0)
        return x
    if kind in ("low_rank", "ill_conditioned"):
        if ndim < 2 or len(shape) < 2:
            return rng.standard_normal(shape) * np.logspace(0, -6, shape[-1])
        m, n = shape[-2], shape[-1]
        k = min(m, n)
        u = np.linalg.qr(rng.standard_normal((*shape[:-2], m, k)))[0]
        v = np.linalg.qr(rng.standard_normal((*shape[:-2], n, k)))[0]
        if kind == "low_rank":
            s = np.where(np.arange(k) < max(1, k // 2), rng.uniform(0.5, 2.0, k), 0.0)
        else:
            s = np.logspace(0, -6, k)
        return (u * s) @ np.swapaxes(v, -1, -2)
    raise ValueError(f"unknown input kind {kind!r}; known: {', '.join(KINDS)}")


def numpy_inputs(
    norm: Norm,
    *,
    dtype: str = "float64",
    shape: tuple[int, ...] | None = None,
    batch: bool = True,
    max_side: int = 6,
) -> st.SearchStrategy[np.ndarray]:
    """Float64 numpy arrays that fit ``norm`` and stay finite (with finite squares) in ``dtype``.

    Half the draws are element-wise (hypothesis shrinks them to small, readable counter-examples), half are
    structured (see ``KINDS``): ties, zeros, sparse, huge dynamic range, low rank and ill conditioning. Sides are
    mostly at most ``max_side``, and one in four is larger (up to 160 entries for vectors, 40 per matrix side);
    up to two batch axes of up to 6 entries.
    """
    exponent = _SAFE_EXPONENT.get(dtype, 9)
    if shape is not None:
        shapes = st.just(tuple(shape))
    else:
        shapes = _core_shapes(norm, max_side).flatmap(
            lambda core: (_batch_shapes(core) if batch else st.just(())).map(lambda b: b + core))
    bound = 10.0**exponent

    def elementwise(s: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
        elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, allow_subnormal=False)
        return hnp.arrays(np.float64, s, elements=elements)

    def structured(s: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
        return st.builds(
            lambda seed, kind: _structured(np.random.default_rng(seed), kind, s, norm.ndim, exponent),
            st.integers(0, 2**32 - 1),
            st.sampled_from(KINDS),
        )

    return shapes.flatmap(lambda s: st.one_of(elementwise(s), structured(s)))


def arrays_for(
    norm: Norm,
    *,
    xp: Any = np,
    dtype: str = "float64",
    shape: tuple[int, ...] | None = None,
    batch: bool = True,
) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for arrays of namespace ``xp`` (a namespace, backend name or array) that fit ``norm``.

    >>> from hypothesis import given
    >>> @given(arrays_for(my_norm, xp="torch", dtype="float32"))
    ... def test_my_norm(g):
    ...     check_norm(my_norm, g)
    """
    backend = backend_for(xp)
    return numpy_inputs(norm, dtype=dtype, shape=shape, batch=batch).map(lambda a: backend.asarray(a, dtype))


# The smallest normal exponent of each dtype: "subnormal" hard inputs live just below it.
_MIN_EXPONENT = {"float64": -1022, "float32": -126, "bfloat16": -126, "float16": -14}


def _default_cores(norm: Norm) -> list[tuple[int, ...]]:
    """Small core shapes of the hard inputs: the classic tall one, and one with a side beyond 6 (wide for matrices)."""
    if norm.ndim == 1:
        return [(4,), (9,)]
    if norm.ndim == 2:
        return [(4, 3), (3, 7)]
    return [(2,) * norm.ndim, (3, 2) + (3,) * (norm.ndim - 2)]


def _large_cores(norm: Norm) -> list[tuple[int, ...]]:
    """Real sizes: a vector of 128 entries, 64 x 48 and 48 x 64 matrices, an 8 x 6 x 3 x 3 kernel."""
    if norm.ndim == 1:
        return [(128,)]
    if norm.ndim == 2:
        return [(64, 48), (48, 64)]
    return [(8, 6) + (3,) * (norm.ndim - 2)]


def hard_inputs(norm: Norm, *, seed: int = 0, dtype: str = "float64",
                large: bool = True) -> list[tuple[str, np.ndarray]]:
    """Named float64 inputs that every oracle must handle.

    Zero, ties, a single entry, rank deficiency and ill conditioning at a small tall shape; a second small shape with
    a side beyond 6 (wide for matrices); a batch of 6 x 5 entries of different scales, one of them zero; real sizes
    (``large``: 128 entries, 64 x 48 and 48 x 64, the last one of rank 3); and two inputs at the bottom of ``dtype``'s
    range: every entry subnormal, and entries from normal down to subnormal. (Inputs near overflow depend on the
    norm's values and are made by :func:`lmo.testing.check_norm` itself.)
    """
    rng = np.random.default_rng(seed)
    fixed = norm.core_shape()
    cores = [tuple(fixed)] if fixed is not None else _default_cores(norm)
    core = cores[0]
    size = math.prod(core)
    cases = [
        ("zero", np.zeros(core)),
        ("ones", np.ones(core)),
        ("alternating ties", (-1.0) ** np.arange(size).reshape(core)),
        ("one entry", _structured(rng, "one_hot", core, norm.ndim, 0)),
        ("gaussian", rng.standard_normal(core)),
        ("batch with a zero member", np.stack([rng.standard_normal(core), np.zeros(core), rng.standard_normal(core)])),
    ]
    if norm.ndim >= 2:
        cases.append(("rank one", _structured(rng, "low_rank", core, norm.ndim, 0)))
        cases.append(("condition number 1e6", _structured(rng, "ill_conditioned", core, norm.ndim, 0)))
    for other in cores[1:]:
        cases.append((f"gaussian {'x'.join(map(str, other))}", rng.standard_normal(other)))
    # 30 batch entries whose scales differ by up to 1e8: an oracle that normalises over the batch, or mixes entries,
    # gives the small ones a wrong answer
    batch = rng.standard_normal((6, 5, *core)) * 10.0 ** rng.integers(-4, 5, size=(6, 5) + (1,) * len(core))
    batch[2, 3] = 0.0
    cases.append(("batch 6 x 5", batch))
    if large and fixed is None:
        for i, big in enumerate(_large_cores(norm)):
            label = "x".join(map(str, big))
            if i == 1:
                cases.append((f"{label} of rank 3", _with_spectrum(rng, big, np.array([3.0, 1.0, 0.5]))))
            else:
                cases.append((label, rng.standard_normal(big)))
    low = _MIN_EXPONENT.get(dtype, -126)
    tiny = 2.0 ** (low - 2)
    cases.append(("subnormal", np.clip(rng.standard_normal(core), -1.0, 1.0) * tiny))
    # magnitudes from 2^(low - 2) (subnormal) up to 1/4, and one entry 1
    spread = 2.0 ** rng.uniform(0.0, -low, size=core) * tiny * rng.choice([-1.0, 1.0], size=core)
    cases.append(("normal to subnormal", np.where(rng.random(core) < 0.5, spread, 0.0) + np.eye(1, size).reshape(core)))
    return cases


def _with_spectrum(rng: np.random.Generator, shape: tuple[int, ...], s: np.ndarray) -> np.ndarray:
    """A matrix (or stack, or kernel viewed as ``(shape[0], rest)``) with singular values ``s`` (padded with zeros)."""
    m, n = shape[0], math.prod(shape[1:])
    k = min(m, n)
    s = np.concatenate([s, np.zeros(max(0, k - len(s)))])[:k]
    u = np.linalg.qr(rng.standard_normal((m, k)))[0]
    v = np.linalg.qr(rng.standard_normal((n, k)))[0]
    return ((u * s) @ v.T).reshape(shape)


def large_inputs(norm: Norm, *, side: int = 256, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Hard spectra at real sizes, where the declared ``delta``/``slack`` of inexact oracles are put to the test.

    Matrices (``side x side``, and ``(side + side / 2) x side`` for the rank-deficient one; kernels are viewed as
    ``(c_out, rest)``): singular values in geometric decay from 1 to 1e-6, two clusters (at 1 and at 1e-3), rank
    ``side / 8``, and all equal (an orthogonal matrix). Vectors get ``side^2`` entries in geometric decay.
    """
    if norm.core_shape() is not None:
        return []
    return list(_large_inputs(norm.ndim, side, seed))


@functools.lru_cache(maxsize=8)
def _large_inputs(ndim: int, side: int, seed: int) -> tuple[tuple[str, np.ndarray], ...]:
    cases = _make_large_inputs(ndim, side, seed)
    for _, g in cases:
        g.setflags(write=False)  # shared between calls
    return tuple(cases)


def _make_large_inputs(ndim: int, side: int, seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    if ndim == 1:
        n = side * side
        return [("geometric decay 1..1e-6", rng.permutation(np.geomspace(1.0, 1e-6, n)) * rng.choice([-1.0, 1.0], n))]
    if ndim == 2:
        square, tall = (side, side), (side + side // 2, side)
    else:
        rest = (3,) * (ndim - 2)
        c_in = max(1, side // math.prod(rest))
        square, tall = (side, c_in, *rest), (side + side // 2, c_in, *rest)
    k = min(square[0], math.prod(square[1:]))
    clusters = np.where(np.arange(k) < k // 2, 1.0, 1e-3) * (1 + 1e-3 * rng.standard_normal(k))
    return [
        ("geometric decay 1..1e-6", _with_spectrum(rng, square, np.geomspace(1.0, 1e-6, k))),
        ("clusters at 1 and 1e-3", _with_spectrum(rng, square, np.sort(np.abs(clusters))[::-1])),
        (f"rank {k // 8}", _with_spectrum(rng, tall, rng.uniform(0.5, 2.0, k // 8))),
        ("all singular values equal", _with_spectrum(rng, square, np.ones(k))),
    ]
