"""Reliability of the run store with real processes: SIGKILL at random moments, a reader polling a
live writer, damaged chunk files. Values are deterministic functions of the step, so a torn or
shifted row is detectable."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from phasescope.store import CorruptRunError, NotARunError, open_run

P, R = 4, 32

# The child's value function; the parent checks against the same definition.
VALUES = textwrap.dedent(f"""
    import numpy as np
    P, R = {P}, {R}
    def step_vals(s):
        return {{"loss": 1000.0 + s, "lr": s * 1e-4, "grad_norm": s * 0.5}}
    def cap_vals(s):
        eig = np.arange(1, R + 1)[None, :] + 1000.0 * s + np.arange(P)[:, None] * 0.5
        return ({{"rankme": np.arange(P) + s * 10.0}}, eig, np.full(P, s, dtype=np.int64))
""")
_values: dict = {}
exec(VALUES, _values)  # the parent's own copy of the definition
step_vals, cap_vals = _values["step_vals"], _values["cap_vals"]

WRITER = VALUES + textwrap.dedent("""
    import sys, time
    from phasescope.store import RunWriter, AsyncRunWriter
    path, mode, n_max, sleep = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    kw = dict(probes=[f"p{i}" for i in range(P)], params=[], param_stats=(), metrics=["rankme"], max_rank=R,
              flags=("nonfinite",), resume=True, capacity=(64, 8))
    w = AsyncRunWriter(path, **kw) if mode == "async" else RunWriter(path, **kw)
    start = 0 if w.last_step is None else w.last_step + 1
    print("ready", start, flush=True)
    for s in range(start, start + n_max):
        w.append_step(s, step_vals(s))
        if s % 3 == 0:
            m, e, n = cap_vals(s)
            w.append_capture(s, m, e, n)
        if sleep:
            time.sleep(sleep)
    w.close()
    print("done", flush=True)
""")


def spawn(path, mode="sync", n_max=10**9, sleep=0.0):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), mode, str(n_max), str(sleep)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def check_run(ds) -> tuple[np.ndarray, np.ndarray]:
    """Every committed row equals the value function of its step; returns (steps, capture steps)."""
    steps = ds.step.values
    caps = ds.capture_step.values
    assert (np.diff(steps) > 0).all() and (np.diff(caps) > 0).all()
    np.testing.assert_array_equal(ds.loss.values, 1000.0 + steps)
    np.testing.assert_array_equal(ds.lr.values, steps * 1e-4)
    np.testing.assert_array_equal(ds.grad_norm.values, steps * 0.5)
    # cap_vals, vectorised over the capture rows
    c = caps.astype(np.float64)
    np.testing.assert_array_equal(ds.rankme.values, np.arange(P)[None, :] + c[:, None] * 10.0)
    eig = np.arange(1, R + 1)[None, None, :] + 1000.0 * c[:, None, None] + np.arange(P)[None, :, None] * 0.5
    np.testing.assert_array_equal(ds.eigenvalues.values, eig.astype(np.float32))
    np.testing.assert_array_equal(ds.n_samples.values, np.repeat(caps[:, None], P, axis=1))
    if len(caps):  # and the vectorised form agrees with the definition
        _m, e, _n = cap_vals(int(caps[-1]))
        np.testing.assert_array_equal(ds.eigenvalues.values[-1], e.astype(np.float32))
    return steps, caps


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path):
    path = tmp_path / "killed.zarr"
    rng = random.Random(1234)
    prev_steps = np.array([], dtype=np.int64)
    prev = None
    kills_while_writing = 0
    for i in range(20):
        mode = "async" if i % 4 == 3 else "sync"
        child = spawn(path, mode)
        if i == 0:
            time.sleep(rng.uniform(0.0, 0.8))  # may land in start-up or in the run's creation
        else:
            line = child.stdout.readline()
            assert line.startswith("ready"), child.stderr.read()
            start = int(line.split()[1])
            assert start == (int(prev_steps[-1]) + 1 if len(prev_steps) else 0)  # resume continues
            time.sleep(rng.uniform(0.005, 0.15))
        alive = child.poll() is None
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills_while_writing += alive and i > 0
        try:
            ds = open_run(path, lazy=False)
        except NotARunError:
            assert i == 0 and not len(prev_steps)  # killed before the run existed
            continue
        steps, caps = check_run(ds)
        # Only whole steps, no gaps: resume continued right after the last committed step.
        np.testing.assert_array_equal(steps, np.arange(len(steps)))
        assert set(caps.tolist()) <= set(steps.tolist()) and all(c % 3 == 0 for c in caps)
        # Committed steps survive every later kill unchanged.
        assert len(steps) >= len(prev_steps)
        if prev is not None:
            np.testing.assert_array_equal(ds.loss.values[: len(prev)], prev)
        prev_steps, prev = steps, ds.loss.values.copy()
    assert kills_while_writing >= 18
    assert len(prev_steps) > 50  # the runs made progress across the restarts
    # A final clean resume finishes the run.
    child = spawn(path, "sync", n_max=5)
    out, err = child.communicate(timeout=60)
    assert "done" in out, err
    ds = open_run(path)
    steps, _ = check_run(ds)
    np.testing.assert_array_equal(steps, np.arange(len(prev_steps) + 5))
    assert ds.attrs["finished"] is True and len(ds.attrs["resumed"]) >= 19


@pytest.mark.slow
def test_concurrent_reader_sees_no_errors_and_no_torn_rows(tmp_path):
    path = tmp_path / "live.zarr"
    n_steps, n_reads = 1000, 1000
    child = spawn(path, "sync", n_max=n_steps, sleep=0.002)
    assert child.stdout.readline().startswith("ready")
    reads = errors = 0
    seen = []
    t0 = time.monotonic()
    while reads < n_reads or child.poll() is None:
        try:
            ds = open_run(path, lazy=False)
            steps, _ = check_run(ds)
            np.testing.assert_array_equal(steps, np.arange(len(steps)))
            seen.append(len(steps))
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - count any read error
            errors += 1
            print("read error:", repr(e))
        reads += 1
        assert time.monotonic() - t0 < 120, "reader too slow"
    out, err = child.communicate(timeout=60)
    assert "done" in out, err
    assert errors == 0
    assert reads >= n_reads
    assert (np.diff(seen) >= 0).all()  # commits only grow
    assert len(set(seen)) > 20  # the reads really overlapped the appends
    assert seen[-1] == n_steps


def _small_run(path, n=300):
    from phasescope.store import RunWriter

    with RunWriter(
        path,
        probes=["p0", "p1", "p2", "p3"],
        params=[],
        param_stats=(),
        metrics=["rankme"],
        max_rank=R,
        flags=("nonfinite",),
        capacity=(64, 8),
    ) as w:
        for s in range(n):
            w.append_step(s, step_vals(s))
            if s % 3 == 0:
                w.append_capture(s, *cap_vals(s))


def test_truncated_chunk_names_array_and_steps(tmp_path):
    path = tmp_path / "r.zarr"
    _small_run(path)
    chunk = path / "loss" / "c.0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    for lazy in (False, True):
        with pytest.raises(CorruptRunError, match=r"'loss'.*steps 0\.\.299"):
            _ = open_run(path, lazy=lazy).loss.values
    # other arrays still read
    assert open_run(path).lr.values[5] == 5e-4


def test_flipped_byte_in_eigenvalue_chunk_is_detected(tmp_path):
    from phasescope.store import RunWriter

    path = tmp_path / "r.zarr"
    rank = 4096  # 4 probes x 4096 ranks: one capture per eigenvalue chunk
    eig = lambda i: np.arange(rank, dtype=np.float64)[None, :] + np.arange(4)[:, None] + 100.0 * i  # noqa: E731
    with RunWriter(path, probes=["a", "b", "c", "d"], params=[], metrics=[], max_rank=rank) as w:
        for i in range(12):
            w.append_step(10 * i, {"loss": float(i)})
            w.append_capture(10 * i, {}, eig(i), np.full(4, 8))
    meta = json.loads((path / "eigenvalues" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"][0] == 1
    chunk = path / "eigenvalues" / "c.7.0.0"  # capture row 7 = step 70
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    ds = open_run(path)
    np.testing.assert_array_equal(ds.eigenvalues[6].values, eig(6).astype(np.float32))
    with pytest.raises(CorruptRunError, match=r"'eigenvalues'.*steps 70\.\.70.*checksum"):
        _ = ds.eigenvalues.values
    with pytest.raises(CorruptRunError, match=r"'eigenvalues'.*steps 70\.\.70"):
        open_run(path, lazy=False)


def test_deleted_chunk_is_an_error_not_fill_values(tmp_path):
    path = tmp_path / "r.zarr"
    _small_run(path)
    (path / "rankme" / "c.0.0").unlink()
    with pytest.raises(CorruptRunError, match=r"'rankme'.*missing chunk 'c\.0\.0'.*capture_steps 0\.\.297"):
        open_run(path)
    ds = open_run(path, verify=False)  # lazy: nothing read yet, so opening works ...
    assert ds.loss.values[3] == 1003.0
    with pytest.raises(CorruptRunError, match=r"'rankme'.*steps 0\.\.297"):  # ... reading does not
        _ = ds.rankme.values
    (path / "loss" / "c.0").unlink()
    with pytest.raises(CorruptRunError, match=r"missing chunk 'c\.0'"):
        open_run(path)
