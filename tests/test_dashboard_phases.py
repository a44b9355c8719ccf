"""The dashboard on a real ``phases`` group: a run written by RunWriter, its phases found and stored by the
real ``phasescope phases RUN`` command (a subprocess), read back by ``RunSource`` and drawn as the
per-layer phase strip, shading and event markers. Expected cells are derived independently from the
detector's own ``PhaseResult`` (segment by segment, capture by capture)."""

import subprocess
import sys

import numpy as np
import pytest

from phasescope.dashboard import figures as F
from phasescope.dashboard.data import RunSource
from phasescope.spectra.phases import PhaseResult
from phasescope.store import open_group, open_run
from phasescope.testing.synthetic import write_synthetic_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("phases") / "runs"
    path = write_synthetic_run(root / "ph.zarr", n_steps=400, n_probes=5, rank=128, n_layers=2)
    src = RunSource(root)
    token_before = src.token("ph.zarr")[0]
    assert src.phases("ph.zarr") is None  # not computed yet
    code = f"from phasescope.cli import main; raise SystemExit(main(['phases', {str(path)!r}]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "computed, saved" in done.stderr
    return src, path, token_before


def test_the_stored_group_is_read_in_its_real_format(run):
    src, path, token_before = run
    ph = src.phases("ph.zarr")
    assert ph is not None and ph.sizes["segment"] > 0
    assert src.token("ph.zarr")[0] != token_before  # computing phases refreshes a live page
    result = PhaseResult.from_dataset(open_group(path, "phases").load())
    segs = F.phase_segments(ph)
    assert [(s.probe, s.label, s.start, s.end, s.open_end) for s in segs] == [
        (s.probe, s.label, float(s.start_step), float(s.end_step), bool(s.open_end)) for s in result.segments
    ]
    evs = F.phase_events(ph)
    assert [(e.probe, e.step, e.before, e.after) for e in evs] == [
        (e.probe, float(e.step), e.before, e.after) for e in result.events()
    ]
    assert src.phases("ph.zarr") is ph  # cached until the group is rewritten


def label_at(result, probe, step):
    """Independent lookup: the label of the segment of ``probe`` whose [start, end) holds ``step``
    (the last segment also holds its end)."""
    segs = result.segments_for(probe)
    for i, s in enumerate(segs):
        last = i == len(segs) - 1
        if s.start_step <= step < s.end_step or (last and s.start_step <= step <= s.end_step):
            return s.label
    return None


def test_phase_strip_colours_every_probe_and_capture_by_its_label(run):
    src, path, _ = run
    ds, ph = open_run(path), src.phases("ph.zarr")
    result = PhaseResult.from_dataset(ph)
    fig = F.figure_phase_strip(ds, ph)
    meta = fig.layout.meta
    assert meta["rows"] == ["model"] + [str(p) for p in ds["probe"].values]
    heat = fig.data[0]
    z, edges = np.asarray(F.decode_array(heat.z), float), np.asarray(meta["edges"])
    labels = meta["labels"]
    for r, probe in enumerate(meta["rows"]):
        for step in ds["capture_step"].values[:-1]:
            col = int(np.searchsorted(edges, step, side="right") - 1)
            want = label_at(result, probe, step)
            assert labels[int(z[r, col])] == want, (probe, step)
    assert fig.layout.xaxis.type == "log"
    legend = {t.name for t in fig.data if t.type == "scatter" and t.name != "phase change"}
    assert legend == {F.phase_text(lab) for lab in labels}
    marks = [t for t in fig.data if t.name == "phase change"]
    n_events = len([e for e in result.events() if e.probe in meta["rows"]])
    assert meta["events"] == n_events and (not n_events or len(marks[0].y) == n_events)


def test_trajectories_shade_model_phases_and_mark_events(run):
    src, path, _ = run
    ds, ph = open_run(path), src.phases("ph.zarr")
    result = PhaseResult.from_dataset(ph)
    fig = F.figure_trajectories({"ph.zarr": ds}, phases={"ph.zarr": ph}, probes=["layer.00", "layer.04"])
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    model = result.segments_for("model")
    half = ds["capture_step"].values[1] / 2  # step 0 is drawn at half the first positive capture
    assert [(r.x0, r.x1) for r in rects] == [
        (max(s.start_step, half) if s.start_step else half, s.end_step) for s in model
    ]
    notes = [a.text for a in fig.layout.annotations]
    assert [F.phase_text(s.label) for s in model] == notes[: len(model)]
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert [ln.x0 for ln in lines] == [float(e.step) for e in result.events("model")]
    per_probe = [e for p in ("layer.00", "layer.04") for e in result.events(p)]
    marks = [t for t in fig.data if t.name == "phase change"]
    if per_probe:
        assert len(marks[0].x) == len(per_probe)
        # each diamond sits on its layer's line at the event's capture
        for x, y, e in zip(marks[0].x, marks[0].y, per_probe):
            assert x == e.step and y == pytest.approx(
                float(ds["rankme"].sel(probe=e.probe, capture_step=e.step)), rel=1e-6
            )
    assert not fig.layout.meta["notes"]


def test_a_run_without_phases_says_how_to_compute_them(run):
    _src, path, _ = run
    fig = F.figure_phase_strip(open_run(path), None)
    assert "phasescope phases" in fig.layout.meta["empty"]


def test_csv_export_of_the_phase_strip_and_events_names_labels_at_true_steps(run):
    src, path, _ = run
    ds, ph = open_run(path), src.phases("ph.zarr")
    result = PhaseResult.from_dataset(ph)
    frame = F.figure_to_frame(F.figure_phase_strip(ds, ph))
    cells = frame[frame["trace"] == "phases"].dropna(subset=["value"])
    for _, c in cells.iterrows():  # each cell: the label of that probe's phase starting at or before x
        assert c["text"].startswith(F.phase_text(label_at(result, c["row"], c["x"])))
    events = frame[frame["trace"] == "phase change"]
    assert sorted(zip(events["value"], events["x"])) == sorted((e.probe, e.step) for e in result.events())
    assert 0 in set(cells["x"])  # step 0 as 0, not its drawn position


def test_hover_says_which_rule_decided_each_phase_with_slopes_and_confidence(run):
    src, path, _ = run
    ds, ph = open_run(path), src.phases("ph.zarr")
    result = PhaseResult.from_dataset(ph)
    fig = F.figure_phase_strip(ds, ph)
    text = np.asarray(fig.data[0].text, dtype=object)
    rows, edges = fig.layout.meta["rows"], np.asarray(fig.layout.meta["edges"])
    for seg in result.segments:
        col = int(np.searchsorted(edges, seg.start_step, side="right") - 1)
        cell = text[rows.index(seg.probe), col]
        assert seg.rule in cell and f"confidence {seg.confidence:.2f}" in cell, cell
        assert "dlnR/dlnt" in cell and "dα/dlnt" in cell
    traj = F.figure_trajectories({"ph.zarr": ds}, phases={"ph.zarr": ph}, probes=["layer.00"])
    model = result.segments_for("model")
    hovers = [a.hovertext for a in traj.layout.annotations][: len(model)]
    for seg, hover in zip(model, hovers):
        assert hover.startswith(F.phase_text(seg.label)) and seg.rule in hover and "confidence" in hover
