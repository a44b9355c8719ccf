"""Figure builders of the observatory, without a browser: Datasets in the pinned store layout in,
plotly figures out; values checked against the data and an independent α-ReQ fit."""

import math
import time

import numpy as np
import pytest
import xarray as xr

from phasescope.dashboard import figures as F
from phasescope.testing.synthetic import alpha_grid, capture_schedule, rankme_of, synthetic_dataset


@pytest.fixture(scope="module")
def ds():
    return synthetic_dataset(n_steps=300, n_probes=5, rank=160, n_layers=2, tokens_per_step=1000)


def arr(v):
    return np.asarray(F.decode_array(v))


def test_synthetic_run_has_the_known_spectra(ds):
    cap = capture_schedule(300)
    assert np.array_equal(ds["capture_step"].values, cap) and cap[0] == 0
    assert np.allclose(ds["alpha"].values, alpha_grid(cap, 5))
    lam = np.arange(1, 161.0) ** -ds["alpha"].values[7, 2]
    assert ds["rankme"].values[7, 2] == pytest.approx(rankme_of(lam))
    # independent RankMe: entropy of the normalised spectrum (+1e-7), exponentiated
    p = lam / lam.sum() + 1e-7
    assert ds["rankme"].values[7, 2] == pytest.approx(math.exp(-sum(p * np.log(p))))


def test_overview_shows_rankme_and_alpha_per_layer_on_log_steps(ds):
    fig = F.figure_overview(ds)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert [t.name for t in heat] == ["rankme", "alpha"]
    for t, m in zip(heat, ("rankme", "alpha")):
        assert np.allclose(arr(t.z), ds[m].values.T)  # rows = probes, columns = capture steps
        assert list(t.y) == [str(p) for p in ds["probe"].values]
        assert np.array_equal(arr(t.customdata)[0], ds["capture_step"].values)  # true steps for hover/click
        x = arr(t.x)
        assert (x > 0).all() and x[0] == 0.5 and np.array_equal(x[1:], ds["capture_step"].values[1:])
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    assert fig.layout.uirevision == "overview"


def test_overview_compares_runs_row_by_row_and_decodes_clicks(ds):
    other = synthetic_dataset(n_steps=100, n_probes=3, rank=64, n_layers=1)
    fig = F.figure_overview({"a": ds, "b": other})
    assert len(fig.data) == 4 and fig.layout.meta["runs"] == ["a", "b"]
    assert np.allclose(arr(fig.data[3].z), other["alpha"].values.T)
    click = {"points": [{"curveNumber": 3, "x": 12.0, "y": "layer.01", "customdata": 12}]}
    assert F.decode_click(click) == {"row": "layer.01", "step": 12, "curve": 3}
    assert F.decode_click(None) is None and F.decode_click({"points": []}) is None


def test_tokens_alignment_scales_steps(ds):
    fig = F.figure_overview(ds, align="tokens")
    assert np.array_equal(arr(fig.data[0].x)[1:], ds["capture_step"].values[1:] * 1000)
    assert "tokens" in fig.layout.xaxis.title.text
    no_tps = ds.copy()
    no_tps.attrs = {k: v for k, v in ds.attrs.items() if k != "tokens_per_step"}
    x, title = F.aligned_x(no_tps, [1, 2], "tokens")
    assert title == "step" and list(x) == [1, 2]


def test_heatmap_colours_norms_by_log10_and_r2_on_unit_range(ds):
    g = F.figure_heatmap(ds, "param_grad_norm")
    assert np.allclose(arr(g.data[0].z), np.log10(ds["param_grad_norm"].values.T))
    assert g.data[0].colorbar.title.text == "log10"
    r2 = F.figure_heatmap(ds, "alpha_r2")
    assert (r2.data[0].zmin, r2.data[0].zmax) == (0.0, 1.0)
    assert F.figure_heatmap(ds, "rankme").layout.xaxis.type == "log"
    assert F.figure_heatmap(ds, "rankme").data[0].colorbar.title.side == "right"  # a long title is not clipped


def test_panels_without_data_say_so(ds):
    fig = F.figure_heatmap(ds, "stable_rank")
    assert "not recorded" in fig.layout.meta["empty"]
    bare = ds[["loss"]]
    assert "no gradient statistics" in F.figure_gradients(bare).layout.meta["empty"]
    assert "no eigenvalues" in F.figure_spectrum(bare, "layer.00", 0).layout.meta["empty"]
    assert "not recorded" in F.figure_trajectories(bare).layout.meta["empty"]
    assert "no run selected" in F.figure_overview({}).layout.meta["empty"]
    empty = ds.isel(capture_step=slice(0, 0))
    assert F.figure_overview(empty).layout.meta["notes"]  # no finite values: noted, not raised
    nan = ds.copy(deep=True)
    nan["eigenvalues"][:] = np.nan
    assert "no positive eigenvalues" in F.figure_spectrum(nan, "layer.01", 0).layout.meta["empty"]
    assert "not in this run" in F.figure_spectrum(ds, "layer.99", 0).layout.meta["empty"]
    missing = int(np.setdiff1d(np.arange(300), ds["capture_step"].values)[0])
    assert "no capture at step" in F.figure_spectrum(ds, "layer.01", missing).layout.meta["empty"]


def reference_alpha(lam, lo=11, hi=100):
    """Weighted least squares of log λ_k on −log k, weights 1/k (np.polyfit takes √weights)."""
    k = np.arange(lo, hi) + 1.0
    slope, icpt = np.polyfit(-np.log(k), np.log(lam[lo:hi]), 1, w=np.sqrt(1 / k))
    return slope, icpt


def test_spectrum_reads_stored_eigenvalues_and_draws_the_alpha_fit(ds):
    c, probe = 9, "layer.03"
    step = int(ds["capture_step"].values[c])
    rng = np.random.default_rng(1)
    noisy = ds.copy(deep=True)
    lam = noisy["eigenvalues"].values[c, 3] * np.exp(rng.normal(0, 0.2, 160))
    noisy["eigenvalues"].values[c, 3] = lam
    fig = F.figure_spectrum(noisy, probe, step)
    pts, fit = fig.data[0], fig.data[1]
    assert np.allclose(arr(pts.y), lam) and np.array_equal(arr(pts.x), np.arange(1, 161))
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    a_ref, b_ref = reference_alpha(lam)
    assert fig.layout.meta["alpha"] == pytest.approx(a_ref, rel=1e-9)
    k = np.arange(12, 101.0)
    assert np.array_equal(arr(fit.x), k)
    assert np.allclose(arr(fit.y), np.exp(b_ref) * k**-a_ref)
    assert len(fig.layout.shapes) == 1  # shapes: data units on log axes; annotations: log10 units
    assert (fig.layout.shapes[0].x0, fig.layout.shapes[0].x1) == (12, 100)
    note = next(a for a in fig.layout.annotations if a.text.startswith("fit ranks"))
    assert note.x == pytest.approx(math.log10(12))
    # exact power law: the fit recovers the α it was built with
    exact = F.figure_spectrum(ds, probe, step)
    assert exact.layout.meta["alpha"] == pytest.approx(ds["alpha"].values[c, 3], rel=1e-9)
    assert exact.layout.meta["r2"] == pytest.approx(1.0)


def test_spectrum_with_too_few_eigenvalues_says_why():
    small = synthetic_dataset(n_steps=20, n_probes=2, rank=8, n_layers=1)
    fig = F.figure_spectrum(small, "layer.00", 0)
    assert len(fig.data) == 1 and "not fitted" in fig.layout.title.text


def test_trajectories_overlay_runs_with_loss_on_twin_axis(ds):
    other = synthetic_dataset(n_steps=300, n_probes=5, rank=160, n_layers=2, tokens_per_step=3000)
    fig = F.figure_trajectories({"a": ds, "b": other}, metric="alpha", probes=["layer.00", "layer.04"], align="tokens")
    lines = [t for t in fig.data if t.name.startswith("layer")]
    assert [t.name for t in lines] == ["layer.00 · a", "layer.04 · a", "layer.00 · b", "layer.04 · b"]
    assert np.allclose(arr(lines[1].y), ds["alpha"].sel(probe="layer.04").values)
    assert np.array_equal(arr(lines[2].x)[1:], other["capture_step"].values[1:] * 3000)
    assert lines[0].line.dash == "solid" and lines[2].line.dash == "dash"
    losses = [t for t in fig.data if t.name.startswith("loss")]
    assert len(losses) == 2 and all(t.yaxis == "y2" for t in losses)
    assert np.allclose(arr(losses[0].y), ds["loss"].values)
    assert "a: phases not computed" in fig.layout.meta["notes"]


def test_trajectories_shade_phases_from_a_phases_group(ds):
    phases = xr.Dataset(
        {
            "probe": ("segment", ["model", "model", "layer.00"]),
            "label": ("segment", ["warmup collapse", "entropy-seeking", "stable"]),
            "start_step": ("segment", [0, 40, 0]),
            "end_step": ("segment", [40, 299, 299]),
        }
    )
    fig = F.figure_trajectories(ds, phases={"synthetic": phases})
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.x1) for r in rects] == [(0.5, 40), (40, 299)]  # model-level segments only
    notes = {a.text: a.x for a in fig.layout.annotations}
    assert notes["warmup collapse"] == pytest.approx(math.log10(0.5)) and notes["entropy-seeking"] == pytest.approx(
        math.log10(40)
    )
    assert not fig.layout.meta["notes"]


def test_default_probes_spread_from_first_to_last_layer():
    big = synthetic_dataset(n_steps=10, n_probes=30, rank=16, n_layers=1)
    got = F.default_probes(big, 5)
    assert got[0] == "layer.00" and got[-1] == "layer.29" and len(got) == 5


def test_gradients_per_block_norm_and_one_statistic_per_layer_and_step(ds):
    """Issue 16: one matrix statistic at a time (default the first stored; ``stat`` chooses), drawn as a
    layer × step heatmap per projection type (log10 colour, layers in order), not 24 mixed-unit lines."""
    fig = F.figure_gradients(ds)
    kinds = fig.layout.meta["kinds"]
    assert fig.layout.meta["panels"] == ["grad", *["matrix"] * len(kinds)] and fig.layout.meta["stat"] == "grad_nuclear"
    params = [str(p) for p in ds["param"].values]
    b0 = [i for i, p in enumerate(params) if p.startswith("h.0.")]
    want = np.sqrt((ds["param_grad_norm"].values[:, b0] ** 2).sum(1))
    got = next(t for t in fig.data if t.name == "block 0")
    assert np.allclose(arr(got.y), want)
    mats = [str(m) for m in ds["matrix"].values]
    for stat in ("grad_nuclear", "grad_spectral"):
        fig = F.figure_gradients(ds, stat=stat)
        q = next(t for t in fig.data if t.name == f"{stat} · attn.q")
        assert q.type == "heatmap" and list(q.y) == [str(i) for i in range(len(list(q.y)))]
        for layer in range(len(list(q.y))):
            m = mats.index(f"h.{layer}.attn.q")
            np.testing.assert_allclose(arr(q.z)[layer], np.log10(ds[f"matrix_{stat}"].values[:, m]), rtol=1e-5)
    assert F.figure_gradients(ds, stat="nope").layout.meta["stat"] == "grad_nuclear"  # unknown: the default


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("transformer.h.0.attn.c_attn.weight", "block 0"),
        ("transformer.h.0.attn.c_attn.bias", "biases"),
        ("transformer.h.0.ln_1.weight", "norm gains"),
        ("model.layers.2.input_layernorm.weight", "norm gains"),
        ("transformer.wte.weight", "wte"),
    ],
)
def test_update_ratios_keep_biases_and_norm_gains_apart(name, group):
    assert F.ratio_group(name) == group


@pytest.mark.parametrize(
    ("name", "block", "ptype"),
    [
        ("transformer.h.11.attn.c_attn.weight", "block 11", "attn.c_attn"),
        ("model.layers.3.self_attn.q_proj.weight", "block 3", "self_attn.q_proj"),
        ("transformer.wte.weight", "wte", "wte"),
        ("gpt_neox.layers.0.mlp.dense_h_to_4h.bias", "block 0", "mlp.dense_h_to_4h"),
    ],
)
def test_param_naming(name, block, ptype):
    assert F.param_block(name) == block and F.projection_type(name) == ptype


def test_metadata_and_quality_tables(ds):
    rows = {r["key"]: r["value"] for r in F.metadata_rows(ds)}
    assert rows["model"] == "synthetic-gpt" and rows["model_config.n_layer"] == "2"  # a table, not a JSON dump
    assert not any(r["value"].lstrip().startswith("{") for r in F.metadata_rows(ds))
    assert rows["n_probe"] == "5"
    bad = ds.copy(deep=True)
    bad["flag_nonfinite"].values[[3, 9]] = 1
    bad["loss"].values[9] = np.nan
    bad["rankme"].values[2, 1] = np.nan
    q = {r["check"]: r for r in F.quality_rows(bad)}
    assert q["steps flagged nonfinite"]["value"] == "2" and q["steps flagged nonfinite"]["status"] == "warn"
    assert q["non-finite loss values"]["value"] == "1"
    assert q["NaN cells in rankme"]["value"].startswith("1 /")
    assert all(r["status"] == "ok" for r in F.quality_rows(ds))


def test_quality_table_shows_phasescope_losses_and_unclean_ends_red(ds):
    """Red ('error') is for data phasescope lost and for runs that did not end cleanly; the training's own
    flags and NaN cells stay 'warn'; a clean run says so in 'ok' rows."""
    clean = {r["check"]: r for r in F.quality_rows(ds)}
    assert clean["run state"] == {"check": "run state", "value": "finished", "status": "ok"}
    lossy = ds.copy(deep=True)
    n = lossy.sizes["step"]
    lossy["flag_lost"] = ("step", np.zeros(n, np.uint8))
    lossy["flag_lost"].values[[4, 5, 6]] = [1, 2, 1]
    lossy["flag_dropped"] = ("step", np.zeros(n, np.uint8))
    lossy["flag_dropped"].values[9] = 1
    lossy["flag_nonfinite"].values[3] = 1
    lossy.attrs.update(
        failures={"write": 1, "hook": 3, "metric": 0},
        first_failures={
            "hook": "PhasescopeError: attention_mask shape (8, 6) does not match",
            "write": "OSError: [Errno 28] No space left on device",
        },
        n_dropped_steps=2,
        status="failed",
        error="store writer: OSError(28)",
    )
    rows = F.quality_rows(lossy)
    q = {r["check"]: r for r in rows}
    red = [r["check"] for r in rows if r["status"] == "error"]
    assert red == [
        "run state",
        "phasescope failures: hook",
        "phasescope failures: write",
        "steps flagged dropped",
        "steps flagged lost",
        "step rows dropped by the store writer (n_dropped_steps)",
    ]
    assert q["run state"]["value"] == "failed: store writer: OSError(28)"
    assert q["phasescope failures: hook"]["value"].startswith("3 (first: PhasescopeError: attention_mask shape")
    assert q["steps flagged lost"]["value"].startswith("3 steps, 4 ")
    assert q["steps flagged dropped"]["value"].startswith("1 step, 1 ")
    assert q["step rows dropped by the store writer (n_dropped_steps)"]["value"] == "2"
    assert q["steps flagged nonfinite"]["status"] == "warn"  # the training's own trouble: not red
    # no failures recorded: one 'ok' row says so; the catalog's state wins over the attributes
    quiet = ds.copy()
    quiet.attrs = {**ds.attrs, "failures": {}, "n_dropped_steps": 0}
    q = {r["check"]: r for r in F.quality_rows(quiet, state="stale", detail="stale: no commit for 12 min")}
    assert q["phasescope failures"]["status"] == "ok" and q["phasescope failures"]["value"] == "none"
    assert q["step rows dropped by the store writer (n_dropped_steps)"]["status"] == "ok"
    assert q["run state"] == {"check": "run state", "value": "stale: no commit for 12 min", "status": "error"}
    for state in ("interrupted", "failed", "stale"):
        quiet.attrs = {**ds.attrs, "status": state}
        assert F.quality_rows(quiet)[0]["status"] == "error", state
    quiet.attrs = {**ds.attrs, "status": "running", "phasescope_commit": {"updated": time.time()}}
    assert F.quality_rows(quiet)[0] == {"check": "run state", "value": "live", "status": "ok"}


def test_csv_export_table_matches_the_figure(ds):
    frame = F.figure_to_frame(F.figure_heatmap(ds, "rankme"))
    assert len(frame) == ds["rankme"].size
    row = frame[(frame["row"] == "layer.02") & (frame["x"] == ds["capture_step"].values[5])]
    assert row["value"].item() == pytest.approx(ds["rankme"].values[5, 2])
    lines = F.figure_to_frame(F.figure_trajectories(ds, probes=["layer.01"], show_loss=False))
    assert np.array_equal(lines["x"].values, ds["capture_step"].values)  # true steps, not display positions


def test_keep_view_reapplies_the_users_zoom(ds):
    fig = F.keep_view(
        F.figure_overview(ds),
        {"xaxis2.range[0]": 0.1, "xaxis2.range[1]": 1.5, "yaxis.range": [3.5, -0.5], "dragmode": "pan"},
    )
    assert list(fig.layout.xaxis2.range) == [0.1, 1.5] and fig.layout.xaxis2.autorange is False
    assert list(fig.layout.yaxis.range) == [3.5, -0.5] and fig.layout.xaxis.range is None
    reset = F.keep_view(F.figure_overview(ds), {"xaxis.autorange": True})
    assert reset.layout.xaxis.range is None
    assert F.keep_view(F.figure_heatmap(ds, "rankme"), None).layout.xaxis.range is None


def all_figures(ds):
    phases = xr.Dataset(
        {
            "probe": ("segment", ["model", "model", "layer.00"]),
            "label": ("segment", ["collapse", "entropy-seeking", "stable"]),
            "start_step": ("segment", [0, 40, 0]),
            "end_step": ("segment", [40, 299, 299]),
        }
    )
    return [
        F.figure_overview({"a": ds, "b": ds}),
        F.figure_heatmap(ds, "param_grad_norm"),
        F.figure_heatmap(ds, "alpha"),
        F.figure_heatmap(ds, "matrix_grad_nuclear"),
        F.figure_spectrum(ds, "layer.01", 12),
        F.figure_gradients(ds),
        F.figure_trajectories(ds, phases={"synthetic": phases}),
        F.figure_phase_strip(ds, phases),
        F.figure_phase_strip(ds, None),
        F.empty_figure("nothing", title="t"),
    ]


def test_figures_built_without_validation_pass_plotlys_validator(ds):
    """The builders skip plotly's per-property validation for speed; rebuilding each figure with it
    must accept every property and value, and keep the colour scales (plotly.js knows fewer names)."""
    import plotly.graph_objects as go

    for fig in all_figures(ds):
        raw = fig.to_plotly_json()
        checked = go.Figure(raw)  # raises ValueError on an invalid property or value
        for mine, ref in zip(fig.data, checked.data):
            if mine.type == "heatmap" and "colorscale" in mine.to_plotly_json():
                got = [tuple(c) for c in mine.to_plotly_json()["colorscale"]]
                assert got == [tuple(c) for c in ref.colorscale]
                assert all(isinstance(c, (list, tuple)) for c in mine.to_plotly_json()["colorscale"])


def test_alpha_colours_are_plasma_not_plotly_js_default(ds):
    from plotly.colors import get_colorscale

    trace = F.figure_heatmap(ds, "alpha").data[0].to_plotly_json()
    assert [tuple(c) for c in trace["colorscale"]] == [tuple(c) for c in get_colorscale("Plasma")]


def test_spectrum_fits_over_the_runs_own_fit_range():
    from phasescope.spectra import alpha_req

    small = synthetic_dataset(n_steps=30, n_probes=2, rank=64, n_layers=1)
    step = int(small["capture_step"].values[5])
    assert "not fitted" in F.figure_spectrum(small, "layer.01", step).layout.title.text  # 64 < 100 ranks
    for attr in ("auto", "'auto'"):
        small.attrs["fit_range"] = attr
        fig = F.figure_spectrum(small, "layer.01", step)
        want = alpha_req(small["eigenvalues"].values[5, 1], fit_range="auto")
        assert fig.layout.meta["alpha"] == pytest.approx(want.alpha) and "not fitted" not in fig.layout.title.text
    small.attrs["fit_range"] = [2, 40]
    assert F.run_fit_range(small) == (2, 40)
    assert F.figure_spectrum(small, "layer.01", step).layout.shapes[0].x0 == 3
    small.attrs["fit_range"] = "(5, 50)"
    assert F.run_fit_range(small) == (5, 50)
    assert F.figure_spectrum(small, "layer.01", step, fit_range=(11, 60)).layout.shapes[0].x0 == 12  # explicit wins


def test_sparse_update_ratios_are_joined_across_unrecorded_steps(ds):
    """Update ratios exist only on the update schedule; the panel must join those steps, not draw dots."""
    ratio = np.full((ds.sizes["step"], ds.sizes["param"]), np.nan)
    recorded = np.arange(0, ds.sizes["step"], 7)
    ratio[recorded] = 1e-3 * (1 + np.arange(len(recorded)))[:, None]
    sparse = ds.assign(param_update_ratio=(("step", "param"), ratio))
    fig = F.figure_gradients(sparse)
    assert fig.layout.meta["panels"][0] == "grad" and fig.layout.meta["panels"][-1] == "ratio"
    traces = [t for t in fig.data if t.legendgroup == "ratio"]
    assert traces and all(t.connectgaps for t in traces)
    y = arr(traces[0].y)
    assert np.isfinite(y[recorded]).all() and np.allclose(y[recorded], 1e-3 * (1 + np.arange(len(recorded))))


def test_log_step_axes_label_step_zero_and_decades(ds):
    """Step 0 has no logarithm: it is drawn at half the first positive step and its tick reads "0" (plotly's
    own first tick read "5", i.e. 0.5); then 1-2-5 per decade, in steps or tokens as drawn. The
    eigenspectrum's eigenvalue axis reads powers of ten, not SI prefixes ("1μ")."""
    figs = {
        "heatmap": F.figure_heatmap(ds, "rankme"),
        "overview": F.figure_overview(ds),
        "trajectories": F.figure_trajectories(ds, metric="rankme"),
    }
    for name, fig in figs.items():
        ax = fig.layout.xaxis
        assert ax.tickmode == "array", name
        assert ax.ticktext[0] == "0" and ax.tickvals[0] == 0.5, (name, ax.tickvals[:3])  # first positive step: 1
        assert list(ax.ticktext[1:4]) == ["1", "2", "5"] and ax.ticktext[-1] in ("100", "200"), (name, ax.ticktext)
        assert all(v1 > v0 for v0, v1 in zip(ax.tickvals, ax.tickvals[1:]))
    assert figs["overview"].layout.xaxis2.ticktext[0] == "0"
    tokens = F.figure_heatmap(ds, "rankme", align="tokens").layout.xaxis
    assert tokens.ticktext[0] == "0" and tokens.ticktext[1] == "1k" and tokens.tickvals[0] == 500
    spec = F.figure_spectrum(ds, str(ds["probe"].values[0]), int(ds["capture_step"].values[-1]))
    assert spec.layout.yaxis.exponentformat == "power"
    assert figs["trajectories"].layout.yaxis2.tickformat == ".3~g"  # loss ticks read 2.5, not 2.4999


def test_the_heatmap_panel_opens_on_a_metric_the_overview_does_not_draw():
    """The overview draws RankMe and α; the heatmap panel below it used to open on RankMe again."""
    assert F.default_heatmap_metric(["rankme", "alpha", "alpha_r2", "participation_ratio"]) == "participation_ratio"
    assert F.default_heatmap_metric(["rankme", "alpha", "alpha_r2"]) == "alpha_r2"
    assert F.default_heatmap_metric(["rankme"]) == "rankme" and F.default_heatmap_metric([]) is None


def test_spectrum_fit_uses_the_stored_round_off_floor():
    """A run with float32 covariance products (the default) stores its round-off floor (eigen_floor): the
    spectrum panel's α fit must use it, as the stored α did. Read on the recorded three-phase run, whose
    final norm has LayerNorm's zero eigenvalue lifted above float64's floor by the float32 products."""
    from pathlib import Path

    from phasescope.store import open_run

    run = open_run(Path(__file__).parent / "data" / "three-phases.zarr", lazy=False)
    assert run.attrs["spectra_precision"] == "auto" and float(run["eigen_floor"].max()) == 2.0**-23
    ev = run["eigenvalues"].sel(probe="final_norm").values
    c = int(np.argmax(ev[:, -1] / ev[:, 0] > 1e-12))  # the first capture whose zero is not stored as 0
    assert ev[c, -1] / ev[c, 0] < 2.0**-23
    step = int(run["capture_step"].values[c])
    fig = F.figure_spectrum(run, "final_norm", step)
    stored = float(run["alpha"].sel(probe="final_norm").values[c])
    assert fig.layout.meta["alpha"] == pytest.approx(stored, rel=1e-6)  # eigenvalues are stored in float32
    # without the stored floor, the zero counts and the fit range (so α) moves
    blind = F.figure_spectrum(run.drop_vars("eigen_floor"), "final_norm", step)
    assert abs(blind.layout.meta["alpha"] - stored) > 1e-3


def test_esd_figure_draws_the_histogram_the_fitted_tail_and_the_bulk_edge():
    """WeightWatcher's per-layer ESD plot from a weight_spectra result: the density integrates to 1, the
    tail line is the fitted power law (slope −α on log-log axes, from λ_min), λ_min and the MP bulk edge
    are marked; an unfitted tail says why."""
    import plotly.graph_objects

    from phasescope.dashboard.figures import figure_esd
    from phasescope.spectra.weights import weight_spectra

    rng = np.random.default_rng(0)
    w = rng.standard_t(2.5, size=(400, 200)) * 0.02  # heavy-tailed elements: a power-law ESD tail
    for fit in ("clauset", "ww"):
        ws = weight_spectra({"layer.w": w}, fit=fit, mp=True)["layer.w"]
        fig = figure_esd(ws)
        plotly.graph_objects.Figure(fig.to_dict())  # passes plotly's validator
        hist, tail = fig.data[0], fig.data[1]
        edges = np.geomspace(float(np.min(ws.eigenvalues)), float(np.max(ws.eigenvalues)) * (1 + 1e-9), 61)
        widths = np.diff(edges)[np.histogram(ws.eigenvalues, edges)[0] > 0]
        assert float(np.sum(np.asarray(hist.y) * widths)) == pytest.approx(1.0, rel=1e-9)
        x, y = np.asarray(tail.x), np.asarray(tail.y)
        slope = np.diff(np.log(y)) / np.diff(np.log(x))
        np.testing.assert_allclose(slope, -ws.alpha, rtol=1e-9)
        assert x[0] == pytest.approx(ws.xmin) and fig.layout.shapes[0].x0 == pytest.approx(ws.xmin)
        assert fig.layout.shapes[1].x0 == pytest.approx(ws.mp_bulk_max)
        assert fig.layout.meta["fit"] == fit and f"α={ws.alpha:.3f}" in fig.layout.title.text
    few = weight_spectra({"tiny": rng.standard_normal((12, 4))})["tiny"]
    assert "not fitted" in figure_esd(few).layout.title.text
