"""phasescope.gradients: per-parameter and per-matrix gradient statistics (no files, no Dash).

- :func:`grad_norms` — ‖g_i‖₂ per parameter in one fused op; :func:`global_norm`, :func:`nonfinite`.
- :func:`gradient_matrix_stats` — nuclear/spectral/Frobenius norm, stable rank, σ₁/‖G‖_* of every 2-D
  weight gradient, batched SVD per shape; :func:`matrix_group` groups by block and projection kind
  (:func:`block_index`, the one parser of block numbers); :func:`select_matrices` picks the 2-D weights.
- :class:`UpdateTracker` — ‖Δw‖/‖w‖ per parameter around an optimizer step.
- :func:`current_scale` — GradScaler's loss scale (to report unscaled statistics).
"""

from .amp import current_scale, scaler_enabled
from .matrices import MATRIX_STATS, block_index, gradient_matrix_stats, matrix_group, select_matrices
from .norms import array_norms, global_norm, grad_norms, nonfinite
from .updates import UpdateTracker, update_ratios

__all__ = ["array_norms", "update_ratios", "grad_norms", "global_norm", "nonfinite", "gradient_matrix_stats", "matrix_group", "block_index",
           "select_matrices", "MATRIX_STATS",
           "UpdateTracker", "current_scale", "scaler_enabled"]
