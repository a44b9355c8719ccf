"""The gradients panel: per-block gradient norms, per-projection-type matrix statistics, update ratios.

Reads ``param_<stat>`` over (step, param) and ``matrix_<stat>`` over (capture_step, matrix) of the pinned
store layout; parameter names are grouped into transformer blocks and weight matrices into projection
types by name (GPT-2, Llama/GPT-NeoX and BERT naming)."""

from __future__ import annotations

import warnings

import numpy as np

from phasescope.gradients import block_index
from phasescope.statistics import REGISTRY

from ._common import RUN_DASHES, aligned_x, display_steps, empty_figure, probe_colours, step_ticks, title
from ._plotly import axis_name, compact_int, f32, figure, grid


def param_block(name: str) -> str:
    """Block a parameter belongs to: 'block N' for transformer layers (``phasescope.gradients.block_index``,
    the rule that groups matrix statistics too), else its first name part."""
    block = block_index(name)
    if block is not None:
        return f"block {block}"
    parts = [p for p in name.split(".") if p not in ("transformer", "model", "gpt_neox", "module")]
    return parts[0] if parts else name


def projection_type(name: str) -> str:
    """Projection type of a weight matrix name: its last name part that is not 'weight'/'bias',
    with the layer index removed (e.g. 'h.3.attn.q_proj.weight' → 'attn.q_proj')."""
    parts = [p for p in name.split(".") if p not in ("weight", "bias") and not p.isdigit()]
    parts = [p for p in parts if p not in ("transformer", "model", "h", "layers", "layer", "blocks", "gpt_neox")]
    return ".".join(parts[-2:]) if parts else name


def _groups(names, key) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        out.setdefault(key(str(n)), []).append(i)
    return out


TITLES = {
    "grad": "gradient norm per block",
    "matrix": "matrix gradient statistics per projection type",
    "ratio": "update-to-weight ratio per block",
}


def figure_gradients(ds, *, align: str = "step", uirevision: str = "gradients"):
    """Gradient panel: per-block gradient norm ‖g_B‖ = sqrt(Σ_{p∈B} ‖g_p‖²) from ``param_grad_norm``
    over steps; ``matrix_<stat>`` (e.g. nuclear and spectral norms) averaged per projection type over
    capture steps; update-to-weight ratios (``param_*ratio*`` variables, median per block). Log axes."""
    panels = []
    if "param_grad_norm" in ds.data_vars:
        panels.append("grad")
    # per-matrix statistics of the gradients (those of the weights have their registry panel)
    other = {f"matrix_{v.name}" for s in REGISTRY.values() if "gradients" not in s.panels for v in s.variables}
    mstats = [v for v in ds.data_vars if v.startswith("matrix_") and v not in other]
    if mstats:
        panels.append("matrix")
    ratios = [v for v in ds.data_vars if v.startswith("param_") and ("ratio" in v or "update" in v)]
    if ratios:
        panels.append("ratio")
    if not panels:
        return empty_figure(
            "no gradient statistics in this run (param_grad_norm, matrix_*, update ratios)", title="Gradients"
        )
    layout, ks = grid(len(panels), 1, vspace=0.1, titles=[TITLES[p] for p in panels])
    data = []
    for (k,), panel in zip(ks, panels):
        xa, ya = axis_name(k, "x"), axis_name(k, "y")
        if panel in ("grad", "ratio"):
            var = "param_grad_norm" if panel == "grad" else ratios[0]
            x, xtitle = aligned_x(ds, ds["step"].values, align)
            xd, steps = display_steps(x), compact_int(ds["step"].values)
            blocks = _groups(ds["param"].values, param_block)
            vals = np.asarray(ds[var].transpose("step", "param").values, float)
            for n, (c, (b, idx)) in enumerate(zip(probe_colours(len(blocks)), blocks.items())):
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps (not recorded there)
                    y = (
                        np.sqrt(np.nansum(vals[:, idx] ** 2, axis=1))
                        if panel == "grad"
                        else np.nanmedian(vals[:, idx], axis=1)
                    )
                tr = {
                    "type": "scatter",
                    "x": xd,
                    "y": f32(y),
                    "mode": "lines",
                    "name": b,
                    "line": {"color": c},
                    "legendgroup": panel,
                    "customdata": steps,
                    "xaxis": xa,
                    "yaxis": ya,
                    "hovertemplate": f"{b}<br>step %{{customdata}}<br>{var} %{{y:.4g}}<extra></extra>",
                }
                if panel == "ratio":  # recorded on the update schedule only: join the recorded steps
                    tr.update(mode="lines+markers", connectgaps=True, marker={"size": 4, "color": c})
                if n == 0:
                    tr["legendgrouptitle"] = {"text": TITLES[panel]}
                data.append(tr)
            ytitle = var.removeprefix("param_")
        else:
            x, xtitle = aligned_x(ds, ds["capture_step"].values, align)
            xd, steps = display_steps(x), compact_int(ds["capture_step"].values)
            types = _groups(ds["matrix"].values, projection_type)
            for s_i, stat in enumerate(mstats):
                vals = np.asarray(ds[stat].transpose("capture_step", "matrix").values, float)
                for t, idx in types.items():
                    with np.errstate(all="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        y = np.nanmean(vals[:, idx], axis=1)
                    tr = {
                        "type": "scatter",
                        "x": xd,
                        "y": f32(y),
                        "mode": "lines",
                        "name": f"{stat.removeprefix('matrix_')} · {t}",
                        "legendgroup": "matrix",
                        "line": {"dash": RUN_DASHES[s_i % len(RUN_DASHES)]},
                        "customdata": steps,
                        "xaxis": xa,
                        "yaxis": ya,
                        "hovertemplate": f"{t}<br>step %{{customdata}}<br>{stat} %{{y:.4g}}<extra></extra>",
                    }
                    if s_i == 0 and t == next(iter(types)):
                        tr["legendgrouptitle"] = {"text": TITLES[panel]}
                    data.append(tr)
            ytitle = "value (mean over layers)"
        layout[f"yaxis{'' if k == 1 else k}"].update(type="log", title=title(ytitle))
        layout[f"xaxis{'' if k == 1 else k}"].update(type="log", title=title(f"{xtitle} (log)"))
    layout.update(
        height=330 * len(panels),
        uirevision=uirevision,
        title=title("Gradients"),
        meta={"kind": "gradients", "panels": panels},
        legend={"groupclick": "toggleitem"},
    )
    return figure(data, step_ticks(data, layout))
