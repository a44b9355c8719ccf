"""Training stages on the page (pretraining → SFT → DPO → RLVR; ``obs.stage``): a dotted line where each
stage begins on every step axis, named at the top, per run (`add_stage_marks`); the stage selector, which
shows every step axis over one stage's steps (`zoom_to_stage`, `stage_names`); and the per-stage table
(`stage_rows`): the phases found within each stage (from the run's stored ``phases`` group), RankMe and α at
its first and last capture, and the CKA of its last capture to its first."""

from __future__ import annotations

import math
import re

import numpy as np

from phasescope.spectra.phases import MODEL, PhaseResult, stage_summary

from ._common import aligned_x, display_steps

STAGE_COLOUR = "#6a3d9a"
TABLE_COLUMNS = (
    "stage",
    "steps",
    "trainer",
    "probe",
    "phases",
    "RankMe",
    "alpha",
    "CKA to stage start",
    "loss on each set (forgetting)",
)
_AXIS = re.compile(r"^xaxis(\d*)$")


def add_stage_marks(fig, runs: dict, align: str = "step"):
    """Mark where each selected run's stages begin (after its first step) on every x axis of ``fig`` (a
    log step or tokens axis), with the stage names along the top (prefixed by the run when several are
    drawn). Figures whose runs have no stages are returned unchanged."""
    meta = fig.layout.meta
    if isinstance(meta, dict) and meta.get("empty"):  # a panel saying what is missing has no step axis
        return fig
    marks = []
    for name, ds in runs.items():
        for st in ds.attrs.get("stages") or []:
            first = st.get("first_step")
            if first is None:
                continue
            x = float(_x(ds, [max(int(first), 0)], align)[0])
            text = f"{name}: {st['name']}" if len(runs) > 1 else str(st["name"])
            marks.append((x, int(first), text))
    if not marks:
        return fig
    layout = fig.layout
    axes = sorted(
        (k for k in layout.to_plotly_json() if _AXIS.match(k)), key=lambda k: int(_AXIS.match(k).group(1) or 1)
    )
    shapes, notes = list(layout.shapes or ()), list(layout.annotations or ())
    axes = axes or ["xaxis"]
    for k in axes:
        ref = "x" + _AXIS.match(k).group(1)
        anchor = getattr(layout[k], "anchor", None) or "y" + _AXIS.match(k).group(1)
        yref = f"{anchor} domain" if anchor and anchor != "free" else "paper"
        for x, first, text in marks:
            if first > 0:
                shapes.append(
                    {
                        "type": "line",
                        "xref": ref,
                        "yref": yref,
                        "x0": x,
                        "x1": x,
                        "y0": 0,
                        "y1": 1,
                        "line": {"color": STAGE_COLOUR, "dash": "dot", "width": 1.5},
                        "layer": "above",
                    }
                )
            if k == axes[0]:  # the names once, along the top of the first axis
                notes.append(
                    {
                        "x": math.log10(x) + 1e-7,
                        "xref": ref,
                        "y": 1.0,
                        "yref": yref,
                        "yanchor": "bottom",
                        "xanchor": "left",
                        "text": f"▸ {text}",
                        "showarrow": False,
                        "font": {"size": 10, "color": STAGE_COLOUR},
                    }
                )
    fig.update_layout(shapes=shapes, annotations=notes)
    meta = dict(layout.meta or {}) if isinstance(layout.meta, dict) else {}
    fig.layout.meta = {**meta, "stages": [t for _, _, t in marks]}
    return fig


def stage_rows(ds, phases_ds) -> list[dict]:
    """The per-stage table of one run (``TABLE_COLUMNS``): from its stored phases (``phasescope phases RUN``
    writes them) one row per stage and probe; without them one row per stage saying so."""
    stages = ds.attrs.get("stages") or []
    if not stages:
        return []
    result = PhaseResult.from_dataset(phases_ds) if phases_ds is not None else None
    have = {s.stage for s in result.segments} if result is not None else set()
    if result is None or any(st["name"] not in have for st in stages):  # none yet, or from before a stage
        why = "not computed" if result is None else "phases out of date"
        return [
            {
                "stage": st["name"],
                "steps": _steps(st.get("first_step"), st.get("last_step")),
                "trainer": st.get("trainer") or "",
                "probe": MODEL,
                "phases": f"{why}: run `phasescope phases RUN`",
            }
            for st in stages
        ]
    rows = stage_summary(ds, result)

    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "nan"

    return [
        {
            "stage": r["stage"],
            "steps": _steps(r["first_step"], r["last_step"]),
            "trainer": r["trainer"] or "",
            "probe": r["probe"],
            "phases": " → ".join(r["phases"]),
            "RankMe": f"{f(r['rankme_start'], '.2f')} → {f(r['rankme_end'], '.2f')}",
            "alpha": f"{f(r['alpha_start'], '.3f')} → {f(r['alpha_end'], '.3f')}",
            "CKA to stage start": f(r["cka_stage"], ".3f"),
            "loss on each set (forgetting)": "; ".join(
                f"{k}: {f(a, '.3f')} → {f(b, '.3f')}" for k, (a, b) in r["set_loss"].items()
            ),
        }
        for r in rows
    ]


def _steps(first, last) -> str:
    return f"{first}–{last if last is not None else '…'}"


def stage_names(runs: dict) -> list[str]:
    """The stages of the selected runs, in order of first appearance (the stage selector's options)."""
    return list(dict.fromkeys(str(st["name"]) for ds in runs.values() for st in ds.attrs.get("stages") or []))


def zoom_to_stage(fig, runs: dict, stage: str | None, align: str = "step"):
    """Show every x axis of ``fig`` over ``stage``'s steps (of the first selected run that has it; its
    last step is the run's last when the stage is still running); unchanged for no stage."""
    if not stage:
        return fig
    for ds in runs.values():
        st = next((x for x in ds.attrs.get("stages") or [] if str(x["name"]) == stage), None)
        if st is None:
            continue
        last = st.get("last_step")
        if last is None:
            steps = ds["step"].values if "step" in ds.coords else []
            last = int(steps.max()) if len(steps) else int(st["first_step"])
        lo, hi = (float(v) for v in _x(ds, [int(st["first_step"]), int(last)], align))
        span = [math.log10(lo) - 0.02, math.log10(max(hi, lo * 1.001)) + 0.02]  # log axes take log10 ranges
        for k in fig.layout.to_plotly_json():
            if _AXIS.match(k) and getattr(fig.layout[k], "type", None) == "log":
                fig.layout[k].update(range=span, autorange=False)
        fig.layout.meta = {**(fig.layout.meta or {}), "stage": stage}
        return fig
    return fig


def _x(ds, steps, align: str) -> np.ndarray:
    """Where the figures draw ``steps`` of run ``ds`` on a log axis: step 0 at half the run's smallest
    positive step (as ``display_steps`` places it for the run's own steps)."""
    own = np.asarray(ds["step"].values if "step" in ds.coords else [], float)
    pos = aligned_x(ds, own[own > 0], align)[0]
    return display_steps(aligned_x(ds, steps, align)[0], float(pos.min()) / 2 if pos.size else None)
