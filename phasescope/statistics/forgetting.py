"""Forgetting across training stages: the model's loss on each evaluation set at every capture
(``loss_sets={"pretrain": batch, "sft": batch, ...}`` on the Observatory, one set per stage), stored as
``set_loss`` over (capture_step, loss_set). The loss on an earlier stage's set rising while a later stage
trains is forgetting (Kirkpatrick et al. 2017's measure, on a fixed batch); the loss on the current stage's
set is its own held-out loss. Evaluated in eval mode without gradients, the training's random state
untouched (:func:`phasescope.gradients.curvature.set_losses`)."""

from phasescope.gradients.curvature import set_losses

from .base import Statistic, Variable, register

FORGETTING = register(
    Statistic(
        name="forgetting",
        cost="capture",
        schedule="capture",
        needs=("loss_sets",),
        variables=(Variable("loss", "set", "the model's loss on each evaluation set (one per stage)"),),
        compute=set_losses,
        panels=("forgetting",),
        doc=__doc__ or "",
        offline=False,
    )
)
