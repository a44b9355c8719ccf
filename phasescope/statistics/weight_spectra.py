"""Spectra of the weights themselves (WeightWatcher's ESD power-law α and KS distance, stable rank,
spectral and nuclear norms; :func:`phasescope.spectra.weights.weight_matrix_stats`), offline."""

from phasescope.spectra.weights import weight_matrix_stats

from .base import Statistic, Variable, register

_INFO = {
    "weight_alpha": "ESD power-law tail exponent α (Martin & Mahoney 2021)",
    "weight_ks_distance": "KS distance of the ESD power-law fit",
    "weight_stable_rank": "stable rank Σλ/λ₁ of W",
    "weight_spectral": "spectral norm σ₁ of W",
    "weight_nuclear": "nuclear norm Σσ of W",
}

WEIGHT_SPECTRA = register(
    Statistic(
        name="weight_spectra",
        cost="matrix",
        schedule="matrices",
        needs=("weights",),
        variables=tuple(Variable(k, "matrix", v) for k, v in _INFO.items()),
        compute=weight_matrix_stats,
        panels=("gradients",),
        doc=__doc__ or "",
        live=False,
    )
)
