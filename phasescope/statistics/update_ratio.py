"""Update-to-weight ratio ‖Δw‖/‖w‖ per parameter around an optimizer step (Karpathy's update/data
ratio; :func:`phasescope.gradients.update_ratios`), on the update schedule."""

from phasescope.gradients.updates import update_ratios

from .base import Statistic, Variable, register

UPDATE_RATIO = register(
    Statistic(
        name="update_ratio",
        cost="matrix",
        schedule="updates",
        needs=("updates",),
        variables=(Variable("update_ratio", "param", "‖Δw‖/‖w‖ of one optimizer step"),),
        compute=update_ratios,
        panels=("gradients",),
        doc=__doc__ or "",
        offline=False,
    )
)
