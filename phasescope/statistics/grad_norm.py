"""Per-parameter gradient L2 norms every step, and the global norm ‖g‖₂ = (Σ_i ‖g_i‖₂²)^½.

One fused ``torch._foreach_norm`` per (device, dtype) group for torch, ``linalg.vector_norm`` for other
backends (:func:`phasescope.gradients.array_norms`); one small host copy per step.
"""

from phasescope.gradients import array_norms

from .base import Statistic, Variable, register

GRAD_NORM = register(
    Statistic(
        name="grad_norm",
        cost="step",
        schedule="step",
        needs=("grads",),
        variables=(
            Variable("grad_norm", "param", "L2 norm of each parameter's gradient"),
            Variable("grad_norm", "scalar", "global gradient L2 norm (what clip_grad_norm_ returns)"),
        ),
        compute=array_norms,
        panels=("gradients", "scalars"),
        doc=__doc__ or "",
    )
)
