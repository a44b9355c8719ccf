"""Panels declared by the statistic registry: a panel name (e.g. "similarity") shows every per-probe
variable of the statistics that name it (:func:`phasescope.statistics.panels_for`), one subplot per
variable, one line per (run, probe) over capture steps. A statistic added to the registry with a new
panel name gets its panel here without a new figure builder.

Linear CKA (Kornblith et al. 2019) is the first: ``cka_first`` (similarity to the first capture) falls
from 1 as the representation drifts; ``cka_previous`` dips where it reorganises between captures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from phasescope.statistics import REGISTRY, panels_for

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
from .trajectory_figures import default_probes

PANEL_TITLES = {"similarity": "Representational similarity · linear CKA (Kornblith et al. 2019)"}
#: panels the page draws with builders of their own; every other panel a statistic names gets a
#: figure_panel of its own on the page (REGISTRY_PANELS)
BUILTIN_PANELS = ("overview", "heatmap", "trajectory", "layers", "gradients", "scalars")


def registry_panels() -> tuple[str, ...]:
    """Panel names declared by registered statistics that the page draws with :func:`figure_panel`."""
    return tuple(dict.fromkeys(p for s in REGISTRY.values() for p in s.panels if p not in BUILTIN_PANELS))


def panel_variables(panel: str) -> list[str]:
    """The per-probe variables the registry assigns to ``panel``, in registration order."""
    return [v.name for v in panels_for(panel) if v.kind == "metric"]


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
        return empty_figure(f"{want} not recorded in the selected run(s) (needs a fixed probe set)", title=heading)
    layout, cells = grid(1, len(names), hspace=0.08, titles=[label(v) for v in names], title_size=13)
    traces, notes, xtitle = [], [], "step"
    for r, (name, ds) in enumerate(runs.items()):
        missing = [v for v in names if v not in ds.data_vars]
        if missing:
            notes.append(f"{name}: {', '.join(missing)} not recorded")
        all_probes = [str(p) for p in ds["probe"].values] if "probe" in ds.coords else []
        chosen = [p for p in (probes or default_probes(ds)) if p in set(all_probes)]
        colours = dict(zip(all_probes, probe_colours(len(all_probes))))
        caps = ds["capture_step"].values
        x, xtitle = aligned_x(ds, caps, align)
        xd, csteps = display_steps(x), compact_int(caps)
        suffix = f" · {name}" if len(runs) > 1 else ""
        for k, v in zip(cells[0], names):
            if v in missing:
                continue
            vals = np.asarray(ds[v].transpose("probe", "capture_step").values, float)
            for p in chosen:
                traces.append(
                    {
                        "type": "scatter",
                        "mode": "lines+markers",
                        "x": xd,
                        "y": f32(vals[all_probes.index(p)]),
                        "xaxis": axis_name(k),
                        "yaxis": axis_name(k, "y"),
                        "name": p + suffix,
                        "legendgroup": f"{name}/{p}",
                        "showlegend": k == cells[0][0],
                        "line": {"color": colours[p], "dash": RUN_DASHES[r % len(RUN_DASHES)]},
                        "marker": {"size": 4},
                        "customdata": csteps,
                        "hovertemplate": f"{name}<br>{p}<br>step %{{customdata}}<br>{v} %{{y:.4f}}<extra></extra>",
                    }
                )
    for k, v in zip(cells[0], names):
        layout[f"xaxis{'' if k == 1 else k}"].update(type="log", title=title(f"{xtitle} (log)"))
        vals = np.concatenate([np.asarray(ds[v].values, float).ravel() for ds in runs.values() if v in ds.data_vars])
        vals = vals[np.isfinite(vals)]
        if vals.size and vals.min() >= 0 and vals.max() <= 1:  # similarities: the whole [0, 1] scale
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
        height=380,
        uirevision=f"panel-{panel}",
        meta={"kind": "panel", "panel": panel, "variables": names, "notes": notes},
    )
    return figure(traces, step_ticks(traces, layout))
