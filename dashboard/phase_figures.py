"""Phases in the observatory: read a run's ``phases`` group and draw it.

The group is what ``phasescope phases RUN`` writes (``spectra.phases.PhaseResult.to_dataset``): one row
per segment along dim ``segment`` — ``probe`` (a probe name, or "model" for the median over probes),
``label`` (collapse, entropy-seeking, compression-seeking, stable, mixed, insufficient-data), ``start_step``
(its first capture), ``end_step`` (the next segment's first capture, or its own last capture when
``open_end``) — and one row per label change along dim ``event``: ``event_probe``, ``event_step``,
``event_before``, ``event_after``, ``event_confidence`` (Li et al. 2025 phases; see spectra/phases/).
Where present, ``rule`` (which row of ``spectra/phases/rules.RULES`` decided the label), the slopes,
``n_fit`` and ``confidence`` become each cell's and each shaded phase's hover text.

``figure_phase_strip`` is the per-layer phase strip: probe × step coloured by phase label, with the
label changes marked. ``trajectory_overlays`` gives the shading (model-level segments) and event
markers the trajectories figure draws.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from phasescope.spectra.phases.rules import LABEL_TEXT

from ._common import aligned_x, display_steps, empty_figure, shade, step_ticks, title, to_list
from ._plotly import figure

MODEL = "model"
PHASE_TEXT = dict(LABEL_TEXT)  # the labeller's own names (spectra/phases/rules.py)
PHASE_COLOURS = {
    "collapse": "#d62728",
    "entropy-seeking": "#1f77b4",
    "compression-seeking": "#ff7f0e",
    "stable": "#7f7f7f",
    "mixed": "#9467bd",
    "insufficient-data": "#c7c7c7",
}
CONFIDENCE_HOVER = (
    "conf = product of the rule's condition scores: erf(|Δ|/(√2·se)) for a move, "
    "1 − ½·|Δ|/tol for flat (`phasescope phases --explain`)"
)
_OTHER_COLOURS = ("#2ca02c", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
NOT_COMPUTED = "phases not computed: run `phasescope phases RUN` to find them"


class PhaseSegment(NamedTuple):
    probe: str
    label: str
    start: float
    end: float
    open_end: bool
    why: str = ""  # which rule decided it, its slopes and confidence (hover text; "" for old groups)


class PhaseEvent(NamedTuple):
    probe: str
    step: float
    before: str
    after: str
    confidence: float


def phase_text(lab: str) -> str:
    return PHASE_TEXT.get(lab, lab)


def phase_colour(lab: str, others: list[str] | None = None) -> str:
    """Fixed colours for the known labels; others cycle through a palette in order of appearance."""
    if lab in PHASE_COLOURS:
        return PHASE_COLOURS[lab]
    others = others if others is not None else []
    if lab not in others:
        others.append(lab)
    return _OTHER_COLOURS[others.index(lab) % len(_OTHER_COLOURS)]


def _names(phases) -> set:
    return set(phases.data_vars) if phases is not None and hasattr(phases, "data_vars") else set()


def phase_segments(phases) -> list[PhaseSegment]:
    """All segments of a ``phases`` group, in stored order ([] when None or not in the format above;
    ``start``/``end`` are accepted for ``start_step``/``end_step``; without ``probe`` every segment
    belongs to "model")."""
    names = _names(phases)
    s = "start_step" if "start_step" in names else "start" if "start" in names else None
    e = "end_step" if "end_step" in names else "end" if "end" in names else None
    if s is None or e is None:
        return []
    starts = np.atleast_1d(np.asarray(phases[s].values, float))
    ends = np.atleast_1d(np.asarray(phases[e].values, float))
    n = len(starts)
    labels = to_list(phases["label"].values) if "label" in names else [f"phase {i + 1}" for i in range(n)]
    probes = to_list(phases["probe"].values) if "probe" in names else [MODEL] * n
    open_end = np.atleast_1d(phases["open_end"].values).astype(bool) if "open_end" in names else np.zeros(n, bool)
    why = _why(phases, names, n)
    return [
        PhaseSegment(p, lab, float(a), float(b), bool(o), w)
        for p, lab, a, b, o, w in zip(probes, labels, starts, ends, open_end, why)
    ]


def _why(phases, names: set, n: int) -> list[str]:
    """Per segment: the stored rule (which rule decided it), both slopes, the captures fitted and the
    confidence, as hover lines ("" where the group predates these fields)."""

    def col(name):
        return np.atleast_1d(np.asarray(phases[name].values, float)) if name in names else np.full(n, np.nan)

    rules = to_list(phases["rule"].values) if "rule" in names else [""] * n
    sr, sa, conf, nfit = col("slope_rankme"), col("slope_alpha"), col("confidence"), col("n_fit")
    agree = col("probes_agree")

    def f(v, spec):
        return format(v, spec) if np.isfinite(v) else "n/a"

    out = []
    for i in range(n):
        lines = []
        if rules[i]:
            lines.append(rules[i])
        if np.isfinite(sr[i]) or np.isfinite(sa[i]):
            lines.append(
                f"dlnR/dlnt {f(sr[i], '+.3f')} · dα/dlnt {f(sa[i], '+.3f')}"
                + (f" · {nfit[i]:.0f} captures" if np.isfinite(nfit[i]) else "")
            )
        if np.isfinite(conf[i]):
            lines.append(
                f"confidence {conf[i]:.2f}" + (f" · {agree[i]:.0%} of probes agree" if np.isfinite(agree[i]) else "")
            )
            lines.append(CONFIDENCE_HOVER)
        out.append("<br>".join(lines))
    return out


def model_segments(phases) -> list[PhaseSegment]:
    """The segments to shade behind trajectories: those of probe "model" (the median over probes),
    else those of the first probe."""
    segs = phase_segments(phases)
    if not segs:
        return []
    who = MODEL if any(s.probe == MODEL for s in segs) else segs[0].probe
    return [s for s in segs if s.probe == who]


def phase_events(phases) -> list[PhaseEvent]:
    """Label changes: the stored ``event_*`` rows, or (for groups without them) every boundary between
    consecutive segments of a probe whose labels differ (confidence NaN)."""
    names = _names(phases)
    if {"event_probe", "event_step", "event_before", "event_after"} <= names:
        conf = (
            np.atleast_1d(np.asarray(phases["event_confidence"].values, float))
            if "event_confidence" in names
            else np.full(phases.sizes.get("event", 0), np.nan)
        )
        return [
            PhaseEvent(p, float(s), b, a, float(c))
            for p, s, b, a, c in zip(
                to_list(phases["event_probe"].values),
                np.atleast_1d(phases["event_step"].values),
                to_list(phases["event_before"].values),
                to_list(phases["event_after"].values),
                conf,
            )
        ]
    out, segs = [], phase_segments(phases)
    for prev, nxt in itertools.pairwise(segs):
        if prev.probe == nxt.probe and prev.label != nxt.label:
            out.append(PhaseEvent(nxt.probe, nxt.start, prev.label, nxt.label, float("nan")))
    return out


def event_text(ev: PhaseEvent) -> str:
    conf = "" if not np.isfinite(ev.confidence) else f" (confidence {ev.confidence:.2f})"
    return f"{ev.probe}: {phase_text(ev.before)} → {phase_text(ev.after)} at step {ev.step:g}{conf}"


def trajectory_overlays(
    phases, *, scale: float = 1.0, floor: float, band: tuple[float, float] | None = None
) -> tuple[list[dict], list[dict]]:
    """(shapes, annotations) for the trajectories figure: model-level segments shaded in their phase
    colour and labelled, model-level events as dotted vertical lines. ``scale`` maps steps to x (1 for
    steps, tokens_per_step for tokens); ``floor`` is where step 0 is drawn. ``band`` = (y0, y1) in
    paper coordinates draws them in that strip only (one strip per run when runs are overlaid, so no
    run's phases are drawn behind another run's lines) instead of over the full height."""
    shapes, notes, others = [], [], []
    y0, y1 = band if band is not None else (0.0, 1.0)
    for seg in model_segments(phases):
        x0, x1 = display_steps(np.array([seg.start * scale, seg.end * scale]), floor=floor)
        s, a = shade(
            x0, x1, phase_text(seg.label), phase_colour(seg.label, others), opacity=0.08 if band is None else 0.3
        )
        if band is not None:
            s.update(y0=y0, y1=y1)
            a.update(y=(y0 + y1) / 2, yanchor="middle", font={**a["font"], "size": 10, "color": "#222"})
        if seg.why:
            a["hovertext"] = f"{phase_text(seg.label)}<br>{seg.why}"
        shapes.append(s)
        notes.append(a)
    model = model_segments(phases)
    who = model[0].probe if model else MODEL
    for ev in phase_events(phases):
        if ev.probe != who:
            continue
        x = float(display_steps(np.array([ev.step * scale]), floor=floor)[0])
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": x,
                "x1": x,
                "y0": y0,
                "y1": y1,
                "line": {"color": phase_colour(ev.after, others), "width": 1.5, "dash": "dot"},
                "name": f"event {event_text(ev)}",
            }
        )
    return shapes, notes


def probe_events(phases, probes: list[str]) -> dict[str, list[PhaseEvent]]:
    """Events of each of ``probes`` (for markers on their trajectories)."""
    want = set(probes)
    out: dict[str, list[PhaseEvent]] = {}
    for ev in phase_events(phases):
        if ev.probe in want:
            out.setdefault(ev.probe, []).append(ev)
    return out


def figure_phase_strip(ds, phases, *, align: str = "step", uirevision: str = "phases"):
    """Per-layer phase strip: rows = "model" then the run's probes, x = training step (log), each cell
    coloured by the phase label of that probe's segment covering the step; diamonds mark label changes
    (events). Cells are the intervals between consecutive segment boundaries (heatmap bin edges)."""
    segs = phase_segments(phases)
    if not segs:
        return empty_figure(NOT_COMPUTED, title="Phases per layer")
    order = [str(p) for p in ds["probe"].values] if ds is not None and "probe" in ds.coords else []
    seen = {s.probe for s in segs}
    rows = ([MODEL] if MODEL in seen else []) + [p for p in order if p in seen]
    rows += sorted(seen - set(rows))
    edges = np.unique([v for s in segs for v in (s.start, s.end)])
    if edges.size == 1:
        edges = np.append(edges, edges[0] + 1)
    present = sorted(
        {s.label for s in segs},
        key=lambda lab: (list(PHASE_COLOURS).index(lab) if lab in PHASE_COLOURS else len(PHASE_COLOURS), lab),
    )
    code = {lab: i for i, lab in enumerate(present)}
    z = np.full((len(rows), edges.size - 1), np.nan)
    text = np.full(z.shape, "", dtype=object)
    ri = {p: i for i, p in enumerate(rows)}
    for s in segs:
        cols = np.nonzero((edges[:-1] >= s.start) & (edges[:-1] < max(s.end, s.start + 1e-9)))[0]
        z[ri[s.probe], cols] = code[s.label]
        end = "on" if s.open_end else f"{s.end:g}"
        text[ri[s.probe], cols] = f"{phase_text(s.label)} · steps {s.start:g} → {end}" + (
            f"<br>{s.why}" if s.why else ""
        )
    caps = ds["capture_step"].values if ds is not None and "capture_step" in ds.coords else edges
    scale_x, xtitle = aligned_x(ds, [1.0], align) if ds is not None else (np.array([1.0]), "step")
    scale = float(scale_x[0])
    floor = float(display_steps(np.asarray(caps, float) * scale).min()) if len(caps) else None
    others: list[str] = []
    colours = [phase_colour(lab, others) for lab in present]
    n = len(present)
    scale_c = [[v, c] for i, c in enumerate(colours) for v in (i / n, (i + 1) / n)]
    starts = np.ascontiguousarray(np.broadcast_to(np.asarray(edges[:-1], dtype=np.int64), z.shape))  # true steps
    data = [
        {
            "type": "heatmap",
            "z": z,
            "x": display_steps(edges * scale, floor=floor),
            "y": rows,
            "text": text,
            "customdata": starts,
            "zmin": -0.5,
            "zmax": n - 0.5,
            "colorscale": scale_c,
            "showscale": False,
            "xgap": 0,
            "ygap": 1,
            "hovertemplate": "%{y}<br>%{text}<extra></extra>",
            "name": "phases",
        }
    ]
    for lab, c in zip(present, colours):  # legend entries for the categorical colours
        data.append(
            {
                "type": "scatter",
                "x": [None],
                "y": [None],
                "mode": "markers",
                "name": phase_text(lab),
                "marker": {"symbol": "square", "size": 12, "color": c},
                "hoverinfo": "skip",
            }
        )
    evs = [e for e in phase_events(phases) if e.probe in ri]
    if evs:
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "phase change",
                "x": display_steps(np.array([e.step for e in evs]) * scale, floor=floor),
                "y": [e.probe for e in evs],
                "text": [event_text(e) for e in evs],
                "customdata": np.array([e.step for e in evs], dtype=np.int64),
                "marker": {"symbol": "diamond", "size": 9, "color": "white", "line": {"color": "#222", "width": 1.5}},
                "hovertemplate": "%{text}<extra></extra>",
            }
        )
    layout = {
        "title": title("Phases per layer (Li et al. 2025): collapse, entropy-seeking, compression-seeking"),
        "height": max(240, min(900, 110 + 16 * len(rows))),
        "uirevision": uirevision,
        "xaxis": {"type": "log", "title": title(f"{xtitle} (log)")},
        "yaxis": {"title": title("probe"), "autorange": "reversed", "type": "category"},
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        "margin": {"t": 70},
        "meta": {
            "kind": "phases",
            "rows": rows,
            "labels": present,
            "edges": [float(v) for v in edges],
            "events": len(evs),
        },
    }
    return figure(data, step_ticks(data, layout))
