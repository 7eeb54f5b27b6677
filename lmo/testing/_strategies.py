"""Hypothesis strategies for inputs that fit a norm, and the hard inputs every oracle must survive."""

from __future__ import annotations

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

__all__ = ["arrays_for", "numpy_inputs", "hard_inputs", "KINDS"]

# How structured inputs are made. Each one targets a way oracles fail: ties, zeros, dynamic range, rank deficiency.
KINDS = ("gaussian", "sparse", "ties", "scaled", "wide_range", "low_rank", "ill_conditioned", "one_hot")

# Largest power of ten that a dtype can scale unit-sized data by while its squares still fit (and likewise small).
_SAFE_EXPONENT = {"float64": 60, "float32": 9, "bfloat16": 9, "float16": 2}


def _core_shapes(norm: Norm, max_side: int) -> st.SearchStrategy[tuple[int, ...]]:
    fixed = norm.core_shape()
    if fixed is not None:
        return st.just(tuple(fixed))
    side = max_side if norm.ndim <= 2 else 3
    return st.tuples(*[st.integers(1, side)] * norm.ndim)


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
    structured (see ``KINDS``): ties, zeros, sparse, huge dynamic range, low rank and ill conditioning.
    """
    exponent = _SAFE_EXPONENT.get(dtype, 9)
    if shape is not None:
        shapes = st.just(tuple(shape))
    else:
        batch_shapes = st.lists(st.integers(1, 3), max_size=2).map(tuple) if batch else st.just(())
        shapes = st.tuples(batch_shapes, _core_shapes(norm, max_side)).map(lambda bc: bc[0] + bc[1])
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


def hard_inputs(norm: Norm, *, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Named float64 inputs that every oracle must handle: zero, ties, a single entry, rank deficiency, a batch."""
    rng = np.random.default_rng(seed)
    fixed = norm.core_shape()
    if fixed is not None:
        core = tuple(fixed)
    else:
        core = (4,) if norm.ndim == 1 else (4, 3) if norm.ndim == 2 else (2,) * norm.ndim
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
    return cases
