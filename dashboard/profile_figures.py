"""Layer profiles: a capture metric against probe (layer) index at one capture step, one curve per run.

Where a trajectory follows one layer through training, a profile reads across the layers at one moment:
how RankMe or α-ReQ changes with depth. Runs are overlaid by probe index (0 = the first probe); the
axis is labelled with the probe names when every run has the same probes, else with their indices.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._common import RUN_DASHES, as_runs, empty_figure, label, title
from ._plotly import f32, figure


def last_capture(ds) -> int | None:
    """The run's last capture step, or None when it has none."""
    caps = ds["capture_step"].values if "capture_step" in ds.coords else []
    return int(caps[-1]) if len(caps) else None


def figure_profile(data, *, metric: str = "rankme", step: int | Mapping[str, int] | None = None):
    """``metric`` against probe index at capture ``step`` (an int for every run, a mapping run name →
    step, or None for each run's last capture), one line with markers per run, named "<run> · step S".
    A run without ``metric`` or without a capture at its step is left out and said so in a note."""
    runs = as_runs(data)
    if not runs:
        return empty_figure("no run selected", title="Layer profile")
    traces, notes, probe_lists, drawn = [], [], [], []
    for r, (name, ds) in enumerate(runs.items()):
        if metric not in ds.data_vars or set(ds[metric].dims) != {"capture_step", "probe"}:
            notes.append(f"{name}: {label(metric)} not recorded")
            continue
        s = step.get(name) if isinstance(step, Mapping) else step
        s = last_capture(ds) if s is None else int(s)
        hit = np.nonzero(ds["capture_step"].values == s)[0] if s is not None else []
        if not len(hit):
            notes.append(f"{name}: no capture at step {s}")
            continue
        probes = [str(p) for p in ds["probe"].values]
        y = np.asarray(ds[metric].transpose("capture_step", "probe").values[int(hit[-1])], float)
        probe_lists.append(probes)
        drawn.append(name)
        traces.append(
            {
                "type": "scatter",
                "x": np.arange(len(probes)),
                "y": f32(y),
                "mode": "lines+markers",
                "name": f"{name} · step {s}",
                "text": probes,
                "customdata": np.full(len(probes), s, dtype=np.int64),
                "line": {"dash": RUN_DASHES[r % len(RUN_DASHES)], "width": 2},
                "marker": {"size": 7},
                "hovertemplate": f"{name}<br>%{{text}}<br>step {s}<br>{metric} %{{y:.4g}}<extra></extra>",
            }
        )
    if not traces:
        return empty_figure("; ".join(notes) or "nothing to draw", title=f"Layer profile · {label(metric)}")
    same = all(p == probe_lists[0] for p in probe_lists)
    n = max(map(len, probe_lists))
    xaxis = {
        "title": title("probe" if same else "probe index (0 = first probe)"),
        "tickmode": "array",
        "tickvals": list(range(n)),
        "ticktext": probe_lists[0] if same else [str(i) for i in range(n)],
        "range": [-0.3, n - 0.7],
        "zeroline": False,
    }
    steps = {int(t["customdata"][0]) for t in traces}
    at = f" · step {steps.pop()}" if len(steps) == 1 else ""
    layout = {
        "title": title(f"Layer profile · {label(metric)}{at}"),
        "height": 420,
        "xaxis": xaxis,
        "showlegend": True,  # one run too: its entry names the run and the step
        "yaxis": {"title": title(label(metric))},
        "meta": {"kind": "profile", "metric": metric, "notes": notes, "runs": drawn},
    }
    if notes:
        layout["annotations"] = [
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
        ]
    return figure(traces, layout)
