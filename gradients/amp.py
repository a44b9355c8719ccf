"""Mixed precision: unscaled statistics under ``torch.amp.GradScaler`` and skipped-step detection.

With a GradScaler the gradients after ``scaler.scale(loss).backward()`` equal S·∇L for the current
loss scale S. Statistics are divided by S (read as a device tensor, no host sync) unless the user has
already called ``scaler.unscale_(optimizer)``. ``scaler.step`` skips the optimizer step exactly when
some unscaled gradient contains Inf or NaN (its ``found_inf`` check), so a non-finite gradient norm
under an enabled scaler marks the step as skipped.
"""

from __future__ import annotations


def scaler_enabled(scaler) -> bool:
    return scaler is not None and bool(
        getattr(scaler, "_enabled", False) or getattr(scaler, "is_enabled", lambda: False)()
    )


def current_scale(scaler, optimizer=None):
    """The factor the gradients currently carry (a 0-d device tensor), or None when they are unscaled."""
    if not scaler_enabled(scaler):
        return None
    if optimizer is not None:
        state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer))
        stage = state.get("stage") if state else None
        if stage is not None and getattr(stage, "name", str(stage)).upper().endswith("UNSCALED"):
            return None
    scale = getattr(scaler, "_scale", None)
    if scale is None:  # scale() not called yet: gradients are not scaled either
        return None
    return scale.detach().clone()
