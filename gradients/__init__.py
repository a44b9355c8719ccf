"""phasescope.gradients: per-parameter and per-matrix gradient statistics (no files, no Dash).

- :func:`grad_norms` — ‖g_i‖₂ per parameter in one fused op; :func:`global_norm`, :func:`nonfinite`.
- :func:`gradient_matrix_stats` — nuclear/spectral/Frobenius norm, stable rank, σ₁/‖G‖_* of every 2-D
  weight gradient, batched SVD per shape; :func:`matrix_group` groups by block and projection kind
  (:func:`block_index`, the one parser of block numbers); :func:`select_matrices` picks the 2-D weights.
- :class:`UpdateTracker` — ‖Δw‖/‖w‖ per parameter around an optimizer step.
- :class:`InitDistance` — ‖θ_t − θ_0‖ per parameter (distance from initialisation).
- :func:`current_scale` — GradScaler's loss scale (to report unscaled statistics).
"""

from .amp import current_scale, scaler_enabled
from .matrices import MATRIX_STATS, block_index, gradient_matrix_stats, matrix_group, select_matrices
from .norms import array_norms, global_norm, grad_norms, nonfinite
from .updates import InitDistance, UpdateTracker, update_ratios

__all__ = [
    "MATRIX_STATS",
    "InitDistance",
    "UpdateTracker",
    "array_norms",
    "block_index",
    "current_scale",
    "global_norm",
    "grad_norms",
    "gradient_matrix_stats",
    "matrix_group",
    "nonfinite",
    "scaler_enabled",
    "select_matrices",
    "update_ratios",
]
