"""Ctrl-C during `phasescope analyze`, for real: a subprocess sweeping 40 checkpoints gets SIGINT (sent to its
whole process group, as a terminal does) once the first checkpoint is committed. It must end with one
line and exit 130, print no traceback, leave no worker process behind, and close the run "interrupted"
with the committed checkpoints readable; a rerun continues where it stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from phasescope.cli import main
from phasescope.store import open_run

N_CKPT = 40


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """40 checkpoint folders (links to two trained ones) and a probe set that takes a moment per checkpoint."""
    from phasescope.testing.toy_checkpoints import train_checkpoints, write_probe_file

    root = tmp_path_factory.mktemp("interrupt")
    train_checkpoints(root / "trained", [0, 8], n_layer=1, n_embd=32, n_head=2, seq_len=32)
    (root / "ck").mkdir()
    for k in range(N_CKPT):
        (root / "ck" / f"checkpoint-{k}").symlink_to(root / "trained" / f"checkpoint-{8 if k else 0}")
    write_probe_file(root / "p.txt", n=256)
    return root


def _committed(out) -> int:
    try:
        return int(json.loads((out / "zarr.json").read_text())["attributes"]["phasescope_commit"]["n_captures"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _session_processes(sid: int) -> list[psutil.Process]:
    alive = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (psutil.Error, OSError):
            continue
    return alive


def _interrupt(root, out, workers: int, twice: bool = False) -> tuple[int, str, int]:
    """Run analyze, Ctrl-C it after the first commit (``twice``: and again while it cleans up);
    (exit code, stderr, child processes seen)."""
    cmd = [
        sys.executable,
        "-m",
        "phasescope.cli",
        "analyze",
        str(root / "ck"),
        "--text",
        str(root / "p.txt"),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--fit-range",
        "2,30",
    ]
    with open(root / f"err-{workers}.txt", "w+") as err, open(root / f"out-{workers}.txt", "w") as so:
        proc = subprocess.Popen(cmd, stdout=so, stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while _committed(out) < 1:
                assert proc.poll() is None, "analyze ended before its first commit"
                assert time.monotonic() < deadline, "no checkpoint committed in time"
                time.sleep(0.05)
            children = len(psutil.Process(proc.pid).children(recursive=True))
            os.killpg(proc.pid, signal.SIGINT)
            if twice:
                time.sleep(0.2)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        leftover = []
        deadline = time.monotonic() + 10  # a worker may take a moment to exit after the parent
        while (leftover := _session_processes(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not leftover, f"processes left behind: {[p.cmdline() for p in leftover]}"
        err.seek(0)
        return rc, err.read(), children


def _check(out, rc: int, err: str) -> int:
    assert rc == 130, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and f"of {N_CKPT} checkpoints analysed and kept in {out}" in last, err
    assert "without --overwrite to continue" in last
    ds = open_run(out)
    assert ds.attrs["status"] == "interrupted" and not ds.attrs.get("error")
    kept = len(ds["capture_step"])
    assert 1 <= kept < N_CKPT and f"interrupted: {kept} of" in last
    assert list(ds["capture_step"].values) == list(range(kept))
    assert (ds["flag_failed"].values == 0).all()  # the interrupt is not recorded as a failed checkpoint
    assert ds["rankme"].notnull().all()
    return kept


def test_ctrl_c_in_process_keeps_what_was_committed_and_a_rerun_continues(many, capsys):
    """Ctrl-C pressed twice: the second one does not cut the clean-up short."""
    out = many / "serial.zarr"
    rc, err, _ = _interrupt(many, out, workers=0, twice=True)
    kept = _check(out, rc, err)
    assert (
        main(
            [
                "analyze",
                str(many / "ck"),
                "--text",
                str(many / "p.txt"),
                "--out",
                str(out),
                "--workers",
                "0",
                "--fit-range",
                "2,30",
                "--no-progress",
            ]
        )
        == 0
    )
    assert f"skipped {kept} already stored" in capsys.readouterr().out
    ds = open_run(out)
    assert list(ds["capture_step"].values) == list(range(N_CKPT)) and ds.attrs["status"] == "finished"


# starts 2 worker processes (imports torch, transformers, nnsight): ~12 s quiet, ~40 s loaded (2 cores)
@pytest.mark.slow
def test_ctrl_c_on_a_cluster_shuts_it_down_quietly(many):
    out = many / "cluster.zarr"
    rc, err, children = _interrupt(many, out, workers=2)
    assert children >= 2  # the workers were running when Ctrl-C came
    _check(out, rc, err)
