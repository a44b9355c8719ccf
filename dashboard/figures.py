"""Pure figure builders for the observatory: an ``xarray.Dataset`` in, a plotly ``Figure`` out.

Every builder reads the pinned store layout (docs/CONTRACTS.md): metrics over ``(capture_step, probe)``,
``eigenvalues`` over ``(capture_step, probe, rank)``, scalars over ``(step)``, ``param_<stat>`` over
``(step, param)``, ``matrix_<stat>`` over ``(capture_step, matrix)``, ``flag_<name>`` over ``(step)``.
A panel whose data is missing returns a figure that says so (``empty_figure``); no builder raises on a
run that lacks a variable. No spectrum is computed here: eigenvalues are read from the store, and only
the α-ReQ fit line (a weighted least-squares fit on the stored eigenvalues) is evaluated on demand.

Steps are drawn on a log axis. Step 0 (initialisation) has no logarithm, so it is drawn at half of the
first positive step and labelled with its true value in hovers (``display_steps``). When runs are
aligned by tokens, x = step × ``attrs["tokens_per_step"]`` (runs without that attribute fall back to
steps and say so in the legend).

Figures are assembled from plain dicts without plotly's per-property validation (``_plotly``): the
same figures, ~100× cheaper to build. Large arrays travel as float32 typed arrays.

This module is the one import for callers: the builders live by panel — heatmaps and the overview in
``heatmap_figures``, the eigenspectrum in ``spectrum_figures``, trajectories in ``trajectory_figures``,
the gradients panel in ``gradient_figures``, the phase strip and phase overlays in ``phase_figures``,
shared helpers in ``_common`` and ``_plotly`` — and their public names are re-exported here. What stays
here is what acts on any panel: keeping the user's zoom across refreshes (``keep_view``), the run's
metadata and data-quality tables, and the CSV export of a drawn figure (``figure_to_frame``).
"""
from __future__ import annotations

import json
import re

import numpy as np

from ._common import (LABELS, RUN_DASHES, aligned_x, display_steps, empty_figure, label,  # noqa: F401
                      probe_colours, shade, shade_log_x, title, tokens_per_step)
from ._plotly import decode_array
from .gradient_figures import figure_gradients, param_block, projection_type  # noqa: F401
from .heatmap_figures import (OVERVIEW_METRICS, capture_metrics, decode_click, figure_heatmap,  # noqa: F401
                              figure_overview, heatmap_metrics, heatmap_trace)
from .phase_figures import (NOT_COMPUTED, event_text, figure_phase_strip, model_segments, phase_events,  # noqa: F401
                            phase_segments, phase_text, probe_events, trajectory_overlays)
from .spectrum_figures import MAX_MARKERS, figure_spectrum, run_fit_range  # noqa: F401
from .trajectory_figures import MAX_TRAJ_PROBES, default_probes, figure_trajectories  # noqa: F401

_VIEW_KEY = re.compile(r"^([xy]axis\d*)\.(range\[[01]\]|range|autorange)$")


def keep_view(fig, relayout: dict | None):
    """Re-apply the user's zoom (a dcc.Graph ``relayoutData``: 'xaxis.range[0]', 'yaxis2.range', …)
    to a freshly built figure. ``uirevision`` alone does not survive Dash 4's re-plot after a GUI
    zoom, so live refreshes carry the view explicitly. Keys for axes the figure lacks are ignored."""
    if not relayout:
        return fig
    axes = set(fig.layout.to_plotly_json())
    ranges: dict[str, list] = {}
    for key, val in relayout.items():
        m = _VIEW_KEY.match(key)
        if not m:
            continue
        ax, what = m.groups()
        if ax not in axes and ax not in ("xaxis", "yaxis"):
            continue
        if what == "range":
            ranges[ax] = list(val)
        elif what.startswith("range["):
            ranges.setdefault(ax, [None, None])[int(what[6])] = val
        elif val:  # autorange true: the user reset this axis
            ranges.pop(ax, None)
    for ax, r in ranges.items():
        if None not in r:
            fig.layout[ax].range = r
            fig.layout[ax].autorange = False
    return fig


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    try:
        return json.dumps(v, indent=1, sort_keys=True, default=str)
    except TypeError:
        return str(v)


def metadata_rows(ds) -> list[dict]:
    """Run attributes as table rows {key, value}: model and its config, probes, schedule, corpus, …"""
    first = ("model", "model_config", "probes_spec", "schedule", "corpus", "tokens_per_step", "seed", "finished")
    hidden = {"phasescope_layout", "phasescope_commit"}  # store internals, shown as n_* rows below
    keys = [k for k in first if k in ds.attrs] + sorted(k for k in ds.attrs if k not in first and k not in hidden)
    rows = [{"key": k, "value": _fmt(ds.attrs[k])} for k in keys]
    for dim in ("step", "capture_step", "probe", "param", "matrix"):
        if dim in ds.sizes:
            rows.append({"key": f"n_{dim}", "value": str(ds.sizes[dim])})
    return rows


def quality_rows(ds) -> list[dict]:
    """Data-quality checks as rows {check, value, status} with status 'ok' or 'warn': flag counts
    (non-finite, skipped, dropped steps), non-finite losses and metrics, missing eigenvalues."""
    rows = []
    for name in sorted(v for v in ds.data_vars if v.startswith("flag_")):
        vals = np.asarray(ds[name].values)
        n = int(np.count_nonzero(vals)) if vals.size else 0
        rows.append({"check": f"steps flagged {name.removeprefix('flag_')}", "value": str(n),
                     "status": "warn" if n else "ok"})
    if "loss" in ds.data_vars:
        n = int((~np.isfinite(np.asarray(ds["loss"].values, float))).sum())
        rows.append({"check": "non-finite loss values", "value": str(n), "status": "warn" if n else "ok"})
    for m in capture_metrics(ds):
        vals = np.asarray(ds[m].values, float)
        n = int((~np.isfinite(vals)).sum())
        rows.append({"check": f"NaN cells in {m}", "value": f"{n} / {vals.size}", "status": "warn" if n else "ok"})
    if "n_samples" in ds.data_vars and ds["n_samples"].size:
        ns = np.asarray(ds["n_samples"].values, float)
        rows.append({"check": "samples per capture (min)", "value": f"{np.nanmin(ns):.0f}",
                     "status": "warn" if np.nanmin(ns) < 2 else "ok"})
    if not rows:
        rows.append({"check": "data-quality information", "value": "none recorded", "status": "warn"})
    return rows


def figure_to_frame(fig):
    """Long table of what a figure shows — the CSV export: one row per heatmap cell (trace, row, x,
    value[, text]) or per point (trace, x, value[, text]); x is the true step where the trace carries it
    in customdata (step 0 is drawn at a positive position). Legend-only traces are left out."""
    import pandas as pd

    d = fig.to_dict() if hasattr(fig, "to_dict") else fig
    frames = []
    for i, t in enumerate(d.get("data", [])):
        name = t.get("name") or f"trace {i}"
        x, y, z = (decode_array(t.get(k)) for k in ("x", "y", "z"))
        cd, text = decode_array(t.get("customdata")), t.get("text")
        if z is not None:
            z = np.asarray(z, dtype=float)
            if z.ndim != 2:
                continue
            ys = list(y) if y is not None else list(range(z.shape[0]))
            xs = list(x) if x is not None else list(range(z.shape[1]))
            xs_true = np.asarray(cd)[0] if cd is not None and np.ndim(cd) == 2 else xs
            rr, cc = np.meshgrid(np.arange(z.shape[0]), np.arange(z.shape[1]), indexing="ij")
            cols = {"trace": name, "row": np.asarray(ys, dtype=object)[rr.ravel()],
                    "x": np.asarray(xs_true)[cc.ravel()], "value": z.ravel()}
            if text is not None and np.shape(text) == z.shape:
                cols["text"] = np.asarray(text, dtype=object).ravel()
            frames.append(pd.DataFrame(cols))
        elif y is not None:
            xs = np.asarray(cd) if cd is not None and np.ndim(cd) == 1 else np.asarray(x, dtype=object)
            if all(v is None for v in np.ravel(xs)):
                continue  # a legend entry, no data
            ys = np.asarray(y)
            try:
                ys = ys.astype(float)
            except (TypeError, ValueError):
                ys = ys.astype(object)  # categorical y (e.g. probe names of event markers)
            cols = {"trace": name, "x": xs, "value": ys}
            if text is not None and np.shape(text) == np.shape(ys):
                cols["text"] = np.asarray(text, dtype=object)
            frames.append(pd.DataFrame(cols))
    if not frames:
        return pd.DataFrame(columns=["trace", "x", "value"])
    return pd.concat(frames, ignore_index=True)
