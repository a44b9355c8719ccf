"""Singular-value statistics of every selected 2-D weight gradient (nuclear, spectral and Frobenius
norms, stable rank, σ₁/‖G‖_*, σ_min), one batched ``svdvals`` per shape on the gradients' device
(:func:`phasescope.gradients.gradient_matrix_stats`; after Layer_Gradient, Li et al. 2024).
"""

from phasescope.gradients import MATRIX_STATS, gradient_matrix_stats

from .base import Statistic, Variable, register

_INFO = {
    "grad_nuclear": "nuclear norm Σσ of the gradient",
    "grad_spectral": "spectral norm σ₁ of the gradient",
    "grad_frobenius": "Frobenius norm of the gradient",
    "grad_stable_rank": "stable rank Σσ²/σ₁² of the gradient",
    "grad_top_ratio": "σ₁ / Σσ of the gradient",
    "grad_sigma_min": "smallest singular value of the gradient",
}

MATRIX_SVD = register(
    Statistic(
        name="matrix_svd",
        cost="matrix",
        schedule="matrices",
        needs=("matrix_grads",),
        variables=tuple(Variable(k, "matrix", _INFO[k]) for k in MATRIX_STATS),
        compute=gradient_matrix_stats,
        panels=("gradients",),
        doc=__doc__ or "",
    )
)
