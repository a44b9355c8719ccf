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
    assert (
        main(["analyze", str(tmp_path / "nope"), "--text", str(tmp_path / "p.txt"), "--out", str(tmp_path / "r.zarr")])
        == 2
    )
    assert "does not exist" in _err(capsys)


def test_folder_without_checkpoints(tmp_path, capsys):
    (tmp_path / "src" / "logs").mkdir(parents=True)
    (tmp_path / "p.txt").write_text("x\n")
    assert (
        main(["analyze", str(tmp_path / "src"), "--text", str(tmp_path / "p.txt"), "--out", str(tmp_path / "r.zarr")])
        == 2
    )
    assert "checkpoint-1000" in _err(capsys)


def test_hub_revisions_offline_fail_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "p.txt").write_text("x\n")
    assert (
        main(
            [
                "analyze",
                "EleutherAI/pythia-14m",
                "--revisions",
                "step1000,step2000",
                "--text",
                str(tmp_path / "p.txt"),
                "--out",
                str(tmp_path / "r.zarr"),
            ]
        )
        == 2
    )
    err = _err(capsys)
    assert "step1000" in err and "cache" in err


def test_revision_without_step(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("x\n")
    assert (
        main(
            [
                "analyze",
                "org/model",
                "--revisions",
                "main",
                "--text",
                str(tmp_path / "p.txt"),
                "--out",
                str(tmp_path / "r.zarr"),
            ]
        )
        == 2
    )
    assert "no step number" in _err(capsys)


def test_bad_text_and_probe_errors(tiny_sweep, capsys):
    root = tiny_sweep
    assert main(["analyze", str(root / "ck"), "--text", str(root / "missing.txt"), "--out", str(root / "a.zarr")]) == 2
    assert "no such file" in _err(capsys)
    bad = root / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    assert main(["analyze", str(root / "ck"), "--text", str(bad), "--out", str(root / "a.zarr")]) == 2
    assert "'text'" in _err(capsys)
    assert (
        main(
            [
                "analyze",
                str(root / "ck"),
                "--text",
                str(root / "p.txt"),
                "--out",
                str(root / "a.zarr"),
                "--probes",
                "transformer.h.7",
                "--workers",
                "0",
            ]
        )
        == 2
    )
    assert "matches no module" in _err(capsys)


def test_cli_sweep_then_rerun_skips(tiny_sweep, capsys):
    root = tiny_sweep
    args = [
        "analyze",
        str(root / "ck"),
        "--text",
        str(root / "p.txt"),
        "--out",
        str(root / "run.zarr"),
        "--workers",
        "0",
        "--no-progress",
        "--fit-range",
        "2,12",
        "--weights",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "analyzed 3 checkpoint(s)" in out
    assert main(args) == 0
    assert "skipped 3 already stored" in capsys.readouterr().out
    from phasescope.store import open_run

    ds = open_run(root / "run.zarr")
    assert list(ds["capture_step"].values) == [0, 4, 8]
    assert "matrix_weight_alpha" in ds and ds.attrs["mode"] == "offline-checkpoints"


@pytest.mark.parametrize(
    ("probes_from", "expect"), [(None, "kjv mid-text: 977 windows"), ("verses", "kjv held-out verses")]
)
def test_kjv_probe_set_is_mid_text_by_default_and_recorded(tiny_sweep, capsys, probes_from, expect):
    """`--text kjv` reads windows of held-out text cut at random points unless `--probes-from verses`
    (issue 21); the store names which set it read."""
    from phasescope.store import open_run

    root = tiny_sweep
    out = root / f"kjv-{probes_from}.zarr"
    args = [
        "analyze",
        str(root / "ck"),
        "--text",
        "kjv",
        "--out",
        str(out),
        "--workers",
        "0",
        "--no-progress",
        "--max-sequences",
        "48",
        "--max-length",
        "16",
        "--fit-range",
        "2,12",
    ]
    assert main(args + (["--probes-from", probes_from] if probes_from else [])) == 0
    ds = open_run(out)
    assert ds.attrs["corpus"].startswith(expect), ds.attrs["corpus"]
    assert ds.attrs["analyze_options"]["probes_from"] == probes_from
    assert ds.attrs["n_sequences"] == 48 and list(ds["capture_step"].values) == [0, 4, 8]


def test_probes_from_is_refused_for_a_text_file(tiny_sweep, capsys):
    root = tiny_sweep
    assert (
        main(
            [
                "analyze",
                str(root / "ck"),
                "--text",
                str(root / "p.txt"),
                "--out",
                str(root / "x.zarr"),
                "--probes-from",
                "verses",
            ]
        )
        == 2
    )
    err = _err(capsys)
    assert "--probes-from applies to a corpus" in err and "drop --probes-from" in err
    assert not (root / "x.zarr").exists()
