"""Distance from initialisation: ‖θ_t − θ_0‖₂ per parameter and over the whole model (Cockpit's
Distance quantity, Schneider, Dangel & Hennig 2021), from one copy of the weights taken when the
Observatory is attached (:class:`phasescope.gradients.InitDistance`: one more model's worth of memory on
its device). Live, on the ``distance`` schedule (``preset="full"`` or ``distance_schedule=``)."""

from phasescope.gradients import InitDistance

from .base import Statistic, Variable, register

DISTANCE = register(
    Statistic(
        name="distance_from_init",
        cost="matrix",
        schedule="distance",
        needs=("weights",),
        variables=(
            Variable("distance_from_init", "scalar", "‖θ − θ₀‖₂ of the whole model from its initial weights"),
            Variable("distance_from_init", "param", "‖θ − θ₀‖₂ of each parameter", combine="rss"),
        ),
        compute=InitDistance,
        panels=("distance",),
        doc=__doc__ or "",
        offline=False,
    )
)
