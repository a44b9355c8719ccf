"""`phasescope analyze` on the command line: a real sweep, and one-line errors (exit 2) for mistakes."""

from __future__ import annotations

import numpy as np
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


def test_weights_against_a_reference_model(tiny_sweep, tmp_path, capsys):
    """analyze --weights --reference: every matrix's change from a base model (here the sweep's first
    checkpoint, and the same folder named as a path): relative Frobenius distance, change of α, of σ₁
    and of the ESD, checked against the checkpoints' weights read by hand; zero at the reference itself.
    --reference without --weights, or a reference that does not exist, is one line and exit 2."""
    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel

    from phasescope.spectra.weights import weight_spectra
    from phasescope.store import open_run

    ck = tiny_sweep / "ck"
    text = str(tiny_sweep / "p.txt")
    out = tmp_path / "r.zarr"
    args = ["analyze", str(ck), "--text", text, "--out", str(out), "--weights", "--workers", "0", "--no-progress"]
    assert main([*args, "--reference", "first"]) == 0
    ds = open_run(out, lazy=False)
    first, last = (GPT2LMHeadModel.from_pretrained(ck / f"checkpoint-{s}") for s in (0, 8))
    p0, p8 = dict(first.named_parameters()), dict(last.named_parameters())
    names = [str(m) for m in ds["matrix"].values]
    for v in ("weight_distance_from_ref", "weight_alpha_change", "weight_spectral_change", "weight_esd_change"):
        np.testing.assert_allclose(ds[f"matrix_{v}"].sel(capture_step=0).values, 0.0, atol=1e-6)
    got = ds["matrix_weight_distance_from_ref"].sel(capture_step=8).values
    want = [float((p8[n] - p0[n]).detach().norm() / p0[n].detach().norm()) for n in names]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    s8 = torch.linalg.svdvals(p8[names[0]].detach().double())
    s0 = torch.linalg.svdvals(p0[names[0]].detach().double())
    row = ds.sel(capture_step=8, matrix=names[0])
    assert float(row["matrix_weight_spectral_change"]) == pytest.approx(float(s8[0] / s0[0] - 1), rel=1e-4, abs=1e-7)
    esd = float(torch.linalg.vector_norm(s8**2 - s0**2) / torch.linalg.vector_norm(s0**2))
    assert float(row["matrix_weight_esd_change"]) == pytest.approx(esd, rel=1e-4)
    a8, a0 = (weight_spectra({names[0]: p[names[0]].detach()})[names[0]].alpha for p in (p8, p0))
    assert float(row["matrix_weight_alpha_change"]) == pytest.approx(a8 - a0, rel=1e-4, abs=1e-6)
    # the same base model named by its folder
    out2 = tmp_path / "r2.zarr"
    args2 = [*args[:5], str(out2), *args[6:]]
    assert main([*args2, "--reference", str(ck / "checkpoint-0")]) == 0
    np.testing.assert_allclose(
        open_run(out2)["matrix_weight_distance_from_ref"].values, ds["matrix_weight_distance_from_ref"].values
    )
    capsys.readouterr()
    assert main([a for a in args if a != "--weights"] + ["--reference", "first", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "--reference compares" in err and "add --weights" in err and "Traceback" not in err
    assert main([*args, "--reference", str(tmp_path / "nowhere"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_curvature_and_gradient_noise_offline(tiny_sweep, tmp_path):
    """analyze --diagnostics: per checkpoint, the Hessian's λ_max and trace and the gradient-noise
    statistics of the loss on the probe set's first --batch-size sequences, equal to
    phasescope.gradients' functions applied to each checkpoint on that batch."""
    import numpy as np
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import GPT2LMHeadModel

    from phasescope.gradients.curvature import hessian_top_eigenvalue, hessian_trace, model_loss_fn
    from phasescope.gradients.noise import gradient_noise, micro_batch_gradients
    from phasescope.probes.offline.analyze import AnalyzeOptions
    from phasescope.probes.offline.capture import CaptureSpec, diagnostics_batch
    from phasescope.probes.offline.sources import load_texts, load_tokenizer, tokenize
    from phasescope.store import open_run

    ck, text, out = tiny_sweep / "ck", tiny_sweep / "p.txt", tmp_path / "d.zarr"
    args = ["analyze", str(ck), "--text", str(text), "--out", str(out), "--workers", "0", "--no-progress"]
    assert main([*args, "--diagnostics", "--batch-size", "8"]) == 0
    ds = open_run(out, lazy=False)
    opts = AnalyzeOptions()
    tok = load_tokenizer(str(ck / "checkpoint-0"))
    n_pos = GPT2LMHeadModel.from_pretrained(ck / "checkpoint-0").config.n_positions  # analyze's cap
    data = tokenize(load_texts(str(text)), tok, min(opts.max_length, n_pos), min_tokens=opts.min_tokens)
    batch = diagnostics_batch(data, CaptureSpec(probes=(), dims=(), metrics=(), max_rank=0, batch_size=8))
    for step in (0, 8):
        model = GPT2LMHeadModel.from_pretrained(ck / f"checkpoint-{step}").eval()
        f = model_loss_fn(model, lambda out: out.loss, **batch)
        params = dict(model.named_parameters())
        with sdpa_kernel([SDPBackend.MATH]):
            top, trace = hessian_top_eigenvalue(f, params), hessian_trace(f, params, samples=10)
            noise = gradient_noise(micro_batch_gradients(model, lambda m, b: m(**b).loss, batch, 4))
        assert np.isfinite(top.value)
        assert float(ds["hessian_top"].sel(step=step)) == pytest.approx(top.value, rel=1e-5)
        assert float(ds["hessian_trace"].sel(step=step)) == pytest.approx(trace.value, rel=1e-5)
        assert float(ds["gsnr"].sel(step=step)) == pytest.approx(noise["gsnr"], rel=1e-4)
        assert float(ds["norm_test"].sel(step=step)) == pytest.approx(noise["norm_test"], rel=1e-4)
    assert "statistics_skipped" not in ds.attrs


def test_stages_map_checkpoint_folders_onto_one_step_axis(tiny_sweep, tmp_path, capsys):
    """--stage NAME=FOLDER, in training order: each folder's checkpoints follow the previous stage's last
    step (its own numbering shifted), the run records the stages, and CKA to each stage's first capture
    restarts at 1; mistakes are one line and exit 2."""
    from phasescope.store import open_run, run_stages

    root = tiny_sweep
    out = tmp_path / "st.zarr"
    args = ["analyze", "--stage", f"pre={root / 'ck'}", "--stage", f"sft={root / 'ck'}", "--text", str(root / "p.txt")]
    assert main([*args, "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    ds = open_run(out)
    assert ds.capture_step.values.tolist() == [0, 4, 8, 9, 13, 17]
    stages = [(s["name"], s["first_step"], s["last_step"], s["meta"]["step_offset"]) for s in run_stages(ds)]
    assert stages == [("pre", 0, 8, 0), ("sft", 9, 17, 9)]
    cka = ds["cka_stage"].sel(probe=str(ds.probe.values[-1])).values
    assert cka[0] == 1.0 and cka[3] == 1.0 and cka[1] < 1.0
    # the second stage re-reads the same checkpoints: its spectra equal the first stage's
    np.testing.assert_allclose(ds.rankme.values[3:], ds.rankme.values[:3], rtol=1e-6)
    capsys.readouterr()
    assert main(["analyze", "--stage", "nofolder", "--text", str(root / "p.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "NAME=FOLDER" in _err(capsys)
    assert main(["analyze", str(root / "ck"), *args[1:], "--out", str(tmp_path / "y")]) == 2
    assert "either SOURCE" in _err(capsys)
    dup = ["analyze", "--stage", f"a={root / 'ck'}", "--stage", f"a={root / 'ck'}", "--text", str(root / "p.txt")]
    assert main([*dup, "--out", str(tmp_path / "z")]) == 2
    assert "given twice" in _err(capsys)
