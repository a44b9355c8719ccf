"""Fast plotly figure assembly for the figure builders: traces and layouts as plain dicts, wrapped in a
``plotly.graph_objects.Figure`` without per-property validation.

Why: building a 48-row × 1,000-column overview with validated ``go.Heatmap`` traces, ``make_subplots``
and ``template="plotly_white"`` cost ~480 ms of server CPU on a 2-core machine, of which ~160 ms was
validating and deep-copying the template and ~110 ms ``make_subplots``; the same figure from dicts with
``go.Figure(..., _validate=False)`` costs ~2 ms. The builders' figures are checked by their tests (and
by plotly.js in the browser tests) instead.

Array payloads: float arrays go out as float32 (plotly serialises numpy arrays as base64 typed arrays,
``{"dtype": "f4", "bdata": ...}``), half the bytes of float64 and exact to ~7 significant digits, far
below what a colour or a pixel shows.
"""

from __future__ import annotations

import base64
from functools import cache

import numpy as np
import plotly.graph_objects as go

_USED_TRACES = ("heatmap", "scatter")
_UNUSED_LAYOUT = ("polar", "ternary", "scene", "geo", "mapbox", "map")


@cache
def _template() -> dict:
    """plotly_white, trimmed to the trace types and subplot kinds the observatory draws (7 KB → ~3 KB
    per figure, and less for plotly.js to merge into every graph)."""
    import plotly.io as pio

    t = pio.templates["plotly_white"].to_plotly_json()
    return {
        "data": {k: v for k, v in t.get("data", {}).items() if k in _USED_TRACES},
        "layout": {k: v for k, v in t.get("layout", {}).items() if k not in _UNUSED_LAYOUT},
    }


def figure(data: list[dict], layout: dict) -> go.Figure:
    """A ``go.Figure`` from trace dicts and a layout dict (template plotly_white unless given), built
    without validation: property names are checked by the tests, not on every request."""
    layout = {"template": _template(), **layout}
    return go.Figure({"data": data, "layout": layout}, _validate=False)


@cache
def colorscale(name: str) -> list:
    """A named colour scale as explicit [[position, colour], …]. plotly.js knows only some names
    (Viridis, Cividis, Greens, …, not Plasma or Inferno); plotly's validator expands the others, and
    the builders skip validation, so they expand names here."""
    from plotly.colors import get_colorscale

    return [list(p) for p in get_colorscale(name)]


def f32(values) -> np.ndarray:
    """``values`` as a C-contiguous float32 array (NaN kept), the wire format of large traces."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.float32))


def compact_int(values) -> np.ndarray:
    """Integer steps in the smallest signed type that holds them (int16 for runs under 32,768 steps)."""
    v = np.asarray(values, dtype=np.int64)
    if v.size == 0:
        return v.astype(np.int32)
    for t in (np.int16, np.int32):
        info = np.iinfo(t)
        if v.min() >= info.min and v.max() <= info.max:
            return v.astype(t)
    return v


def axis_name(k: int, axis: str = "x") -> str:
    """Trace axis reference of subplot ``k`` (1-based): 'x', 'x2', … ('y', 'y2', …)."""
    return axis if k == 1 else f"{axis}{k}"


def grid(
    rows: int,
    cols: int,
    *,
    hspace: float = 0.2,
    vspace: float = 0.3,
    titles: list[str] | None = None,
    title_size: int = 16,
) -> tuple[dict, list[list[int]]]:
    """Layout axes for a rows × cols grid of subplots, as ``plotly.subplots.make_subplots`` places them
    (spacings are fractions of the figure; cell width = (1 − (cols−1)·hspace)/cols), with optional
    subplot titles. Returns (layout dict with xaxisK/yaxisK and annotations, cell → K, 1-based K
    counted row-major from the top left)."""
    w = (1.0 - hspace * (cols - 1)) / cols
    h = (1.0 - vspace * (rows - 1)) / rows
    layout: dict = {}
    notes = []
    ks = []
    for r in range(rows):
        row = []
        top = 1.0 - r * (h + vspace)
        for c in range(cols):
            k = r * cols + c + 1
            left = c * (w + hspace)
            xd = [max(0.0, round(left, 9)), min(1.0, round(left + w, 9))]
            yd = [max(0.0, round(top - h, 9)), min(1.0, round(top, 9))]
            layout[f"xaxis{'' if k == 1 else k}"] = {"domain": xd, "anchor": axis_name(k, "y")}
            layout[f"yaxis{'' if k == 1 else k}"] = {"domain": yd, "anchor": axis_name(k, "x")}
            if titles and k - 1 < len(titles) and titles[k - 1]:
                notes.append(
                    {
                        "text": titles[k - 1],
                        "x": (xd[0] + xd[1]) / 2,
                        "y": yd[1],
                        "xref": "paper",
                        "yref": "paper",
                        "xanchor": "center",
                        "yanchor": "bottom",
                        "showarrow": False,
                        "font": {"size": title_size},
                    }
                )
            row.append(k)
        ks.append(row)
    if notes:
        layout["annotations"] = notes
    return layout, ks


def decode_array(v):
    """Plotly 6+ may serialise arrays as {'dtype','bdata','shape'}; turn them back into numpy."""
    if isinstance(v, dict) and "bdata" in v:
        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if shape:
            shp = [int(s) for s in str(shape).split(",")] if isinstance(shape, str) else list(shape)
            arr = arr.reshape(shp)
        return arr
    return v


def _ref(ref: str | None, axis: str, own: str) -> str:
    """A subplot's reference for one of a one-subplot figure's (``axis`` "x" or "y"): its own axis for
    "x"/"y", its domain for "x domain"/"y domain" and the paper (which is the subplot here)."""
    if ref == axis:
        return own
    if ref in (f"{axis} domain", "paper", None):
        return f"{own} domain"
    return ref


def small_multiples(figs: dict, heading: str, *, height: int = 300, shared_z: bool = True) -> go.Figure:
    """One-subplot figures (each drawn on axes x/y, one per run) stacked as rows of one figure, each
    row titled with its run's name: how a single-run panel shows several runs (issue 16). Shapes and
    annotations follow their subplot (an empty row keeps its message); heatmaps share one colour range
    (``shared_z``) and the first drawn heatmap's colour bar, so the runs read on the same scale; the
    x axis is titled on the bottom row only; legend entries are shown once and toggle every row.
    ``meta.runs`` lists the runs in row order, ``meta.trace_runs`` the run of each trace."""
    names = list(figs)
    layout, ks = grid(
        len(names),
        1,
        vspace=0.18 / max(len(names) - 1, 1) if len(names) > 1 else 0.0,
        titles=[f"run {n}" for n in names],
    )
    data, shapes, notes, trace_runs = [], [], list(layout.pop("annotations", [])), []
    zs = [np.asarray(t.z, float) for f in figs.values() for t in f.data if t.type == "heatmap" and t.z is not None]
    fin = [z[np.isfinite(z)] for z in zs if np.isfinite(z).any()]
    zrange = (float(min(v.min() for v in fin)), float(max(v.max() for v in fin))) if fin and shared_z else None
    scale_shown, legend_seen = False, set()
    for (k,), (name, fig) in zip(ks, figs.items()):
        xa, ya = axis_name(k, "x"), axis_name(k, "y")
        lay = fig.layout.to_plotly_json()
        for axis, ref in (("xaxis", xa), ("yaxis", ya)):
            own = {key: v for key, v in (lay.get(axis) or {}).items() if key not in ("domain", "anchor")}
            if axis == "xaxis" and k != len(names):
                own.pop("title", None)  # one x title, under the bottom row: it would cover the next row's name
            layout[f"{axis}{ref[1:]}"].update(own)
        for t in fig.data:
            tr = t.to_plotly_json()
            group = tr.get("legendgroup") or tr.get("name") or ""
            tr.update(xaxis=xa, yaxis=ya, legendgroup=group)
            if tr.get("showlegend", True) is not False:
                tr["showlegend"] = group not in legend_seen
                legend_seen.add(group)
            if tr.get("type") == "heatmap":
                if zrange is not None and tr.get("zmin") is None:
                    tr.update(zmin=zrange[0], zmax=zrange[1])
                tr["showscale"] = not scale_shown and tr.get("showscale", True) is not False
                scale_shown = scale_shown or tr["showscale"]
            data.append(tr)
            trace_runs.append(name)
        for shape in lay.get("shapes") or []:
            sh = dict(shape)
            sh["xref"], sh["yref"] = _ref(sh.get("xref"), "x", xa), _ref(sh.get("yref"), "y", ya)
            shapes.append(sh)
        xd, yd = layout[f"xaxis{xa[1:]}"]["domain"], layout[f"yaxis{ya[1:]}"]["domain"]
        for note in lay.get("annotations") or []:
            an = dict(note)
            for axis, own, dom in (("x", xa, xd), ("y", ya, yd)):
                ref = an.get(f"{axis}ref")
                if ref == axis:
                    an[f"{axis}ref"] = own
                elif ref in (f"{axis} domain", "paper", None):  # the row's share of the paper: a hidden axis
                    an[f"{axis}ref"] = "paper"  # (an empty row) places no "domain" annotation
                    an[axis] = dom[0] + float(an.get(axis, 0.5)) * (dom[1] - dom[0])
            notes.append(an)
    drawn = [f.layout for f in figs.values() if f.data] or [next(iter(figs.values())).layout]
    meta = {k: v for k, v in (drawn[0].meta or {}).items() if k != "empty"} if isinstance(drawn[0].meta, dict) else {}
    layout.update(
        title={"text": heading},
        height=max(320, height * len(names)),
        shapes=shapes,
        annotations=notes,
        uirevision=drawn[0].uirevision,
        meta={**meta, "runs": names, "trace_runs": trace_runs},
    )
    return figure(data, layout)
