"""RunWriter / open_run / list_runs: round trips through zarr, xarray and phasescope, order and resume rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from phasescope.errors import PhasescopeError
from phasescope.store import (
    LayoutMismatchError,
    NotARunError,
    RunExistsError,
    RunWriter,
    SchemaVersionError,
    StepOrderError,
    list_runs,
    open_run,
)

PROBES = ["gpt2.h.0", "gpt2.h.1", "final"]
PARAMS = ["wte", "h.0.attn.c_attn.weight"]
MATS = ["h.0.q", "h.0.k"]


def vals(step: int) -> dict:
    """Deterministic per-step values so any mix-up of rows is visible."""
    P, R = len(PROBES), 6
    return dict(
        scalars={"loss": 10.0 / (step + 1), "lr": 1e-3 * step, "grad_norm": step + 0.5},
        params={"grad_norm": np.array([step, -step], dtype=np.float32)},
        metrics={"rankme": np.arange(P) + step * 0.25, "alpha": np.full(P, step / 7)},
        eig=(np.arange(1, R + 1)[None, :] * (step + 1.0) * np.arange(1, P + 1)[:, None])[:, : R - (step % 3)],
        n_samples=np.full(P, 100 + step),
        matrices={"grad_nuclear": np.array([step, 2 * step], dtype=np.float32)},
    )


def make(path, **kw):
    args = dict(
        probes=PROBES,
        params=PARAMS,
        metrics=["rankme", "alpha"],
        max_rank=6,
        matrices=MATS,
        matrix_stats=["grad_nuclear"],
        attrs={"model": "gpt2-test", "seed": 3},
    )
    args.update(kw)
    return RunWriter(path, **args)


def write(w, steps, capture_every=3):
    for s in steps:
        v = vals(s)
        w.append_step(s, v["scalars"], params=v["params"])
        if s % capture_every == 0:
            w.append_capture(s, v["metrics"], v["eig"], v["n_samples"], matrices=v["matrices"])


def check(ds, steps, capture_every=3):
    steps = list(steps)
    caps = [s for s in steps if s % capture_every == 0]
    np.testing.assert_array_equal(ds.step.values, steps)
    np.testing.assert_array_equal(ds.capture_step.values, caps)
    for i, s in enumerate(steps):
        v = vals(s)
        assert ds.loss.values[i] == v["scalars"]["loss"]
        assert ds.lr.values[i] == v["scalars"]["lr"]
        np.testing.assert_array_equal(ds.param_grad_norm.values[i], v["params"]["grad_norm"])
    for i, s in enumerate(caps):
        v = vals(s)
        np.testing.assert_array_equal(ds.rankme.values[i], v["metrics"]["rankme"])
        e = v["eig"]
        np.testing.assert_allclose(ds.eigenvalues.values[i, :, : e.shape[1]], e, rtol=1e-6)
        assert np.isnan(ds.eigenvalues.values[i, :, e.shape[1] :]).all()
        np.testing.assert_array_equal(ds.n_samples.values[i], v["n_samples"])
        np.testing.assert_array_equal(ds.matrix_grad_nuclear.values[i], v["matrices"]["grad_nuclear"])


def test_round_trip_open_run_and_plain_xarray(tmp_path):
    path = tmp_path / "run.zarr"
    with make(path) as w:
        write(w, range(40))
    for lazy in (True, False):
        ds = open_run(path, lazy=lazy)
        check(ds, range(40))
    ds = open_run(path)
    assert ds.probe.values.tolist() == PROBES and ds.param.values.tolist() == PARAMS
    assert ds.matrix.values.tolist() == MATS and ds["rank"].values.tolist() == [1, 2, 3, 4, 5, 6]
    assert ds.eigenvalues.dims == ("capture_step", "probe", "rank")
    assert ds.param_grad_norm.dims == ("step", "param") and ds.flag_nonfinite.dtype == np.uint8
    assert ds.attrs["model"] == "gpt2-test" and ds.attrs["seed"] == 3 and ds.attrs["finished"] is True
    assert ds.attrs["phasescope_schema"] == 1 and "created" in ds.attrs and "host" in ds.attrs
    assert hasattr(ds.loss.data, "dask")  # lazy by default

    # No phasescope code: plain xarray sees every array with its dims and the string coordinates.
    raw = xr.open_zarr(path, consolidated=False)
    assert raw.probe.values.tolist() == PROBES and raw.param.values.tolist() == PARAMS
    n = raw.attrs["phasescope_commit"]["n_steps"]
    assert n == 40 and raw.sizes["step"] >= 40
    trimmed = raw.isel(step=slice(0, n), capture_step=slice(0, raw.attrs["phasescope_commit"]["n_captures"]))
    check(trimmed, range(40))
    # and plain zarr: every array declares its dimension names
    g = zarr.open_group(str(path), mode="r")
    for name, arr in g.arrays():
        assert arr.metadata.dimension_names is not None, name


def test_capacity_growth_past_initial_allocation(tmp_path):
    path = tmp_path / "big.zarr"
    with make(path, params=[], param_stats=(), capacity=(16, 4)) as w:
        for s in range(300):
            w.append_step(s, {"loss": float(s)})
            if s % 20 == 0:
                v = vals(s)
                w.append_capture(s, v["metrics"], v["eig"], v["n_samples"])
        raw = xr.open_zarr(path, consolidated=False)
        assert raw.sizes["step"] == 512 and raw.sizes["capture_step"] == 16  # grown by doubling while open
    ds = open_run(path)
    np.testing.assert_array_equal(ds.loss.values, np.arange(300.0))
    assert ds.sizes["capture_step"] == 15 and ds.capture_step.values[-1] == 280
    np.testing.assert_array_equal(ds.rankme.values[:, 0], np.arange(0, 300, 20) * 0.25)
    raw = xr.open_zarr(path, consolidated=False)
    assert raw.sizes["step"] == 300 and raw.sizes["capture_step"] == 15  # trimmed on close


def test_step_order_errors_and_missing_values(tmp_path):
    with make(tmp_path / "r.zarr") as w:
        w.append_step(5, {"loss": 1.0})
        with pytest.raises(StepOrderError, match="not after the last appended step 5"):
            w.append_step(5, {"loss": 2.0})
        with pytest.raises(StepOrderError):
            w.append_step(3, {"loss": 2.0})
        with pytest.raises(PhasescopeError, match="unknown scalars"):
            w.append_step(6, {"accuracy": 1.0})
        with pytest.raises(PhasescopeError, match="expected one per param"):
            w.append_step(6, {"loss": 1.0}, params={"grad_norm": np.ones(5)})
        with pytest.raises(PhasescopeError, match="eigenvalues has shape"):
            w.append_capture(6, {}, np.ones((2, 3)), np.ones(3))
        with pytest.raises(PhasescopeError, match="step must be an integer"):
            w.append_step(7.5, {"loss": 1.0})
        w.append_step(6, {"loss": float("nan")}, flags={"skipped": 1})
        w.append_capture(6, {"rankme": [1, 2, 3]}, np.ones((3, 2)), [4, 4, 4])
    ds = open_run(tmp_path / "r.zarr", lazy=False)
    assert ds.step.values.tolist() == [5, 6]
    assert np.isnan(ds.lr.values).all()  # never given
    assert ds.flag_nonfinite.values.tolist() == [0, 1]  # NaN loss flagged automatically
    assert ds.flag_skipped.values.tolist() == [0, 1]
    assert np.isnan(ds.alpha.values).all() and ds.rankme.values.tolist() == [[1, 2, 3]]


def test_overwrite_and_existing_paths(tmp_path):
    path = tmp_path / "r.zarr"
    with make(path) as w:
        write(w, range(3))
    with pytest.raises(RunExistsError, match="overwrite=True"):
        make(path)
    assert open_run(path).sizes["step"] == 3  # untouched
    with make(path, overwrite=True) as w:
        write(w, range(2))
    assert open_run(path).sizes["step"] == 2
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(NotARunError, match="not a phasescope run"):
        make(other, overwrite=True)
    assert (other / "cat.jpg").exists()
    with pytest.raises(PhasescopeError, match="contradict"):
        make(tmp_path / "x.zarr", overwrite=True, resume=True)


def test_resume_continues_and_skips_replayed_steps(tmp_path):
    path = tmp_path / "r.zarr"
    w = make(path)
    write(w, range(10))
    del w  # no close: as if the process died
    w = make(path, resume=True)
    assert w.n_steps == 10 and w.last_step == 9
    with pytest.warns(UserWarning, match="skipped"):
        write(w, range(7, 15))  # a restart from an older checkpoint replays 7..9
    w.close()
    ds = open_run(path)
    check(ds, range(15))
    assert len(ds.attrs["resumed"]) == 1 and ds.attrs["resumed"][0]["last_step"] == 9
    with pytest.raises(LayoutMismatchError, match="probes"):
        make(path, resume=True, probes=["other"])
    # resume of a missing run starts one
    with make(tmp_path / "new.zarr", resume=True) as w2:
        write(w2, range(2))
    assert open_run(tmp_path / "new.zarr").sizes["step"] == 2


def test_schema_version_mismatch_is_clear(tmp_path):
    path = tmp_path / "r.zarr"
    with make(path) as w:
        write(w, range(2))
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["phasescope_schema"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaVersionError, match="schema 99"):
        open_run(path)
    with pytest.raises(SchemaVersionError, match="schema 99"):
        make(path, resume=True)


def test_bad_paths(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("hello")
    with pytest.raises(NotARunError, match="is a file"):
        open_run(f)
    with pytest.raises(NotARunError, match="does not exist"):
        open_run(tmp_path / "nope.zarr")
    d = tmp_path / "plain"
    d.mkdir()
    with pytest.raises(NotARunError, match="not a phasescope run"):
        open_run(d)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", attributes={"owner": "someone"})
    with pytest.raises(NotARunError, match="not a phasescope run"):
        open_run(tmp_path / "other.zarr")
    # A location that cannot be written even as root: a path below a regular file.
    with pytest.raises(NotARunError, match="is a file, not a directory"):
        make(f / "run.zarr")
    with pytest.raises(NotARunError):
        list_runs(f)


def test_attrs_must_be_json_and_protected(tmp_path):
    with pytest.raises(PhasescopeError, match="JSON-serialisable"):
        make(tmp_path / "a.zarr", attrs={"model": object()})
    with make(tmp_path / "b.zarr", attrs={"cfg": {"n_layer": np.int64(2)}}) as w:
        w.set_attrs(schedule="log", corpus={"name": "kjv"})
        with pytest.raises(PhasescopeError, match="managed by the store"):
            w.set_attrs(phasescope_schema=2)
    ds = open_run(tmp_path / "b.zarr")
    assert ds.attrs["cfg"] == {"n_layer": 2} and ds.attrs["corpus"] == {"name": "kjv"}


def test_list_runs_catalog(tmp_path):
    with make(tmp_path / "done.zarr", attrs={"model": "m1"}) as w:
        write(w, range(5))
    live = make(tmp_path / "live.zarr", attrs={"model": "m2"})
    write(live, range(3))
    (tmp_path / "notes").mkdir()
    try:
        with make(tmp_path / "crashed.zarr") as w:
            write(w, range(2))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    runs = {r.name: r for r in list_runs(tmp_path)}
    assert set(runs) == {"done.zarr", "live.zarr", "crashed.zarr"}
    assert runs["done.zarr"].finished and not runs["done.zarr"].live and runs["done.zarr"].n_steps == 5
    assert runs["done.zarr"].n_captures == 2 and runs["done.zarr"].last_step == 4
    assert runs["done.zarr"].model == "m1"
    assert runs["live.zarr"].live and runs["live.zarr"].status == "live" and runs["live.zarr"].n_steps == 3
    assert runs["crashed.zarr"].status == "failed" and not runs["crashed.zarr"].live
    assert open_run(tmp_path / "crashed.zarr").attrs["error"] == "RuntimeError: boom"
    # a run silent for longer than the window is stale, not live
    stale = {r.name: r for r in list_runs(tmp_path, live_window=-1)}
    assert stale["live.zarr"].status == "stale" and not stale["live.zarr"].live
    live.close()


def test_store_does_not_import_torch():
    code = (
        "import sys, numpy as np, tempfile, os\n"
        "from phasescope.store import RunWriter, AsyncRunWriter, open_run, list_runs, write_group\n"
        "d = tempfile.mkdtemp()\n"
        "w = RunWriter(os.path.join(d, 'r'), probes=['a'], params=[], metrics=['m'], max_rank=2)\n"
        "w.append_step(0, {'loss': 1.0}); w.close(); open_run(os.path.join(d, 'r')).load(); list_runs(d)\n"
        "assert 'torch' not in sys.modules, 'store imported torch'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_empty_run_opens(tmp_path):
    with make(tmp_path / "e.zarr"):
        pass
    ds = open_run(tmp_path / "e.zarr")
    assert ds.sizes["step"] == 0 and ds.sizes["capture_step"] == 0 and ds.sizes["probe"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds.loss.values.shape == (0,)


def test_read_only_directory_is_a_clear_error():
    """A real read-only directory. Root ignores permission bits, so as root the writer runs as
    the unprivileged user 'nobody' (setpriv); without setpriv it is skipped (test_bad_paths
    still covers an unwritable location that fails even for root: a path below a regular file)."""
    import shutil
    import tempfile

    base = tempfile.mkdtemp()
    try:
        os.chmod(base, 0o755)
        ro = os.path.join(base, "ro")
        os.mkdir(ro, 0o555)
        os.chmod(ro, 0o555)
        code = (
            "from phasescope.store import RunWriter\n"
            "from phasescope.errors import PhasescopeError\n"
            "try:\n"
            f"    RunWriter({os.path.join(ro, 'run.zarr')!r}, probes=['a'], params=[], metrics=[], max_rank=1)\n"
            "except PhasescopeError as e:\n    print('ERR', e)\n"
        )
        cmd = [sys.executable, "-c", code]
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv: cannot make a directory read-only for root")
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert "ERR cannot write a run at" in r.stdout and "choose a writable location" in r.stdout, r.stderr
        assert os.listdir(ro) == []
    finally:
        os.chmod(os.path.join(base, "ro"), 0o755)
        shutil.rmtree(base, ignore_errors=True)
