"""The eigenspectrum panel: one probe's stored eigenvalues at one capture on log-log axes, with the
α-ReQ power-law fit over the range the run's α used. No spectrum is computed here: eigenvalues are read
from the store; only the α-ReQ fit line is evaluated, on the stored eigenvalues."""

from __future__ import annotations

import math
import re

import numpy as np

from phasescope.spectra import alpha_req

from ._common import empty_figure, sample_cap, shade, title
from ._plotly import figure

MAX_MARKERS = 200  # spectra with more points are drawn as lines only


def _fit_alpha(eigs: np.ndarray, fit_range, rtol: float | None = None):
    """α-ReQ fit on stored eigenvalues with ``phasescope.spectra.alpha_req`` (pure, fast):
    log λ_k = b − α·log k, weights 1/k, k = i + 1 for i in range(*fit_range) (Agrawal et al. 2022;
    Li et al. 2025 fit ranks 12…100); ``rtol``: the stored round-off floor (``eigen_floor``)."""
    f = alpha_req(eigs, fit_range=fit_range, rtol=rtol)
    return float(f.alpha), float(f.r2), float(f.intercept), tuple(f.fit_range), f.reason


def run_fit_range(ds, default=(11, 100)):
    """The α-ReQ fit range the run's metrics were computed with (``attrs["fit_range"]``: "auto" or
    (start, stop), possibly as text), else ``default`` (Li et al. 2025's ranks 12…100)."""
    v = ds.attrs.get("fit_range")
    if isinstance(v, str):
        if v.strip().strip("'\"") == "auto":
            return "auto"
        nums = re.findall(r"-?\d+", v)
        v = [int(n) for n in nums] if len(nums) == 2 else None
    if isinstance(v, (list, tuple)) and len(v) == 2:
        try:
            return int(v[0]), int(v[1])
        except (TypeError, ValueError):
            pass
    return default


def stored_floor(ds, c: int, p: int) -> float | None:
    """The round-off floor (λ/λ₁) the stored metrics of capture row ``c``, probe ``p`` used
    (``eigen_floor``), or None for runs from before it was stored (float64 products: k·ε_float64)."""
    if "eigen_floor" not in ds.data_vars:
        return None
    v = float(ds["eigen_floor"].variable[c, p].values)
    return v if math.isfinite(v) and v > 0 else None


def _reading(ds, probe: str, c: int, p: int) -> str:
    """How the probe's output became samples × features, and whether the samples cap the spectrum."""
    red = (ds.attrs.get("probe_reductions") or {}).get(probe)
    if not isinstance(red, dict):
        return ""
    shape = "×".join(str(s) for s in red.get("output_shape", [])[1:])
    text = f"<br>read by {red.get('reduction')} of N×{shape} → {red.get('features')} features"
    if "n_samples" in ds.data_vars:
        n = int(ds["n_samples"].variable[c, p].values)
        text += f" · {n} samples"
        if (cap := sample_cap(n, red.get("features"))) is not None:
            text += f" (spectrum capped at {cap} eigenvalues)"
    return text


def eigen_trace(eigs: np.ndarray, name: str = "eigenvalues") -> dict | None:
    """The scatter trace of stored eigenvalues λ_k against rank k (their positive values), or None when
    none is positive."""
    ok = np.isfinite(eigs) & (eigs > 0)
    if not ok.any():
        return None
    rank = np.arange(1, eigs.size + 1)
    # markers only on short spectra: 1,024 SVG markers cost ~90 ms of drawing per click in the browser
    return {
        "type": "scatter",
        "x": rank[ok],
        "y": eigs[ok],
        "mode": "lines+markers" if ok.sum() <= MAX_MARKERS else "lines",
        "name": name,
        "marker": {"size": 4},
        "hovertemplate": "k=%{x}<br>λ=%{y:.4g}<extra></extra>",
    }


def figure_spectrum(ds, probe: str, step: int | None, *, fit_range=None, uirevision: str = "spectrum"):
    """Eigenvalues λ_k of ``probe`` at capture ``step`` against rank k on log-log axes, with the
    α-ReQ power-law fit λ_k ≈ exp(b)·k^(−α) drawn over its fit range (shaded); ``fit_range`` defaults to
    the one the run's stored α used (``run_fit_range``). Reads one row of ``eigenvalues`` (a lazily
    opened store reads one chunk)."""
    if fit_range is None:
        fit_range = run_fit_range(ds)
    head = f"Eigenspectrum · {probe} · step {step}"
    if "eigenvalues" not in ds.data_vars:
        return empty_figure("this run stores no eigenvalues", title="Eigenspectrum")
    probes = [str(p) for p in ds["probe"].values]
    if probe not in probes:
        return empty_figure(f"probe {probe!r} is not in this run", title="Eigenspectrum")
    hit = np.nonzero(ds["capture_step"].values == step)[0]
    if hit.size == 0:
        return empty_figure(f"no capture at step {step}", title=head)
    c, p = int(hit[-1]), probes.index(probe)
    eigs = np.asarray(ds["eigenvalues"].variable[c, p].values, float)
    trace = eigen_trace(eigs)
    if trace is None:
        return empty_figure(f"no positive eigenvalues stored for {probe} at step {step}", title=head)
    data = [trace]
    shapes, notes = [], []
    alpha, r2, icpt, (lo, hi), reason = _fit_alpha(eigs, fit_range, stored_floor(ds, c, p))
    if math.isfinite(alpha):
        k = np.arange(lo, hi) + 1.0
        data.append(
            {
                "type": "scatter",
                "x": k,
                "y": np.exp(icpt) * k ** (-alpha),
                "mode": "lines",
                "name": f"α-ReQ fit α={alpha:.3f}",
                "line": {"color": "crimson", "dash": "dash", "width": 3},
            }
        )
        s, a = shade(lo + 1, hi, f"fit ranks {lo + 1}…{hi}", "crimson")
        shapes.append(s)
        notes.append(a)
        sub = f"α={alpha:.3f}, R²={r2:.3f}"
    else:
        sub = f"α-ReQ not fitted: {reason}"
    if "alpha" in ds.data_vars:
        stored = float(ds["alpha"].variable[c, p].values)
        sub += f" · stored α={stored:.3f}"
    sub += _reading(ds, probe, c, p)
    return figure(
        data,
        {
            "title": title(f"{head}<br><sup>{sub}</sup>"),
            "height": 420,
            "uirevision": uirevision,
            "xaxis": {"type": "log", "title": title("rank k")},
            "yaxis": {"type": "log", "exponentformat": "power", "title": title("eigenvalue λ_k")},
            "meta": {"kind": "spectrum", "probe": probe, "step": int(step), "alpha": alpha, "r2": r2},
            "legend": {"x": 0.99, "xanchor": "right", "y": 0.99},
            "shapes": shapes,
            "annotations": notes,
        },
    )
