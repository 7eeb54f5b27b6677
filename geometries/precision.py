"""The iterate dtype of approximate polar factors: the one place that knows which hardware multiplies bf16 fast.

Policy (DESIGN.md): polynomial iterations (Newton-Schulz, Polar Express) run in bfloat16 where the hardware has fast
bf16 matrix multiplication -- CUDA devices, and CPUs with AVX512-BF16 or AMX, where a bf16 GEMM is about 2x a float32
one -- and in float32 everywhere else (on other CPUs a bf16 GEMM is emulated and ~100x slower than float32). The
decision is made once: the CPU's flags are read at import. A norm overrides it with ``dtype=`` ("float32", "bfloat16",
"float64", "float16"); ``dtype=None`` applies the policy.

Only torch has a bf16 fast path here: numpy, array-api-strict and CuPy have no bfloat16 GEMM, so they iterate in
float32. Nothing in this module imports a backend; torch is only touched when the array already is a torch tensor.
"""

from __future__ import annotations

from typing import Any

from lmo.backend import Array, Namespace, device

__all__ = ["DTYPES", "iterate_dtype", "fast_bf16"]

DTYPES = ("float16", "bfloat16", "float32", "float64")


def iterate_dtype(xp: Namespace, x: Array, override: str | None = None) -> Any:
    """The ``xp`` dtype in which to run polynomial iterations on ``x``: ``override`` if given, else the policy."""
    if override is None:
        name = "bfloat16" if fast_bf16(xp, x) else "float32"
    else:
        name = override
    dtype = getattr(xp, name, None)
    if dtype is None:
        raise ValueError(f"dtype={override!r} is not available in {xp.__name__} (input shape {tuple(x.shape)})")
    return dtype


def fast_bf16(xp: Namespace, x: Array) -> bool:
    """Whether ``x``'s device multiplies bfloat16 matrices faster than float32 ones: CUDA devices, and this process's
    CPU if it has AVX512-BF16 or AMX (its flags are read once, at import, so that ``torch.compile`` traces a
    constant)."""
    if "torch" not in xp.__name__:
        return False
    dev = device(x)
    kind = str(getattr(dev, "type", dev))
    return kind == "cuda" or (kind == "cpu" and _CPU_BF16)


def _cpu_has_bf16_gemm() -> bool:
    """AVX512-BF16 or AMX on this CPU (Linux: /proc/cpuinfo); other systems are taken to lack it."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


_CPU_BF16 = _cpu_has_bf16_gemm()
