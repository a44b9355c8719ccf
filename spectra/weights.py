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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phasescope.errors import PhasescopeError

from . import _backend as B
from . import esd_metrics as E

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


FITS = ("clauset", "ww")


@dataclass(frozen=True)
class WeightSpectrum:
    """Spectrum summary of one weight matrix (eigenvalues of WᵀW, descending, on W's device; a Conv2D
    weight's pooled per-kernel-position ESD, as WeightWatcher's, on the host).

    ``alpha``/``xmin``/``ks_distance``/``n_tail``: the ESD tail's power law by ``fit`` ("clauset":
    phasescope's two-sided KS over tails of ≥ ``min_tail`` points; "ww": WeightWatcher 0.7.7's own fit,
    `esd_metrics.esd_power_law_ww`). WeightWatcher's norm metrics of that α (`esd_metrics.esd_norm_metrics`):
    ``alpha_weighted`` = α·log10 λ_max, ``log_norm`` = log10 Σλ, ``log_spectral_norm`` = log10 λ_max,
    ``log_alpha_norm`` = log10 Σλ^α. Its Marchenko–Pastur fit (`esd_metrics.mp_fit`; NaN unless ``mp``):
    ``mp_soft_rank`` = λ₊/λ_max, ``mp_bulk_max`` = λ₊, ``num_spikes`` above the Tracy–Widom edge. And
    ``num_traps``: spikes of the element-shuffled ESD (correlation traps; NaN unless ``traps``).
    ``reasons``: why a field is NaN, by field group ("tail", "mp", "traps").
    """

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
    alpha_weighted: float = NAN
    log_norm: float = NAN
    log_spectral_norm: float = NAN
    log_alpha_norm: float = NAN
    mp_soft_rank: float = NAN
    mp_bulk_max: float = NAN
    num_spikes: float = NAN
    num_traps: float = NAN
    fit: str = "clauset"
    reasons: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return {
            "alpha": self.alpha,
            "stable_rank": self.stable_rank,
            "spectral_norm": self.spectral_norm,
            "ks_distance": self.ks_distance,
            "alpha_weighted": self.alpha_weighted,
            "log_norm": self.log_norm,
            "log_spectral_norm": self.log_spectral_norm,
            "log_alpha_norm": self.log_alpha_norm,
            "mp_soft_rank": self.mp_soft_rank,
            "num_spikes": self.num_spikes,
            "num_traps": self.num_traps,
        }


def _named_matrices(weights: Any, conv2d: bool = False) -> Iterable[tuple[str, Any]]:
    ndims = (2, 4) if conv2d else (2,)
    if hasattr(weights, "named_parameters"):  # torch.nn.Module
        for name, p in weights.named_parameters():
            if p.ndim in ndims:
                yield name, p.detach()
    elif isinstance(weights, Mapping):
        for name, p in weights.items():
            if getattr(p, "ndim", 0) in ndims:
                yield str(name), p
    else:
        raise PhasescopeError(
            f"weight_spectra needs a torch module or a mapping name -> 2-D array, got {type(weights).__name__}"
        )


def weight_spectra(
    weights: Any,
    *,
    min_tail: int = 10,
    select: Any = None,
    fit: str = "clauset",
    mp: bool = False,
    traps: bool = False,
    conv2d: bool = True,
    rng: Any = 0,
) -> dict[str, WeightSpectrum]:
    """ESD summaries of every 2-D weight (and, with `conv2d`, every Conv2D weight) of a torch module or a
    {name: array} mapping; see `WeightSpectrum` for the fields.

    Matrices of equal shape (and backend/device) are stacked and eigendecomposed in one batched call on
    an accelerator. `select(name) -> bool` filters names (default: all 2-D and 4-D parameters; biases and
    norms are 1-D). `fit`: "clauset" (phasescope's) or "ww" (WeightWatcher 0.7.7's xmin and KS distance, so
    every number compares with its `analyze()`); `mp`: the Marchenko–Pastur fit (soft rank, bulk edge,
    spikes; WeightWatcher's `mp_fit=True`); `traps`: correlation traps from one element-shuffled copy of
    each weight (5 when it has fewer than 100 eigenvalues; an extra SVD per matrix, seeded by `rng`), as
    WeightWatcher's `randomize=True`. A Conv2D weight (out, in, kh, kw) is WeightWatcher's kh·kw slices scaled by √½.
    """
    if fit not in FITS:
        raise PhasescopeError(f"weight fit must be one of {', '.join(map(repr, FITS))}, got {fit!r}")
    gen = E._rng(rng) if traps else None
    groups: dict[tuple, list[tuple[str, Any]]] = {}
    for name, raw in _named_matrices(weights, conv2d):
        if select is not None and not select(name):
            continue
        w = B.as_array(raw)
        key = (tuple(w.shape), B.namespace(w).__name__, str(B.device(w)))
        groups.setdefault(key, []).append((name, w))
    out: dict[str, WeightSpectrum] = {}
    for (shape, _, where), items in groups.items():
        xp = B.namespace(items[0][1])
        if len(shape) == 4:  # Conv2D: WeightWatcher's pooled slices, float64 SVD on the host
            evs = [E.pooled_eigenvalues(E.conv2d_matrices(w)) for _, w in items]
        else:
            with B.precise(xp):
                if where == "cpu":  # LAPACK goes one matrix at a time anyway: no stacked copy
                    evs = [weight_eigenvalues(w) for _, w in items]
                else:  # one batched call on an accelerator
                    evs = weight_eigenvalues(xp.stack([w for _, w in items], axis=0))
        for i, (name, w) in enumerate(items):
            lam = np.asarray(B.to_numpy(evs[i]), dtype=np.float64)
            out[name] = _summarise(name, shape, evs[i], lam, w, fit, min_tail, mp, gen)
    return {name: out[name] for name, _ in _ordered(weights, out, conv2d)}


def _summarise(name: str, shape: tuple, ev: Any, lam: np.ndarray, w: Any, fit: str, min_tail: int, mp: bool, gen: Any):
    reasons: dict[str, str] = {}
    if fit == "ww":
        t = E.esd_power_law_ww(lam)
        alpha, xmin, ks, n_tail, why = t.alpha, t.xmin, t.ks_distance, t.n_tail, t.reason
    else:
        c = esd_power_law(lam, min_tail=min_tail)
        alpha, xmin, ks, n_tail, why = c.alpha, c.xmin, c.ks_distance, c.n_tail, c.reason
    if why:
        reasons["tail"] = why
    top = float(lam[0]) if lam.size else NAN
    norms = E.esd_norm_metrics(lam, alpha=alpha)
    if len(shape) == 4:
        n, m, _rf = E.ww_conv2d_dims(shape)
    else:
        n, m = max(shape), min(shape)
    extra: dict[str, Any] = {}
    if mp:
        f = E.mp_fit(lam, n, m)
        extra = {"mp_soft_rank": f.mp_softrank, "mp_bulk_max": f.bulk_max, "num_spikes": float(f.num_spikes)}
        if f.reason:
            reasons["mp"] = f.reason
    else:
        reasons["mp"] = "not requested (mp=False)"
    if gen is not None:
        mats = E.conv2d_matrices(w) if len(shape) == 4 else E._host64(w)[None]
        r = E.randomized_esd(mats, rng=gen, dims=(n, m))
        extra["num_traps"] = float(r.num_traps)
        if r.reason:
            reasons["traps"] = r.reason
    else:
        reasons["traps"] = "not requested (traps=False)"
    return WeightSpectrum(
        name=name,
        shape=shape,
        eigenvalues=ev,
        alpha=alpha,
        xmin=xmin,
        ks_distance=ks,
        n_tail=n_tail,
        stable_rank=float(lam.sum() / top) if top > 0 else NAN,
        spectral_norm=float(np.sqrt(top)) if top >= 0 else NAN,
        reason=why,
        alpha_weighted=norms.alpha_weighted,
        log_norm=norms.log_norm,
        log_spectral_norm=norms.log_spectral_norm,
        log_alpha_norm=norms.log_alpha_norm,
        fit=fit,
        reasons=reasons,
        **extra,
    )


def _ordered(weights: Any, out: Mapping[str, WeightSpectrum], conv2d: bool = False) -> list[tuple[str, WeightSpectrum]]:
    return [(n, out[n]) for n, _ in _named_matrices(weights, conv2d) if n in out]


#: stored per matrix as matrix_<name>; the WeightSpectrum field each reads (nuclear: Σσ of its eigenvalues)
WEIGHT_FIELDS = {
    "weight_alpha": "alpha",
    "weight_ks_distance": "ks_distance",
    "weight_xmin": "xmin",
    "weight_stable_rank": "stable_rank",
    "weight_spectral": "spectral_norm",
    "weight_nuclear": None,
    "weight_alpha_weighted": "alpha_weighted",
    "weight_log_norm": "log_norm",
    "weight_log_spectral_norm": "log_spectral_norm",
    "weight_log_alpha_norm": "log_alpha_norm",
    "weight_mp_soft_rank": "mp_soft_rank",
    "weight_num_spikes": "num_spikes",
    "weight_num_traps": "num_traps",
}
WEIGHT_STATS = tuple(WEIGHT_FIELDS)
#: the (M, weight_rank) ESDs stored beside WEIGHT_STATS (the per-layer ESD plot draws them)
WEIGHT_EIGENVALUES = "weight_eigenvalues"


def esd_size(shape: tuple[int, ...]) -> int:
    """How many eigenvalues a weight of ``shape`` has in its ESD: min(a, b) for a matrix (a, b),
    kh·kw·min(out, in) for a Conv2D weight (out, in, kh, kw) (WeightWatcher's pooled slices); 0 else."""
    if len(shape) == 2:
        return int(min(shape))
    if len(shape) == 4:
        return int(shape[2] * shape[3] * min(shape[0], shape[1]))
    return 0


def weight_eigen_table(names: list[str], spectra: Mapping[str, WeightSpectrum]) -> np.ndarray:
    """(M, max ESD size) float32: each weight's eigenvalues λ = σ² of WᵀW, descending, NaN-padded, in
    ``names`` order (the store's ``weight_eigenvalues`` row)."""
    evs = [np.asarray(B.to_numpy(spectra[n].eigenvalues), dtype=np.float32).ravel() for n in names]
    out = np.full((len(names), max((e.size for e in evs), default=0)), np.nan, dtype=np.float32)
    for i, e in enumerate(evs):
        out[i, : e.size] = e
    return out


#: per-matrix change against a reference (base) model, stored as matrix_<name>
CHANGE_STATS = ("weight_distance_from_ref", "weight_alpha_change", "weight_spectral_change", "weight_esd_change")


def named_weights(names: list[str], weights: list) -> dict[str, Any]:
    """{name: weight} with torch tensors detached: what `weight_spectra` takes for parallel lists."""
    return {n: (w.detach() if hasattr(w, "detach") else w) for n, w in zip(names, weights)}


def weight_change_stats(
    names: list[str],
    weights: list,
    reference: list,
    *,
    fit: str = "clauset",
    now: Mapping[str, WeightSpectrum] | None = None,
    ref: Mapping[str, WeightSpectrum] | None = None,
) -> dict[str, np.ndarray]:
    """(M,) float32 per statistic of CHANGE_STATS: how each weight W moved from its reference W₀ (a base
    model before fine-tuning, or a sweep's first checkpoint): ‖W − W₀‖_F / ‖W₀‖_F; α(W) − α(W₀) of the
    ESD tail (`fit`); σ₁(W)/σ₁(W₀) − 1; and ‖λ − λ₀‖₂ / ‖λ₀‖₂ between the descending ESDs. NaN where a
    reference is missing (None) or of another shape. `now` / `ref`: the two sides' `weight_spectra` (by
    name, with the same `fit`) when the caller has them already; computed here otherwise."""
    out = {k: np.full(len(names), np.nan, dtype=np.float32) for k in CHANGE_STATS}
    cur, base = named_weights(names, weights), named_weights(names, reference)
    pairs = [n for n in names if base[n] is not None and tuple(cur[n].shape) == tuple(base[n].shape)]
    if not pairs:
        return out
    now = now if now is not None else weight_spectra({n: cur[n] for n in pairs}, fit=fit)
    ref = ref if ref is not None else weight_spectra({n: base[n] for n in pairs}, fit=fit)
    for n in pairs:
        i, a, b = names.index(n), now[n], ref[n]
        w64, r64 = (np.asarray(B.to_numpy(B.as_array(x)), np.float64) for x in (cur[n], base[n]))
        lam, lam0 = (np.asarray(B.to_numpy(x.eigenvalues), np.float64) for x in (a, b))
        out["weight_distance_from_ref"][i] = np.linalg.norm(w64 - r64) / np.linalg.norm(r64) if r64.any() else np.nan
        out["weight_alpha_change"][i] = a.alpha - b.alpha
        out["weight_spectral_change"][i] = a.spectral_norm / b.spectral_norm - 1 if b.spectral_norm > 0 else np.nan
        out["weight_esd_change"][i] = np.linalg.norm(lam - lam0) / np.linalg.norm(lam0) if lam0.any() else np.nan
    return out


class WeightReference:
    """A reference (base) model's weights for CHANGE_STATS: detached copies taken now, by name, and their
    `weight_spectra` (with ``fit``), computed at first use and kept."""

    def __init__(self, weights: Mapping[str, Any], *, fit: str = "clauset"):
        self.weights = {str(n): _copy(w) for n, w in weights.items()}
        self.fit = fit
        self._spectra: dict[str, WeightSpectrum] | None = None

    @property
    def spectra(self) -> dict[str, WeightSpectrum]:
        if self._spectra is None:
            self._spectra = weight_spectra(self.weights, fit=self.fit)
        return self._spectra


def _copy(w: Any) -> Any:
    if hasattr(w, "detach"):  # torch: a copy on its device, outside autograd
        return w.detach().clone()
    return np.array(B.to_numpy(B.as_array(w)), copy=True)


def weight_matrix_stats(
    names: list[str],
    weights: list,
    *,
    fit: str = "clauset",
    traps: bool = True,
    rng: Any = 0,
    reference: WeightReference | None = None,
) -> dict[str, np.ndarray]:
    """(M,) float32 per statistic of WEIGHT_STATS for the weights W (see `WeightSpectrum`): the ESD
    power-law tail α (`fit`), its KS distance and λ_min, stable rank Σλ/λ₁, spectral norm σ₁, nuclear
    norm Σσ, WeightWatcher's norm metrics, its MP soft rank and spike count, and (`traps`) correlation
    traps; WEIGHT_EIGENVALUES, the (M, max ESD size) eigenvalues themselves; and with a ``reference``,
    CHANGE_STATS against it (`weight_change_stats`, from the same spectra)."""
    now = weight_spectra(named_weights(names, weights), fit=fit, mp=True, traps=traps, rng=rng)
    out = weight_stats_table(names, now)
    if reference is not None:
        base = [reference.weights.get(n) for n in names]
        out.update(weight_change_stats(names, weights, base, fit=fit, now=now, ref=reference.spectra))
    return out


def weight_stats_table(names: list[str], spectra: Mapping[str, WeightSpectrum]) -> dict[str, np.ndarray]:
    """WEIGHT_STATS as (M,) float32 columns, in ``names`` order, of `weight_spectra` results, and their
    eigenvalues as WEIGHT_EIGENVALUES (`weight_eigen_table`)."""
    out = {k: np.full(len(names), np.nan, dtype=np.float32) for k in WEIGHT_STATS}
    out[WEIGHT_EIGENVALUES] = weight_eigen_table(names, spectra)
    for i, n in enumerate(names):
        ws = spectra[n]
        for key, attr in WEIGHT_FIELDS.items():
            if attr is None:
                out[key][i] = float(np.sqrt(np.clip(B.to_numpy(ws.eigenvalues), 0, None)).sum())
            else:
                out[key][i] = getattr(ws, attr)
    return out
