"""Gradient layer profiles (issue 16; Li et al. 2024, "What Happened in LLMs Layers when Trained for Fast vs.
Slow Thinking: A Gradient Perspective"): one gradient statistic per weight matrix against its layer index,
one curve per projection kind (q, k, v, o, qkv, gate, up, down, …) and run, at one capture step or
averaged over a range of them. Each curve carries its across-layer mean absolute difference,
MAD = mean_l |y_{l+1} − y_l| (Layer_Gradient's ``mean_absolute_difference``): how much the statistic
changes from one layer to the next. ``per_loss`` divides by the step's loss (Layer_Gradient's S_sum/loss).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from phasescope.gradients import MATRIX_STATS, matrix_group

from ._common import RUN_DASHES, as_runs, empty_figure, probe_colours, title
from ._plotly import f32, figure

#: Layer_Gradient's names for phasescope's gradient statistics (docs/metrics.md maps them)
LAYER_GRADIENT_NAMES = {
    "grad_nuclear": "S_sum",
    "grad_spectral": "S_max",
    "grad_sigma_min": "S_min",
    "grad_top_ratio": "S_max/S_sum",
    "grad_frobenius": "Frobenius norm",
}


def mean_absolute_difference(values: Sequence[float]) -> float:
    """MAD = mean over consecutive layers of |y_{l+1} − y_l| (NaN layers skipped; NaN under two values)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(np.mean(np.abs(np.diff(v)))) if v.size >= 2 else float("nan")


def _rows(ds, var: str, step) -> tuple[np.ndarray, str]:
    """Capture rows of ``step``: an int (that capture), a (lo, hi) range (its captures, averaged), "all"
    (every capture of this run, averaged) or None (the last capture with ``var``); and the text saying which."""
    steps = np.asarray(ds["capture_step"].values) if "capture_step" in ds.coords else np.array([], int)
    if step == "all":
        step = (int(steps.min()), int(steps.max())) if steps.size else None
    if isinstance(step, (tuple, list)):
        lo, hi = int(step[0]), int(step[1])
        return np.nonzero((steps >= lo) & (steps <= hi))[0], f"mean over steps {lo}–{hi}"
    if step is None:
        if var not in ds.data_vars:
            return np.array([], int), "no capture"
        have = np.isfinite(np.asarray(ds[var].values, float)).any(axis=1)
        rows = np.nonzero(have)[0][-1:]
        return rows, (f"step {int(steps[rows[0]])}" if rows.size else "no capture")
    return np.nonzero(steps == int(step))[0][-1:], f"step {int(step)}"


def profile_curves(ds, stat: str = "grad_nuclear", step=None, *, per_loss: bool = False) -> tuple[dict, str]:
    """{kind: (layer indices, values)} of ``matrix_<stat>`` in run ``ds`` (see the module doc), and which
    steps they are of. Matrices outside the blocks (embeddings, the head) are left out."""
    var = f"matrix_{stat}"
    rows, where = _rows(ds, var, step)
    if var not in ds.data_vars or not rows.size:
        return {}, where
    vals = np.asarray(ds[var].transpose("capture_step", "matrix").values, float)[rows]
    if per_loss:
        loss = np.asarray(ds["loss"].sel(step=ds["capture_step"].values[rows]).values, float)
        vals = vals / loss[:, None]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a matrix with no value in these rows
        mean = np.nanmean(vals, axis=0)
    curves: dict[str, dict[int, float]] = {}
    for name, v in zip((str(m) for m in ds["matrix"].values), mean):
        g = matrix_group(name)
        if g["block"] is not None:
            curves.setdefault(g["kind"], {})[g["block"]] = float(v)
    out = {k: (np.array(sorted(c)), np.array([c[b] for b in sorted(c)])) for k, c in curves.items()}
    return out, where


def figure_gradient_profile(data, *, stat: str = "grad_nuclear", step=None, per_loss: bool = False):
    """The gradient layer profile of every selected run (see the module doc): x = layer index, one line per
    projection kind and run (runs told apart by dash and named), MAD in each line's name and in
    ``meta.mad`` ({run: {kind: MAD}}). ``step``: an int, a (lo, hi) range, "all" (each run's captures,
    averaged) or None (each run's last capture with gradient statistics)."""
    runs = as_runs(data)
    label = LAYER_GRADIENT_NAMES.get(stat, stat) + ("/loss" if per_loss else "")
    head = f"Gradient layer profile · {stat}{' / loss' if per_loss else ''} ({label} in Layer_Gradient)"
    if stat not in MATRIX_STATS:
        return empty_figure(
            f"{stat!r} is not a gradient statistic; choose one of {', '.join(MATRIX_STATS)}", title=head
        )
    if not runs:
        return empty_figure("no run selected: tick a run in the run picker", title=head)
    traces, notes, mad = [], [], {}
    kinds = sorted({k for ds in runs.values() for k in profile_curves(ds, stat, step)[0]})
    colours = dict(zip(kinds, probe_colours(len(kinds))))
    for r, (name, ds) in enumerate(runs.items()):
        curves, where = profile_curves(ds, stat, step, per_loss=per_loss)
        if not curves:
            notes.append(f"{name}: no {stat} ({where}; record gradients: analyze --gradients, or matrix_schedule=)")
            continue
        mad[name] = {}
        for kind, (x, y) in curves.items():
            mad[name][kind] = m = mean_absolute_difference(y)
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "x": x,
                    "y": f32(y),
                    "name": f"{kind} · {name} (MAD {m:.3g})" if len(runs) > 1 else f"{kind} (MAD {m:.3g})",
                    "line": {"color": colours[kind], "dash": RUN_DASHES[r % len(RUN_DASHES)]},
                    "marker": {"size": 5},
                    "hovertemplate": f"{name} · {where}<br>{kind} layer %{{x}}<br>{stat} %{{y:.4g}}<extra></extra>",
                }
            )
        notes.append(f"{name}: {where}")
    if not traces:
        return empty_figure("; ".join(notes), title=head)
    return figure(
        traces,
        {
            "title": title(f"{head}<br><sup>{'; '.join(notes)}</sup>"),
            "height": 420,
            "xaxis": {"title": title("layer (block index)"), "dtick": 1},
            "yaxis": {"title": title(label), "type": "log"},
            "uirevision": "gradient-profile",
            "meta": {"kind": "gradient-profile", "stat": stat, "per_loss": per_loss, "mad": mad, "notes": notes},
        },
    )
