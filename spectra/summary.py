"""One spectrum and its scalar metrics: the `Spectrum` an accumulator computes, and `spectrum_metrics`,
every scalar metric of it as python floats, in display order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _backend as B
from .metrics import (
    _EPS64,
    DEFAULT_FIT_RANGE,
    alpha_req,
    explained_variance,
    floor_rtol,
    numerical_rank,
    participation_ratio,
    rankme,
    stable_rank,
)

NAN = float("nan")

METRIC_INFO: dict[str, str] = {
    "rankme": "RankMe, covariance eigenvalues (Li et al. 2025): exp entropy of λ/Σλ",
    "alpha": "α-ReQ: power-law decay λ_k ∝ k^-α (Agrawal et al. 2022; Li et al. 2025 fit)",
    "alpha_r2": "R² of the α-ReQ power-law fit (log space)",
    "rankme_raw": "RankMe, raw singular values (Garrido et al. 2023)",
    "participation_ratio": "participation ratio (Σλ)²/Σλ²",
    "stable_rank": "stable rank Σλ/λ₁",
    "numerical_rank": "numerical rank: #λ above the round-off floor (eigen_floor·λ₁)",
    "top1_variance": "variance fraction of the top component",
    "top10_variance": "variance fraction of the top 10 components",
    "eigen_floor": "round-off floor: λ/λ₁ at or below which an eigenvalue counts as zero (max(k·ε₆₄, ε_products))",
}
METRICS: tuple[str, ...] = tuple(METRIC_INFO)


@dataclass
class Spectrum:
    """Result of `CovarianceAccumulator.compute()`.

    eigenvalues: descending covariance eigenvalues λ = eig(XcᵀXc)/(n − 1) (ddof=1), length `dim`,
        backend of the data, round-off negatives clipped to 0 (NaN when n < 2).
    singular_values: descending singular values of the raw (uncentred) n × d matrix, length `dim`
        (zeros past min(n, d)), or None unless `raw_singular_values=True`.
    n: samples used; n_nonfinite: rows dropped because they held NaN/Inf; mean: (dim,) mean.
    route: "covariance" (d × d eigenproblem) or "gram" (N × N, when n < dim).
    products_eps: machine ε of the arithmetic the covariance products were formed in (float64's
        2.2e-16 unless float32 or TF32 products were used): eigenvalues at or below
        `floor_rtol`·λ₁ = max(k·ε_float64, products_eps)·λ₁ are zeros in disguise (see `numerical_rank`).

    jax results are float64 arrays made under `jax.enable_x64`; use them under x64 too.
    """

    eigenvalues: Any
    singular_values: Any
    n: int
    mean: Any
    n_nonfinite: int
    dim: int
    route: str = "covariance"
    products_eps: float = _EPS64

    def floor_rtol(self, k: int | None = None) -> float:
        """λ/λ₁ at or below which an eigenvalue of this spectrum counts as zero: the float64 eigensolver's
        k·ε (k eigenvalues, default min(n, dim)) or the products' ε, whichever is larger."""
        return floor_rtol(self.n_components if k is None else k, self.products_eps)

    @property
    def n_components(self) -> int:
        """min(n, dim): the number of components an SVD/PCA of the data matrix returns."""
        return min(self.n, self.dim)

    def metrics(self, **kwargs: Any) -> dict[str, float]:
        """`spectrum_metrics(self, **kwargs)`."""
        return spectrum_metrics(self, **kwargs)


def spectrum_metrics(
    spec_or_eigenvalues: Any,
    *,
    fit_range: tuple[int, int] | str = DEFAULT_FIT_RANGE,
    singular_values: Any = None,
    eps: float = 1e-7,
    max_components: int | None = None,
    products_eps: float | None = None,
) -> dict[str, float]:
    """All of `METRICS` for a `Spectrum` or a descending eigenvalue array (NaN where undefined).

    From a `Spectrum`, the first min(n, dim) eigenvalues / singular values are used: the components
    an SVD or PCA of the data matrix returns (this matters only through RankMe's ε per component).
    `max_components` caps them further (Li et al. keep ≤ 2048 PCA components). "rankme_raw" needs
    raw singular values: from the spectrum (`raw_singular_values=True`) or `singular_values=`.

    `fit_range` is α-ReQ's (see `alpha_req`): (11, 100) is Li et al. 2025's; "auto" keeps it when
    the numerical rank r ≥ 110 and otherwise fits indices round(r/10) … round(10r/11), e.g. (6, 58)
    for a d = 64 model (`auto_fit_range`). Trailing NaNs (store padding) are ignored.

    Eigenvalues at or below the round-off floor max(k·ε_float64, products_eps)·λ₁ count as zero in the
    numerical rank and in α's fit (`floor_rtol`); `products_eps` is the spectrum's own (float32 products:
    2^-23), else float64's. The floor used is returned as "eigen_floor".
    """
    if isinstance(spec_or_eigenvalues, Spectrum):
        spec = spec_or_eigenvalues
        if products_eps is None:
            products_eps = spec.products_eps
        k = spec.n_components
        eig = spec.eigenvalues[:k]
        if singular_values is None and spec.singular_values is not None:
            singular_values = spec.singular_values[:k]
    else:
        eig = B.as_array(spec_or_eigenvalues)
    xp = B.namespace(eig)
    with B.precise(xp):
        eig = B.strip_padding(xp, eig)
    if max_components is not None:
        eig = eig[: int(max_components)]
        if singular_values is not None:
            singular_values = B.as_array(singular_values)[: int(max_components)]
    rtol = floor_rtol(int(eig.shape[0]), _EPS64 if products_eps is None else products_eps)
    fit = alpha_req(eig, fit_range, rtol=rtol)
    out = {
        "rankme": rankme(eig, eps),
        "alpha": fit.alpha,
        "alpha_r2": fit.r2,
        "rankme_raw": rankme(singular_values, eps) if singular_values is not None else NAN,
        "participation_ratio": participation_ratio(eig),
        "stable_rank": stable_rank(eig),
        "numerical_rank": float(numerical_rank(eig, rtol)),
        "top1_variance": explained_variance(eig, 1),
        "top10_variance": explained_variance(eig, 10),
        "eigen_floor": rtol,
    }
    if not _all_finite(eig):
        out = dict.fromkeys(out, NAN)
    return {k: float(out[k]) for k in METRICS}


def _all_finite(eig: Any) -> bool:
    xp = B.namespace(eig)
    with B.precise(xp):
        return eig.shape[0] > 0 and bool(xp.all(xp.isfinite(eig)))
