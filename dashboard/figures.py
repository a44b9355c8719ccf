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
the gradients panel in ``gradient_figures``, layer profiles in ``profile_figures``, the phase strip and
phase overlays in ``phase_figures``, shared helpers in ``_common`` and ``_plotly`` — and their public
names are re-exported here. What stays here is what acts on any panel: keeping the user's zoom across
refreshes (``keep_view``), the run's metadata and data-quality tables, and the CSV export of a drawn
figure (``figure_to_frame``).
"""

from __future__ import annotations

import re

import numpy as np

from phasescope.store.catalog import run_info
from phasescope.store.lifecycle import FAILED, INTERRUPTED, STALE

# Re-exports (see the module docstring): per-file-ignores F401 in pyproject says so.
from ._common import (
    LABELS,
    RUN_DASHES,
    aligned_x,
    display_steps,
    empty_figure,
    label,
    probe_colours,
    sample_cap,
    shade,
    shade_log_x,
    title,
    tokens_per_step,
)
from ._plotly import decode_array, small_multiples
from .esd_figures import esd_steps, figure_esd, figure_stored_esd
from .gradient_figures import figure_gradients, matrix_stats_of, param_block, projection_type, ratio_group
from .gradient_profile_figures import LAYER_GRADIENT_NAMES, figure_gradient_profile, mean_absolute_difference
from .heatmap_figures import (
    OVERVIEW_METRICS,
    capture_metrics,
    decode_click,
    default_heatmap_metric,
    figure_heatmap,
    figure_overview,
    heatmap_metrics,
    heatmap_rows,
    heatmap_trace,
)
from .panel_figures import figure_panel, registry_panels
from .phase_figures import (
    NOT_COMPUTED,
    event_text,
    figure_phase_strip,
    model_segments,
    phase_events,
    phase_segments,
    phase_text,
    probe_events,
    trajectory_overlays,
)
from .profile_figures import figure_profile
from .spectrum_figures import MAX_MARKERS, eigen_trace, figure_spectrum, run_fit_range
from .trajectory_figures import MAX_TRAJ_PROBES, default_probes, figure_trajectories

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
    """A value as table text: scalars as they are, lists joined by commas, dicts as "key: value; …"."""
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return (
            ", ".join(_fmt(x) for x in v)
            if all(not isinstance(x, (dict, list)) for x in v)
            else "; ".join(f"[{_fmt(x)}]" for x in v)
        )
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return "null" if v is None else str(v)


def metadata_rows(ds) -> list[dict]:
    """Run attributes as table rows {key, value}: model and its config, probes, schedule, corpus, …"""
    first = ("model", "model_config", "probes_spec", "schedule", "corpus", "tokens_per_step", "seed", "finished")
    hidden = {"phasescope_layout", "phasescope_commit"}  # store internals, shown as n_* rows below
    keys = [k for k in first if k in ds.attrs] + sorted(k for k in ds.attrs if k not in first and k not in hidden)
    rows = []
    for k in keys:  # a dict is one row per entry ("model_config.n_layer"), not a JSON dump
        v = ds.attrs[k]
        if isinstance(v, dict) and v:
            rows += [{"key": f"{k}.{sub}", "value": _fmt(x)} for sub, x in v.items()]
        else:
            rows.append({"key": k, "value": _fmt(v)})
    for dim in ("step", "capture_step", "probe", "param", "matrix"):
        if dim in ds.sizes:
            rows.append({"key": f"n_{dim}", "value": str(ds.sizes[dim])})
    return rows


#: Data-quality statuses: "ok"; "warn" — the data holds NaN cells or flagged steps, look at them; "error"
#: (shown red) — phasescope lost captures or rows (``failures``, ``flag_lost``, ``flag_dropped``,
#: ``n_dropped_steps``) or the run did not end cleanly (interrupted, failed, stale).
OK, WARN, ERROR = "ok", "warn", "error"
#: metrics every capture computes: all-NaN there is a warning, elsewhere "not computed"
CORE_METRICS = ("rankme", "alpha", "alpha_r2", "participation_ratio", "stable_rank")
#: metrics a run computes only when asked: metric -> (the run attribute that says so, how to ask)
OPT_IN = {
    "rankme_raw": ("rankme_raw", "rankme_raw=True records it"),
    "cka_first": ("cka_samples", "a fixed probe set with cka_samples > 0 records it"),
    "cka_previous": ("cka_samples", "a fixed probe set with cka_samples > 0 records it"),
}
RED_STATES = (INTERRUPTED, FAILED, STALE)
LOSS_FLAGS = {
    "lost": "captures or rows lost to a phasescope failure",
    "dropped": "captures dropped by the store writer's queue",
}
STAGES = ("hook", "capture", "metric", "reduce", "write", "queue", "step", "sink", "close")  # phasescope.failures


def _row(check: str, value, status: str) -> dict:
    return {"check": check, "value": str(value), "status": status}


def quality_rows(ds, state: str | None = None, detail: str | None = None) -> list[dict]:
    """Data-quality checks as rows {check, value, status}, status 'ok', 'warn' or 'error' (see ``ERROR``):
    the run's state (``state``/``detail`` as the catalog gives them; derived from ``ds.attrs`` by
    ``phasescope.store.catalog.run_info`` when not given), phasescope's failures per stage with the first
    message, steps with captures lost or dropped, step rows the writer dropped, then the flags of the
    training itself (non-finite, skipped), non-finite losses and metrics, and missing samples."""
    attrs = dict(ds.attrs)
    if state is None:
        info = run_info("", "", attrs)
        state, detail = info.state, info.describe()
    rows = [_row("run state", detail or state, ERROR if state in RED_STATES else OK)]
    failures = attrs.get("failures")
    if isinstance(failures, dict):
        first = attrs.get("first_failures") or {}
        bad = sorted(
            ((s, int(n)) for s, n in failures.items() if n),
            key=lambda sn: (STAGES.index(sn[0]) if sn[0] in STAGES else len(STAGES), sn[0]),
        )
        for stage, n in bad:
            msg = first.get(stage)
            rows.append(_row(f"phasescope failures: {stage}", f"{n}" + (f" (first: {msg})" if msg else ""), ERROR))
        if not bad:
            rows.append(_row("phasescope failures", "none", OK))
    flags = sorted(v.removeprefix("flag_") for v in ds.data_vars if v.startswith("flag_"))
    for flag in [f for f in flags if f in LOSS_FLAGS]:  # phasescope's losses first: red
        vals = np.asarray(ds[f"flag_{flag}"].values).astype(np.int64)
        n, total = int(np.count_nonzero(vals)), int(vals.sum())
        value = f"{n} step{'s' * (n != 1)}, {total} {LOSS_FLAGS[flag]}" if n else "0"
        rows.append(_row(f"steps flagged {flag}", value, ERROR if n else OK))
    if "n_dropped_steps" in attrs:
        n = int(attrs["n_dropped_steps"] or 0)
        rows.append(_row("step rows dropped by the store writer (n_dropped_steps)", n, ERROR if n else OK))
    for flag in [f for f in flags if f not in LOSS_FLAGS]:  # the training's own: non-finite, skipped
        n = int(np.count_nonzero(np.asarray(ds[f"flag_{flag}"].values)))
        rows.append(_row(f"steps flagged {flag}", n, WARN if n else OK))
    if "loss" in ds.data_vars:
        n = int((~np.isfinite(np.asarray(ds["loss"].values, float))).sum())
        rows.append(_row("non-finite loss values", n, WARN if n else OK))
    for m in capture_metrics(ds):
        vals = np.asarray(ds[m].values, float)
        n = int((~np.isfinite(vals)).sum())
        if n and m not in CORE_METRICS:
            # rankme_raw without raw singular values, CKA of in-flight captures (or cka_previous at the
            # first capture): not computed there by definition, not a data problem
            attr, how = OPT_IN.get(m, (None, ""))
            if n == vals.size and attr in attrs and not attrs[attr]:
                text = f"not requested (off by default; {how})"
            elif attr is not None and attrs.get(attr) and n == vals.size:  # asked for, yet never computed
                rows.append(_row(f"NaN cells in {m}", f"{n} / {vals.size} (requested: {attr}={attrs[attr]})", WARN))
                continue
            else:
                text = (
                    "not computed in this run (all NaN)"
                    if n == vals.size
                    else f"not computed in {n} / {vals.size} cells"
                )
            rows.append(_row(f"{m}", text, OK))
            continue
        rows.append(_row(f"NaN cells in {m}", f"{n} / {vals.size}", WARN if n else OK))
    if "n_samples" in ds.data_vars and ds["n_samples"].size:
        ns = np.asarray(ds["n_samples"].values, float)
        rows.append(_row("samples per capture (min)", f"{np.nanmin(ns):.0f}", WARN if np.nanmin(ns) < 2 else OK))
        rows += _reading_rows(ds, ns)
    if attrs.get("probe_autocast"):  # the trainer's mixed precision reached the probe forward
        rows.append(
            _row(
                "probe forward precision",
                f"{attrs['probe_autocast']} autocast (the trainer's mixed precision): eigenvalues carry its "
                "rounding, ~1e-3 of λ₁ in bfloat16",
                WARN,
            )
        )
    skipped = attrs.get("statistics_skipped")
    if isinstance(skipped, dict):  # a statistic the run asked for that stored NaN, and why
        for stat, why in skipped.items():
            rows.append(_row(f"{stat} not computed", str(why), ERROR))
    if len(rows) == 1:
        rows.append(_row("data-quality information", "none recorded", WARN))
    return rows


def _reading_rows(ds, ns) -> list[dict]:
    """How each probe was read (its reduction, ``probe_reductions``), and the probes whose spectrum the
    samples cap: N centred samples span at most N − 1 dimensions, so with N ≤ d features the smallest
    d − N + 1 eigenvalues are zero by construction, not by the model."""
    reductions = ds.attrs.get("probe_reductions")
    if not isinstance(reductions, dict) or "probe" not in ds.coords:
        return []
    probes = [str(p) for p in ds["probe"].values]
    read = [
        f"{p}: {r.get('reduction')} of {tuple(r.get('output_shape', ()))} → {r.get('features')}"
        for p, r in reductions.items()
        if isinstance(r, dict)
    ]
    rows = [_row("probe readings", "; ".join(read), OK)] if read else []
    capped = []
    for i, p in enumerate(probes):
        d = (reductions.get(p) or {}).get("features")
        if not d or ns.ndim != 2 or not np.isfinite(ns[:, i]).any():
            continue
        n = int(np.nanmin(ns[:, i]))
        if (cap := sample_cap(n, d)) is not None:
            capped.append(f"{p}: {n} samples for {d} features (at most {cap} eigenvalues)")
    if capped:
        rows.append(_row("spectrum capped by samples", "; ".join(capped), WARN))
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
            cols = {
                "trace": name,
                "row": np.asarray(ys, dtype=object)[rr.ravel()],
                "x": np.asarray(xs_true)[cc.ravel()],
                "value": z.ravel(),
            }
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
