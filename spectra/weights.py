"""Weight-matrix spectra à la WeightWatcher (Martin & Mahoney 2021, "Implicit self-regularization in
deep neural networks", JMLR; "Predicting trends in the quality of state-of-the-art neural networks
without access to training or testing data", Nat. Commun. 2021).

For each weight matrix W (m × n) the empirical spectral density (ESD) is the set of eigenvalues of
the correlation matrix WᵀW (equivalently the squared singular values σ_i², min(m, n) of them).
Heavy-tailed self-regularisation fits a power law to the ESD's tail,

    ρ(λ) ∝ λ^(−α)  for λ ≥ λ_min,

by maximum likelihood with λ_min chosen to minimise the Kolmogorov–Smirnov distance (Clauset,
Shalizi & Newman 2009, SIAM Review): α̂ = 1 + m_tail / Σ_{λ_i ≥ λ_min} log(λ_i / λ_min).
WeightWatcher's reading: α ≈ 2–4 well-trained layers, α > 6 under-trained, α < 2 over-fit.
Note this α is a density exponent, not the rank-decay α-ReQ of activations (for a pure power law
the two are related by α_density = 1 + 1/α_rank). Scale of W (and WeightWatcher's 1/N
normalisation) does not change α or the stable rank ‖W‖_F² / ‖W‖₂² = Σλ / λ_max.

Eigenvalues are computed on the weights' device (numpy, torch CPU/CUDA, jax), batched over matrices
of the same shape; the tail fit runs on the host on the (short) eigenvalue vector.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from phasescope.errors import PhasescopeError

from . import _backend as B

NAN = float("nan")


def weight_eigenvalues(w: Any) -> Any:
    """Descending eigenvalues of WᵀW (= σ_i²) for W of shape (..., m, n): shape (..., min(m, n)).

    The Gram matrix of the smaller side (WᵀW if m ≥ n else WWᵀ) is formed in W's precision (float32
    weights: a float32 product, BLAS syrk on the CPU; float64: float64) and eigendecomposed in float64
    on W's device, batched over leading dimensions. Round-off negatives are clipped to 0. Float32
    products move α by ~1e-7 relative (bench/weights.py); a float32 eigensolver would move it by ~1e-4.
    """
    w = B.as_array(w)
    if w.ndim < 2:
        raise PhasescopeError(f"weight matrix must have ≥ 2 dimensions, got shape {tuple(w.shape)}")
    xp = B.namespace(w)
    with B.precise(xp):
        wd = B.work_dtype(xp, w, "auto")
        if w.dtype != wd:
            w = xp.astype(w, wd)
        tall = w.shape[-2] >= w.shape[-1]
        if w.ndim == 2 or B.is_numpy(xp) or str(B.device(w)) == "cpu":
            flat = xp.reshape(w, (-1, *w.shape[-2:]))
            grams = [B.gram(xp, m if tall else xp.matrix_transpose(m)) for m in flat]
            g = xp.reshape(xp.stack(grams), (*w.shape[:-2], *grams[0].shape)) if w.ndim > 2 else grams[0]
        else:  # one batched product on an accelerator
            wt = xp.matrix_transpose(w)
            g = xp.matmul(wt, w) if tall else xp.matmul(w, wt)
        ev = xp.flip(_eigvalsh(xp, B.to_float64(xp, g)), axis=-1)
        return xp.where(ev > 0, ev, xp.zeros_like(ev))


def _eigvalsh(xp: Any, g: Any) -> Any:
    """Ascending eigenvalues of symmetric (..., k, k); CPU torch tensors go through numpy's LAPACK,
    which is ~1.5× faster than torch's on this machine class (one thread)."""
    if not B.is_numpy(xp) and not B.is_jax(xp) and str(B.device(g)) == "cpu":
        import torch

        return torch.from_numpy(np.linalg.eigvalsh(g.numpy()))
    return xp.linalg.eigvalsh(g)


@dataclass(frozen=True)
class PowerLawTail:
    """MLE power-law fit of an ESD tail: ρ(λ) ∝ λ^(−alpha) for λ ≥ xmin (n_tail eigenvalues)."""

    alpha: float
    xmin: float
    ks_distance: float
    n_tail: int
    reason: str | None = None


def esd_power_law(eigenvalues: Any, *, min_tail: int = 10, xmin: float | None = None) -> PowerLawTail:
    """Clauset–Shalizi–Newman power-law fit of the tail of an eigenvalue density (see module doc).

    With `xmin=None` every eigenvalue leaving ≥ `min_tail` points above it is tried as λ_min and the
    one with the smallest KS distance D = max |F_emp − (1 − (λ/λ_min)^(1−α̂))| wins (O(n²), chunked).
    NaN with a reason if fewer than `min_tail` positive eigenvalues.
    """
    lam = np.sort(np.asarray(B.to_numpy(B.as_array(eigenvalues)), dtype=np.float64))
    lam = lam[np.isfinite(lam)]
    top = lam[-1] if lam.size else 0.0
    lam = lam[lam > max(top, 0.0) * lam.size * np.finfo(np.float64).eps]
    n = lam.size
    if n < max(min_tail, 2):
        return PowerLawTail(NAN, NAN, NAN, 0, f"only {n} positive eigenvalues, need ≥ {max(min_tail, 2)}")
    logs = np.log(lam)
    suffix = np.cumsum(logs[::-1])[::-1]  # Σ_{j ≥ i} log λ_j
    if xmin is not None:
        i = int(np.searchsorted(lam, xmin, side="left"))
        cand = np.array([i]) if n - i >= 2 else np.array([], dtype=int)
    else:
        cand = np.arange(0, n - max(min_tail, 2) + 1)
    if cand.size == 0:
        return PowerLawTail(NAN, NAN, NAN, 0, f"fewer than 2 eigenvalues above xmin={xmin}")
    m = (n - cand).astype(np.float64)
    denom = suffix[cand] - m * logs[cand]
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + m / denom
    ks = np.full(cand.size, np.inf)
    # Candidates in chunks of 128, each against the eigenvalues from its first candidate on (the model
    # is only compared above λ_min): about half the work of the full n × n table.
    with np.errstate(over="ignore", invalid="ignore"):  # a degenerate candidate's α is inf or NaN
        for s in range(0, cand.size, 128):
            c = cand[s : s + 128]
            a = alphas[s : s + 128]
            tail = logs[c[0] :][None, :]
            j = np.arange(c[0], n)[None, :]
            m_c = (n - c)[:, None].astype(np.float64)
            model = 1.0 - np.exp((tail - logs[c][:, None]) * (1.0 - a[:, None]))  # 1 − (λ_j/λ_min)^(1−α)
            emp = (j - c[:, None]) / m_c  # empirical CDF just below λ_j; 1/m higher at λ_j
            dev = np.maximum(model - emp, emp + 1.0 / m_c - model)  # = max(|model − emp|, |model − emp_hi|)
            dev = np.where(j >= c[:, None], dev, 0.0)
            ks[s : s + 128] = np.where(np.isfinite(a), dev.max(axis=1), np.inf)
    best = int(np.argmin(ks))
    if not np.isfinite(ks[best]):
        return PowerLawTail(NAN, NAN, NAN, 0, "degenerate tail (all eigenvalues equal)")
    return PowerLawTail(float(alphas[best]), float(lam[cand[best]]), float(ks[best]), int(n - cand[best]))


@dataclass(frozen=True)
class WeightSpectrum:
    """Spectrum summary of one weight matrix (eigenvalues of WᵀW, descending, on W's device)."""

    name: str
    shape: tuple[int, ...]
    eigenvalues: Any
    alpha: float
    xmin: float
    ks_distance: float
    n_tail: int
    stable_rank: float
    spectral_norm: float
    reason: str | None = None

    def metrics(self) -> dict[str, float]:
        return {
            "alpha": self.alpha,
            "stable_rank": self.stable_rank,
            "spectral_norm": self.spectral_norm,
            "ks_distance": self.ks_distance,
        }


def _named_matrices(weights: Any) -> Iterable[tuple[str, Any]]:
    if hasattr(weights, "named_parameters"):  # torch.nn.Module
        for name, p in weights.named_parameters():
            if p.ndim == 2:
                yield name, p.detach()
    elif isinstance(weights, Mapping):
        for name, p in weights.items():
            if getattr(p, "ndim", 0) == 2:
                yield str(name), p
    else:
        raise PhasescopeError(
            f"weight_spectra needs a torch module or a mapping name -> 2-D array, got {type(weights).__name__}"
        )


def weight_spectra(weights: Any, *, min_tail: int = 10, select: Any = None) -> dict[str, WeightSpectrum]:
    """ESD summaries of every 2-D weight of a torch module or a {name: array} mapping.

    Matrices of equal shape (and backend/device) are stacked and eigendecomposed in one batched call.
    `select(name) -> bool` filters names (default: all 2-D parameters; biases/norms are 1-D).
    """
    groups: dict[tuple, list[tuple[str, Any]]] = {}
    for name, raw in _named_matrices(weights):
        if select is not None and not select(name):
            continue
        w = B.as_array(raw)
        key = (tuple(w.shape), B.namespace(w).__name__, str(B.device(w)))
        groups.setdefault(key, []).append((name, w))
    out: dict[str, WeightSpectrum] = {}
    for (shape, _, where), items in groups.items():
        xp = B.namespace(items[0][1])
        with B.precise(xp):
            if where == "cpu":  # LAPACK goes one matrix at a time anyway: no stacked copy
                evs = [weight_eigenvalues(w) for _, w in items]
            else:  # one batched call on an accelerator
                evs = weight_eigenvalues(xp.stack([w for _, w in items], axis=0))
        host = np.stack([np.asarray(B.to_numpy(e), dtype=np.float64) for e in evs])
        for i, (name, _) in enumerate(items):
            lam = host[i]
            tail = esd_power_law(lam, min_tail=min_tail)
            top = float(lam[0]) if lam.size else NAN
            out[name] = WeightSpectrum(
                name=name,
                shape=shape,
                eigenvalues=evs[i],
                alpha=tail.alpha,
                xmin=tail.xmin,
                ks_distance=tail.ks_distance,
                n_tail=tail.n_tail,
                stable_rank=float(lam.sum() / top) if top > 0 else NAN,
                spectral_norm=float(np.sqrt(top)) if top >= 0 else NAN,
                reason=tail.reason,
            )
    return {name: out[name] for name, _ in _ordered(weights, out)}


def _ordered(weights: Any, out: Mapping[str, WeightSpectrum]) -> list[tuple[str, WeightSpectrum]]:
    return [(n, out[n]) for n, _ in _named_matrices(weights) if n in out]


WEIGHT_STATS = ("weight_alpha", "weight_ks_distance", "weight_stable_rank", "weight_spectral", "weight_nuclear")


def weight_matrix_stats(names: list[str], weights: list) -> dict[str, np.ndarray]:
    """(M,) float32 per statistic of WEIGHT_STATS for the 2-D weights W (see module docstring): the ESD
    power-law tail α and its KS distance, stable rank Σλ/λ₁, spectral norm σ₁, nuclear norm Σσ."""
    spectra = weight_spectra({n: (w.detach() if hasattr(w, "detach") else w) for n, w in zip(names, weights)})
    out = {k: np.full(len(names), np.nan, dtype=np.float32) for k in WEIGHT_STATS}
    for i, n in enumerate(names):
        ws = spectra[n]
        lam = B.to_numpy(ws.eigenvalues)
        out["weight_alpha"][i] = ws.alpha
        out["weight_ks_distance"][i] = ws.ks_distance
        out["weight_stable_rank"][i] = ws.stable_rank
        out["weight_spectral"][i] = ws.spectral_norm
        out["weight_nuclear"][i] = float(np.sqrt(np.clip(lam, 0, None)).sum())
    return out
