"""A run's lifecycle on disk: trimmed on close, resumable after the trim, and its end recorded as
finished / interrupted (SIGINT) / failed (an exception) — or, for a writer killed outright (SIGKILL),
derived as stale once its last commit is older than the live window. Real Zarr stores, real
writer processes, and the dashboard's catalog and page reporting the same states."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from phasescope.errors import PhasescopeError
from phasescope.store import (
    AsyncRunWriter,
    RunWriter,
    error_for,
    list_runs,
    open_run,
    run_info,
    status_for,
)

KW = dict(probes=["p0", "p1"], params=["w"], metrics=["rankme"], max_rank=4)

# A training loop inside ``with <writer>``: 21 steps (captures every 5th), then "ready", then it either
# raises, or goes on stepping until a signal ends it.
WRITER = r"""
import signal, sys, time
import numpy as np
signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt even if SIGINT was ignored
from phasescope.store import AsyncRunWriter, RunWriter
path, kind, end = sys.argv[1:4]
W = AsyncRunWriter if kind == "async" else RunWriter
with W(path, probes=["p0", "p1"], params=["w"], metrics=["rankme"], max_rank=4) as w:
    s = 0
    while True:
        w.append_step(s, {"loss": float(s)}, params={"grad_norm": [0.5]})
        if s % 5 == 0:
            w.append_capture(s, {"rankme": [1.0, 2.0]}, np.ones((2, 3)), [3, 3])
        if s == 20:
            if kind == "async":
                w.flush()
            if end == "raise":
                raise RuntimeError("boom at step 20")
            print("ready", flush=True)
        s += 1
        if s > 20:
            time.sleep(0.005)
"""


def start(path, kind, end):
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), kind, end],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def wait_ready(proc):
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")


def end_by(proc, sig):
    """Wait for the writer to be stepping, send ``sig``, return (returncode, stderr)."""
    wait_ready(proc)
    time.sleep(0.1)  # a few more steps: the signal lands mid-loop
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def attrs_of(path):
    return json.loads((path / "zarr.json").read_text())["attributes"]


def assert_trimmed(path):
    """Plain xarray shows exactly the committed rows, and they are the written steps."""
    commit = attrs_of(path)["phasescope_commit"]
    raw = xr.open_zarr(path, consolidated=False)
    assert raw.sizes["step"] == commit["n_steps"] and raw.sizes["capture_step"] == commit["n_captures"]
    np.testing.assert_array_equal(raw.step.values, np.arange(commit["n_steps"]))
    np.testing.assert_array_equal(raw.loss.values, np.arange(commit["n_steps"], dtype=float))
    caps = raw.capture_step.values  # a signal between a step and its capture leaves that capture out
    assert (np.diff(caps) > 0).all() and set(caps.tolist()) <= set(range(0, commit["n_steps"], 5))
    assert len(caps) >= commit["n_steps"] // 5 - 1
    assert open_run(path).sizes["step"] == commit["n_steps"]
    return commit


def write(w, steps, every=5):
    for s in steps:
        w.append_step(s, {"loss": float(s)}, params={"grad_norm": [0.5]})
        if s % every == 0:
            w.append_capture(s, {"rankme": [1.0, 2.0]}, np.ones((2, 3)), [3, 3])


# ---------------------------------------------------------------------------------------------- trim


@pytest.mark.parametrize("writer", [RunWriter, AsyncRunWriter])
def test_normal_close_trims_every_row_array_to_the_commit(tmp_path, writer):
    path = tmp_path / "r.zarr"
    queue = {"max_pending_captures": 100} if writer is AsyncRunWriter else {}  # no capture dropped
    with writer(path, **KW, **queue) as w:
        write(w, range(2000), every=37)
        if writer is AsyncRunWriter:
            w.flush()
        raw = xr.open_zarr(path, consolidated=False)
        assert raw.sizes["step"] == 2048 and raw.sizes["capture_step"] == 64  # preallocated while open
        assert (raw.step.values[2000:] == -1).all()
    raw = xr.open_zarr(path, consolidated=False)
    assert raw.sizes["step"] == 2000 and raw.sizes["capture_step"] == 55
    assert raw.attrs["status"] == "finished" and raw.attrs["finished"] is True
    np.testing.assert_array_equal(raw.step.values, np.arange(2000))
    np.testing.assert_array_equal(raw.capture_step.values, np.arange(0, 2000, 37))
    np.testing.assert_array_equal(raw.loss.values, np.arange(2000.0))
    assert raw.eigenvalues.shape == (55, 2, 4) and not np.isnan(raw.eigenvalues.values[:, :, :3]).any()
    ds = open_run(path)
    assert ds.sizes["step"] == 2000 and ds.sizes["capture_step"] == 55


def test_trimmed_run_resumes_grows_and_is_trimmed_again(tmp_path):
    path = tmp_path / "r.zarr"
    with RunWriter(path, capacity=(16, 4), **KW) as w:
        write(w, range(30))
    assert xr.open_zarr(path, consolidated=False).sizes["step"] == 30
    with RunWriter(path, resume=True, capacity=(16, 4), **KW) as w:
        write(w, range(30, 100))  # far past the trimmed length: capacity grows again
        raw = xr.open_zarr(path, consolidated=False)
        assert raw.sizes["step"] >= 100 and raw.attrs["status"] == "running"
    assert_trimmed(path)
    ds = open_run(path)
    assert ds.sizes["step"] == 100 and ds.capture_step.values.tolist() == list(range(0, 100, 5))
    assert len(ds.attrs["resumed"]) == 1 and ds.attrs["status"] == "finished"


def test_run_without_captures_is_trimmed_to_zero_rows_and_resumes(tmp_path):
    path = tmp_path / "r.zarr"
    with AsyncRunWriter(path, **KW) as w:
        w.append_step(0, {"loss": 1.0})
    raw = xr.open_zarr(path, consolidated=False)
    assert raw.sizes["step"] == 1 and raw.sizes["capture_step"] == 0
    assert open_run(path).sizes["capture_step"] == 0
    with RunWriter(path, resume=True, **KW) as w:
        w.append_capture(3, {"rankme": [1.0, 2.0]}, np.ones((2, 3)), [3, 3])
    raw = xr.open_zarr(path, consolidated=False)
    assert raw.capture_step.values.tolist() == [3] and raw.sizes["step"] == 1
    assert open_run(path).rankme.values.tolist() == [[1.0, 2.0]]


def test_close_status_is_checked_and_resume_forgets_the_old_error(tmp_path):
    path = tmp_path / "r.zarr"
    w = RunWriter(path, **KW)
    with pytest.raises(PhasescopeError, match="must be one of"):
        w.close(status="crashed")
    w.close(status="failed", error="RuntimeError: boom")
    assert attrs_of(path)["error"] == "RuntimeError: boom"
    RunWriter(path, resume=True, **KW).close()
    a = attrs_of(path)
    assert a["status"] == "finished" and "error" not in a


def test_status_for_maps_the_exception():
    assert status_for(None) == "finished" and error_for(None) is None
    assert status_for(KeyboardInterrupt()) == "interrupted" and status_for(KeyboardInterrupt) == "interrupted"
    assert error_for(KeyboardInterrupt()) is None
    assert status_for(RuntimeError("x")) == "failed" and error_for(RuntimeError("x")) == "RuntimeError: x"
    assert status_for(SystemExit(1)) == "failed"


# ------------------------------------------------------------------------------- real writer processes


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_sigint_records_interrupted_and_trims(tmp_path, kind):
    path = tmp_path / "r.zarr"
    rc, err = end_by(start(path, kind, "wait"), signal.SIGINT)
    assert rc != 0 and "KeyboardInterrupt" in err
    a = attrs_of(path)
    assert a["status"] == "interrupted" and a["finished"] is False and "error" not in a
    commit = assert_trimmed(path)
    assert commit["n_steps"] >= 21
    (run,) = list_runs(tmp_path)
    assert run.state == "interrupted" and not run.live and not run.finished and run.describe() == "interrupted"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_exception_records_failed_with_the_error_and_trims(tmp_path, kind):
    path = tmp_path / "r.zarr"
    proc = start(path, kind, "raise")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "boom at step 20" in err
    a = attrs_of(path)
    assert a["status"] == "failed" and a["error"] == "RuntimeError: boom at step 20"
    assert assert_trimmed(path)["n_steps"] == 21
    (run,) = list_runs(tmp_path)
    assert run.state == "failed" and run.error == "RuntimeError: boom at step 20"
    assert run.describe() == "failed: RuntimeError: boom at step 20"


def test_sigkill_leaves_running_which_turns_stale_after_the_window(tmp_path):
    path = tmp_path / "r.zarr"
    rc, _ = end_by(start(path, "sync", "wait"), signal.SIGKILL)
    assert rc == -signal.SIGKILL
    a = attrs_of(path)
    assert a["status"] == "running"
    assert xr.open_zarr(path, consolidated=False).sizes["step"] == 1024  # nobody trimmed it
    (run,) = list_runs(tmp_path)  # the default window (5 min): its last commit is recent, so still live
    assert run.state == "live" and run.live
    time.sleep(0.5)
    (run,) = list_runs(tmp_path, live_window=0.3)
    assert run.state == "stale" and not run.live and run.silent_s >= 0.3
    assert run.describe().startswith("stale: no commit for ")
    later = run_info("r", str(path), a, now=a["phasescope_commit"]["updated"] + 12 * 60)
    assert later.state == "stale" and later.describe() == "stale: no commit for 12 min"
    # the killed run resumes after its last commit, and closing it trims it
    n = a["phasescope_commit"]["n_steps"]
    with RunWriter(path, resume=True, **KW) as w:
        write(w, range(n, n + 7))
    assert assert_trimmed(path)["n_steps"] == n + 7
    assert list_runs(tmp_path, live_window=0.3)[0].state == "finished"


def test_catalog_states_from_attributes():
    now = 1000.0
    commit = {"n_steps": 3, "n_captures": 1, "last_step": 2, "updated": now - 10}
    base = {"phasescope_schema": 1, "phasescope_commit": commit}
    state = lambda **a: run_info("r", "r", {**base, **a}, now=now, live_window=60).state  # noqa: E731
    assert state(status="running", finished=False) == "live"
    assert run_info("r", "r", {**base, "status": "running"}, now=now, live_window=5).state == "stale"
    assert state(status="finished", finished=True) == "finished"
    assert state(status="interrupted", finished=False) == "interrupted"
    assert state(status="failed", error="E: x") == "failed"
    assert state(finished=True) == "finished" and state(finished=False) == "live"  # no status attribute
    odd = run_info("r", "r", {**base, "status": "crashed"}, now=now)
    assert odd.state == "failed" and "crashed" in odd.describe()


# ----------------------------------------------------------------------------------------- dashboard


@pytest.fixture(scope="module")
def ended_runs(tmp_path_factory):
    """A runs directory with one run of each state, the writers being real processes."""
    root = tmp_path_factory.mktemp("lifecycle")
    procs = {
        "interrupted": start(root / "interrupted.zarr", "async", "wait"),
        "failed": start(root / "failed.zarr", "sync", "raise"),
        "killed": start(root / "killed.zarr", "sync", "wait"),
    }
    end_by(procs["interrupted"], signal.SIGINT)
    end_by(procs["killed"], signal.SIGKILL)
    procs["failed"].communicate(timeout=60)
    with RunWriter(root / "finished.zarr", **KW) as w:
        write(w, range(10))
    live = RunWriter(root / "live.zarr", **KW)
    write(live, range(4))
    time.sleep(0.5)  # the killed run's last commit is now older than the tests' 0.3 s window
    yield root, live
    live.close()


def test_dashboard_catalog_reports_each_state_and_polls_only_live_runs(ended_runs):
    from phasescope.dashboard.callbacks import Views
    from phasescope.dashboard.data import RunSource

    root, live = ended_runs
    live.append_step(4, {"loss": 4.0})  # a fresh commit: live within any window
    src = RunSource(root, live_window=0.3)
    cat = {r.key: r for r in src.catalog()}
    assert {k: r.state for k, r in cat.items()} == {
        "finished.zarr": "finished",
        "interrupted.zarr": "interrupted",
        "failed.zarr": "failed",
        "killed.zarr": "stale",
        "live.zarr": "live",
    }
    assert cat["failed.zarr"].detail == "failed: RuntimeError: boom at step 20"
    assert cat["killed.zarr"].detail.startswith("stale: no commit for ")
    assert [k for k, r in cat.items() if r.live] == ["live.zarr"]
    views = Views(src, refresh_ms=1000)
    for key in ("interrupted.zarr", "failed.zarr", "killed.zarr", "finished.zarr"):
        _, done, status = views.version([key])
        text = getattr(status, "children", status)  # red states come as a Span with class "bad"
        assert done and text == f"{cat[key].detail} · live refresh off", key
        assert (getattr(status, "className", None) == "bad") == (key != "finished.zarr"), key
    _, done, status = views.version(["live.zarr", "interrupted.zarr"])
    assert not done and status.startswith("live")
    version, _, _ = views.version(["failed.zarr"])
    meta, _ = views.table_rows(version)
    assert meta[:2] == [
        {"key": "run", "value": "failed.zarr"},
        {"key": "state", "value": "failed: RuntimeError: boom at step 20"},
    ]
    meta, _ = views.table_rows(views.version(["failed.zarr", "live.zarr"])[0])
    assert meta[0] == {"key": "run", "value": "failed.zarr (1 of 2 selected runs)"}  # says which it shows
    labels = str(views.catalog())
    assert "failed: RuntimeError: boom at step 20" in labels and "badge interrupted" in labels


def test_dashboard_page_shows_the_states(ended_runs):
    from browser import serve_app

    from phasescope.dashboard import create_app

    root, _ = ended_runs
    app = create_app(root)
    app._phasescope_source.live_window = 0.3
    with serve_app(app) as srv:
        text = json.dumps(srv.get_json("/_dash-layout"))
    for shown in ("interrupted", "failed: RuntimeError: boom at step 20", "stale: no commit for ", "finished"):
        assert shown in text, shown
