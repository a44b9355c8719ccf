"""`phasescope analyze` on the command line: a real sweep, and one-line errors (exit 2) for mistakes."""

from __future__ import annotations

import pytest

from phasescope.cli import main


def _err(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_source(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("in the beginning\n")
    assert main(["analyze", str(tmp_path / "nope"), "--text", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "r.zarr")]) == 2
    assert "does not exist" in _err(capsys)


def test_folder_without_checkpoints(tmp_path, capsys):
    (tmp_path / "src" / "logs").mkdir(parents=True)
    (tmp_path / "p.txt").write_text("x\n")
    assert main(["analyze", str(tmp_path / "src"), "--text", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "r.zarr")]) == 2
    assert "checkpoint-1000" in _err(capsys)


def test_hub_revisions_offline_fail_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "p.txt").write_text("x\n")
    assert main(["analyze", "EleutherAI/pythia-14m", "--revisions", "step1000,step2000", "--text",
                 str(tmp_path / "p.txt"), "--out", str(tmp_path / "r.zarr")]) == 2
    err = _err(capsys)
    assert "step1000" in err and "cache" in err


def test_revision_without_step(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("x\n")
    assert main(["analyze", "org/model", "--revisions", "main", "--text", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "r.zarr")]) == 2
    assert "no step number" in _err(capsys)


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    from phasescope.testing.toy_checkpoints import train_checkpoints, write_probe_file

    root = tmp_path_factory.mktemp("cli")
    train_checkpoints(root / "ck", [0, 4, 8], n_layer=1, n_embd=16, n_head=2, seq_len=16)
    write_probe_file(root / "p.txt", n=24)
    return root


def test_bad_text_and_probe_errors(small_sweep, capsys):
    root = small_sweep
    assert main(["analyze", str(root / "ck"), "--text", str(root / "missing.txt"), "--out", str(root / "a.zarr")]) == 2
    assert "no such file" in _err(capsys)
    bad = root / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    assert main(["analyze", str(root / "ck"), "--text", str(bad), "--out", str(root / "a.zarr")]) == 2
    assert "'text'" in _err(capsys)
    assert main(["analyze", str(root / "ck"), "--text", str(root / "p.txt"), "--out", str(root / "a.zarr"),
                 "--probes", "transformer.h.7", "--workers", "0"]) == 2
    assert "matches no module" in _err(capsys)


def test_cli_sweep_then_rerun_skips(small_sweep, capsys):
    root = small_sweep
    args = ["analyze", str(root / "ck"), "--text", str(root / "p.txt"), "--out", str(root / "run.zarr"),
            "--workers", "0", "--no-progress", "--fit-range", "2,12", "--weights"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "analyzed 3 checkpoint(s)" in out
    assert main(args) == 0
    assert "skipped 3 already stored" in capsys.readouterr().out
    from phasescope.store import open_run

    ds = open_run(root / "run.zarr")
    assert list(ds["capture_step"].values) == [0, 4, 8]
    assert "matrix_weight_alpha" in ds and ds.attrs["mode"] == "offline-checkpoints"
