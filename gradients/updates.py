"""Update-to-weight ratio ‖Δw‖/‖w‖ per parameter, from one weight snapshot on scheduled steps.

For a parameter w before an optimizer step and w' after it, the ratio is ‖w' − w‖₂ / ‖w‖₂ — the
relative size of one update (Karpathy's "update/data ratio" heuristic, ~1e-3 being healthy for Adam).
:class:`UpdateTracker` copies the weights on the device when :meth:`snapshot` is called (before
``optimizer.step()``) and measures the change at the next :meth:`ratios` call (after it), using fused
``torch._foreach_*`` ops; nothing is copied on unscheduled steps.
"""

from __future__ import annotations

from collections.abc import Sequence


class UpdateTracker:
    def __init__(self, params: Sequence):
        self.params = list(params)
        self._snap: list | None = None

    @property
    def pending(self) -> bool:
        return self._snap is not None

    def snapshot(self) -> None:
        """Copy every parameter (device-side, no host transfer)."""
        import torch

        with torch.no_grad():
            self._snap = [p.detach().clone() for p in self.params]

    def ratios(self):
        """(P,) float32 tensor of ‖w_now − w_snap‖/‖w_snap‖, or None without a snapshot; clears it."""
        if self._snap is None:
            return None
        snap, self._snap = self._snap, None
        return update_ratios(snap, [p.detach() for p in self.params])

    def clear(self) -> None:
        self._snap = None


class InitDistance:
    """‖θ_t − θ_0‖₂ per parameter from one copy of the weights taken when tracking starts (Cockpit's
    Distance quantity, Schneider, Dangel & Hennig 2021): one extra copy of the model on its device."""

    def __init__(self, params: Sequence):
        import torch

        self.params = list(params)
        with torch.no_grad():
            self.init = [p.detach().clone() for p in self.params]

    def distances(self):
        """(P,) float32 tensor of ‖θ_now − θ_0‖₂ per parameter (fused ``_foreach`` ops, on the device)."""
        return diff_norms([p.detach() for p in self.params], self.init)


def diff_norms(after: Sequence, before: Sequence):
    """(P,) float32 ‖after_i − before_i‖₂ per parameter, with fused ``_foreach`` ops on their device."""
    import torch

    with torch.no_grad():
        return torch.stack([n.float() for n in torch._foreach_norm(torch._foreach_sub(list(after), list(before)))])


def update_ratios(before: Sequence, after: Sequence):
    """(P,) float32 ‖after_i − before_i‖₂ / ‖before_i‖₂ per parameter, fused ``_foreach`` ops; NaN for a
    zero weight (e.g. a bias at init has no relative update)."""
    import torch

    num = diff_norms(after, before)
    with torch.no_grad():
        den = torch.stack([n.float() for n in torch._foreach_norm(list(before))])
    return torch.where(den > 0, num / den, torch.full_like(num, float("nan")))
