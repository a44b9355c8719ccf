"""Offline checkpoint analysis against independent straightforward computations.

A tiny GPT-2 (2 layers, d=32) is trained on the KJV demo corpus with a plain loop that saves 8
``checkpoint-<step>`` folders; `analyze` sweeps them. References are written out here: batch-1 forward
passes with ``output_hidden_states=True``, last-token states, centred full SVD, RankMe and the weighted
α-ReQ least-squares fit; per-sequence losses back-propagated one by one for the gradient statistics.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch

from phasescope.probes.offline import analyze
from phasescope.spectra.esd_metrics import ww_layer_metrics
from phasescope.store import open_run
from phasescope.testing.toy_checkpoints import train_checkpoints, write_probe_file

STEPS = [0, 2, 4, 8, 16, 32, 48, 64]
FIT = (3, 29)  # zero-based half-open index range of the α fit (d = 32)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    folders = train_checkpoints(root / "ck", STEPS, n_layer=2, n_embd=32, n_head=2, seq_len=32)
    texts = write_probe_file(root / "probes.txt", n=64)
    return root, folders, texts


@pytest.fixture(scope="module")
def serial_run(sweep):
    root, _, _ = sweep
    out = root / "serial.zarr"
    report = analyze(
        root / "ck", str(root / "probes.txt"), out, workers=0, fit_range=FIT, progress=False, rankme_raw=True
    )
    return report, open_run(out)


def _reference_states(folder, texts, layer):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    rows = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, truncation=True, max_length=64, return_tensors="pt")["input_ids"]
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            rows.append(hs[layer][0, -1].double().numpy())
    return np.stack(rows)


def _reference_metrics(x):
    xc = x - x.mean(0)
    s = np.linalg.svd(xc, compute_uv=False)
    lam = s**2 / (len(x) - 1)
    p = lam / lam.sum() + 1e-7
    rankme = math.exp(-(p * np.log(p)).sum())
    k = np.arange(FIT[0], FIT[1]) + 1.0
    w = 1.0 / k
    a = np.stack([-np.log(k), np.ones_like(k)], 1)
    y = np.log(lam[FIT[0] : FIT[1]])
    sw = np.sqrt(w)[:, None]
    (alpha, _), *_ = np.linalg.lstsq(a * sw, y * sw[:, 0], rcond=None)
    pr = lam.sum() ** 2 / (lam**2).sum()
    return lam, rankme, alpha, pr


def test_metrics_equal_batch1_reference(sweep, serial_run):
    _, folders, texts = sweep
    report, ds = serial_run
    assert report.analyzed == STEPS and not report.failed
    assert list(ds["capture_step"].values) == STEPS
    assert list(ds["probe"].values) == ["block.0", "block.1", "final_norm"]
    assert (ds["n_samples"].values == 64).all()
    rankmes = []
    for folder, step in zip(folders, STEPS):
        for probe, layer in (("final_norm", -1), ("block.0", 1)):
            x = _reference_states(folder, texts, layer)
            lam, rankme, alpha, pr = _reference_metrics(x)
            row = ds.sel(capture_step=step, probe=probe)
            assert float(row["rankme"]) == pytest.approx(rankme, rel=1e-5)
            p = (s := np.linalg.svd(x, compute_uv=False)) / s.sum() + 1e-7  # Garrido et al.: raw, uncentred
            assert float(row["rankme_raw"]) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
            assert float(row["alpha"]) == pytest.approx(alpha, rel=1e-5)
            assert float(row["participation_ratio"]) == pytest.approx(pr, rel=1e-5)
            ev = row["eigenvalues"].values
            np.testing.assert_allclose(ev[: len(lam)], lam, rtol=1e-5, atol=1e-5 * lam[0])
            if probe == "final_norm":
                rankmes.append(rankme)
    assert max(rankmes) / min(rankmes) > 1.5  # training moved the geometry: the test can tell steps apart
    assert ds.attrs["rankme_raw"] is True


@pytest.mark.slow  # starts 2 worker processes (imports torch, transformers, nnsight): ~20-60 s
def test_dask_two_workers_match_serial(sweep, serial_run):
    root, _, _ = sweep
    out = root / "dask.zarr"
    report = analyze(
        root / "ck", str(root / "probes.txt"), out, workers=2, threads_per_worker=1, fit_range=FIT, progress=False
    )
    assert report.workers == 2 and report.analyzed == STEPS
    ds, ref = open_run(out), serial_run[1]
    for m in ("rankme", "alpha", "alpha_r2", "participation_ratio", "stable_rank"):
        # serial_run asks for rankme_raw, which keeps float64 products; these runs get float32 products
        # (float32 activations, issue 18): the same numbers to float32 round-off
        np.testing.assert_allclose(ds[m].values, ref[m].values, rtol=1e-6, equal_nan=True)
    assert (ds["load_seconds"].values > 0).all() and (ds["tokens_per_second"].values > 0).all()


def test_resume_skips_stored_and_records_failures(sweep, serial_run, tmp_path):
    root, folders, _ = sweep
    src = tmp_path / "ck"
    src.mkdir()
    for f in folders[:5]:
        shutil.copytree(f, src / f.name)
    out = tmp_path / "run.zarr"
    first = analyze(src, str(root / "probes.txt"), out, workers=0, fit_range=FIT, progress=False)
    assert first.analyzed == STEPS[:5]
    for f in folders[5:]:
        shutil.copytree(f, src / f.name)
    (src / "checkpoint-48" / "model.safetensors").write_bytes(b"not a safetensors file")
    second = analyze(src, str(root / "probes.txt"), out, workers=0, fit_range=FIT, progress=False)
    assert second.skipped == STEPS[:5]
    assert second.analyzed == [32, 64]
    assert list(second.failed) == [48]
    ds, ref = open_run(out), serial_run[1]
    assert list(ds["capture_step"].values) == STEPS
    assert list(ds["flag_failed"].values) == [0, 0, 0, 0, 0, 0, 1, 0]
    assert np.isnan(ds["rankme"].sel(capture_step=48).values).all()
    assert "48" in ds.attrs["checkpoint_errors"]
    keep = [s for s in STEPS if s != 48]
    np.testing.assert_allclose(  # float32 products here, float64 in serial_run (rankme_raw): see above
        ds["rankme"].sel(capture_step=keep).values, ref["rankme"].sel(capture_step=keep).values, rtol=1e-6
    )
    third = analyze(src, str(root / "probes.txt"), out, workers=0, fit_range=FIT, progress=False)
    assert third.analyzed == [] and third.skipped == STEPS


def test_bin_weights_load_with_weights_only(sweep, serial_run, tmp_path):
    root, folders, _ = sweep
    src = tmp_path / "ck"
    good, evil = src / "checkpoint-8", src / "checkpoint-16"
    shutil.copytree(folders[3], good)
    shutil.copytree(folders[4], evil)
    from safetensors.torch import load_file

    for folder in (good, evil):
        sd = load_file(folder / "model.safetensors")
        (folder / "model.safetensors").unlink()
        torch.save(sd, folder / "pytorch_model.bin")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"transformer.wte.weight": Payload()}, evil / "pytorch_model.bin")
    report = analyze(src, str(root / "probes.txt"), tmp_path / "run.zarr", workers=0, fit_range=FIT, progress=False)
    assert report.analyzed == [8] and list(report.failed) == [16]
    assert not marker.exists()  # the pickle payload never ran
    ds = open_run(tmp_path / "run.zarr")
    np.testing.assert_allclose(  # float32 products here, float64 in serial_run (rankme_raw): see above
        ds["rankme"].sel(capture_step=8).values, serial_run[1]["rankme"].sel(capture_step=8).values, rtol=1e-6
    )


def test_gradients_and_weights_match_per_sequence_reference(sweep, tmp_path):
    """Response-masked mean loss, gradient SVD statistics of every block matrix, weight spectra."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    _root, folders, texts = sweep
    pairs = [{"prompt": t[: len(t) // 2], "response": t[len(t) // 2 :]} for t in texts[:24]]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    src = tmp_path / "ck"
    shutil.copytree(folders[-1], src / "checkpoint-64")
    out = tmp_path / "run.zarr"
    report = analyze(
        src, str(path), out, workers=0, fit_range=FIT, gradients=True, weights=True, batch_size=8, progress=False
    )
    assert report.analyzed == [64]
    ds = open_run(out)

    tok = AutoTokenizer.from_pretrained(folders[-1])
    model = GPT2LMHeadModel.from_pretrained(folders[-1]).eval()
    seqs = []
    for p in pairs:
        pi = tok(p["prompt"])["input_ids"]
        ri = tok(p["response"], add_special_tokens=False)["input_ids"]
        seqs.append(((pi + ri)[:64], len(pi)))
    n_resp = sum(len(ids) - max(1, start) for ids, start in seqs)
    total = 0.0
    for ids, start in seqs:
        ids_t = torch.tensor([ids])
        logits = model(input_ids=ids_t).logits[0]
        nll = torch.nn.functional.cross_entropy(logits[:-1], ids_t[0, 1:], reduction="none")
        loss = nll[max(1, start) - 1 :].sum() / n_resp
        loss.backward()
        total += float(loss)
    assert float(ds["loss"].sel(step=64)) == pytest.approx(total, rel=1e-5)
    names = list(ds["matrix"].values)
    assert any("mlp.c_fc" in n for n in names) and any("mlp.c_proj" in n for n in names)
    params = dict(model.named_parameters())
    for name in names:
        s = torch.linalg.svdvals(params[name].grad.double()).numpy()
        row = ds.sel(capture_step=64, matrix=name)
        assert float(row["matrix_grad_nuclear"]) == pytest.approx(s.sum(), rel=1e-4)
        assert float(row["matrix_grad_spectral"]) == pytest.approx(s[0], rel=1e-4)
        assert float(row["matrix_grad_stable_rank"]) == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-4)
        assert float(row["matrix_grad_top_ratio"]) == pytest.approx(s[0] / s.sum(), rel=1e-4)
        w = torch.linalg.svdvals(params[name].detach().double()).numpy()
        assert float(row["matrix_weight_spectral"]) == pytest.approx(w[0], rel=1e-5)
        assert float(row["matrix_weight_stable_rank"]) == pytest.approx((w**2).sum() / w[0] ** 2, rel=1e-5)
        # WeightWatcher's norm metrics of phasescope's α (ww_layer_metrics, held equal to WeightWatcher in
        # test_spectra_esd_metrics, gives the norms; α here is the default clauset fit) and its MP fit
        ref = ww_layer_metrics(params[name].detach().float().numpy(), randomize=False)
        alpha = float(row["matrix_weight_alpha"])
        lam = w**2
        assert float(row["matrix_weight_log_norm"]) == pytest.approx(ref["log_norm"], rel=1e-5)
        assert float(row["matrix_weight_log_spectral_norm"]) == pytest.approx(ref["log_spectral_norm"], rel=1e-5)
        assert float(row["matrix_weight_alpha_weighted"]) == pytest.approx(alpha * np.log10(lam[0]), rel=1e-5)
        assert float(row["matrix_weight_log_alpha_norm"]) == pytest.approx(np.log10((lam**alpha).sum()), rel=1e-4)
        assert float(row["matrix_weight_mp_soft_rank"]) == pytest.approx(ref["mp_softrank"], rel=1e-4)
        assert float(row["matrix_weight_num_spikes"]) == ref["num_spikes"]
        assert float(row["matrix_weight_num_traps"]) >= 0


def test_live_and_offline_metrics_agree(sweep, tmp_path):
    """The same training run observed live (Observatory, fixed probe set) and analysed from its
    checkpoints gives the same metrics at the same steps."""
    from phasescope.probes import Observatory
    from phasescope.probes.offline.sources import ProbeTexts, tokenize
    from phasescope.probes.schedules import explicit
    from phasescope.testing.toy_checkpoints import kjv_tokenizer

    root, _, texts = sweep
    tok, _ = kjv_tokenizer()
    data = tokenize(ProbeTexts(texts), tok, 64)
    inputs = {"input_ids": torch.from_numpy(data.input_ids), "attention_mask": torch.from_numpy(data.attention_mask)}
    live_steps = STEPS[:-1]  # the last checkpoint is saved after the final update, with no step after it
    state = {}

    def on_backward(step, loss, model):
        if "obs" not in state:
            state["obs"] = Observatory(
                model,
                store=str(tmp_path / "live.zarr"),
                probes="auto",
                schedule=explicit(live_steps),
                probe_inputs=inputs,
                tokens="last",
                fit_range=FIT,
                matrices="none",
                strict=True,
            )
        state["obs"].step(step, loss=loss)

    train_checkpoints(tmp_path / "ck", STEPS, n_layer=2, n_embd=32, n_head=2, seq_len=32, on_backward=on_backward)
    state["obs"].close()
    analyze(
        tmp_path / "ck",
        str(root / "probes.txt"),
        tmp_path / "offline.zarr",
        workers=0,
        fit_range=FIT,
        max_length=64,
        progress=False,
    )
    live, off = open_run(tmp_path / "live.zarr"), open_run(tmp_path / "offline.zarr")
    assert list(live["capture_step"].values) == live_steps
    assert list(live["probe"].values) == list(off["probe"].values)
    for m in ("rankme", "alpha", "participation_ratio", "stable_rank"):
        np.testing.assert_allclose(off[m].sel(capture_step=live_steps).values, live[m].values, rtol=1e-5)


def test_all_tokens_match_reference(sweep, tmp_path):
    """tokens="all": every non-pad position of every sequence is a sample (final-layer states)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    root, folders, texts = sweep
    src = tmp_path / "ck"
    shutil.copytree(folders[4], src / "checkpoint-16")
    report = analyze(
        src,
        str(root / "probes.txt"),
        tmp_path / "run.zarr",
        workers=0,
        fit_range=FIT,
        tokens="all",
        probes=["final_norm"],
        batch_size=16,
        progress=False,
    )
    assert report.analyzed == [16]
    ds = open_run(tmp_path / "run.zarr")
    tok = AutoTokenizer.from_pretrained(folders[4])
    model = GPT2LMHeadModel.from_pretrained(folders[4]).eval()
    rows = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, truncation=True, max_length=64, return_tensors="pt")["input_ids"]
            rows.append(model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double().numpy())
    x = np.concatenate(rows)
    _lam, rankme, alpha, _ = _reference_metrics(x)
    row = ds.sel(capture_step=16, probe="final_norm")
    assert int(row["n_samples"]) == len(x)
    assert float(row["rankme"]) == pytest.approx(rankme, rel=1e-5)
    assert float(row["alpha"]) == pytest.approx(alpha, rel=1e-5)


def _reference_cka(x, y):
    """Linear CKA in feature space (Kornblith et al. 2019, eq. 5): no Gram matrices, any sample order."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_offline_cka_equals_reference_and_resume_does_not_invent_a_first(sweep, serial_run, tmp_path):
    root, folders, texts = sweep
    _, ds = serial_run
    states = [_reference_states(f, texts, -1) for f in folders]
    got_first = ds["cka_first"].sel(probe="final_norm").values
    got_prev = ds["cka_previous"].sel(probe="final_norm").values
    np.testing.assert_allclose(got_first, [_reference_cka(s, states[0]) for s in states], rtol=1e-5)
    assert np.isnan(got_prev[0])
    np.testing.assert_allclose(got_prev[1:], [_reference_cka(b, a) for a, b in itertools.pairwise(states)], rtol=1e-5)
    assert got_first[-1] < 0.99  # training moved the representation away from the initial one
    # A resumed sweep has no Gram of the first checkpoint: cka_first is NaN, not 1 at the resume point.
    src = tmp_path / "ck"
    src.mkdir()
    for f in folders[:3]:
        shutil.copytree(f, src / f.name)
    out = tmp_path / "resumed.zarr"
    analyze(src, str(root / "probes.txt"), out, workers=0, fit_range=FIT, progress=False)
    for f in folders[3:5]:
        shutil.copytree(f, src / f.name)
    analyze(src, str(root / "probes.txt"), out, workers=0, fit_range=FIT, progress=False)
    res = open_run(out)["cka_first"].sel(probe="final_norm").values
    np.testing.assert_allclose(res[:3], got_first[:3], rtol=1e-9)
    assert np.isnan(res[3:]).all()
