"""phasescope.spectra: streaming covariance accumulators and pure spectral metrics.

RankMe (Garrido et al. 2023; Li et al. 2025), α-ReQ (Agrawal et al. 2022), participation ratio,
stable rank, numerical rank, explained variance, weight-matrix spectra, and the phases of a metric
trajectory (:func:`detect_phases`, spectra/phases/). Functions accept numpy,
torch (CPU/CUDA) and jax arrays and compute on the input's device; importing this package imports
neither torch nor jax (backends are detected lazily via array-api-compat).
"""

from ._backend import to_numpy
from .accumulator import CovarianceAccumulator
from .metrics import (
    DEFAULT_FIT_RANGE,
    AlphaFit,
    alpha_req,
    auto_fit_range,
    explained_variance,
    floor_rtol,
    numerical_rank,
    participation_ratio,
    rankme,
    rankme_covariance,
    rankme_raw,
    stable_rank,
)
from .phases import PhaseResult, detect_phases
from .summary import METRIC_INFO, METRICS, Spectrum, spectrum_metrics

__all__ = [
    "DEFAULT_FIT_RANGE",
    "METRICS",
    "METRIC_INFO",
    "AlphaFit",
    "CovarianceAccumulator",
    "PhaseResult",
    "Spectrum",
    "alpha_req",
    "auto_fit_range",
    "detect_phases",
    "explained_variance",
    "floor_rtol",
    "numerical_rank",
    "participation_ratio",
    "rankme",
    "rankme_covariance",
    "rankme_raw",
    "spectrum_metrics",
    "stable_rank",
    "to_numpy",
]
