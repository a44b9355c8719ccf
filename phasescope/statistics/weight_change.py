"""How each weight matrix moved from a base model (fine-tuning) or from a sweep's first checkpoint:
‖W − W₀‖_F/‖W₀‖_F, the change of the ESD tail's α, of σ₁ and of the whole ESD
(:func:`phasescope.spectra.weights.weight_change_stats`); offline, ``phasescope analyze --weights
--reference CKPT`` (``first``: the sweep's first checkpoint); live, on the weight schedule with
``weight_reference=`` ("stage": the weights as each ``obs.stage()`` starts; or a base model)."""

from phasescope.spectra.weights import CHANGE_STATS, weight_change_stats

from .base import Statistic, Variable, register

_INFO = {
    "weight_distance_from_ref": "‖W − W₀‖_F / ‖W₀‖_F: relative distance from the reference model's matrix",
    "weight_alpha_change": "α(W) − α(W₀): change of the ESD power-law tail exponent",
    "weight_spectral_change": "σ₁(W)/σ₁(W₀) − 1: relative change of the spectral norm",
    "weight_esd_change": "‖λ − λ₀‖₂ / ‖λ₀‖₂ between the descending ESDs",
}
assert tuple(_INFO) == CHANGE_STATS

WEIGHT_CHANGE = register(
    Statistic(
        name="weight_change",
        cost="matrix",
        schedule="weights",
        needs=("weights", "reference"),
        variables=tuple(Variable(k, "matrix", v) for k, v in _INFO.items()),
        compute=weight_change_stats,
        panels=("weight_change",),
        doc=__doc__ or "",
    )
)
