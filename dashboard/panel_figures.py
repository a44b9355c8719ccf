"""Panels declared by the statistic registry: a panel name (e.g. "similarity") shows every per-probe
variable of the statistics that name it (:func:`phasescope.statistics.panels_for`), one subplot per
variable, one line per (run, probe) over capture steps. A statistic added to the registry with a new
panel name gets its panel here without a new figure builder.

Per-matrix variables (kind "matrix", stored as ``matrix_<name>`` over (capture_step, matrix)) are drawn
the same way with one line per (run, projection type), the mean over layers of that type (the
projection types of the gradients panel).

Linear CKA (Kornblith et al. 2019) is the first: ``cka_first`` (similarity to the first capture) falls
from 1 as the representation drifts; ``cka_previous`` dips where it reorganises between captures.
WeightWatcher's layer metrics (``weights``) are the second.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from phasescope.statistics import REGISTRY, panels_for
from phasescope.statistics import variable as registered_variable

from ._common import (
    RUN_DASHES,
    aligned_x,
    as_runs,
    display_steps,
    empty_figure,
    label,
    probe_colours,
    step_ticks,
    title,
)
from ._plotly import axis_name, compact_int, f32, figure, grid
from .gradient_figures import param_block, projection_type
from .trajectory_figures import default_probes

PANEL_TITLES = {
    "similarity": "Representational similarity · linear CKA (Kornblith et al. 2019)",
    "curvature": "Curvature · Hessian λ_max (power iteration) and trace (Hutchinson) on the diagnostics batch",
    "noise": "Gradient noise · GSNR (Liu et al. 2020), batch-size tests (Byrd et al. 2012; Bollapragada et al. 2018)",
    "weights": "Weight spectra · WeightWatcher's layer metrics per projection type (Martin & Mahoney 2021)",
    "distance": "Distance from initialisation · ‖θ − θ₀‖ of the model and of each block",
    "weight_change": "Weight change from the reference model · per projection type",
    "forgetting": "Forgetting · the loss on each stage's evaluation set at every capture",
}
MAX_COLUMNS = 4  # subplots per row
UNIT_SCALE = ("similarity",)  # panels of similarities in [0, 1], drawn on the whole scale
#: what a run needs for a panel's variables, said when none of the selected runs has them
NEEDS = {
    "weights": "phasescope analyze --weights, or weight_schedule= / preset='full' live",
    "distance": "distance_schedule= or preset='full' on the Observatory",
    "weight_change": "phasescope analyze --weights --reference CKPT, or weight_reference= live",
    "curvature": "diagnostics_batch= on the Observatory",
    "noise": "diagnostics_batch= on the Observatory",
    "forgetting": "loss_sets={stage: batch} on the Observatory",
}
#: panels the page draws with builders of their own; every other panel a statistic names gets a
#: figure_panel of its own on the page (REGISTRY_PANELS)
BUILTIN_PANELS = ("overview", "heatmap", "trajectory", "layers", "gradients", "scalars", "esd")


def registry_panels() -> tuple[str, ...]:
    """Panel names declared by registered statistics that the page draws with :func:`figure_panel`."""
    return tuple(dict.fromkeys(p for s in REGISTRY.values() for p in s.panels if p not in BUILTIN_PANELS))


#: how a registry variable of each kind is stored (its name in the run)
STORED = {"metric": "{}", "matrix": "matrix_{}", "scalar": "{}", "param": "param_{}", "set": "set_{}"}


def panel_variables(panel: str) -> list[str]:
    """The stored variables the registry assigns to ``panel``, in registration order: per-probe metrics
    and step scalars by name, per-matrix statistics as ``matrix_<name>``, per-parameter ones as
    ``param_<name>``."""
    return [STORED[v.kind].format(v.name) for v in panels_for(panel) if v.kind in STORED]


def _rss(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Root of the sum of squares over ``axis``, NaN where every value is (a block's norm from its parts)."""
    out = np.sqrt(np.nansum(a * a, axis=axis))
    return np.where(np.isfinite(a).any(axis=axis), out, np.nan)


COMBINE = {"mean": np.nanmean, "median": np.nanmedian, "rss": _rss}


def _combine(name: str, kind: str) -> str:
    """The registry's ``Variable.combine`` of the variable ``name`` of ``kind`` ("" if it declares none)."""
    var = registered_variable(name, kind)
    return var.combine if var is not None else ""


def _grouped(vals: np.ndarray, names, key, how) -> list[tuple[str, np.ndarray]]:
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(key(str(n)), []).append(i)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group with no finite value at a step
        return [(g, how(vals[idx], axis=0)) for g, idx in groups.items()]


def _rows(ds, v: str, probes: Sequence[str] | None) -> list[tuple[str, np.ndarray]]:
    """(line name, values over the variable's steps) of ``v``: one per chosen probe; one per projection
    type (mean over its matrices) for a per-matrix variable; one per block (median over its
    parameters) for a per-parameter one; the run's one line for a step scalar."""
    da = ds[v]
    if "matrix" in da.dims:
        vals = np.asarray(da.transpose("matrix", "capture_step").values, float)
        how = COMBINE[_combine(v.removeprefix("matrix_"), "matrix") or "mean"]
        return _grouped(vals, ds["matrix"].values, projection_type, how)
    if "param" in da.dims:
        vals = np.asarray(da.transpose("param", "step").values, float)
        how = COMBINE[_combine(v.removeprefix("param_"), "param") or "median"]
        return _grouped(vals, ds["param"].values, param_block, how)
    if "loss_set" in da.dims:  # one line per evaluation set
        vals = np.asarray(da.transpose("loss_set", "capture_step").values, float)
        return [(f"on {n}", vals[i]) for i, n in enumerate(ds["loss_set"].values)]
    if "probe" not in da.dims:
        return [(label(v), np.asarray(da.values, float))]
    all_probes = [str(p) for p in ds["probe"].values] if "probe" in ds.coords else []
    chosen = [p for p in (probes or default_probes(ds)) if p in set(all_probes)]
    vals = np.asarray(ds[v].transpose("probe", "capture_step").values, float)
    return [(p, vals[all_probes.index(p)]) for p in chosen]


def figure_panel(data, panel: str, *, probes: Sequence[str] | None = None, align: str = "step"):
    """One subplot per registered variable of ``panel`` that some selected run holds (see module doc);
    runs without them are named in a note, and a panel no run can fill says why instead of raising."""
    heading = PANEL_TITLES.get(panel, panel)
    runs = as_runs(data)
    if not runs:
        return empty_figure("no run selected: tick a run in the run picker", title=heading)
    names = [
        v
        for v in panel_variables(panel)
        if any(v in ds.data_vars and np.isfinite(np.asarray(ds[v].values, float)).any() for ds in runs.values())
    ]
    if not names:
        want = ", ".join(panel_variables(panel)) or "nothing"
        return empty_figure(
            f"{want} not recorded in the selected run(s) ({NEEDS.get(panel, 'needs a fixed probe set')})", title=heading
        )
    cols = min(len(names), MAX_COLUMNS)
    n_rows = -(-len(names) // cols)
    layout, cells = grid(
        n_rows, cols, hspace=0.08, vspace=0.5 / n_rows, titles=[label(v) for v in names], title_size=13
    )
    ks = [k for row in cells for k in row][: len(names)]
    traces, notes, xtitle = [], [], "step"
    for r, (name, ds) in enumerate(runs.items()):
        missing = [v for v in names if v not in ds.data_vars]
        if missing:
            notes.append(f"{name}: {', '.join(missing)} not recorded")
        suffix = f" · {name}" if len(runs) > 1 else ""
        for k, v in zip(ks, names):
            if v in missing:
                continue
            steps = ds["capture_step" if "capture_step" in ds[v].dims else "step"].values
            x, xtitle = aligned_x(ds, steps, align)
            xd, csteps = display_steps(x), compact_int(steps)
            rows = _rows(ds, v, probes)
            keep = np.ones(len(steps), bool)
            if "probe" not in ds[v].dims:  # statistics on sparse schedules of their own: their steps only
                keep[:] = False
                for _, y in rows:
                    keep |= np.isfinite(y)
            # probes keep the colours every other panel gives them; groups get their own
            keys = [str(p) for p in ds["probe"].values] if "probe" in ds[v].dims else [n for n, _ in rows]
            colours = dict(zip(keys, probe_colours(len(keys))))
            for line, y in rows:
                traces.append(
                    {
                        "type": "scatter",
                        "mode": "lines+markers",
                        "x": xd[keep],
                        "y": f32(y[keep]),
                        "xaxis": axis_name(k),
                        "yaxis": axis_name(k, "y"),
                        "name": line + suffix,
                        "legendgroup": f"{name}/{line}",
                        "showlegend": k == ks[0],
                        "line": {"color": colours.get(line), "dash": RUN_DASHES[r % len(RUN_DASHES)]},
                        "marker": {"size": 4},
                        "customdata": csteps[keep],
                        "hovertemplate": f"{name}<br>{line}<br>step %{{customdata}}<br>{v} %{{y:.4g}}<extra></extra>",
                    }
                )
    for k, v in zip(ks, names):
        layout[f"xaxis{'' if k == 1 else k}"].update(type="log", title=title(f"{xtitle} (log)"))
        vals = np.concatenate([np.asarray(ds[v].values, float).ravel() for ds in runs.values() if v in ds.data_vars])
        vals = vals[np.isfinite(vals)]
        if panel in UNIT_SCALE and vals.size and vals.min() >= 0 and vals.max() <= 1:  # the whole [0, 1] scale
            layout[f"yaxis{'' if k == 1 else k}"].update(range=[0, 1.02])
    if notes:
        layout.setdefault("annotations", []).append(
            {
                "text": "; ".join(notes),
                "x": 0,
                "y": -0.22,
                "xref": "paper",
                "yref": "paper",
                "showarrow": False,
                "xanchor": "left",
                "font": {"size": 11, "color": "#775"},
            }
        )
    layout.update(
        title=title(heading),
        height=380 * n_rows,
        uirevision=f"panel-{panel}",
        meta={"kind": "panel", "panel": panel, "variables": names, "notes": notes},
    )
    return figure(traces, step_ticks(traces, layout))
