"""Gradient noise from micro-batch splits of a fixed batch: GSNR per parameter and overall (Liu et al.
2020; Cockpit's MeanGSNR) and the norm, inner-product and orthogonality tests for the batch size (Byrd
et al. 2012; Bollapragada et al. 2018), no per-example gradients needed
(:mod:`phasescope.gradients.noise`). Live, on the ``diagnostics`` schedule with the curvature; a batch
too small to split gives NaN with its reason stored."""

from phasescope.gradients.noise import gradient_noise

from .base import Statistic, Variable, register

GRADIENT_NOISE = register(
    Statistic(
        name="gradient_noise",
        cost="matrix",
        schedule="diagnostics",
        needs=("loss_fn",),
        variables=(
            Variable("gsnr", "scalar", "gradient signal-to-noise ratio, mean over parameter entries"),
            Variable("norm_test", "scalar", "norm test θ (Byrd et al. 2012): the batch passes for θ ≥ this"),
            Variable("inner_product_test", "scalar", "inner-product test θ (Bollapragada et al. 2018)"),
            Variable("orthogonality_test", "scalar", "orthogonality test ν (Bollapragada et al. 2018)"),
            Variable("gsnr", "param", "gradient signal-to-noise ratio of each parameter", combine="median"),
        ),
        compute=gradient_noise,
        panels=("noise",),
        doc=__doc__ or "",
    )
)
