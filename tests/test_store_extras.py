"""AsyncRunWriter (queue, drops, errors), fsspec/memory stores, derived groups, sketches."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import xarray as xr

from phasescope.errors import PhasescopeError
from phasescope.store import (
    AsyncRunWriter,
    RunWriter,
    estimate_sketch_bytes,
    list_groups,
    list_runs,
    make_sketch,
    open_group,
    open_run,
    write_group,
)
from phasescope.store.sketch import projection_matrix

KW = dict(probes=["p0", "p1"], params=["w"], metrics=["rankme"], max_rank=4)


def test_async_writer_round_trip_and_batches(tmp_path):
    path = tmp_path / "a.zarr"
    with AsyncRunWriter(path, max_pending_captures=1000, **KW) as w:
        for s in range(500):
            w.append_step(s, {"loss": float(s)}, params={"grad_norm": [s]})
            if s % 5 == 0:
                w.append_capture(s, {"rankme": [s, -s]}, np.full((2, 4), float(s)), [3, 3])
        w.flush()
        assert w.n_steps == 500 and w.n_captures == 100
        batches = w.batches
    ds = open_run(path)
    np.testing.assert_array_equal(ds.loss.values, np.arange(500.0))
    np.testing.assert_array_equal(ds.param_grad_norm.values[:, 0], np.arange(500.0))
    np.testing.assert_array_equal(ds.rankme.values[:, 1], -np.arange(0, 500, 5.0))
    assert ds.flag_dropped.values.sum() == 0 and ds.attrs["finished"]
    assert 1 <= batches <= 600


class SlowPut:
    """Wraps the writer's put to make the disk stall, so the queue fills (a real thread, real files)."""

    def __init__(self, put, gate: threading.Event):
        self.put, self.gate = put, gate

    def __call__(self, items):
        self.gate.wait()
        self.put(items)


def test_async_writer_drops_oldest_captures_not_steps_when_stalled(tmp_path):
    path = tmp_path / "d.zarr"
    w = AsyncRunWriter(path, max_pending_captures=3, **KW)
    gate = threading.Event()
    w.writer._put = SlowPut(w.writer._put, gate)
    t0 = time.perf_counter()
    for s in range(20):
        w.append_step(s, {"loss": float(s)})
        w.append_capture(s, {"rankme": [s, s]}, np.ones((2, 4)), [1, 1])
    assert time.perf_counter() - t0 < 1.0  # training never waited on the stalled disk
    gate.set()
    w.close()
    ds = open_run(path)
    assert ds.step.values.tolist() == list(range(20))  # every scalar row kept
    kept = ds.capture_step.values.tolist()
    assert len(kept) < 20 and kept == sorted(kept)
    assert kept[-3:] == [17, 18, 19]  # the newest captures survive; older ones were dropped
    dropped = 20 - len(kept)
    assert int(ds.flag_dropped.values.sum()) == dropped == ds.attrs["n_dropped"]


def test_async_writer_step_queue_bound_never_blocks_forever(tmp_path):
    w = AsyncRunWriter(tmp_path / "s.zarr", max_pending_steps=5, block_timeout_s=0.05, **KW)
    gate = threading.Event()
    w.writer._put = SlowPut(w.writer._put, gate)
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="dropping the oldest queued steps"):
        for s in range(12):
            w.append_step(s, {"loss": float(s)})
    assert time.perf_counter() - t0 < 2.0
    gate.set()
    w.close()
    ds = open_run(tmp_path / "s.zarr")
    assert ds.attrs["n_dropped_steps"] >= 1
    assert ds.step.values[-1] == 11 and len(ds.step) == 12 - ds.attrs["n_dropped_steps"]


def test_async_writer_reports_background_errors(tmp_path):
    w = AsyncRunWriter(tmp_path / "e.zarr", **KW)

    def broken(items):
        raise OSError(28, "No space left on device")

    w.writer._put = broken
    w.append_step(0, {"loss": 1.0})
    with pytest.raises(PhasescopeError, match="No space left"):
        w.flush(timeout=10)
    with pytest.raises(PhasescopeError, match="background store writer failed"):
        w.append_step(1, {"loss": 1.0})
    with pytest.raises(PhasescopeError):
        w.close()
    # errors in the caller's own arguments are raised on the caller's thread, immediately
    with AsyncRunWriter(tmp_path / "f.zarr", **KW) as w2, pytest.raises(PhasescopeError, match="unknown scalars"):
        w2.append_step(0, {"acc": 1.0})


def test_memory_fsspec_store_round_trip_and_catalog():
    root = f"memory://runs-{uuid.uuid4().hex[:8]}"
    url = f"{root}/m.zarr"
    with RunWriter(url, attrs={"model": "mem"}, **KW) as w:
        for s in range(30):
            w.append_step(s, {"loss": s * 2.0})
            if s % 10 == 0:
                w.append_capture(s, {"rankme": [1, 2]}, np.ones((2, 3)), [5, 5])
    for lazy in (True, False):
        ds = open_run(url, lazy=lazy)
        np.testing.assert_array_equal(ds.loss.values, np.arange(30) * 2.0)
        assert ds.capture_step.values.tolist() == [0, 10, 20]
        assert np.isnan(ds.eigenvalues.values[:, :, 3]).all()
    w = RunWriter(url, resume=True, **KW)
    w.append_step(30, {"loss": 60.0})
    w.close()
    assert open_run(url).sizes["step"] == 31
    runs = list_runs(root)
    assert [r.name for r in runs] == ["m.zarr"] and runs[0].n_steps == 31 and runs[0].model == "mem"
    assert open_run(runs[0].path).sizes["step"] == 31
    raw = xr.open_zarr(url, consolidated=False)
    assert raw.probe.values.tolist() == ["p0", "p1"]


def test_file_url_and_fsspec_local_filesystem(tmp_path):
    import fsspec
    from zarr.storage import FsspecStore

    url = f"file://{tmp_path}/f.zarr"
    with RunWriter(url, **KW) as w:
        w.append_step(0, {"loss": 1.5})
    assert open_run(tmp_path / "f.zarr").loss.values.tolist() == [1.5]
    # A zarr FsspecStore over fsspec's local filesystem goes through the generic (zarr) path.
    fs = fsspec.filesystem("file", auto_mkdir=True)
    store = FsspecStore(
        fsspec.implementations.asyn_wrapper.AsyncFileSystemWrapper(fs, asynchronous=True), path=str(tmp_path / "g.zarr")
    )
    with RunWriter(store, **KW) as w:
        for s in range(3):
            w.append_step(s, {"loss": s + 0.5})
    assert open_run(store).loss.values.tolist() == [0.5, 1.5, 2.5]
    assert open_run(tmp_path / "g.zarr", lazy=False).loss.values.tolist() == [0.5, 1.5, 2.5]


def test_phases_group_written_beside_a_live_run(tmp_path):
    path = tmp_path / "p.zarr"
    w = RunWriter(path, **KW)
    for s in range(10):
        w.append_step(s, {"loss": float(s)})
    phases = xr.Dataset(
        {"start": ("segment", np.array([0, 4])), "label": ("segment", np.array(["collapse", "expansion"]))},
        attrs={"method": "pelt", "penalty": 3.0},
    )
    write_group(path, "phases", phases)
    w.append_step(10, {"loss": 10.0})  # the writer is unaffected
    w.close()
    got = open_group(path, "phases")
    assert got.label.values.tolist() == ["collapse", "expansion"] and got.attrs["penalty"] == 3.0
    write_group(path, "phases", {"start": np.array([0, 2, 7])})  # replacing is atomic per group
    assert open_group(path, "phases").start.values.tolist() == [0, 2, 7]
    assert list_groups(path) == ["phases"]
    ds = open_run(path)
    assert ds.sizes["step"] == 11 and "start" not in ds
    with pytest.raises(PhasescopeError, match="has no group 'events'"):
        open_group(path, "events")
    with pytest.raises(PhasescopeError, match="group name"):
        write_group(path, "loss", {"x": np.ones(2)})


def test_sketch_size_estimate_and_projection_preserves_gram_in_expectation(tmp_path):
    assert estimate_sketch_bytes(100, 48, 64, 128) == 100 * 48 * 64 * 128 * 2
    assert estimate_sketch_bytes(10, 2, 8, 16, dtype="float32") == 10 * 2 * 8 * 16 * 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 40)) * np.linspace(3, 0.1, 40)
    # E[Y Yᵀ] = X Xᵀ: average over independent projections (seeds) approaches the Gram matrix.
    mean = sum(make_sketch(x, 16, 64, seed=k) @ make_sketch(x, 16, 64, seed=k).T for k in range(300)) / 300
    gram = x @ x.T
    assert np.abs(mean - gram).max() / np.abs(gram).max() < 0.05
    np.testing.assert_array_equal(projection_matrix(40, 64, 3), projection_matrix(40, 64, 3))
    s = make_sketch(x[:5], 8, 64, method="sample")
    np.testing.assert_array_equal(s[:5, :40], x[:5]) and np.isnan(s[5:]).all()
    with pytest.raises(PhasescopeError, match="use method='projection'"):
        make_sketch(x, 8, 16, method="sample")

    path = tmp_path / "s.zarr"
    with RunWriter(path, sketch={"rows": 16, "width": 8}, **KW) as w:
        assert estimate_sketch_bytes(3, 2, 16, 8) == 3 * 2 * 16 * 8 * 2
        for i in range(3):
            w.append_capture(
                i, {}, np.ones((2, 4)), [16, 16], sketch=np.stack([make_sketch(x + i, 16, 8), make_sketch(-x, 16, 8)])
            )
        with pytest.raises(PhasescopeError, match="sketch has shape"):
            w.append_capture(5, {}, np.ones((2, 4)), [16, 16], sketch=np.ones((2, 3, 8)))
    ds = open_run(path)
    assert ds.sketch.dims == ("capture_step", "probe", "sketch_row", "sketch_col")
    np.testing.assert_allclose(ds.sketch.values[2, 0], make_sketch(x + 2, 16, 8), rtol=1e-3, atol=1e-2)
    with RunWriter(tmp_path / "n.zarr", **KW) as w, pytest.raises(PhasescopeError, match="run has none"):
        w.append_capture(0, {}, np.ones((2, 4)), [1, 1], sketch=np.ones((2, 16, 8)))


def test_async_writer_reduce_failures_are_counted_while_the_run_is_live(tmp_path):
    """A result that cannot be reduced loses its row, warns once, and is counted in the store at once."""

    def reduce(item):
        if item.step == 2:
            raise ValueError("bad item")
        return {"step": item.step, "scalars": {"loss": float(item.step)}}, None

    class Item:
        capture = False

        def __init__(self, step):
            self.step = step

    w = AsyncRunWriter(tmp_path / "r.zarr", reduce=reduce, raise_errors=False, interval_s=0.0, **KW)
    with pytest.warns(RuntimeWarning, match="reduce failed"):
        for s in range(5):
            w.submit(Item(s))
        w.flush()
    live = open_run(tmp_path / "r.zarr")
    assert live.step.values.tolist() == [0, 1, 3, 4] and live.attrs["failures"] == {"reduce": 1}
    assert live.attrs["status"] == "running"
    w.close()
    assert open_run(tmp_path / "r.zarr").attrs["errors"] == 1
