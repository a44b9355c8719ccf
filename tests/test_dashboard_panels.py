"""Registry-declared dashboard panels: the "similarity" panel draws the stored linear CKA of a real run."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from phasescope.dashboard.panel_figures import figure_panel, panel_variables
from phasescope.probes import Recorder
from phasescope.store import RunWriter, open_run


def _cka_run(path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 12))
    with Recorder(str(path), write_interval=0.0, strict=True) as rec:
        for step in range(6):
            x = x + 0.4 * rng.standard_normal(x.shape)  # the same 80 samples, drifting
            rec.record(step, activations={"a": x, "b": np.tanh(x)})
    return open_run(path)


def test_similarity_panel_draws_the_stored_cka(tmp_path):
    ds = _cka_run(tmp_path / "c.zarr")
    assert panel_variables("similarity") == ["cka_first", "cka_previous", "cka_stage"]
    fig = figure_panel({"c": ds}, "similarity")
    go.Figure(fig.to_dict())  # passes plotly's validator
    assert fig.layout.meta["variables"] == ["cka_first", "cka_previous"]
    by = {(t.yaxis, t.name): np.asarray(t.y, float) for t in fig.data}
    np.testing.assert_allclose(by[("y", "a")], ds.cka_first.sel(probe="a").values, rtol=1e-6)
    np.testing.assert_allclose(by[("y2", "b")], ds.cka_previous.sel(probe="b").values, rtol=1e-6, equal_nan=True)
    assert by[("y", "a")][0] == 1.0 and by[("y", "a")][-1] < 0.95  # drift shows
    assert list(fig.layout.yaxis.range) == [0, 1.02]


def test_panel_says_what_is_missing(tmp_path):
    with RunWriter(tmp_path / "old.zarr", probes=["p"], params=[], metrics=["rankme"], max_rank=2) as w:
        w.append_step(0, {"loss": 1.0})
        w.append_capture(0, {"rankme": [1.5]}, np.ones((1, 2)), [4])
    fig = figure_panel({"old": open_run(tmp_path / "old.zarr")}, "similarity")
    assert "cka_first, cka_previous, cka_stage not recorded" in fig.layout.meta["empty"]
    assert "no run selected" in figure_panel({}, "similarity").layout.meta["empty"]


def test_the_page_has_a_panel_per_registry_panel_and_renders_the_cka(tmp_path):
    """The served first page holds a "stat-similarity" graph drawn from the run's stored CKA; the
    callback that redraws it on a live refresh returns the same figure."""
    import json

    from phasescope.dashboard import create_app
    from phasescope.dashboard.layout import GRAPHS, STAT_PANELS

    root = tmp_path / "runs"
    root.mkdir()
    ds = _cka_run(root / "c.zarr")
    assert "similarity" in STAT_PANELS and "stat-similarity" in GRAPHS
    app = create_app(root)
    client = app.server.test_client()
    page = json.loads(client.get("/_dash-layout", headers={"Referer": "http://x/?run=c.zarr"}).data)
    stack, fig = [page], None
    while stack and fig is None:
        n = stack.pop()
        if isinstance(n, dict):
            if n.get("props", {}).get("id") == "stat-similarity":
                fig = n["props"]["figure"]
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    assert fig is not None and fig["layout"]["meta"]["variables"] == ["cka_first", "cka_previous"]
    from phasescope.dashboard._plotly import decode_array

    first = next(t for t in fig["data"] if t["name"] == "a" and t.get("yaxis", "y") == "y")
    np.testing.assert_allclose(decode_array(first["y"]), ds.cka_first.sel(probe="a").values, rtol=1e-6)


def test_quality_table_says_not_requested_for_metrics_a_run_never_asked_for(tmp_path):
    from phasescope.dashboard.figures import quality_rows

    ds = _cka_run(tmp_path / "q.zarr")  # no raw singular values requested: rankme_raw all NaN
    rows = {r["check"]: r for r in quality_rows(ds)}
    assert rows["rankme_raw"] == {
        "check": "rankme_raw",
        "status": "ok",
        "value": "not requested (off by default; rankme_raw=True records it)",
    }
    asked = ds.copy()
    asked.attrs["rankme_raw"] = True  # requested, yet every cell NaN: a data problem, not "not requested"
    row = {r["check"]: r for r in quality_rows(asked)}["NaN cells in rankme_raw"]
    assert row["status"] == "warn" and row["value"].startswith("12 / 12")
    assert rows["cka_previous"] == {
        "check": "cka_previous",
        "value": "not computed in 2 / 12 cells",
        "status": "ok",
    }  # the first capture has no previous one
    assert rows["NaN cells in rankme"]["status"] == "ok"


def test_rankme_raw_when_requested_is_garrido_rankme_of_the_raw_rows_and_quality_is_quiet(tmp_path):
    """rankme_raw=True: the stored value equals RankMe of the raw (uncentred) rows' singular values,
    computed here with numpy's SVD, and the data-quality table has no row about it."""
    from phasescope.dashboard.figures import quality_rows

    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 12)) @ np.diag(np.linspace(2.0, 0.1, 12)) + 3.0  # far from centred
    with Recorder(str(tmp_path / "raw.zarr"), write_interval=0.0, strict=True, rankme_raw=True) as rec:
        rec.record(0, activations={"a": x})
    ds = open_run(tmp_path / "raw.zarr")
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum() + 1e-7
    ref = float(np.exp(-(p * np.log(p)).sum()))
    assert ds.attrs["rankme_raw"] is True
    np.testing.assert_allclose(float(ds["rankme_raw"].sel(probe="a").values[0]), ref, rtol=1e-9)
    assert float(ds["rankme_raw"].values[0, 0]) != pytest.approx(float(ds["rankme"].values[0, 0]), rel=1e-3)
    assert "rankme_raw" not in {r["check"] for r in quality_rows(ds)}


def test_weights_panel_draws_weightwatchers_metrics_per_projection_type(tiny_sweep, tmp_path):
    """`analyze --weights` stores WeightWatcher's layer metrics per matrix; the registry's "weights"
    panel draws each as one line per projection type (the mean over layers), and the gradients panel
    keeps to the gradients' own statistics."""
    from phasescope.dashboard.gradient_figures import figure_gradients, projection_type
    from phasescope.probes.offline import analyze

    out = tmp_path / "w.zarr"
    analyze(tiny_sweep / "ck", str(tiny_sweep / "p.txt"), out, workers=0, weights=True, gradients=True, progress=False)
    ds = open_run(out, lazy=False)
    want = panel_variables("weights")
    assert want[:2] == ["matrix_weight_alpha", "matrix_weight_ks_distance"] and "matrix_weight_num_traps" in want
    assert all(v in ds.data_vars for v in want)
    fig = figure_panel({"w": ds}, "weights")
    go.Figure(fig.to_dict())
    assert fig.layout.meta["variables"] == [v for v in want if np.isfinite(ds[v].values).any()]
    types = sorted({projection_type(str(m)) for m in ds["matrix"].values})
    first = [t for t in fig.data if t.yaxis == "y"]
    assert sorted(t.name for t in first) == types  # one line per projection type
    var = fig.layout.meta["variables"][0]
    for t in first:
        idx = [i for i, m in enumerate(ds["matrix"].values) if projection_type(str(m)) == t.name]
        np.testing.assert_allclose(np.asarray(t.y, float), ds[var].values[:, idx].mean(axis=1), rtol=1e-6)
    grads = figure_gradients(ds)
    assert not any("weight_" in (t.name or "") for t in grads.data)
    assert any("grad_nuclear" in (t.name or "") for t in grads.data)


def test_esd_panel_draws_the_stored_weight_esd_with_its_fit(tiny_sweep, tmp_path):
    """`analyze --weights` stores each weight's ESD (eigenvalues of WᵀW) beside its statistics; the page's
    ESD panel reads one back and draws WeightWatcher's per-layer plot: the stored eigenvalues equal
    `weight_spectra` of the checkpoint, the drawn tail is the stored fit (α, λ_min, the eigenvalues above
    it) and the MP edge is soft rank·λ_max. With two runs ticked the panel offers only the one that has
    ESDs and names it; a run without them says how to record them."""
    import json

    from transformers import GPT2LMHeadModel

    from phasescope.dashboard import create_app
    from phasescope.dashboard.callbacks import Views
    from phasescope.dashboard.data import RunSource
    from phasescope.dashboard.esd_figures import esd_steps, figure_esd, stored_weight_spectrum
    from phasescope.probes.offline import analyze
    from phasescope.spectra.weights import weight_spectra

    root = tmp_path / "runs"
    analyze(tiny_sweep / "ck", str(tiny_sweep / "p.txt"), root / "w.zarr", workers=0, weights=True, progress=False)
    analyze(tiny_sweep / "ck", str(tiny_sweep / "p.txt"), root / "plain.zarr", workers=0, progress=False)
    ds = open_run(root / "w.zarr", lazy=False)
    assert esd_steps(ds) == [0, 4, 8] and esd_steps(open_run(root / "plain.zarr")) == []
    names = [str(m) for m in ds["matrix"].values]
    model = GPT2LMHeadModel.from_pretrained(tiny_sweep / "ck" / "checkpoint-8")
    params = dict(model.named_parameters())
    want = weight_spectra({n: params[n].detach() for n in names}, mp=True)
    assert ds["weight_eigenvalues"].shape == (3, len(names), 16)
    for n in names:
        got = stored_weight_spectrum(ds, n, 8)
        assert not isinstance(got, str)
        ref = want[n]
        np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues.numpy(), rtol=1e-6)
        assert got.alpha == pytest.approx(ref.alpha, rel=1e-6) and got.xmin == pytest.approx(ref.xmin, rel=1e-6)
        assert got.n_tail == ref.n_tail
        assert got.mp_bulk_max == pytest.approx(ref.mp_bulk_max, rel=1e-5)
    n = names[-1]
    drawn = figure_esd(stored_weight_spectrum(ds, n, 8))
    direct = figure_esd(want[n])
    for a, b in zip(drawn.data, direct.data):  # the same histogram, fit line and bulk edge
        np.testing.assert_allclose(np.asarray(a.y, float), np.asarray(b.y, float), rtol=1e-4)
    assert "no weight ESD" not in str(stored_weight_spectrum(ds, n, 8))
    assert "not in this run" in stored_weight_spectrum(ds, "nope", 8)

    views = Views(RunSource(root), refresh_ms=1000)
    version = {"runs": ["plain.zarr", "w.zarr"]}
    fig, runs, run, mats, mat, steps, step = views.esd(version)
    assert runs == ["w.zarr"] and run == "w.zarr" and mats == names and mat == names[0] and step == 8
    assert [s["value"] for s in steps] == [0, 4, 8]
    assert "w.zarr · step 8" in fig.layout.title.text and fig.layout.meta["alpha"] == pytest.approx(
        float(ds["matrix_weight_alpha"].sel(capture_step=8, matrix=names[0])), rel=1e-6
    )
    fig, *_, step = views.esd(version, "w.zarr", n, 4)
    assert step == 4 and fig.layout.meta["matrix"] == n and fig.layout.meta["step"] == 4
    empty = views.esd({"runs": ["plain.zarr"]})[0]
    assert (
        "no selected run stores weight ESDs" in empty.layout.meta["empty"] and "--weights" in empty.layout.meta["empty"]
    )

    client = create_app(root).server.test_client()  # the served first page holds it, drawn
    page = json.dumps(json.loads(client.get("/_dash-layout", headers={"Referer": "http://x/?run=w.zarr"}).data))
    assert '"kind": "esd"' in page and "w.zarr \\u00b7 step 8" in page


def test_panels_that_draw_one_run_say_which_of_the_selected(tmp_path):
    """Issue 16: no panel silently shows the first run. The heatmap and the phase strip draw each ticked
    run as a row of its own, the spectrum overlays them, the gradients panel overlays and stacks them;
    each names its runs, and a panel of one run names it."""
    from phasescope.dashboard.callbacks import Views
    from phasescope.dashboard.data import RunSource

    root = tmp_path / "runs"
    _cka_run(root / "a.zarr")
    _cka_run(root / "b.zarr")
    views = Views(RunSource(root), refresh_ms=1000)
    both, one = {"runs": ["a.zarr", "b.zarr"]}, {"runs": ["b.zarr"]}
    # the heatmap and the phase strip draw every selected run (a row each, named, one colour scale)

    hm = views.heatmap(both, "rankme", "step")[0]
    go.Figure(hm.to_dict())
    assert hm.layout.meta["runs"] == ["a.zarr", "b.zarr"]
    assert [a.text for a in hm.layout.annotations][:2] == ["run a.zarr", "run b.zarr"]
    traces = [t for t in hm.data if t.type == "heatmap"]
    assert [t.yaxis for t in traces] == ["y", "y2"] and traces[0].zmin == traces[1].zmin
    b = open_run(tmp_path / "runs" / "b.zarr")
    np.testing.assert_allclose(
        np.asarray(traces[1].z, float), b.rankme.transpose("probe", "capture_step").values, rtol=1e-6
    )
    assert views.phases(both, "step").layout.meta["runs"] == ["a.zarr", "b.zarr"]
    spec = views.spectrum(both, None)[0]  # every ticked run's spectrum of the probe, the α fit of the chosen
    assert spec.layout.meta["runs"] == ["a.zarr", "b.zarr"] and "α fit: a.zarr" in spec.layout.title.text
    lines = {t.name: np.asarray(t.y, float) for t in spec.data if "step" in (t.name or "")}
    last = int(b.capture_step.values[-1])
    ev = b.eigenvalues.sel(capture_step=last, probe=spec.layout.meta["probe"]).values
    np.testing.assert_allclose(lines[f"b.zarr · step {last}"], ev[np.isfinite(ev) & (ev > 0)], rtol=1e-6)
    assert "run b.zarr" in views.spectrum(one, None)[0].layout.title.text  # one run: named
    # the gradients panel names its runs (overlaid ones: test_sweep_compare), one run by name
    assert "runs a.zarr, b.zarr" in views.gradients(both, "step").layout.title.text
    assert "run b.zarr" in views.gradients(one, "step").layout.title.text


def test_stage_marks_and_the_stage_table(tmp_path):
    """A run with stages: every step-axis panel marks where a stage begins (a dotted line on each of its
    x axes at the stage's first step) and names the stages; the stage table says phases are not computed
    until `phasescope phases` stored them, then holds each stage's phases and RankMe/α at its ends."""
    from test_phases_stages import write_staged

    from phasescope.cli_phases import phases_for_run
    from phasescope.dashboard.callbacks import Views
    from phasescope.dashboard.data import RunSource

    root = tmp_path / "runs"
    write_staged(root / "s.zarr")
    views = Views(RunSource(root), refresh_ms=1000)
    version = {"runs": ["s.zarr"]}
    figs = {
        "overview": views.overview(version, "step"),
        "trajectories": views.trajectories(version, "rankme", None, "step")[0],
        "similarity": views.stat_panel(version, "similarity", "step"),
    }
    for name, fig in figs.items():
        go.Figure(fig.to_dict())  # valid plotly
        lines = [s for s in fig.layout.shapes if s.type == "line" and s.line.dash == "dot"]
        n_axes = sum(1 for k in fig.layout.to_plotly_json() if k.startswith("xaxis"))
        assert len(lines) == n_axes and {s.x0 for s in lines} == {1000.0}, name  # rl begins at step 1000
        assert fig.layout.meta["stages"] == ["sft", "rl"], name
        assert {a.text for a in fig.layout.annotations} >= {"▸ sft", "▸ rl"}, name
    from phasescope.dashboard.stage_figures import zoom_to_stage

    assert views.stage_options(version) == [{"label": "sft", "value": "sft"}, {"label": "rl", "value": "rl"}]
    zoomed = zoom_to_stage(figs["similarity"], views.datasets(version), "rl")  # the stage selector
    lo, hi = zoomed.layout.xaxis.range
    assert lo == pytest.approx(3 - 0.02) and hi == pytest.approx(np.log10(1999) + 0.02)
    lo, hi = zoom_to_stage(figs["similarity"], views.datasets(version), "sft").layout.xaxis.range
    assert lo == pytest.approx(np.log10(0.5) - 0.02) and hi == pytest.approx(np.log10(999) + 0.02)  # step 0 too
    empty = views.stat_panel(version, "curvature", "step")  # says what is missing: no axis to mark
    assert "not recorded" in empty.layout.meta["empty"] and not empty.layout.shapes
    rows = views.stage_rows(version)
    assert [r["stage"] for r in rows] == ["sft", "rl"] and "not computed" in rows[0]["phases"]
    from phasescope.spectra.phases import detect_phases
    from phasescope.store import write_group

    stale = detect_phases(open_run(root / "s.zarr"), stages=[]).to_dataset()  # phases from before the stages
    write_group(root / "s.zarr", "phases", stale)
    assert "out of date" in Views(RunSource(root), refresh_ms=1000).stage_rows(version)[0]["phases"]
    phases_for_run(root / "s.zarr")
    views = Views(RunSource(root), refresh_ms=1000)
    rows = {(r["stage"], r["probe"]): r for r in views.stage_rows(version)}
    assert rows[("sft", "model")]["phases"] == "entropy-seeking"
    assert rows[("rl", "model")]["phases"] == "compression-seeking" and rows[("rl", "model")]["steps"] == "1000–1999"
    assert rows[("rl", "h.0")]["CKA to stage start"] == "0.800"


def _run(path, metrics, probes=("p0", "p1"), steps=(0, 2, 4)):
    with RunWriter(path, probes=list(probes), params=[], metrics=list(metrics), max_rank=2) as w:
        for i, s in enumerate(steps):
            w.append_step(s, {"loss": 1.0 / (1 + i)})
            w.append_capture(
                s, {m: np.full(len(probes), 1.0 + i) for m in metrics}, np.ones((len(probes), 2)), [8] * len(probes)
            )
    return path


def test_several_runs_on_single_run_panels_keep_their_runs_apart(tmp_path):
    """Review of issue 16's panels: a heatmap click opens the clicked row's run even when a ticked run
    drew no heatmap; stacked rows keep their stage lines and an empty row its message; a sweep's
    trajectories draw each run's own deepest probe."""
    from phasescope.dashboard._plotly import small_multiples
    from phasescope.dashboard.callbacks import MAX_OVERVIEW_RUNS, Views
    from phasescope.dashboard.data import RunSource
    from phasescope.dashboard.figures import empty_figure, figure_heatmap

    root = tmp_path / "runs"
    _run(root / "a.zarr", ["rankme"])
    _run(root / "b.zarr", ["alpha"])  # no rankme: no heatmap row of it
    _run(root / "c.zarr", ["rankme"], steps=(0, 3, 5))
    views = Views(RunSource(root), refresh_ms=1000)
    version = {"runs": ["a.zarr", "b.zarr", "c.zarr"]}
    hm = views.heatmap(version, "rankme", "step")[0]
    assert [t.name for t in hm.data if t.type == "heatmap"] and hm.layout.meta["trace_runs"][-1] == "c.zarr"
    click = {"points": [{"curveNumber": 1, "y": "p1", "customdata": 3, "x": 3}]}  # the second heatmap: c's
    sel = views.spectrum(version, None, trig="heatmap", click_h=click, hm_metric="rankme")[4]
    assert sel == {"run": "c.zarr", "probe": "p1", "step": 3}

    one = figure_heatmap(open_run(root / "a.zarr"), "rankme")
    one.add_shape(type="line", xref="x", yref="y domain", x0=2, x1=2, y0=0, y1=1)
    stacked = small_multiples({"a": one, "gone": empty_figure("nothing here"), "a2": one}, "h")
    assert [(s.xref, s.yref) for s in stacked.layout.shapes] == [("x", "y domain"), ("x3", "y3 domain")]
    msg = next(a for a in stacked.layout.annotations if a.text == "nothing here")
    lo, hi = stacked.layout.yaxis2.domain  # the empty row says why, in its own row
    assert (msg.xref, msg.yref) == ("paper", "paper") and lo < msg.y < hi
    assert sum(bool(t.showscale) for t in stacked.data) == 1

    for i in range(MAX_OVERVIEW_RUNS + 1):  # a sweep of runs with 2 or 3 probes
        _run(root / f"s{i}.zarr", ["rankme"], probes=("p0", "p1", "p2")[: 2 + i % 2])
    keys = [f"s{i}.zarr" for i in range(MAX_OVERVIEW_RUNS + 1)]
    fig = views.trajectories({"runs": keys}, "rankme", None, "step")[0]
    drawn = sorted(t.name for t in fig.data if t.yaxis in (None, "y") and "loss" not in (t.name or ""))
    assert drawn == sorted(f"{'p2' if i % 2 else 'p1'} · s{i}.zarr" for i in range(MAX_OVERVIEW_RUNS + 1))
