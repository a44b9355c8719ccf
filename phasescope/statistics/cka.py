"""Linear CKA of each probe's representation to the first capture and to the previous one.

Kornblith et al. 2019 (:mod:`phasescope.spectra.similarity`): CKA = ⟨K̃, L̃⟩/(‖K̃‖‖L̃‖) for the centred
Gram matrices of the same probe samples at two captures. ``cka_first`` falls from 1 as the
representation drifts from where it started; ``cka_previous`` near 1 means the geometry is settled
between captures, a dip marks a reorganisation (a stage boundary in multi-stage training shows as one);
``cka_stage`` is the drift within the current training stage (``obs.stage``): CKA to the stage's first
capture, 1 there (NaN in a run without stages, and in a stage whose first capture another process reduced).
Needs a fixed probe set (the same samples at every capture): in-flight captures store NaN.
"""

from __future__ import annotations

from typing import Any

from phasescope.spectra.similarity import linear_cka

from .base import ProbeInputs, Statistic, Variable, register

NAN = float("nan")


def cka_to_history(gram: Any, first: Any, previous: Any, *, is_first: bool = False) -> dict[str, float]:
    """{"cka_first", "cka_previous"} for one probe's centred Gram: 1 to itself at the first capture,
    NaN where a reference is unknown (no previous capture; the first one reduced elsewhere)."""
    if gram is None:
        return {"cka_first": NAN, "cka_previous": NAN}
    return {
        "cka_first": 1.0 if is_first else (linear_cka(gram, first) if first is not None else NAN),
        "cka_previous": linear_cka(gram, previous) if previous is not None else NAN,
    }


def _per_probe(inputs: ProbeInputs, state: dict) -> dict[str, float]:
    """State: the probe's Gram at the first capture (unknown after a resume), at the previous one, and at
    the first capture of the current stage."""
    gram = inputs.gram
    if gram is None:
        return {}
    is_first = "previous" not in state and not inputs.resumed
    out = cka_to_history(gram, state.get("first"), state.get("previous"), is_first=is_first)
    if is_first:
        state["first"] = gram
    if not inputs.stage:  # no stage, or one begun by the process this one continues (its start unseen)
        out["cka_stage"] = NAN
    elif state.get("stage") != inputs.stage:  # the stage's first capture seen by this process
        state["stage"], state["stage_first"] = inputs.stage, gram
        out["cka_stage"] = 1.0
    else:
        out["cka_stage"] = linear_cka(gram, state["stage_first"])
    state["previous"] = gram
    return out


CKA = register(
    Statistic(
        name="cka",
        cost="capture",
        schedule="capture",
        needs=("gram",),
        variables=(
            Variable("cka_first", "metric", "linear CKA to the first capture (Kornblith et al. 2019)"),
            Variable("cka_previous", "metric", "linear CKA to the previous capture (Kornblith et al. 2019)"),
            Variable("cka_stage", "metric", "linear CKA to the current training stage's first capture"),
        ),
        compute=cka_to_history,
        per_probe=_per_probe,
        panels=("similarity", "trajectory"),
        doc=__doc__ or "",
    )
)
