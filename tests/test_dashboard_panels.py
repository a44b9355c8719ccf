"""Registry-declared dashboard panels: the "similarity" panel draws the stored linear CKA of a real run."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from phasescope.dashboard.panel_figures import figure_panel, panel_variables
from phasescope.probes import Recorder
from phasescope.store import RunWriter, open_run


def _cka_run(path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 12))
    with Recorder(str(path), write_interval=0.0, strict=True) as rec:
        for step in range(6):
            x = x + 0.4 * rng.standard_normal(x.shape)          # the same 80 samples, drifting
            rec.record(step, activations={"a": x, "b": np.tanh(x)})
    return open_run(path)


def test_similarity_panel_draws_the_stored_cka(tmp_path):
    ds = _cka_run(tmp_path / "c.zarr")
    assert panel_variables("similarity") == ["cka_first", "cka_previous"]
    fig = figure_panel({"c": ds}, "similarity")
    go.Figure(fig.to_dict())   # passes plotly's validator
    assert fig.layout.meta["variables"] == ["cka_first", "cka_previous"]
    by = {(t.yaxis, t.name): np.asarray(t.y, float) for t in fig.data}
    np.testing.assert_allclose(by[("y", "a")], ds.cka_first.sel(probe="a").values, rtol=1e-6)
    np.testing.assert_allclose(by[("y2", "b")], ds.cka_previous.sel(probe="b").values, rtol=1e-6, equal_nan=True)
    assert by[("y", "a")][0] == 1.0 and by[("y", "a")][-1] < 0.95     # drift shows
    assert list(fig.layout.yaxis.range) == [0, 1.02]


def test_panel_says_what_is_missing(tmp_path):
    with RunWriter(tmp_path / "old.zarr", probes=["p"], params=[], metrics=["rankme"], max_rank=2) as w:
        w.append_step(0, {"loss": 1.0})
        w.append_capture(0, {"rankme": [1.5]}, np.ones((1, 2)), [4])
    fig = figure_panel({"old": open_run(tmp_path / "old.zarr")}, "similarity")
    assert "cka_first, cka_previous not recorded" in fig.layout.meta["empty"]
    assert "no run selected" in figure_panel({}, "similarity").layout.meta["empty"]
