"""Pure spectral metrics of a descending spectrum: RankMe, α-ReQ, participation ratio, stable rank, ….

Every function takes a 1-D numpy, torch (CPU/CUDA) or jax array (or a list, or a `Spectrum`, whose
first min(n, dim) eigenvalues are used), computes in float64 on the input's device, and returns
python floats. Undefined values are NaN, never exceptions. Trailing NaNs are padding (the store
NaN-pads eigenvalues to `max_rank`) and are ignored; a NaN inside the spectrum gives NaN.

Notation: λ₁ ≥ … ≥ λ_d are covariance eigenvalues of centred representations (N samples × d),
σ₁ ≥ … are singular values of the raw (uncentred) representation matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from phasescope.errors import PhasescopeError

from . import _backend as B

NAN = float("nan")
_EPS64 = 2.220446049250313e-16

# Li et al. 2025 (after Stringer et al. 2019): fit over zero-based indices 11..99.
DEFAULT_FIT_RANGE: tuple[int, int] = (11, 100)


def _floor(spectrum: Any, v: Any, rtol: float | None) -> float | None:
    """``rtol``, or for a `Spectrum` given without one its own round-off floor (its products' ε)."""
    if rtol is None and hasattr(spectrum, "products_eps") and hasattr(spectrum, "n_components"):
        return floor_rtol(int(v.shape[0]), spectrum.products_eps)
    return rtol


def _prep(values: Any) -> tuple[Any, Any]:
    """1-D float64 view of a spectrum (array, list or `Spectrum`), trailing NaN padding dropped."""
    if hasattr(values, "eigenvalues") and hasattr(values, "n_components"):  # a Spectrum
        values = values.eigenvalues[: values.n_components]
    v = B.as_array(values)
    xp = B.namespace(v)
    if v.ndim != 1:
        raise PhasescopeError(f"expected a 1-D spectrum, got shape {tuple(v.shape)}; pass e.g. spectrum.eigenvalues")
    with B.precise(xp):
        return xp, B.strip_padding(xp, B.to_float64(xp, v))


def rankme(values: Any, eps: float = 1e-7, *, max_components: int | None = None) -> float:
    """RankMe, the exponential of the spectral entropy (Roy & Vetterli 2007; Garrido et al. 2023).

        p_k = v_k / Σ_j v_j + ε,      RankMe = exp(−Σ_k p_k log p_k),      ε = 1e-7

    as in Garrido et al. 2023 ("RankMe", ICML) and Li et al. 2025 ("Tracing the representation
    geometry of language models"): the p_k are *not* renormalised after adding ε, so each zero value
    adds ε·log(1/ε) ≈ 1.6e-6 to the entropy. Which spectrum `values` is decides the variant:

    * Li et al. 2025: covariance eigenvalues λ_k of centred data (see `rankme_covariance`);
    * Garrido et al. 2023: singular values σ_k of the raw, uncentred matrix (`rankme_raw`).

    Tiny negative values (round-off of a PSD spectrum) count as 0. `max_components` keeps only the
    largest values first (Li et al. keep at most 2048 PCA components). NaN for an empty, all-zero
    or non-finite spectrum.
    """
    xp, v = _prep(values)
    with B.precise(xp):
        if max_components is not None:
            v = v[: int(max_components)]
        if v.shape[0] == 0 or not bool(xp.all(xp.isfinite(v))):
            return NAN
        v = xp.where(v > 0, v, xp.zeros_like(v))
        total = float(xp.sum(v))
        if not total > 0:
            return NAN
        p = v / total + eps
        return math.exp(-float(xp.sum(p * xp.log(p))))


def rankme_covariance(eigenvalues: Any, eps: float = 1e-7, *, max_components: int | None = None) -> float:
    """RankMe of covariance eigenvalues of centred data: the Li et al. 2025 variant (`rankme`)."""
    return rankme(eigenvalues, eps, max_components=max_components)


def rankme_raw(singular_values: Any, eps: float = 1e-7, *, max_components: int | None = None) -> float:
    """RankMe of singular values of the raw (uncentred) matrix: Garrido et al. 2023's original."""
    return rankme(singular_values, eps, max_components=max_components)


@dataclass(frozen=True)
class AlphaFit:
    """Result of `alpha_req`. `fit_range`/`r2_range` are zero-based half-open index ranges; the
    fitted line is log λ_k ≈ intercept − alpha·log k (k = index + 1). `reason` says why a field
    is NaN (None when the fit is fine)."""

    alpha: float
    r2: float
    intercept: float
    fit_range: tuple[int, int]
    reason: str | None = None
    r2_range: tuple[int, int] | None = None

    def predict(self, ranks: Any) -> Any:
        """λ̂_k = exp(intercept) · k^(−alpha) for 1-based ranks k (numpy)."""
        import numpy as np

        k = np.asarray(ranks, dtype=np.float64)
        return np.exp(self.intercept - self.alpha * np.log(k))


def floor_rtol(k: int, products_eps: float = _EPS64) -> float:
    """The round-off floor of k covariance eigenvalues, relative to λ₁: max(k·ε_float64, products_eps).

    k·ε_float64 is a float64 symmetric eigensolver's (Golub & Van Loan §8.1; numpy's `matrix_rank`
    convention); float32 products put an exact zero (e.g. LayerNorm's mean direction) at up to ~ε_32·λ₁
    (measured: 1e-10 to 2e-8·λ₁, the larger with longer blocks), far above that, so their ε (2^-23) is
    the floor then."""
    return max(int(k) * _EPS64, float(products_eps))


def numerical_rank(eigenvalues: Any, rtol: float | None = None) -> int:
    """Number of eigenvalues λ_k > rtol·λ₁; default rtol = d·ε_float64 (the round-off floor of a
    symmetric eigensolver on a d×d matrix, Golub & Van Loan §8.1), or for a `Spectrum` its own
    `floor_rtol` (products formed in float32 have ε_32's). 0 for an empty/zero spectrum."""
    xp, v = _prep(eigenvalues)
    rtol = _floor(eigenvalues, v, rtol)
    with B.precise(xp):
        d = v.shape[0]
        if d == 0:
            return 0
        top = float(xp.max(v))
        if not top > 0 or not math.isfinite(top):
            return 0
        tol = (d * _EPS64 if rtol is None else float(rtol)) * top
        return int(xp.sum(xp.astype(v > tol, xp.int64)))


def auto_fit_range(eigenvalues: Any, rtol: float | None = None) -> tuple[int, int]:
    """The `fit_range="auto"` rule, from the numerical rank r (see `numerical_rank`):

    * r ≥ 110: Li et al.'s (11, 100) unchanged;
    * r < 110 (small models, d < 128): the same fractions of r, i.e. zero-based indices
      round(r/10) … round(10·r/11) (d = 64 → (6, 58); d = 32 → (3, 29)), skipping the ~10 % head
      and the ~10 % tail, which deviate from a power law at any size.

    For r < 110 the R² is taken over the fit range itself. `rtol`: the round-off floor (`numerical_rank`).
    """
    r = numerical_rank(eigenvalues, rtol)  # a Spectrum's own floor when rtol is None
    if r >= 110:
        return DEFAULT_FIT_RANGE
    lo = max(1, round(r / 10))
    return lo, max(lo, round(10 * r / 11))


def alpha_req(
    eigenvalues: Any, fit_range: tuple[int, int] | str = DEFAULT_FIT_RANGE, *, rtol: float | None = None
) -> AlphaFit:
    """α-ReQ, the power-law decay λ_k ∝ k^(−α) of the eigenspectrum (Agrawal et al. 2022, NeurIPS).

    Fit exactly as Li et al. 2025 (code after Stringer et al. 2019, Nature): weighted least squares

        log λ_k = b − α·log k,   weights w_k = 1/k,   k = i + 1 for i in range(*fit_range)

    i.e. (α, b) solves the 2×2 normal equations Σ w x xᵀ β = Σ w x y with x = (−log k, 1). Default
    `fit_range=(11, 100)` is their `trange = arange(11, 100)` (ranks 12…100). `"auto"` picks a range
    from the numerical rank (`auto_fit_range`), for small models.

    R² (unweighted, in log space, sklearn's r2_score) follows their code: over zero-based indices
    fit_range[0] + 1 … max_range − 1 with max_range = 500 if len ≥ 512 else len − 10 (their
    `trange += 1` shifts the start by one). The end is clipped to the positive eigenvalues.

    Returns NaN fields plus a `reason` (never raises on data) when the range asks for more
    eigenvalues than there are, or holds non-finite or non-positive ones, where "non-positive"
    includes eigenvalues at or below the round-off floor `rtol`·λ₁ (default len·ε_float64; see
    `floor_rtol`, `numerical_rank`): those are zeros of rank-deficient data plus noise, and a fit
    through them is meaningless.
    """
    xp, v = _prep(eigenvalues)
    rtol = _floor(eigenvalues, v, rtol)
    auto = isinstance(fit_range, str)
    if auto:
        if fit_range != "auto":
            raise PhasescopeError(f"fit_range must be (start, stop) or 'auto', got {fit_range!r}")
        fit_range = auto_fit_range(v, rtol)
    lo, hi = int(fit_range[0]), int(fit_range[1])
    if (lo < 0 or hi <= lo) and not auto:
        raise PhasescopeError(f"fit_range must satisfy 0 <= start < stop, got {fit_range!r}")
    n = int(v.shape[0])

    def fail(reason: str) -> AlphaFit:
        return AlphaFit(NAN, NAN, NAN, (lo, hi), reason, None)

    if hi - lo < 3:
        return fail(f"fit range {lo}..{hi} has fewer than 3 points; too few eigenvalues for a power-law fit")
    if n < hi:
        return fail(f"only {n} eigenvalues, fit range {lo}..{hi} needs {hi}; use fit_range='auto' or a smaller range")
    with B.precise(xp):
        if not bool(xp.all(xp.isfinite(v))):
            return fail("non-finite eigenvalue (NaN/Inf) in the spectrum")
        seg = v[lo:hi]
        # Eigenvalues at or below the round-off floor d·ε·λ₁ are zeros in disguise (rank-deficient
        # data); fitting their noise would give a meaningless α, so they count as non-positive.
        floor = (n * _EPS64 if rtol is None else float(rtol)) * max(float(xp.max(v)), 0.0)
        if not bool(xp.all(seg > floor)):
            first = lo + int(xp.sum(xp.astype(seg > floor, xp.int64)))
            return fail(
                f"non-positive eigenvalue at index {first} inside fit range {lo}..{hi} (numerical "
                f"rank {numerical_rank(v, rtol)}: data rank too low); use more samples or fit_range='auto'"
            )
        # The 2×2 weighted normal equations, in python floats (≤ a few hundred terms).
        y = [float(t) for t in B.to_numpy(xp.log(seg))]
    sw = sx = sxx = sy = sxy = 0.0
    for i, yi in enumerate(y):
        k = lo + i + 1
        w, x = 1.0 / k, -math.log(k)
        sw += w
        sx += w * x
        sxx += w * x * x
        sy += w * yi
        sxy += w * x * yi
    det = sxx * sw - sx * sx
    alpha = (sxy * sw - sx * sy) / det
    intercept = (sxx * sy - sx * sxy) / det

    # R² over Li et al.'s range, clipped to positive finite eigenvalues.
    if auto and (lo, hi) != DEFAULT_FIT_RANGE:
        r_lo, r_hi = lo, hi
    else:
        r_lo, r_hi = lo + 1, (500 if n >= 512 else n - 10)
    with B.precise(xp):
        tail = v[r_lo : max(r_lo, r_hi)]
        good = B.to_numpy((tail > floor) & xp.isfinite(tail))
    n_ok = 0
    while n_ok < len(good) and good[n_ok]:
        n_ok += 1
    r_hi = r_lo + n_ok
    r2, reason = NAN, None
    if r_hi - r_lo >= 2:
        with B.precise(xp):
            yt = B.to_numpy(xp.log(v[r_lo:r_hi]))
        ks = [math.log(k) for k in range(r_lo + 1, r_hi + 1)]
        res = sum((yt[i] - (intercept - alpha * ks[i])) ** 2 for i in range(len(ks)))
        mean = sum(yt) / len(yt)
        tot = sum((t - mean) ** 2 for t in yt)
        if tot > 0:
            r2 = 1.0 - res / tot
        else:
            reason = "R² undefined: the spectrum is flat over the R² range"
    else:
        reason = f"R² undefined: fewer than 2 positive eigenvalues in range {r_lo}..{r_hi}"
    return AlphaFit(alpha, r2, intercept, (lo, hi), reason, (r_lo, r_hi))


def participation_ratio(eigenvalues: Any) -> float:
    """Participation ratio PR = (Σλ_k)² / Σλ_k² (Gao et al. 2017; Recanatesi et al. 2022). NaN if Σλ = 0."""
    xp, v = _prep(eigenvalues)
    with B.precise(xp):
        s, s2 = float(xp.sum(v)), float(xp.sum(v * v))
    return s * s / s2 if s2 > 0 else NAN


def stable_rank(eigenvalues: Any) -> float:
    """Stable rank Σλ_k / λ₁ = ‖X‖_F² / ‖X‖₂² of the (centred) matrix (Rudelson & Vershynin 2007).

    For weight matrices pass eigenvalues of WᵀW (squared singular values)."""
    xp, v = _prep(eigenvalues)
    with B.precise(xp):
        if v.shape[0] == 0:
            return NAN
        top, s = float(xp.max(v)), float(xp.sum(v))
    return s / top if top > 0 else NAN


def explained_variance(eigenvalues: Any, k: int) -> float:
    """Fraction of variance in the top k components: Σ_{i≤k} λ_i / Σ λ_i (eigenvalues descending)."""
    xp, v = _prep(eigenvalues)
    with B.precise(xp):
        s = float(xp.sum(v))
        top = float(xp.sum(v[: int(k)]))
    return top / s if s > 0 else NAN
