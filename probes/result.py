"""CaptureResult: what a front-end measured at one training step, before any reduction.

Every front-end — :class:`~phasescope.probes.Observatory`, :meth:`Recorder.record` (any framework),
the JAX observer, the HF and Lightning callbacks, and ``phasescope analyze`` — fills one of these per
step and hands it to the one reducer (:class:`phasescope.probes.reduce.Reducer`), which computes every
registered metric once and builds the store rows. Values may still live on the device (torch/jax
arrays); ``event`` (a CUDA event recorded after the last device op that filled them) is waited on
before anything is read on the writer thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CaptureResult:
    step: int
    scalars: dict[str, Any] = field(default_factory=dict)  # loss, lr, loss_scale, … (floats or 0-d arrays)
    grad_norms: Any = None  # (P,) ‖g_i‖₂ per parameter (NaN where absent)
    present: list | None = None  # which parameters had a gradient
    update_ratios: Any = None  # (P,) ‖Δw‖/‖w‖
    params: dict[str, Any] = field(default_factory=dict)  # other per-parameter stats: name -> (P,)
    spectra: list | None = None  # per probe: Spectrum, or None (not captured); None = no probe capture
    grams: list | None = None  # per probe: centred Gram of the fixed probe samples (CKA), or None
    matrices: dict[str, Any] = field(default_factory=dict)  # matrix stat -> (M,)
    flags: dict[str, int] = field(default_factory=dict)  # extra flag values (OR-ed into nonfinite)
    capture: bool = False  # write a capture row (spectra and/or matrix statistics)
    lost: int = 0  # captures/rows of this step lost to phasescope failures
    event: Any = None  # CUDA event to wait on before reading device values
    stage: str | None = None  # the training stage this step belongs to (Observatory.stage / Recorder.stage)
    sets: dict[str, Any] = field(default_factory=dict)  # set stat -> (loss_sets,), e.g. the loss on each stage's set

    def release_capture(self) -> None:
        """Drop the capture payload but keep the step row (the writer's drop policy); counted as dropped."""
        self.spectra = self.grams = None
        self.matrices = {}
        self.sets = {}
        self.capture = False
        self.flags["dropped"] = self.flags.get("dropped", 0) + 1
