"""Heatmaps of the observatory: a variable as rows × steps (``figure_heatmap``), the overview grid of
RankMe and α-ReQ per layer for one or more runs (``figure_overview``), and which cell a click hit
(``decode_click``).

Rows are probes for spectral metrics over (capture_step, probe), parameters for ``param_<stat>`` over
(step, param), matrices for ``matrix_<stat>`` over (capture_step, matrix); steps are on a log axis (step
0 drawn at a positive position, see ``_common.display_steps``). Norm-like variables are coloured by
log10, R² on the fixed range [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._common import aligned_x, as_runs, display_steps, empty_figure, label, step_ticks, title
from ._plotly import axis_name, colorscale, compact_int, f32, figure, grid

# Colour scales per metric family: sequential for ranks and norms, fixed [0, 1] range for R².
_SCALES = {
    "rankme": "Viridis",
    "rankme_raw": "Viridis",
    "participation_ratio": "Viridis",
    "stable_rank": "Viridis",
    "alpha": "Plasma",
    "alpha_r2": "Greens",
}
_FIXED_RANGE = {"alpha_r2": (0.0, 1.0)}
OVERVIEW_METRICS = ("rankme", "alpha")
#: what the heatmap panel opens on: a metric the overview does not already show (no heatmap twice)
HEATMAP_DEFAULTS = ("participation_ratio", "stable_rank")


def _step_dim(da) -> str | None:
    for d in ("capture_step", "step"):
        if d in da.dims:
            return d
    return None


def _row_dim(da) -> str | None:
    for d in ("probe", "param", "matrix"):
        if d in da.dims:
            return d
    return None


def _is_lognormal(metric: str) -> bool:
    return metric.startswith(("param_", "matrix_")) or "norm" in metric


def heatmap_metrics(ds) -> list[str]:
    """Variables of ``ds`` that can be drawn as a row × step heatmap (metrics, param_*, matrix_*)."""
    out = []
    for name, da in ds.data_vars.items():
        if name in ("eigenvalues", "n_samples", "eigen_floor") or da.ndim != 2:
            continue
        if _step_dim(da) and _row_dim(da):
            out.append(name)
    first = {m: i for i, m in enumerate(OVERVIEW_METRICS)}
    return sorted(out, key=lambda n: (first.get(n, len(first)), n not in _SCALES, n))


def capture_metrics(ds) -> list[str]:
    """Metric variables over (capture_step, probe) — the ones whose cells open a spectrum."""
    return [m for m in heatmap_metrics(ds) if set(ds[m].dims) == {"capture_step", "probe"}]


def default_heatmap_metric(allowed: Sequence[str]) -> str | None:
    """The heatmap panel's first metric among ``allowed``: one of ``HEATMAP_DEFAULTS``, else the first
    the overview does not draw, else the first."""
    return (
        next((m for m in HEATMAP_DEFAULTS if m in allowed), None)
        or next((m for m in allowed if m not in OVERVIEW_METRICS), None)
        or (allowed[0] if allowed else None)
    )


def heatmap_rows(ds, metric: str) -> bool:
    """Whether run ``ds`` draws a heatmap of ``metric`` (it holds finite values of it)."""
    if metric not in ds.data_vars:
        return False
    return bool(np.isfinite(np.asarray(ds[metric].values, dtype=float)).any())


def heatmap_trace(
    ds, metric: str, align: str = "step", *, colorbar_x: float | None = None, showscale: bool = True
) -> tuple[dict | None, str, str]:
    """(trace dict, x title, row dim) of a row × step heatmap of ``metric``; (None, reason, "") when it
    has no finite value. z is float32 (log10 for norm-like variables); customdata holds the true step
    of each column as int16/int32 (hover and clicks show step 0, drawn at a positive position, as 0)."""
    da = ds[metric]
    sdim, rdim = _step_dim(da), _row_dim(da)
    z = np.asarray(da.transpose(rdim, sdim).values, dtype=float)
    if z.size == 0 or not np.isfinite(z).any():
        return None, f"no finite values of {metric}", ""
    steps = ds[sdim].values
    ctitle = ""
    if _is_lognormal(metric):
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(z), np.nan)
        ctitle = "log10"
    x, xtitle = aligned_x(ds, steps, align)
    zmin, zmax = _FIXED_RANGE.get(metric, (None, None))
    custom = np.ascontiguousarray(np.broadcast_to(compact_int(steps), z.shape))
    trace = {
        "type": "heatmap",
        "z": f32(z),
        "x": display_steps(x),
        "y": [str(r) for r in ds[rdim].values],
        "customdata": custom,
        "colorscale": colorscale(_SCALES.get(metric, "Inferno" if ctitle else "Cividis")),
        "showscale": showscale,
        "colorbar": {
            "title": {**title(ctitle or metric), "side": "right"},
            "len": 0.9,
        },  # beside the bar: a long name is not clipped
        "hovertemplate": f"{rdim} %{{y}}<br>step %{{customdata}}<br>{metric} %{{z:.4g}}<extra></extra>",
        "name": metric,
    }
    if colorbar_x is not None:
        trace["colorbar"]["x"] = colorbar_x
    if zmin is not None:
        trace.update(zmin=zmin, zmax=zmax)
    return trace, xtitle, rdim


def figure_heatmap(ds, metric: str, *, align: str = "step", uirevision: str | None = None):
    """Row × step heatmap of one variable (probe × capture_step for spectral metrics, param × step
    for ``param_<stat>``, matrix × capture_step for ``matrix_<stat>``), log-step x axis. Norm-like
    variables are coloured by log10; R² on the fixed range [0, 1]."""
    if metric not in ds.data_vars:
        return empty_figure(f"{label(metric)} is not recorded in this run", title=label(metric))
    trace, xtitle, rdim = heatmap_trace(ds, metric, align)
    if trace is None:
        return empty_figure(f"{label(metric)}: {xtitle}", title=label(metric))
    n_rows = len(trace["y"])
    return figure(
        [trace],
        step_ticks(
            [trace],
            {
                "title": title(f"{label(metric)} per {rdim}"),
                "height": max(320, min(900, 120 + 14 * n_rows)),
                "uirevision": uirevision or metric,
                "xaxis": {"type": "log", "title": title(xtitle + " (log)")},
                "yaxis": {"title": title(rdim), "autorange": "reversed"},
                "meta": {"kind": "heatmap", "metric": metric},
            },
        ),
    )


def figure_overview(
    data, *, metrics: Sequence[str] = OVERVIEW_METRICS, align: str = "step", uirevision: str = "overview"
):
    """The first view: RankMe and α-ReQ per layer (probe) over capture steps, one heatmap per
    (run, metric), log-step axis. Trace order is run-major: trace i is run i // len(metrics),
    metric i % len(metrics) (see ``decode_click``)."""
    runs = as_runs(data)
    if not runs:
        return empty_figure("no run selected: tick a run in the run picker", title="Overview")
    titles = [f"{name} · {label(m)}" for name in runs for m in metrics]
    layout, ks = grid(len(runs), len(metrics), hspace=0.12, vspace=0.25 / max(1, len(runs)), titles=titles)
    data_, notes = [], []
    for i, (name, ds) in enumerate(runs.items()):
        for j, m in enumerate(metrics):
            k = ks[i][j]
            cbx = (j + 1) / len(metrics) - 0.07 if j < len(metrics) - 1 else 1.0
            trace = None
            if m in ds.data_vars:
                trace, xtitle, rdim = heatmap_trace(ds, m, align, colorbar_x=cbx, showscale=(i == 0))
            if trace is None:
                notes.append(f"{name}: {label(m)} not available")
                trace, xtitle, rdim = (
                    {"type": "heatmap", "z": [[None]], "x": [1], "y": [""], "showscale": False},
                    "step",
                    "probe",
                )
            trace.update(xaxis=axis_name(k, "x"), yaxis=axis_name(k, "y"))
            data_.append(trace)
            last = i == len(runs) - 1  # axis title on the bottom row only: it would hit the next row's title
            sfx = "" if k == 1 else str(k)
            layout[f"xaxis{sfx}"].update(type="log", title=title((xtitle + " (log)") if last else None))
            layout[f"yaxis{sfx}"].update(autorange="reversed", title=title(rdim if j == 0 else None))
    n_probes = max((ds.sizes.get("probe", 1) for ds in runs.values()), default=1)
    layout.update(
        uirevision=uirevision,
        height=max(360, min(1400, len(runs) * (110 + 12 * n_probes))),
        meta={"kind": "overview", "runs": list(runs), "metrics": list(metrics), "notes": notes},
        margin={"t": 60, "r": 40},
    )
    if notes:
        layout.setdefault("annotations", []).append(
            {
                "text": "; ".join(notes),
                "x": 0,
                "y": -0.12,
                "xref": "paper",
                "yref": "paper",
                "showarrow": False,
                "xanchor": "left",
                "font": {"color": "#a33"},
            }
        )
    return figure(data_, step_ticks(data_, layout))


def decode_click(click: dict | None, ds_steps: Sequence[int] | None = None) -> dict | None:
    """(row name, training step, trace index) of a heatmap click, or None. The step comes from the
    cell's customdata (true step, also for step 0 drawn at a positive position), else from the
    clicked column (plotly's ``pointNumber`` = [row, column]) looked up in ``ds_steps``."""
    if not click or not click.get("points"):
        return None
    p = click["points"][0]
    step = p.get("customdata")
    if isinstance(step, (list, tuple)):
        step = step[0] if step else None
    if step is None and ds_steps is not None:
        pn = p.get("pointNumber")
        if isinstance(pn, (list, tuple)) and len(pn) == 2 and 0 <= int(pn[1]) < len(ds_steps):
            step = ds_steps[int(pn[1])]
    if step is None:
        return None
    return {"row": p.get("y"), "step": int(step), "curve": int(p.get("curveNumber", 0))}
