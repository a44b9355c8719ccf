"""Array-backend plumbing: one code path for numpy, torch (CPU/CUDA) and jax arrays.

Backends are detected lazily through `array_api_compat`, which inspects `sys.modules` and never
imports torch or jax itself; nothing here imports a framework at module import time.

jax keeps 64-bit types off unless `jax_enable_x64` is set; the spectral code needs float64, so every
computation on jax arrays runs inside `jax.enable_x64(True)` (see `precise`). Arrays produced there
stay float64; use them inside the same context (or enable x64 globally) to keep the precision.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from phasescope.errors import PhasescopeError


def as_array(x: Any) -> Any:
    """Return `x` unchanged if it is an array of a supported backend, else `numpy.asarray(x)`."""
    import array_api_compat

    if array_api_compat.is_array_api_obj(x):
        if array_api_compat.is_torch_array(x) and x.requires_grad:
            return x.detach()  # statistics never join the autograd graph
        return x
    if hasattr(x, "__array__"):
        return np.asarray(x)
    return np.asarray(x, dtype=np.float64)


def namespace(*arrays: Any) -> Any:
    """The array-API namespace of `arrays` (numpy, torch or jax.numpy, via array_api_compat)."""
    import array_api_compat

    return array_api_compat.array_namespace(*arrays)


def device(x: Any) -> Any:
    import array_api_compat

    return array_api_compat.device(x)


def is_jax(xp: Any) -> bool:
    import array_api_compat

    return array_api_compat.is_jax_namespace(xp)


def is_cuda(a: Any) -> bool:
    """Whether array `a` lives on a CUDA device (torch; False for numpy and host arrays)."""
    return getattr(getattr(a, "device", None), "type", None) == "cuda"


def is_numpy(xp: Any) -> bool:
    import array_api_compat

    return array_api_compat.is_numpy_namespace(xp)


def precise(xp: Any) -> contextlib.AbstractContextManager:
    """Context in which `xp` can hold float64 (a no-op except for jax, where it enables x64)."""
    if is_jax(xp):
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def to_float64(xp: Any, x: Any) -> Any:
    """`x` as a float64 array of the same backend and device; rejects non-real dtypes."""
    dt = x.dtype
    if xp.isdtype(dt, "complex floating") or xp.isdtype(dt, "bool"):
        raise PhasescopeError(f"spectra needs real numbers, got dtype {dt}; pass a real floating-point array")
    if dt == xp.float64:
        return x
    return xp.astype(x, xp.float64)


def work_dtype(xp: Any, x: Any, products: str) -> Any:
    """The dtype a block of `x` is centred in: float64 when `x` is float64 (or integer) or the products
    are asked in float64, else float32 (float16/bfloat16 are widened to it); rejects non-real dtypes."""
    dt = x.dtype
    if xp.isdtype(dt, "complex floating") or xp.isdtype(dt, "bool"):
        raise PhasescopeError(f"spectra needs real numbers, got dtype {dt}; pass a real floating-point array")
    if products == "float64" or dt == xp.float64 or not xp.isdtype(dt, "real floating"):
        return xp.float64
    return xp.float32


def gram(xp: Any, c: Any, *, tf32: bool = False) -> Any:
    """cᵀc in c's dtype. numpy's `a.T @ a` is BLAS syrk (half a GEMM's work); torch has no syrk, so a
    CPU tensor goes through numpy on the same memory; elsewhere a plain matmul in full precision
    whatever the user's global setting (`torch.set_float32_matmul_precision("high")`, nanoGPT's
    `allow_tf32 = True` and JAX's default on Ampere GPUs would otherwise round float32 inputs to
    TensorFloat-32's 10 bits, 1e-3 of λ₁); `tf32=True` asks for TensorFloat-32 products on CUDA."""
    if is_numpy(xp):
        return c.T @ c
    import array_api_compat

    if array_api_compat.is_torch_namespace(xp):
        import torch

        if c.device.type == "cpu":
            a = c.numpy()
            return torch.from_numpy(a.T @ a)
        if c.device.type == "cuda":
            before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
            torch.set_float32_matmul_precision("high" if tf32 else "highest")
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                return c.T @ c
            finally:
                torch.set_float32_matmul_precision(before[0])
                torch.backends.cuda.matmul.allow_tf32 = before[1]
    if is_jax(xp):
        import jax.numpy as jnp

        return jnp.matmul(c.T, c, precision="highest")
    return xp.matmul(xp.matrix_transpose(c), c)


def to_numpy(x: Any) -> np.ndarray:
    """A host numpy copy of any supported array (torch CUDA tensors are moved to the CPU)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_python_float(x: Any) -> float:
    return float(to_numpy(x)) if not isinstance(x, (float, int)) else float(x)


def strip_padding(xp: Any, v: Any) -> Any:
    """Drop trailing NaNs of a 1-D spectrum: the store NaN-pads eigenvalues to `max_rank`."""
    n = v.shape[0]
    if n == 0:
        return v
    nan = to_numpy(xp.isnan(v))  # one host transfer (a CUDA sync), not one per element
    if not nan[-1]:
        return v
    keep = n - int(np.argmin(nan[::-1])) if not nan.all() else 0
    return v[:keep]
