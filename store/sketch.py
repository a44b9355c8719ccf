"""Optional compact activation sketches, stored per capture for recomputation later (off by default).

A sketch of a probe's activations X (n samples x d) keeps at most ``rows`` samples and ``width``
columns, so its size is bounded up front: ``rows * width * itemsize`` bytes per probe per capture.

- ``method="projection"`` (default): a Johnson–Lindenstrauss random projection
  Y = X[:rows] Ω / sqrt(width), Ω ∈ R^{d×width} with i.i.d. N(0, 1) entries drawn from ``seed``.
  Since E[Ω Ωᵀ] = width · I, E[Y Yᵀ] = X Xᵀ (Johnson & Lindenstrauss 1984;
  Halko, Martinsson & Tropp 2011): the Gram matrix, hence the non-zero covariance spectrum of the
  kept rows, is preserved in expectation, so RankMe / α can be recomputed later from the sketch.
  Ω depends only on (seed, d, width), so sketches of one probe are comparable across steps.
- ``method="sample"``: the first ``rows`` samples verbatim (requires d <= width; NaN-padded).

Probe inputs are fixed across captures, so "the first ``rows`` samples" are the same sequences
each time. Rows beyond n are NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import StoreError


def estimate_sketch_bytes(n_captures: int, n_probes: int, rows: int, width: int, dtype: str = "float16") -> int:
    """Uncompressed bytes the sketches of a run will take: captures × probes × rows × width × itemsize."""
    for k, v in dict(n_captures=n_captures, n_probes=n_probes, rows=rows, width=width).items():
        if int(v) < 0:
            raise StoreError(f"{k} must be >= 0, got {v}")
    return int(n_captures) * int(n_probes) * int(rows) * int(width) * np.dtype(dtype).itemsize


def projection_matrix(d: int, width: int, seed: int = 0) -> np.ndarray:
    """Ω ∈ R^{d×width}, i.i.d. N(0, 1), a deterministic function of (seed, d, width)."""
    return np.random.default_rng([int(seed), int(d), int(width)]).standard_normal((d, width))


def make_sketch(x: Any, rows: int, width: int, *, method: str = "projection", seed: int = 0) -> np.ndarray:
    """A (rows, width) float64 sketch of activations ``x`` (n, d); see the module docstring."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise StoreError(f"make_sketch needs a 2-D (samples, features) array, got shape {a.shape}")
    n, d = a.shape
    keep = a[: min(n, rows)]
    out = np.full((rows, width), np.nan)
    if method == "projection":
        out[: len(keep)] = keep @ projection_matrix(d, width, seed) / np.sqrt(width)
    elif method == "sample":
        if d > width:
            raise StoreError(
                f"method='sample' keeps features verbatim but d={d} > width={width}; "
                "raise width or use method='projection'"
            )
        out[: len(keep), :d] = keep
    else:
        raise StoreError(f"unknown sketch method {method!r}; use 'projection' or 'sample'")
    return out
