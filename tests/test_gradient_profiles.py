"""Gradient layer profiles (issue 16): `analyze --gradients` on two response types of the same problems
(terse vs worked answers, `phasescope.arithmetic`) writes two comparable runs, and the profile figure
overlays them: per projection kind the stored statistic against layer, its MAD, and ÷ loss."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest

from phasescope.arithmetic import word_problems, write_jsonl
from phasescope.dashboard.gradient_profile_figures import (
    figure_gradient_profile,
    mean_absolute_difference,
    profile_curves,
)
from phasescope.gradients import matrix_group
from phasescope.store import open_run


def test_word_problems_are_reproducible_and_right():
    a, b = word_problems(50, seed=3), word_problems(50, seed=3)
    assert a == b and a != word_problems(50, seed=4)
    for p in a:
        total = None
        for step in p.steps:  # each worked step's arithmetic is right and chains to the answer
            lhs, rhs = step.rstrip(".").split(" = ")
            x, op, y = lhs.split(" ")
            val = {"+": int(x) + int(y), "-": int(x) - int(y), "x": int(x) * int(y)}[op]
            assert val == int(rhs) and (total is None or int(x) == total)
            total = val
        assert total == p.answer and p.response("terse") == f" The answer is {p.answer}."
        assert p.response("worked").endswith(p.response("terse")) and len(p.response("worked")) > len(
            p.response("terse")
        )


def test_mad_is_layer_gradients_mean_absolute_difference():
    assert mean_absolute_difference([1.0, 3.0, 2.0, 6.0]) == pytest.approx((2 + 1 + 4) / 3)
    assert np.isnan(mean_absolute_difference([1.0]))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from phasescope.probes.offline import analyze
    from phasescope.testing.toy_checkpoints import train_checkpoints

    root = tmp_path_factory.mktemp("resp")
    train_checkpoints(root / "ck", [0, 6], n_layer=3, n_embd=16, n_head=2, seq_len=48, vocab_size=512)
    held = word_problems(24, seed=7)
    runs = {}
    for style in ("terse", "worked"):
        data = write_jsonl(held, root / f"{style}.jsonl", style)
        runs[style] = root / f"{style}.zarr"
        analyze(root / "ck", str(data), runs[style], gradients=True, workers=0, progress=False, max_length=48)
    return {k: open_run(v, lazy=False) for k, v in runs.items()}, root


def test_two_response_types_are_comparable_runs_overlaid_with_their_mad(two_runs):
    runs, root = two_runs
    line = json.loads((root / "terse.jsonl").read_text().splitlines()[0])
    assert line["prompt"].startswith("Question: ") and line["response"].startswith(" The answer is")
    ds = runs["terse"]
    names = [str(m) for m in ds["matrix"].values]
    curves, where = profile_curves(ds, "grad_nuclear", 6)
    assert where == "step 6" and set(curves) == {"qkv", "o", "mlp_in", "mlp_out"}
    for kind, (layers, y) in curves.items():  # each point is the stored statistic of that layer's matrix
        assert layers.tolist() == [0, 1, 2]
        for layer, v in zip(layers, y):
            m = next(n for n in names if matrix_group(n) == {"block": layer, "kind": kind})
            assert v == pytest.approx(float(ds["matrix_grad_nuclear"].sel(capture_step=6, matrix=m)), rel=1e-6)
    fig = figure_gradient_profile(runs, stat="grad_nuclear", step=6)
    go.Figure(fig.to_dict())
    assert len(fig.data) == 8 and {t.name.split(" · ")[1].split(" ")[0] for t in fig.data} == {"terse", "worked"}
    for style, per_kind in fig.layout.meta["mad"].items():
        for kind, m in per_kind.items():
            assert m == pytest.approx(
                mean_absolute_difference(profile_curves(runs[style], "grad_nuclear", 6)[0][kind][1])
            )
    # the two response types give different gradients of the same model
    t, w = (profile_curves(runs[s], "grad_nuclear", 6)[0]["mlp_in"][1] for s in ("terse", "worked"))
    assert not np.allclose(t, w, rtol=1e-3)
    # S_sum / loss (Layer_Gradient): the statistic divided by the step's response-only loss
    per = profile_curves(ds, "grad_nuclear", 6, per_loss=True)[0]["o"][1]
    np.testing.assert_allclose(per, curves["o"][1] / float(ds["loss"].sel(step=6)), rtol=1e-6)
    # averaged over a step range: the mean of the two checkpoints' values
    both = profile_curves(ds, "grad_nuclear", (0, 6))[0]["o"][1]
    at0 = profile_curves(ds, "grad_nuclear", 0)[0]["o"][1]
    np.testing.assert_allclose(both, (at0 + curves["o"][1]) / 2, rtol=1e-6)


def test_profile_says_what_is_missing(two_runs):
    runs, _ = two_runs
    bad = figure_gradient_profile(runs, stat="grad_bogus")
    assert "not a gradient statistic" in bad.layout.meta["empty"]
    assert "no run selected" in figure_gradient_profile({}).layout.meta["empty"]
    none = figure_gradient_profile(runs, step=999)
    assert "no capture" in none.layout.meta["empty"] or "no grad_nuclear" in none.layout.meta["empty"]


def test_dashboard_panel_serves_the_profile_of_the_selected_runs(two_runs):
    from phasescope.dashboard.callbacks import Views
    from phasescope.dashboard.data import RunSource

    _, root = two_runs
    views = Views(RunSource(root), refresh_ms=1000)
    fig, stats, steps = views.gradient_profile({"runs": ["terse.zarr", "worked.zarr"]}, "grad_spectral", "all", True)
    assert [s["value"] for s in steps] == ["last", "all", "0", "6"]
    assert "grad_nuclear" in [s["value"] for s in stats] and any("S_sum" in s["label"] for s in stats)
    assert fig.layout.meta["stat"] == "grad_spectral" and fig.layout.meta["per_loss"] is True
    assert set(fig.layout.meta["mad"]) == {"terse.zarr", "worked.zarr"}
    assert "mean over steps 0–6" in fig.layout.title.text


def test_a_run_without_gradient_statistics_says_so(tmp_path):
    from phasescope.store import RunWriter

    with RunWriter(tmp_path / "w.zarr", probes=["p"], params=[], metrics=["rankme"], max_rank=2) as w:
        w.append_step(0, {"loss": 1.0})
        w.append_capture(0, {"rankme": [1.5]}, np.ones((1, 2)), [4])
    ds = open_run(tmp_path / "w.zarr")
    for step in (None, "all", 0):
        fig = figure_gradient_profile({"w": ds}, step=step)
        assert "no grad_nuclear" in fig.layout.meta["empty"] and "analyze --gradients" in fig.layout.meta["empty"]
