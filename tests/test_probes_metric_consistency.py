"""Live (Observatory, Recorder) and offline (checkpoint capture) metrics follow one rule: spectrum_metrics
over the first min(n, d) eigenvalues. With fewer probe sequences than the model width (n = 16 < d = 64)
the trailing zero eigenvalues would otherwise shift RankMe by ε·log(1/ε) ≈ 1.6e-6 each."""

import numpy as np
import pytest
import torch

import phasescope
from phasescope.probes import Recorder
from phasescope.probes import schedules as S
from phasescope.spectra import METRICS, CovarianceAccumulator, spectrum_metrics
from phasescope.store import open_run

V, T, N, D = 96, 12, 16, 64
PROBE = "transformer.ln_f"


def _model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=D, n_head=2, vocab_size=V, n_positions=T, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).double().eval()  # float64: batchings agree to round-off


def _inputs():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, V, (N, T), generator=g)
    mask = torch.ones_like(ids)
    for i, length in enumerate(torch.randint(4, T + 1, (N,), generator=g)):
        mask[i, length:] = 0
        ids[i, length:] = 0
    return ids, mask


def _last_token_states(model, ids, mask) -> torch.Tensor:
    """Independent of phasescope's hooks: the final hidden state (after ln_f) at the last real token."""
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    return hs[torch.arange(N), mask.sum(1) - 1]


def _ref_rankme(x: np.ndarray) -> float:
    """Li et al. 2025 RankMe over the min(n, d) PCA components of x (numpy, not phasescope)."""
    ev = np.sort(np.linalg.eigvalsh(np.cov(x.T, ddof=1)))[::-1][: min(x.shape)]
    p = np.clip(ev, 0, None) / np.clip(ev, 0, None).sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.fixture(scope="module")
def reference():
    model = _model()
    ids, mask = _inputs()
    x = _last_token_states(model, ids, mask)
    spec = CovarianceAccumulator(D).update(x).compute()
    assert spec.n == N < D and spec.n_components == N
    return model, ids, mask, x, spec, spectrum_metrics(spec, fit_range="auto")  # the live default


def _assert_same(got: dict, want: dict, what: str) -> None:
    for k in (
        "rankme",
        "alpha",
        "alpha_r2",
        "participation_ratio",
        "stable_rank",
        "numerical_rank",
        "top1_variance",
        "top10_variance",
    ):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, err_msg=f"{what}: {k}")


def test_rule_matters_when_samples_fewer_than_width(reference):
    """The check below can fail: the length-d vector (old live rule) differs from min(n, d) well above 1e-9."""
    *_, x, spec, want = reference
    assert want["rankme"] == pytest.approx(_ref_rankme(x.numpy()), rel=1e-9)
    full = spec.eigenvalues.detach().cpu().numpy()  # length d: trailing zeros past n
    assert full.shape == (D,) and np.all(full[N:] == 0)
    old = spectrum_metrics(full, fit_range="auto")["rankme"]
    assert abs(old - want["rankme"]) / want["rankme"] > 3e-5  # ~(d − n)·1.6e-6 / ...


def test_observatory_live_equals_spectrum_metrics(reference, tmp_path):
    model, ids, mask, _, _, want = reference
    store = tmp_path / "live.zarr"
    with phasescope.Observatory(
        model,
        store=str(store),
        probes=[PROBE],
        schedule=S.explicit([0]),
        probe_inputs={"input_ids": ids, "attention_mask": mask},
        probe_batch_size=5,
        strict=True,
        write_interval=0.0,
    ) as obs:
        obs.step(0)
    ds = open_run(store)
    assert int(ds.n_samples.values[0, 0]) == N
    got = {k: float(ds[k].values[0, 0]) for k in METRICS if k in ds}
    _assert_same(got, want, "Observatory")


def test_recorder_live_equals_spectrum_metrics(reference, tmp_path):
    *_, x, _, want = reference
    store = tmp_path / "rec.zarr"
    with Recorder(str(store), write_interval=0.0) as rec:
        rec.record(0, activations={"final": x.numpy()}, grads={"w": np.ones((2, 2))})
        acc = CovarianceAccumulator(D).update(x[:7]).update(x[7:])  # a filled accumulator counts too
        rec.record(1, activations={"final": acc})
    ds = open_run(store)
    for step in (0, 1):
        got = {k: float(ds[k].sel(capture_step=step).values[0]) for k in METRICS if k in ds}
        _assert_same(got, want, f"Recorder step {step}")


def test_offline_capture_equals_live(reference):
    pytest.importorskip("nnsight")
    from phasescope.probes.offline.capture import CaptureSpec, capture_model
    from phasescope.probes.offline.sources import ProbeData

    model, ids, mask, _, _, want = reference
    data = ProbeData(ids.numpy(), mask.numpy(), np.zeros_like(mask.numpy()))
    spec = CaptureSpec(probes=(("final", PROBE),), dims=(D,), metrics=tuple(METRICS), max_rank=D, batch_size=5)
    res = capture_model(model, data, spec)
    row = _reduce(res, D)
    assert res.ok and int(row.n_samples[0]) == N
    _assert_same({k: float(v[0]) for k, v in row.metrics.items() if k in METRICS}, want, "offline")


def test_max_rank_cap_is_the_same_rule_live_and_offline(reference, tmp_path):
    """With max_rank = 8 (Li et al.'s cap, scaled down) both paths use the first min(n, d, 8) eigenvalues."""
    pytest.importorskip("nnsight")
    from phasescope.probes.offline.capture import CaptureSpec, capture_model
    from phasescope.probes.offline.sources import ProbeData

    model, ids, mask, _, spec, full = reference
    want = spectrum_metrics(spec, fit_range="auto", max_components=8)
    assert abs(want["rankme"] - full["rankme"]) > 1e-3  # the cap changes the numbers
    with phasescope.Observatory(
        model,
        store=str(tmp_path / "cap.zarr"),
        probes=[PROBE],
        schedule=S.explicit([0]),
        probe_inputs={"input_ids": ids, "attention_mask": mask},
        max_rank=8,
        strict=True,
        write_interval=0.0,
    ) as obs:
        obs.step(0)
    ds = open_run(tmp_path / "cap.zarr")
    _assert_same({k: float(ds[k].values[0, 0]) for k in METRICS if k in ds}, want, "Observatory max_rank=8")
    data = ProbeData(ids.numpy(), mask.numpy(), np.zeros_like(mask.numpy()))
    res = capture_model(
        model, data, CaptureSpec(probes=(("final", PROBE),), dims=(D,), metrics=tuple(METRICS), max_rank=8)
    )
    _assert_same(
        {k: float(v[0]) for k, v in _reduce(res, 8).metrics.items() if k in METRICS}, want, "offline max_rank=8"
    )


def _reduce(res, max_rank: int):
    """The offline result through the one reducer, as `phasescope analyze` stores it."""
    from phasescope.probes.reduce import Reducer, RunSpec

    return Reducer(RunSpec(("final",), (D,), max_rank)).reduce(res.capture)[1]
