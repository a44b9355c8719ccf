"""Curvature of the loss on a fixed batch: the Hessian's top eigenvalue (power iteration on
Hessian-vector products; Cockpit's HessMaxEV) and its trace (Hutchinson's estimator), by double
backward with ``torch.func`` (:mod:`phasescope.gradients.curvature`). Live, on the sparse ``diagnostics``
schedule (``preset="full"`` or ``diagnostics_schedule=``), when the Observatory is given a fixed
``diagnostics_batch``; a loss that is not twice differentiable gives NaN with its reason stored."""

from phasescope.gradients.curvature import hessian_top_eigenvalue

from .base import Statistic, Variable, register

CURVATURE = register(
    Statistic(
        name="curvature",
        cost="matrix",
        schedule="diagnostics",
        needs=("loss_fn",),
        variables=(
            Variable("hessian_top", "scalar", "top Hessian eigenvalue λ_max of the loss on the diagnostics batch"),
            Variable("hessian_trace", "scalar", "Hessian trace of that loss (Hutchinson, Rademacher vectors)"),
        ),
        compute=hessian_top_eigenvalue,
        panels=("curvature",),
        doc=__doc__ or "",
    )
)
