"""Trajectories: a capture metric per layer over steps, for one or more runs, with the training loss
on a twin axis and the detected phases (``phase_figures``) shaded and marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

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
    tokens_per_step,
)
from ._plotly import compact_int, f32, figure
from .phase_figures import event_text, model_segments, probe_events, trajectory_overlays

MAX_TRAJ_PROBES = 8
X_END = 0.94  # right end of the plot (paper): the loss axis's ticks go beyond it
BAND = 0.055  # height (fraction of the figure) of each run's phase strip when runs are overlaid


def default_probes(ds, k: int = MAX_TRAJ_PROBES) -> list[str]:
    """Up to ``k`` probes spread evenly from first to last layer (all when there are few)."""
    probes = [str(p) for p in ds["probe"].values] if "probe" in ds.coords else []
    if len(probes) <= k:
        return probes
    idx = np.unique(np.linspace(0, len(probes) - 1, k).round().astype(int))
    return [probes[i] for i in idx]


def figure_trajectories(
    data,
    *,
    metric: str = "rankme",
    probes: Sequence[str] | None = None,
    align: str = "step",
    phases: Mapping | None = None,
    show_loss: bool = True,
    uirevision: str | None = None,
    deepest: bool = False,
):
    """``metric`` per layer over capture steps (log x), one line per (run, probe); colour = layer
    depth, dash = run. The training loss is drawn on a twin y axis. Detected phases (``phases`` maps
    run name → its ``phases`` group, or None when not computed) shade the model-level segments in
    their phase colour, dotted lines mark the model-level phase changes, and diamonds on each drawn
    layer's line mark that layer's own phase changes. With several runs each run's phases get a strip
    of their own above the plot, labelled with the run's name (shading one run's phases behind
    another run's lines would claim them for both). ``deepest`` (without ``probes``): each run's own
    deepest probe only, the view of a sweep."""
    runs = as_runs(data)
    if not runs:
        return empty_figure("no run selected: tick a run in the run picker", title="Trajectories")
    banded = [n for n in runs if model_segments((phases or {}).get(n))] if len(runs) > 1 else []
    top = 1.0 - BAND * len(banded)
    traces, shapes, annotations = [], [], []
    notes, xtitle, any_trace = [], "step", False
    for r, (name, ds) in enumerate(runs.items()):
        dash = RUN_DASHES[r % len(RUN_DASHES)]
        suffix = f" · {name}" if len(runs) > 1 else ""
        if metric not in ds.data_vars or "probe" not in ds[metric].dims:
            notes.append(f"{name}: {label(metric)} not recorded")
            continue
        all_probes = [str(p) for p in ds["probe"].values]
        own = all_probes[-1:] if deepest and not probes else default_probes(ds)
        chosen = [p for p in (probes or own) if p in set(all_probes)]
        colours = dict(zip(all_probes, probe_colours(len(all_probes))))
        caps = ds["capture_step"].values
        x, xtitle = aligned_x(ds, caps, align)
        xd, csteps = display_steps(x), compact_int(caps)
        vals = (
            np.asarray(ds[metric].transpose("probe", "capture_step").values, float)[
                [all_probes.index(p) for p in chosen]
            ]
            if chosen
            else []
        )
        for p, y in zip(chosen, vals):
            traces.append(
                {
                    "type": "scatter",
                    "x": xd,
                    "y": f32(y),
                    "mode": "lines",
                    "name": p + suffix,
                    "line": {"color": colours[p], "dash": dash},
                    "legendgroup": name,
                    "customdata": csteps,
                    "hovertemplate": f"{name}<br>{p}<br>step %{{customdata}}<br>{metric} %{{y:.4g}}<extra></extra>",
                }
            )
            any_trace = True
        if show_loss and "loss" in ds.data_vars:
            lx, _ = aligned_x(ds, ds["step"].values, align)
            traces.append(
                {
                    "type": "scatter",
                    "x": display_steps(lx),
                    "y": f32(ds["loss"].values),
                    "mode": "lines",
                    "name": "loss" + suffix,
                    "yaxis": "y2",
                    "legendgroup": name,
                    "line": {"color": "rgba(90,90,90,0.6)", "dash": dash, "width": 1.5},
                    "customdata": compact_int(ds["step"].values),
                    "hovertemplate": f"{name}<br>step %{{customdata}}<br>loss %{{y:.4g}}<extra></extra>",
                }
            )
        ph = (phases or {}).get(name)
        if not model_segments(ph):
            notes.append(f"{name}: phases not computed")
        tps = tokens_per_step(ds) if align == "tokens" else 1.0
        if align == "tokens" and tps is None:
            notes.append(f"{name}: no tokens_per_step attribute, x is steps")
            tps = 1.0
        floor = float(xd.min()) if len(xd) else 0.5
        band = None
        if name in banded:
            i = banded.index(name)
            band = (1.0 - (i + 1) * BAND + 0.008, 1.0 - i * BAND)
            # the strip's run, right of it (the axis title on the left may reach this high)
            annotations.append(
                {
                    "text": name,
                    "x": X_END + 0.005,
                    "xref": "paper",
                    "y": sum(band) / 2,
                    "yref": "paper",
                    "xanchor": "left",
                    "yanchor": "middle",
                    "showarrow": False,
                    "font": {"size": 11},
                }
            )
        s, a = trajectory_overlays(ph, scale=tps, floor=floor, band=band)
        shapes += s
        annotations += a
        evs = [(e, vals[chosen.index(e.probe)]) for p, es in probe_events(ph, chosen).items() for e in es]
        if evs:
            at = [int(np.clip(np.searchsorted(caps, e.step), 0, len(caps) - 1)) for e, _ in evs]
            traces.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": "phase change" + suffix,
                    "legendgroup": name,
                    "x": xd[at],
                    "y": [float(y[i]) for (_, y), i in zip(evs, at)],
                    "text": [event_text(e) for e, _ in evs],
                    "customdata": compact_int([e.step for e, _ in evs]),
                    "marker": {
                        "symbol": "diamond",
                        "size": 9,
                        "color": "white",
                        "line": {"color": "#222", "width": 1.5},
                    },
                    "hovertemplate": f"{name}<br>%{{text}}<extra></extra>",
                }
            )
    if not any_trace:
        return empty_figure("; ".join(notes) or "nothing to draw", title=f"Trajectories · {label(metric)}")
    if notes:
        annotations.append(
            {
                "text": "; ".join(notes),
                "x": 0,
                "y": 1.06,
                "xref": "paper",
                "yref": "paper",
                "showarrow": False,
                "xanchor": "left",
                "font": {"size": 11, "color": "#775"},
            }
        )
    # the legend starts below the strips, beside the plot, so it does not cover their names
    extra = {"legend": {"y": top - 0.01, "yanchor": "top"}} if banded else {}
    return figure(
        traces,
        step_ticks(
            traces,
            {
                **extra,
                "title": title(f"Trajectories · {label(metric)} per layer"),
                "height": 460,
                "uirevision": uirevision or f"traj-{metric}",
                "meta": {"kind": "trajectories", "notes": notes, "phase_strips": banded},
                "xaxis": {"type": "log", "title": title(f"{xtitle} (log)"), "domain": [0.0, X_END], "anchor": "y"},
                "yaxis": {"title": title(label(metric)), "anchor": "x", "domain": [0.0, top - 0.01 if banded else 1.0]},
                "yaxis2": {
                    "title": title("loss"),
                    "overlaying": "y",
                    "side": "right",
                    "anchor": "x",
                    "showgrid": False,
                    "tickformat": ".3~g",
                },  # round ticks: 2.5, not 2.4999
                "shapes": shapes,
                "annotations": annotations,
            },
        ),
    )
