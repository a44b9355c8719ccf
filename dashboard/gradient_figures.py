"""The gradients panel: per-block gradient norms, per-projection-type matrix statistics, update ratios.

Reads ``param_<stat>`` over (step, param) and ``matrix_<stat>`` over (capture_step, matrix) of the pinned
store layout; parameter names are grouped into transformer blocks and weight matrices into projection
types by name (GPT-2, Llama/GPT-NeoX and BERT naming)."""

from __future__ import annotations

import warnings

import numpy as np

from phasescope.gradients import block_index
from phasescope.statistics import REGISTRY

from ._common import RUN_DASHES, aligned_x, as_runs, display_steps, empty_figure, probe_colours, step_ticks, title
from ._plotly import axis_name, colorscale, compact_int, f32, figure, grid


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


HEATMAP_RUNS = 2  # runs whose layer x step heatmaps are drawn (each adds a subplot per projection type)
TITLES = {
    "grad": "gradient norm per block",
    "matrix": "{stat} per layer and step · {kind}",
    "ratio": "update-to-weight ratio: weight matrices per block; biases and norm gains apart",
}


def ratio_group(name: str) -> str:
    """Where a parameter's update ratio is drawn: "block N" (or the module) for weight matrices, "biases"
    and "norm gains" apart (zero-initialised biases make step 1's ratios ~1, which hid every block's)."""
    parts = name.split(".")
    if parts[-1] == "bias":
        return "biases"
    norm = any("norm" in p.lower() or p.lower().startswith("ln") for p in parts[:-1])
    if norm and parts[-1] in ("weight", "scale", "g"):
        return "norm gains"
    return param_block(name)


def matrix_stats_of(ds) -> list[str]:
    """The gradient statistics of ``ds``'s matrices (``matrix_<stat>`` of the gradients, not the weights')."""
    other = {f"matrix_{v.name}" for s in REGISTRY.values() if "gradients" not in s.panels for v in s.variables}
    return [v.removeprefix("matrix_") for v in ds.data_vars if v.startswith("matrix_") and v not in other]


def figure_gradients(data, *, stat: str | None = None, align: str = "step", uirevision: str = "gradients"):
    """Gradient panel of one run or several (a Dataset or {name: Dataset}): per-block gradient norm
    ‖g_B‖ = sqrt(Σ_{p∈B} ‖g_p‖²) from ``param_grad_norm`` over steps; one matrix statistic (``stat``,
    default the first stored, e.g. the nuclear norm) as a layer × step heatmap per projection type (log10
    colour), a row of them per run (the first HEATMAP_RUNS runs'); update-to-weight ratios (median per
    block over its weight matrices; biases and norm gains as their own lines). Several runs: lines
    overlaid, told apart by dash and named. Log step axes."""
    runs = as_runs(data)
    multi = len(runs) > 1
    mstats = list(dict.fromkeys(s for ds in runs.values() for s in matrix_stats_of(ds)))
    stat = stat if stat in mstats else (mstats[0] if mstats else None)
    panels: list[tuple[str, str, str]] = []
    if any("param_grad_norm" in ds.data_vars for ds in runs.values()):
        panels.append(("grad", "", ""))
    with_stat = [name for name, ds in runs.items() if stat is not None and f"matrix_{stat}" in ds.data_vars]
    for name in with_stat[:HEATMAP_RUNS]:  # a heatmap per projection type and run: the first runs' only
        panels += [("matrix", k, name) for k in _groups(runs[name]["matrix"].values, projection_type)]
    ratios = sorted(
        {v for ds in runs.values() for v in ds.data_vars if v.startswith("param_") and ("ratio" in v or "update" in v)}
    )
    if ratios:
        panels.append(("ratio", "", ""))
    if not panels:
        return empty_figure(
            "no gradient statistics in this run (param_grad_norm, matrix_*, update ratios)", title="Gradients"
        )
    names = [TITLES[p].format(stat=stat, kind=k) + (f" · {r}" if multi and r else "") for p, k, r in panels]
    layout, ks = grid(len(panels), 1, vspace=0.35 / len(panels), titles=names)
    data = []
    for (k,), (panel, kind, run) in zip(ks, panels):
        xa, ya = axis_name(k, "x"), axis_name(k, "y")
        xtitle = "step"
        if panel in ("grad", "ratio"):
            var = "param_grad_norm" if panel == "grad" else ratios[0]
            for r_i, (name, ds) in enumerate(runs.items()):
                if var in ds.data_vars:
                    x, xtitle = aligned_x(ds, ds["step"].values, align)
                    titled = any(t.get("legendgroup") == panel for t in data)
                    lines = _block_lines(ds, var, panel, display_steps(x), xa, ya, name if multi else "", r_i)
                    if titled:  # the group's title is on the first run's lines drawn
                        for t in lines:
                            t.pop("legendgrouptitle", None)
                    data += lines
            layout[f"yaxis{'' if k == 1 else k}"].update(type="log", title=title(var.removeprefix("param_")))
        else:
            ds = runs[run]
            x, xtitle = aligned_x(ds, ds["capture_step"].values, align)
            xd, steps = display_steps(x), compact_int(ds["capture_step"].values)
            idx = _groups(ds["matrix"].values, projection_type)[kind]
            mats = [str(m) for m in ds["matrix"].values]
            layers = [block_index(mats[i]) for i in idx]
            order = sorted(range(len(idx)), key=lambda j: (layers[j] is None, layers[j] or 0))
            vals = np.asarray(ds[f"matrix_{stat}"].transpose("matrix", "capture_step").values, float)
            z = vals[[idx[j] for j in order]]
            with np.errstate(all="ignore"):
                zl = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.nan)
            rows = [str(layers[j]) if layers[j] is not None else mats[idx[j]] for j in order]
            data.append(
                {
                    "type": "heatmap",
                    "x": xd,
                    "y": rows,
                    "z": zl,
                    "name": f"{stat} · {kind}" + (f" · {run}" if multi else ""),
                    "customdata": np.tile(steps, (len(rows), 1)),
                    "colorscale": colorscale("Viridis"),
                    "showscale": False,
                    "xaxis": xa,
                    "yaxis": ya,
                    "hovertemplate": (
                        f"{kind} layer %{{y}}<br>step %{{customdata}}<br>log10 {stat} %{{z:.3f}}<extra></extra>"
                    ),
                }
            )
            layout[f"yaxis{'' if k == 1 else k}"].update(title=title("layer"), type="category")
        layout[f"xaxis{'' if k == 1 else k}"].update(type="log", title=title(f"{xtitle} (log)"))
    _share_colour_range([t for t in data if t.get("type") == "heatmap"])
    layout.update(
        height=max(330, 230 * len(panels)),
        uirevision=uirevision,
        title=title("Gradients"),
        meta={
            "kind": "gradients",
            "panels": [p for p, _, _ in panels],
            "stat": stat,
            "stats": mstats,
            "kinds": [k for p, k, _ in panels if p == "matrix"],
            "runs": list(runs),
            "heatmap_runs": with_stat[:HEATMAP_RUNS],
        },
        legend={"groupclick": "toggleitem"},
    )
    return figure(data, step_ticks(data, layout))


def _block_lines(ds, var: str, panel: str, xd, xa: str, ya: str, run: str, r_i: int) -> list[dict]:
    """One line per block of ``var`` in run ``ds``: the block's gradient norm (root of the sum of its
    parameters' squares) or its median update ratio (biases and norm gains apart); ``run`` names the
    lines when several runs are drawn (dash ``r_i``)."""
    steps = compact_int(ds["step"].values)
    blocks = _groups(ds["param"].values, param_block if panel == "grad" else ratio_group)
    vals = np.asarray(ds[var].transpose("step", "param").values, float)
    out = []
    for n, (c, (b, idx)) in enumerate(zip(probe_colours(len(blocks)), blocks.items())):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps (not recorded there)
            y = np.sqrt(np.nansum(vals[:, idx] ** 2, axis=1)) if panel == "grad" else np.nanmedian(vals[:, idx], axis=1)
        apart = b in ("biases", "norm gains")
        tr = {
            "type": "scatter",
            "x": xd,
            "y": f32(y),
            "mode": "lines",
            "name": b + (f" · {run}" if run else ""),
            "line": {"color": c, "dash": "dot" if apart else RUN_DASHES[r_i % len(RUN_DASHES)]},
            "legendgroup": panel,
            "customdata": steps,
            "xaxis": xa,
            "yaxis": ya,
            "hovertemplate": f"{run} {b}<br>step %{{customdata}}<br>{var} %{{y:.4g}}<extra></extra>",
        }
        if panel == "ratio":  # recorded on the update schedule only: join the recorded steps
            tr.update(mode="lines+markers", connectgaps=True, marker={"size": 4, "color": c})
        if n == 0:
            tr["legendgrouptitle"] = {"text": TITLES[panel].format(stat="", kind="")}
        out.append(tr)
    return out


def _share_colour_range(heatmaps: list[dict]) -> None:
    """One colour range per projection type across the runs' heatmaps, so their rows compare."""
    kinds: dict[str, list[dict]] = {}
    for t in heatmaps:
        kinds.setdefault(t["name"].split(" · ")[1], []).append(t)
    for group in kinds.values():
        z = np.concatenate([np.asarray(t["z"], float).ravel() for t in group])
        z = z[np.isfinite(z)]
        if z.size:
            for t in group:
                t.update(zmin=float(z.min()), zmax=float(z.max()))
