"""Spectra of the weights themselves, WeightWatcher's layer metrics (Martin & Mahoney 2021): the ESD
power-law α and its KS distance, stable rank, spectral and nuclear norms, α-weighted and the log norms,
the Marchenko–Pastur soft rank and spike count, and correlation traps
(:func:`phasescope.spectra.weights.weight_matrix_stats`; Conv2D weights as WeightWatcher reads them),
offline (``phasescope analyze --weights``; ``--weight-fit ww`` for WeightWatcher's own tail fit) and live
on the preset's sparse ``weights`` schedule (``preset="full"``, or ``weight_schedule=``)."""

from phasescope.spectra.weights import WEIGHT_EIGENVALUES, WEIGHT_STATS, weight_matrix_stats

from .base import Statistic, Variable, register

_INFO = {
    "weight_alpha": "ESD power-law tail exponent α (Martin & Mahoney 2021)",
    "weight_ks_distance": "KS distance of the ESD power-law fit",
    "weight_xmin": "λ_min where the fitted power-law tail starts",
    "weight_stable_rank": "stable rank Σλ/λ₁ of W",
    "weight_spectral": "spectral norm σ₁ of W",
    "weight_nuclear": "nuclear norm Σσ of W",
    "weight_alpha_weighted": "α-weighted: α·log10 λ_max (WeightWatcher's alpha_weighted)",
    "weight_log_norm": "log10 of the squared Frobenius norm Σλ (WeightWatcher's log_norm)",
    "weight_log_spectral_norm": "log10 λ_max (WeightWatcher's log_spectral_norm)",
    "weight_log_alpha_norm": "log10 Σλ^α, the Schatten α-norm (WeightWatcher's log_alpha_norm)",
    "weight_mp_soft_rank": "Marchenko–Pastur soft rank λ₊/λ_max (WeightWatcher's mp_softrank)",
    "weight_num_spikes": "eigenvalues above the MP bulk's Tracy–Widom edge (WeightWatcher's num_spikes)",
    "weight_num_traps": "correlation traps: spikes of the element-shuffled ESD (WeightWatcher's num_traps)",
}
assert tuple(_INFO) == WEIGHT_STATS  # one list of names: the store's, WeightWatcher's mapping in docs

WEIGHT_SPECTRA = register(
    Statistic(
        name="weight_spectra",
        cost="matrix",
        schedule="weights",
        needs=("weights",),
        variables=(
            *(Variable(k, "matrix", v) for k, v in _INFO.items()),
            Variable(WEIGHT_EIGENVALUES, "matrix_spectrum", "the ESD: eigenvalues λ = σ² of WᵀW, descending"),
        ),
        compute=weight_matrix_stats,
        panels=("weights", "esd"),
        doc=__doc__ or "",
    )
)
