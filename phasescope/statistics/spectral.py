"""Spectral geometry of each probe's representation: RankMe, α-ReQ and the other spectrum metrics.

Computed from the covariance eigenvalues of one capture (:class:`phasescope.spectra.Spectrum`) over
the first min(n, d, max_rank) of them — the components a PCA of the n × d data returns, capped as Li et
al. 2025's code caps PCA at 2048 — by :func:`phasescope.spectra.spectrum_metrics` (RankMe of Li et al.
2025 / Garrido et al. 2023, α-ReQ of Agrawal et al. 2022, participation ratio, stable rank, …).
"""

from __future__ import annotations

from typing import Any

from phasescope.spectra import METRIC_INFO, Spectrum, spectrum_metrics

from .base import ProbeInputs, Statistic, Variable, register

NAN = float("nan")


def spectral_metrics(
    spectrum: Spectrum | None, *, fit_range: Any = "auto", max_rank: int | None = None
) -> dict[str, float]:
    """Every metric of METRIC_INFO for one probe's spectrum; NaN for all when fewer than 2 samples."""
    if spectrum is None or spectrum.n < 2:
        return dict.fromkeys(METRIC_INFO, NAN)
    return spectrum_metrics(spectrum, fit_range=fit_range, max_components=max_rank)


def _per_probe(inputs: ProbeInputs, state: dict) -> dict[str, float]:
    if inputs.spectrum is None:
        return {}
    return spectral_metrics(inputs.spectrum, fit_range=inputs.fit_range, max_rank=inputs.max_rank)


SPECTRAL = register(
    Statistic(
        name="spectral_geometry",
        cost="capture",
        schedule="capture",
        needs=("spectrum",),
        variables=tuple(Variable(k, "metric", v) for k, v in METRIC_INFO.items()),
        compute=spectral_metrics,
        per_probe=_per_probe,
        panels=("overview", "heatmap", "trajectory", "layers"),
        doc=__doc__ or "",
    )
)
