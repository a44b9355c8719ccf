"""The empirical spectral density (ESD) of one weight matrix, WeightWatcher's per-layer plot: a log-log
histogram of the eigenvalues λ = σ² of WᵀW, the fitted power-law tail ρ(λ) ∝ λ^(−α) drawn from λ_min on,
λ_min itself and the Marchenko–Pastur bulk edge λ₊ (Martin & Mahoney 2021).

Pure: a :class:`phasescope.spectra.weights.WeightSpectrum` (what ``weight_spectra`` returns) in, a plotly
figure out; nothing is computed but the histogram and the fitted line. On the page, the ESD a run stored
(``weight_eigenvalues`` beside its ``matrix_weight_*`` statistics) is read back into one
(:func:`stored_weight_spectrum`) and drawn the same way (:func:`figure_stored_esd`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from phasescope.spectra.weights import WeightSpectrum

from ._common import empty_figure, title
from ._plotly import figure

ESD_VAR = "weight_eigenvalues"


def figure_esd(ws: Any, *, bins: int = 60, where: str = "", uirevision: str = "esd"):
    """ESD of ``ws`` (a WeightSpectrum): the eigenvalue density on log-spaced bins (density per unit λ,
    so a power law is a straight line of slope −α), the fitted tail's density
    n_tail/n · (α−1)/λ_min · (λ/λ_min)^(−α) for λ ≥ λ_min, and vertical lines at λ_min and at the MP bulk
    edge when they were fitted. The subtitle names the fit (phasescope's or WeightWatcher's) and its
    numbers, or why the tail was not fitted; ``where`` (e.g. "run · step 100") is added to the title."""
    lam = np.asarray(getattr(ws.eigenvalues, "cpu", lambda: ws.eigenvalues)(), dtype=np.float64).ravel()
    lam = lam[np.isfinite(lam) & (lam > 0)]
    head = f"ESD · {ws.name}" + (f" {tuple(ws.shape)}" if ws.shape else "") + (f" · {where}" if where else "")
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


def esd_steps(ds) -> list[int]:
    """The capture steps at which ``ds`` stored weight ESDs (weight spectra run on their own schedule)."""
    if ESD_VAR not in ds.data_vars or ds.sizes.get("capture_step", 0) == 0:
        return []
    # read from the per-capture spectral norm beside the ESDs, not the (captures × matrices × rank) ESDs
    if "matrix_weight_spectral" in ds.data_vars:
        has = np.isfinite(np.asarray(ds["matrix_weight_spectral"].values, dtype=np.float64)).any(axis=1)
    else:
        has = np.isfinite(np.asarray(ds[ESD_VAR].values, dtype=np.float64)).any(axis=(1, 2))
    return [int(s) for s in np.asarray(ds["capture_step"].values)[has]]


def _stat(ds, name: str, c: int, m: int) -> float:
    v = f"matrix_{name}"
    return float(ds[v].variable[c, m].values) if v in ds.data_vars else math.nan


def stored_weight_spectrum(ds, matrix: str, step: int) -> WeightSpectrum | str:
    """The :class:`WeightSpectrum` of ``matrix`` at capture ``step`` as the run stored it: its eigenvalues
    and the stored tail fit (α, λ_min, KS distance; the tail is the eigenvalues ≥ λ_min), MP bulk edge
    λ₊ = soft rank·λ_max and spike count; or why there is none (a one-line reason)."""
    if ESD_VAR not in ds.data_vars:
        return "this run stores no weight ESDs (record weight spectra: analyze --weights, or weight_schedule=)"
    names = [str(n) for n in ds["matrix"].values]
    if matrix not in names:
        return f"matrix {matrix!r} is not in this run"
    hit = np.nonzero(np.asarray(ds["capture_step"].values) == step)[0]
    if hit.size == 0:
        return f"no capture at step {step}"
    c, m = int(hit[-1]), names.index(matrix)
    lam = np.asarray(ds[ESD_VAR].variable[c, m].values, dtype=np.float64)
    lam = lam[np.isfinite(lam)]
    if lam.size == 0:
        return f"no weight ESD stored for {matrix} at step {step} (not on the weight schedule)"
    alpha, xmin = _stat(ds, "weight_alpha", c, m), _stat(ds, "weight_xmin", c, m)
    soft = _stat(ds, "weight_mp_soft_rank", c, m)
    opts = ds.attrs.get("analyze_options")
    fit = str(opts.get("weight_fit", "clauset")) if isinstance(opts, dict) else "clauset"
    return WeightSpectrum(
        name=matrix,
        shape=(),
        eigenvalues=lam,
        alpha=alpha,
        xmin=xmin,
        ks_distance=_stat(ds, "weight_ks_distance", c, m),
        n_tail=int((lam >= xmin).sum()) if math.isfinite(xmin) else 0,
        stable_rank=_stat(ds, "weight_stable_rank", c, m),
        spectral_norm=_stat(ds, "weight_spectral", c, m),
        reason=None if math.isfinite(alpha) else "no power-law tail fitted at this capture",
        mp_bulk_max=soft * float(lam.max()) if math.isfinite(soft) else math.nan,
        num_spikes=_stat(ds, "weight_num_spikes", c, m),
        fit=fit,
    )


def figure_stored_esd(ds, matrix: str, step: int, *, run: str = "", uirevision: str = "esd"):
    """The per-layer ESD plot (:func:`figure_esd`) of the ESD ``ds`` stored for ``matrix`` at ``step``;
    the title names the run (``run``) and the step, since the panel shows one run at a time."""
    where = f"{run} · step {step}" if run else f"step {step}"
    ws = stored_weight_spectrum(ds, matrix, step)
    if isinstance(ws, str):
        return empty_figure(ws, title=f"ESD · {matrix} · {where}")
    fig = figure_esd(ws, where=where, uirevision=uirevision)
    fig.layout.meta = {**fig.layout.meta, "run": run, "step": int(step)}
    return fig
