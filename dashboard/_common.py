"""Helpers shared by the figure builders: labels, log-step positions, token alignment, empty panels,
shading on log axes, colours. Steps are drawn on a log axis; step 0 (initialisation) has no logarithm,
so it is drawn at half of the first positive step and labelled with its true value in hovers."""

from __future__ import annotations

import math

import numpy as np

from phasescope.statistics import info as registry_info

from ._plotly import figure

LABELS = {
    "rankme": "RankMe (Li et al. 2025, covariance)",
    "rankme_raw": "RankMe (Garrido et al. 2023, raw)",
    "alpha": "α-ReQ (Agrawal et al. 2022)",
    "alpha_r2": "α-ReQ fit R²",
    "participation_ratio": "participation ratio",
    "stable_rank": "stable rank",
    "loss": "loss",
    "lr": "learning rate",
    "grad_norm": "gradient norm",
}
RUN_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def label(metric: str) -> str:
    """Human label of a metric or variable name."""
    if metric in LABELS:
        return LABELS[metric]
    return registry_info(metric) or metric.replace("_", " ")


def title(text: str | None) -> dict:
    """plotly.js 3 takes titles only as {"text": ...} (the string shorthand is gone)."""
    return {"text": text or ""}


def empty_figure(message: str, *, title: str | None = None):
    """A blank figure carrying ``message`` in its centre: how a panel says its data is missing."""
    layout = {
        "annotations": [
            {
                "text": message,
                "x": 0.5,
                "y": 0.5,
                "xref": "paper",
                "yref": "paper",
                "showarrow": False,
                "font": {"size": 14, "color": "#555"},
            }
        ],
        "xaxis": {"visible": False},
        "yaxis": {"visible": False},
        "height": 260,
        "meta": {"empty": message},
    }
    if title:
        layout["title"] = {"text": title}
    return figure([], layout)


def display_steps(steps: np.ndarray, floor: float | None = None) -> np.ndarray:
    """Positions of training steps on a log axis: positive steps unchanged, steps ≤ 0 at ``floor``,
    by default half the smallest positive step (or 0.5 when there is none)."""
    s = np.asarray(steps, dtype=float)
    pos = s[s > 0]
    if floor is None:
        floor = pos.min() / 2 if pos.size else 0.5
    return np.where(s > 0, s, floor)


def sample_cap(n: int, features) -> int | None:
    """The eigenvalues ``n`` centred samples can hold when they do not exceed ``features`` (n − 1:
    the rest are zero by construction, not by the model); None when the samples do not cap."""
    return n - 1 if 0 < n <= int(features or 0) else None


def _tick_text(v: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def step_ticks(data: list[dict], layout: dict) -> dict:
    """Label the log step axes of a figure: step 0, drawn at a positive position (``display_steps``),
    reads "0" — plotly's own ticks there read "5" or "0.5" — and the rest 1-2-5 per decade (1 per
    decade over more than three), in steps or tokens as drawn. A trace's true steps are its
    ``customdata`` (the first row of a heatmap's). Returns ``layout``, its log x axes updated."""
    by_axis: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for t in data:
        cd = t.get("customdata")
        if cd is None or t.get("x") is None:
            continue
        cd = np.asarray(cd)
        cd = cd[0] if cd.ndim == 2 else cd
        if cd.ndim != 1 or not np.issubdtype(cd.dtype, np.number):
            continue
        x = np.asarray(t["x"], dtype=float)
        k = min(len(x), len(cd))
        key = "xaxis" + str(t.get("xaxis", "x"))[1:]
        by_axis.setdefault(key, []).append((x[:k], cd[:k].astype(float)))
    for key, pairs in by_axis.items():
        ax = layout.get(key)
        if ax is None or ax.get("type") != "log":
            continue
        x = np.concatenate([p[0] for p in pairs])
        steps = np.concatenate([p[1] for p in pairs])
        ok = np.isfinite(x) & (x > 0)
        zero, pos = x[ok & (steps <= 0)], x[ok & (steps > 0)]
        vals, text = ([float(zero.min())], ["0"]) if zero.size else ([], [])
        if pos.size:
            lo, hi = float(pos.min()), float(pos.max())
            first, last = math.floor(math.log10(lo)), math.floor(math.log10(hi))
            mantissas = (1, 2, 5) if last - first <= 3 else (1,)
            for e in range(first, last + 1):
                for m in mantissas:
                    v = m * 10.0**e
                    if lo / 1.001 <= v <= hi * 1.001 and (not vals or v > vals[0] * 1.6):
                        vals.append(v)
                        text.append(_tick_text(v))
        if vals:
            ax.update(tickmode="array", tickvals=vals, ticktext=text)
    return layout


def tokens_per_step(ds) -> float | None:
    """``attrs["tokens_per_step"]`` as a positive float, or None when absent or unusable."""
    v = ds.attrs.get("tokens_per_step")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v > 0 and math.isfinite(v) else None


def aligned_x(ds, steps, align: str = "step") -> tuple[np.ndarray, str]:
    """x values for ``steps`` of run ``ds``: steps, or tokens seen = step × tokens_per_step."""
    steps = np.asarray(steps, dtype=float)
    if align == "tokens":
        tps = tokens_per_step(ds)
        if tps is not None:
            return steps * tps, "tokens seen"
    return steps, "step"


def shade(x0: float, x1: float, text: str, colour: str, *, xref: str = "x", opacity: float = 0.08) -> tuple[dict, dict]:
    """(shape, annotation) shading x0…x1 on a log x axis with a label at its left edge. Shapes take
    data coordinates on log axes, annotations take log10 coordinates (plotly.js conventions)."""
    shape = {
        "type": "rect",
        "xref": xref,
        "yref": "paper",
        "x0": float(x0),
        "x1": float(x1),
        "y0": 0,
        "y1": 1,
        "fillcolor": colour,
        "opacity": opacity,
        "line": {"width": 0},
        "layer": "below",
    }
    # a hair inside x0: plotly.js hides annotations outside the axis range, and an autorange that starts
    # at x0 may round its log10 a few ulps above ours (the "warmup collapse" label vanished that way)
    note = {
        "x": math.log10(float(x0)) + 1e-7,
        "xref": xref,
        "y": 1,
        "yref": "paper",
        "text": text,
        "showarrow": False,
        "xanchor": "left",
        "yanchor": "top",
        "font": {"size": 11, "color": colour},
    }
    return shape, note


def shade_log_x(fig, x0: float, x1: float, text: str, colour: str) -> None:
    """Add ``shade`` to an existing figure (kept for callers that hold a Figure)."""
    shape, note = shade(x0, x1, text, colour)
    fig.add_shape(**shape)
    fig.add_annotation(**note)


def probe_colours(n: int) -> list[str]:
    """``n`` colours from Viridis, first layer dark, last layer light (stops at 0.9: yellow is unreadable)."""
    from plotly.colors import sample_colorscale

    return sample_colorscale("Viridis", [i / max(1, n - 1) * 0.9 for i in range(n)])


def to_list(strings) -> list[str]:
    return [str(s) for s in np.atleast_1d(strings)]


def as_runs(data) -> dict:
    """Accept one Dataset or a mapping name → Dataset; return an ordered dict."""
    if hasattr(data, "data_vars"):  # a Dataset is itself a Mapping: test it first
        return {str(data.attrs.get("name", "run")): data}
    return dict(data)
