"""Linear CKA of each probe's representation to the first capture and to the previous one.

Kornblith et al. 2019 (:mod:`phasescope.spectra.similarity`): CKA = ⟨K̃, L̃⟩/(‖K̃‖‖L̃‖) for the centred
Gram matrices of the same probe samples at two captures. ``cka_first`` falls from 1 as the
representation drifts from where it started; ``cka_previous`` near 1 means the geometry is settled
between captures, a dip marks a reorganisation (a stage boundary in multi-stage training shows as one).
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
    """State: the probe's Gram at the first capture (unknown after a resume) and at the previous one."""
    gram = inputs.gram
    if gram is None:
        return {}
    is_first = "previous" not in state and not inputs.resumed
    out = cka_to_history(gram, state.get("first"), state.get("previous"), is_first=is_first)
    if is_first:
        state["first"] = gram
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
        ),
        compute=cka_to_history,
        per_probe=_per_probe,
        panels=("similarity", "trajectory"),
        doc=__doc__ or "",
    )
)
