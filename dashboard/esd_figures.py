"""The empirical spectral density (ESD) of one weight matrix, WeightWatcher's per-layer plot: a log-log
histogram of the eigenvalues λ = σ² of WᵀW, the fitted power-law tail ρ(λ) ∝ λ^(−α) drawn from λ_min on,
λ_min itself and the Marchenko–Pastur bulk edge λ₊ (Martin & Mahoney 2021).

Pure: a :class:`phasescope.spectra.weights.WeightSpectrum` (what ``weight_spectra`` returns) in, a plotly
figure out; nothing is computed but the histogram and the fitted line.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._common import empty_figure, title
from ._plotly import figure


def figure_esd(ws: Any, *, bins: int = 60, uirevision: str = "esd"):
    """ESD of ``ws`` (a WeightSpectrum): the eigenvalue density on log-spaced bins (density per unit λ,
    so a power law is a straight line of slope −α), the fitted tail's density
    n_tail/n · (α−1)/λ_min · (λ/λ_min)^(−α) for λ ≥ λ_min, and vertical lines at λ_min and at the MP bulk
    edge when they were fitted. The subtitle names the fit (phasescope's or WeightWatcher's) and its
    numbers, or why the tail was not fitted."""
    lam = np.asarray(getattr(ws.eigenvalues, "cpu", lambda: ws.eigenvalues)(), dtype=np.float64).ravel()
    lam = lam[np.isfinite(lam) & (lam > 0)]
    head = f"ESD · {ws.name} {tuple(ws.shape)}"
    if lam.size < 2 or lam.max() <= lam.min():
        return empty_figure(f"{lam.size} distinct positive eigenvalues: no density to draw", title=head)
    edges = np.geomspace(lam.min(), lam.max() * (1 + 1e-9), int(bins) + 1)
    counts, _ = np.histogram(lam, edges)
    density = counts / (lam.size * np.diff(edges))
    mid = np.sqrt(edges[:-1] * edges[1:])
    ok = counts > 0
    data: list[dict] = [
        {
            "type": "scatter",
            "x": mid[ok],
            "y": density[ok],
            "mode": "lines+markers",
            "line": {"shape": "hvh", "color": "#4c72b0"},
            "marker": {"size": 4},
            "name": f"ESD ({lam.size} eigenvalues)",
            "hovertemplate": "λ=%{x:.4g}<br>density %{y:.4g}<extra></extra>",
        }
    ]
    shapes = []
    alpha, xmin = float(ws.alpha), float(ws.xmin)
    if math.isfinite(alpha) and math.isfinite(xmin) and xmin > 0:
        frac = int(ws.n_tail) / lam.size
        x = np.geomspace(xmin, lam.max(), 50)
        data.append(
            {
                "type": "scatter",
                "x": x,
                "y": frac * (alpha - 1) / xmin * (x / xmin) ** (-alpha),
                "mode": "lines",
                "line": {"color": "#c44e52", "width": 2},
                "name": f"power law α={alpha:.3f} ({ws.n_tail} in the tail)",
            }
        )
        shapes.append(_vline(xmin, "#c44e52"))
        sub = f"{'WeightWatcher' if ws.fit == 'ww' else 'phasescope'} fit: α={alpha:.3f}, λ_min={xmin:.4g}, "
        sub += f"KS D={float(ws.ks_distance):.3f}"
    else:
        sub = f"power law not fitted: {ws.reason or 'no tail'}"
    bulk = float(getattr(ws, "mp_bulk_max", math.nan))
    if math.isfinite(bulk) and bulk > 0:
        shapes.append(_vline(bulk, "#55a868"))
        data.append(
            {
                "type": "scatter",
                "x": [bulk],
                "y": [float(density[ok].max())],
                "mode": "markers",
                "marker": {"symbol": "line-ns-open", "size": 14, "color": "#55a868"},
                "name": f"MP bulk edge λ₊={bulk:.4g} ({int(ws.num_spikes)} spikes above it)",
            }
        )
    return figure(
        data,
        {
            "title": title(f"{head}<br><sup>{sub}</sup>"),
            "height": 420,
            "uirevision": uirevision,
            "xaxis": {"type": "log", "exponentformat": "power", "title": title("eigenvalue λ = σ² of WᵀW")},
            "yaxis": {"type": "log", "exponentformat": "power", "title": title("density ρ(λ)")},
            "shapes": shapes,
            "legend": {"x": 0.02, "y": 0.02, "yanchor": "bottom"},
            "meta": {"kind": "esd", "matrix": ws.name, "alpha": alpha, "xmin": xmin, "fit": ws.fit},
        },
    )


def _vline(x: float, colour: str) -> dict:
    return {
        "type": "line",
        "x0": x,
        "x1": x,
        "xref": "x",
        "y0": 0,
        "y1": 1,
        "yref": "paper",
        "line": {"color": colour, "dash": "dot"},
    }
