"""The per-stage summary of a multi-stage run (pretraining → SFT → DPO → RLVR; ``obs.stage``): for each
stage and each probe (and the model level), the phases found within the stage, RankMe and α-ReQ at its
first and last capture, and the linear CKA of its last capture to its first (``cka_stage``: how far the
representation moved during the stage); and for the model, the loss on each evaluation set (``set_loss``,
one set per stage) at the stage's first and last capture: forgetting is a rise on an earlier stage's
set. The numbers are read from the phases' segments
(:func:`~phasescope.spectra.phases.detect_phases` segments each stage on its own) and from the run."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .result import MODEL, PhaseResult


def stage_summary(ds: Any, result: PhaseResult) -> list[dict]:
    """One row per (stage, probe), the model level first in each stage: ``stage``, ``first_step``,
    ``last_step`` (of its captures), ``trainer``, ``probe``, ``phases`` (labels in order), ``rankme_start``,
    ``rankme_end``, ``alpha_start``, ``alpha_end``, ``cka_stage`` (at its last capture; the model level:
    the median over probes), and on the model's rows ``set_loss``: {set: (loss at the stage's first
    capture, at its last)} when the run measured its evaluation sets. Empty for a run without stages."""
    info = {str(s["name"]): s for s in ds.attrs.get("stages") or []}
    names = [n for n in dict.fromkeys(s.stage for s in result.segments) if n]
    steps = np.asarray(ds["capture_step"].values) if "capture_step" in ds.coords else np.array([])
    cka = _last_cka(ds, steps, result)
    rows = []
    for name in names:
        for probe in [MODEL, *result.probes]:
            segs = [s for s in result.segments_for(probe) if s.stage == name]
            if not segs:
                continue
            rows.append(
                {
                    "stage": name,
                    "first_step": segs[0].start_step,
                    "last_step": segs[-1].end_step,
                    "trainer": (info.get(name) or {}).get("trainer"),
                    "probe": probe,
                    "phases": [s.label for s in segs],
                    "rankme_start": segs[0].rankme_start,
                    "rankme_end": segs[-1].rankme_end,
                    "alpha_start": segs[0].alpha_start,
                    "alpha_end": segs[-1].alpha_end,
                    "cka_stage": cka.get((name, probe), math.nan),
                    "set_loss": _set_loss(ds, steps, segs[0].start_step, segs[-1].end_step) if probe == MODEL else {},
                }
            )
    return rows


def _set_loss(ds: Any, steps: np.ndarray, lo: int, hi: int) -> dict[str, tuple[float, float]]:
    """{set: (loss at the first capture in [lo, hi] that measured it, at the last)}."""
    if "set_loss" not in ds.data_vars or not steps.size:
        return {}
    vals = np.asarray(ds["set_loss"].transpose("capture_step", "loss_set").values, float)
    out = {}
    for j, name in enumerate(str(n) for n in ds["loss_set"].values):
        rows = np.nonzero((steps >= lo) & (steps <= hi) & np.isfinite(vals[:, j]))[0]
        if rows.size:
            out[name] = (float(vals[rows[0], j]), float(vals[rows[-1], j]))
    return out


def _last_cka(ds: Any, steps: np.ndarray, result: PhaseResult) -> dict[tuple[str, str], float]:
    """(stage, probe) → cka_stage at the stage's last capture with a value; the model: median over probes."""
    if "cka_stage" not in ds.data_vars or not steps.size:
        return {}
    vals = np.asarray(ds["cka_stage"].transpose("capture_step", "probe").values, float)
    probes = [str(p) for p in ds["probe"].values]
    out: dict[tuple[str, str], float] = {}
    for name in dict.fromkeys(s.stage for s in result.segments):
        segs = [s for s in result.segments_for(MODEL) if s.stage == name] or [
            s for s in result.segments if s.stage == name
        ]
        lo, hi = min(s.start_step for s in segs), max(s.end_step for s in segs)
        rows = np.nonzero((steps >= lo) & (steps <= hi) & np.isfinite(vals).any(axis=1))[0]
        if not rows.size:
            continue
        last = vals[rows[-1]]
        out.update({(name, p): float(last[j]) for j, p in enumerate(probes)})
        if np.isfinite(last).any():
            out[(name, MODEL)] = float(np.nanmedian(last))
    return out


def stage_table(rows: list[dict]) -> str:
    """`stage_summary` rows as a fixed-width text table (what ``phasescope phases`` prints for stages)."""

    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "nan"

    head = (
        f"{'stage':<12} {'steps':>13} {'trainer':<13} {'probe':<16} {'phases':<40} {'RankMe':>15} "
        f"{'alpha':>11} {'CKA':>5}"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        loss = "; ".join(f"{k} {f(a, '.3f')}→{f(b, '.3f')}" for k, (a, b) in r.get("set_loss", {}).items())
        out.append(
            f"{r['stage'][:12]:<12} {str(r['first_step']) + '–' + str(r['last_step']):>13} "
            f"{(r['trainer'] or '')[:13]:<13} {r['probe'][:16]:<16} {' → '.join(r['phases'])[:40]:<40} "
            f"{f(r['rankme_start'], '.1f') + '→' + f(r['rankme_end'], '.1f'):>15} "
            f"{f(r['alpha_start'], '.2f') + '→' + f(r['alpha_end'], '.2f'):>11} {f(r['cka_stage'], '.2f'):>5}"
            + (f"  loss on {loss}" if loss else "")
        )
    return "\n".join(out)
