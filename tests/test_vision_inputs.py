"""Any model: probe inputs of any kind, one named reduction per activation shape, honest spectra, and
the one-line errors of bad input (issue 13). Real modules, real Zarr stores; every spectrum is checked
against an independent numpy computation from activations captured by a plain forward hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import phasescope
from phasescope.dashboard.figures import quality_rows
from phasescope.dashboard.spectrum_figures import figure_spectrum
from phasescope.errors import PhasescopeError
from phasescope.store import open_run

torch.set_num_threads(1)


def rankme_ref(rows: np.ndarray) -> float:
    """RankMe of the covariance eigenvalues of centred rows (Li et al. 2025; ε = 1e-7, not renormalised),
    over the min(N, d) components a PCA of the data returns (the ε term counts per component)."""
    x = rows.astype(np.float64) - rows.astype(np.float64).mean(0)
    lam = np.clip(np.sort(np.linalg.eigvalsh(x.T @ x))[::-1][: min(x.shape)], 0, None)
    p = lam / lam.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def hooked(model, module, *args, **kwargs) -> torch.Tensor:
    """The output of ``module`` in an eval/no_grad forward, by a plain forward hook."""
    seen = []
    handle = module.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    model.eval()
    with torch.no_grad():
        model(*args, **kwargs)
    handle.remove()
    model.train()
    return seen[0]


class MLP(torch.nn.Module):
    def __init__(self, d_in=20, width=24):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.Tanh(), torch.nn.Linear(width, width))
        self.head = torch.nn.Linear(width, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


class TwoInputs(torch.nn.Module):
    """forward(x, scale): two positional tensors, both per sample."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.proj = torch.nn.Linear(20, 16)

    def forward(self, x, scale):
        return self.proj(x) * scale


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(12, 4)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def capture_once(model, path, **kw):
    """One probe-set capture at step 0 (no training): the stored run."""
    with phasescope.Observatory(model, store=str(path), schedule=[0], write_interval=0, **kw) as obs:
        obs.step(0)
    return open_run(path)


def test_every_kind_of_probe_input_gives_the_spectrum_of_the_same_samples(tmp_path):
    """A tensor, a tuple, a dict, a DataLoader of (x, y) batches and a list of dicts all hold the same 90
    samples: each run stores the same RankMe, equal to numpy's from the hooked activations."""
    model = MLP()
    x = torch.randn(90, 20, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(90, dtype=torch.long)
    ref = rankme_ref(hooked(model, model.body, x).numpy())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    kinds = {
        "tensor": x,
        "numpy": x.numpy(),
        "tuple": (x,),
        "dict": {"x": x},
        "loader": loader,
        "dicts": [{"x": x[:50], "labels": y[:50]}, {"x": x[50:], "labels": y[50:]}],
    }
    for name, inputs in kinds.items():
        ds = capture_once(model, tmp_path / f"{name}.zarr", probes=["body"], probe_inputs=inputs, probe_batch_size=40)
        assert int(ds["n_samples"].values[0, 0]) == 90, name
        assert abs(float(ds["rankme"].values[0, 0]) - ref) < 1e-6 * ref, (name, float(ds["rankme"].values[0, 0]), ref)
        assert ds.attrs["probe_reductions"]["body"]["reduction"] == "features"
        assert ds.attrs["probe_inputs"]["samples"] == 90 and not ds.attrs["probe_inputs"]["token_ids"]
    assert ds.attrs["probe_inputs"]["kind"] == "list of 2 batches"
    assert any("'labels'" in n for n in ds.attrs["probe_inputs"]["notes"])  # left out, and said so


def test_a_loader_of_image_label_pairs_passes_only_what_forward_takes(tmp_path):
    """(images, labels) batches from a DataLoader into forward(x): the labels are not passed (the note says
    so), and two positional inputs reach forward(x, scale) as given."""
    model = TwoInputs()
    g = torch.Generator().manual_seed(4)
    x, scale = torch.randn(40, 20, generator=g), torch.rand(40, 1, generator=g) + 0.5
    ds = capture_once(model, tmp_path / "two.zarr", probes=["proj"], probe_inputs=(x, scale))
    assert abs(float(ds["rankme"].values[0, 0]) - rankme_ref(hooked(model, model.proj, x, scale).numpy())) < 1e-6 * 16
    cnn = SmallCNN()
    imgs = torch.randn(30, 3, 6, 6, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(imgs, torch.zeros(30)), batch_size=16)
    ds = capture_once(cnn, tmp_path / "pairs.zarr", probes=["conv"], probe_inputs=loader)
    assert ds.attrs["probe_inputs"]["kind"] == "DataLoader of 2 batches"
    assert "elements 1…1 of each batch not passed" in ds.attrs["probe_inputs"]["notes"][0]
    ref = rankme_ref(hooked(cnn, cnn.conv, imgs).mean((2, 3)).numpy())
    assert abs(float(ds["rankme"].values[0, 0]) - ref) < 1e-6 * ref


def test_conv_maps_are_read_by_channels_spatial_mean_or_sampled_positions(tmp_path):
    """(N, C, H, W) → C features: the spatial mean by default; ``positions`` takes every (image, pixel) as a
    sample, capped and seeded like tokens="all". Both equal numpy on the hooked map; the reduction is stored."""
    cnn = SmallCNN()
    imgs = torch.randn(24, 3, 5, 5, generator=torch.Generator().manual_seed(5))
    h = hooked(cnn, cnn.conv, imgs)  # (24, 12, 5, 5)
    ds = capture_once(cnn, tmp_path / "mean.zarr", probes=["conv", "pool"], probe_inputs=imgs)
    red = ds.attrs["probe_reductions"]
    assert red["conv"] == {
        "reduction": "spatial_mean",
        "source": "output",
        "output_shape": ["N", 12, 5, 5],
        "features": 12,
        "samples": 24,
        "rank_cap": 12,
    }
    assert red["pool"]["features"] == 12 and red["pool"]["output_shape"] == ["N", 12, 1, 1]
    got = dict(zip(ds["probe"].values.tolist(), ds["rankme"].values[0]))
    assert abs(got["conv"] - rankme_ref(h.mean((2, 3)).numpy())) < 1e-6 * got["conv"]
    every = capture_once(
        cnn, tmp_path / "all.zarr", probes=["conv"], probe_inputs=imgs, reduction="positions", max_tokens=None
    )
    assert int(every["n_samples"].values[0, 0]) == 24 * 25
    pixels = h.permute(0, 2, 3, 1).reshape(-1, 12).numpy()
    assert abs(float(every["rankme"].values[0, 0]) - rankme_ref(pixels)) < 1e-6 * 12
    capped = [
        capture_once(
            cnn,
            tmp_path / f"cap{i}.zarr",
            probes=["conv"],
            probe_inputs=imgs,
            reduction={"con*": "positions"},
            max_tokens=100,
        )
        for i in range(2)
    ]
    assert int(capped[0]["n_samples"].values[0, 0]) == 100
    assert capped[0]["rankme"].values[0, 0] == capped[1]["rankme"].values[0, 0]  # seeded: the same pixels


def test_honest_spectra_cap_is_recorded_and_flagged_in_data_quality(tmp_path):
    """32 samples for a 64-wide layer give at most 31 eigenvalues: the cap is stored per probe and the
    data-quality table says so (amber), in probe-set and in-flight capture alike."""
    model = MLP(width=64)
    x = torch.randn(32, 20, generator=torch.Generator().manual_seed(6))
    ds = capture_once(model, tmp_path / "cap.zarr", probes=["body"], probe_inputs=x)
    assert ds.attrs["probe_reductions"]["body"]["rank_cap"] == 31
    eig = ds["eigenvalues"].values[0, 0]
    assert np.sum(eig > 1e-6 * eig[0]) == 31
    rows = {r["check"]: r for r in quality_rows(ds)}
    cap = rows["spectrum capped by samples"]
    assert cap["status"] == "warn" and "body: 32 samples for 64 features (at most 31 eigenvalues)" in cap["value"]
    path = tmp_path / "inflight.zarr"
    with phasescope.Observatory(model, store=str(path), probes=["body"], schedule=[0, 1], write_interval=0) as obs:
        for step in range(2):
            model(x).sum().backward()
            obs.step(step)
    ds = open_run(path)
    assert ds.attrs["capture_mode"] == "in_flight"
    assert ds.attrs["probe_reductions"]["body"]["features"] == 64
    assert (
        "body: 32 samples for 64 features"
        in {r["check"]: r for r in quality_rows(ds)}["spectrum capped by samples"]["value"]
    )
    sub = figure_spectrum(ds, "body", 0).layout.title.text  # and the spectrum explorer says it
    assert "read by features of N×64 → 64 features · 32 samples (spectrum capped at 31 eigenvalues)" in sub
    wide = capture_once(model, tmp_path / "wide.zarr", probes=["body"], probe_inputs=torch.randn(100, 20))
    assert "spectrum capped by samples" not in {r["check"] for r in quality_rows(wide)}


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("float_ids", r"input_ids'\] must hold integers"),
        ("mismatched", r"disagree on the number of samples \(\[0\]: 10, \[1\]: 7\)"),
        ("empty_loader", r"yielded no batches"),
        ("unknown_keys", r"keys 'image', 'target' are not parameters of MLP.forward\(x\)"),
        ("one_sample", r"hold 1 sample\(s\); a covariance spectrum needs at least 2"),
        ("never_called", r"probe\(s\) unused did not run during the probe forward pass"),
        ("one_feature", r"probe 'head.0' has 1 feature\(s\)"),
        ("bad_shape", r"probe 'conv': cannot read an output of shape \(N, 12, 6, 6\) with reduction 'features'"),
        ("bad_reduction", r"reduction must be one of auto, features, tokens, spatial_mean, positions"),
    ],
)
def test_bad_input_gets_one_line_naming_the_problem_and_the_fix(tmp_path, case, match):
    mlp, cnn = MLP(), SmallCNN()
    x = torch.randn(10, 20)
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:0]), batch_size=4)

    class Unused(MLP):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Linear(3, 3)

    class OneOut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Sequential(torch.nn.Linear(20, 1))

        def forward(self, x):
            return self.head(x)

    build = {
        "float_ids": lambda: dict(model=mlp, probe_inputs={"input_ids": torch.rand(4, 5)}),
        "mismatched": lambda: dict(model=TwoInputs(), probes=["proj"], probe_inputs=(x, torch.ones(7, 1))),
        "empty_loader": lambda: dict(model=mlp, probe_inputs=empty),
        "unknown_keys": lambda: dict(model=mlp, probe_inputs={"image": x, "target": x}),
        "one_sample": lambda: dict(model=mlp, probe_inputs=x[:1]),
        "never_called": lambda: dict(model=Unused(), probes=["body", "unused"], probe_inputs=x),
        "one_feature": lambda: dict(model=OneOut(), probes=["head.0"], probe_inputs=x),
        "bad_shape": lambda: dict(
            model=cnn, probes=["conv"], probe_inputs=torch.randn(4, 3, 6, 6), reduction="features"
        ),
        "bad_reduction": lambda: dict(
            model=cnn, probes=["conv"], probe_inputs=torch.randn(4, 3, 6, 6), reduction="pixels"
        ),
    }[case]()
    model = build.pop("model")
    build.setdefault("probes", ["body"])
    with pytest.raises(PhasescopeError, match=match) as err:
        phasescope.Observatory(model, store=str(tmp_path / "bad.zarr"), **build)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad.zarr").exists() or case in ("never_called", "one_feature", "bad_shape")


def test_in_flight_bad_probes_raise_at_the_first_capture(tmp_path):
    """In flight the outputs are first seen in the training forward: a probe that never runs, or one sample
    per capture, is raised at that step — one line — never left to the store's counters."""

    class Unused(MLP):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Linear(3, 3)

    for model, probes, n, match in (
        (Unused(), ["body", "unused"], 8, r"unused did not run during the training"),
        (MLP(), ["body"], 1, r"body \(1\) got fewer than 2 samples"),
    ):
        obs = phasescope.Observatory(model, store=str(tmp_path / f"f{n}.zarr"), probes=probes, schedule=[0])
        model(torch.randn(n, 20)).sum().backward()
        with pytest.raises(PhasescopeError, match=match):
            obs.step(0)
        obs.close()


def test_model_outputs_and_tuples_are_read_at_their_hidden_state(tmp_path):
    """A probe on a Hugging Face sub-model reads its ModelOutput's last_hidden_state (at the last token, as
    for every causal LM); an attention module's (output, weights) tuple is read at its first element."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=12, bos_token_id=0, eos_token_id=0)
    )
    ids = torch.randint(0, 64, (20, 12), generator=torch.Generator().manual_seed(7))
    ds = capture_once(
        lm,
        tmp_path / "hf.zarr",
        probes={"trunk": "transformer", "attn0": "transformer.h.0.attn"},
        probe_inputs={"input_ids": ids},
    )
    red = ds.attrs["probe_reductions"]
    assert red["trunk"]["source"] == "last_hidden_state" and red["trunk"]["reduction"] == "tokens:last"
    assert red["attn0"]["source"] == "output[0]" and red["attn0"]["output_shape"] == ["N", 12, 32]
    assert ds.attrs["probe_inputs"]["token_ids"] is True
    lm.eval()
    with torch.no_grad():
        hidden = lm.transformer(input_ids=ids).last_hidden_state[:, -1]
    assert abs(float(ds["rankme"].sel(probe="trunk").values[0]) - rankme_ref(hidden.numpy())) < 1e-5 * 32


def test_review_cases_keyword_only_mask_wrappers_batches_lists_and_dtypes(tmp_path):
    """forward(input_ids, *, attention_mask) still gets the mask; a DataParallel wrapper's forward(*args)
    is seen through, so (images, labels) passes images only; a list of same-shaped tensors is a list of
    batches (list(loader)), not positional arguments; numpy's float64 reaches a float32 model as float32."""
    from phasescope.probes.inputs import build_probe_inputs

    class KeywordMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 8)

        def forward(self, input_ids, *, attention_mask=None):
            return self.emb(input_ids) * attention_mask[..., None]

    ids, mask = torch.randint(0, 10, (6, 5)), torch.ones(6, 5, dtype=torch.long)
    got = build_probe_inputs({"input_ids": ids, "attention_mask": mask}, KeywordMask(), "cpu")
    assert "attention_mask" in got.batches[0].kwargs
    cnn = SmallCNN()
    pairs = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 3, 4, 4), torch.zeros(8)), batch_size=4
    )
    wrapped = build_probe_inputs(pairs, torch.nn.DataParallel(cnn), "cpu")
    assert all(len(b.args) == 1 for b in wrapped.batches)
    chunks = list(torch.utils.data.DataLoader(torch.randn(12, 3, 4, 4), batch_size=4))
    listed = build_probe_inputs(chunks, cnn, "cpu")
    assert listed.n == 12 and len(listed.batches) == 3 and listed.kind == "list of 3 batches"
    x64 = np.random.default_rng(0).normal(size=(10, 20))
    cast = build_probe_inputs(x64, MLP(), "cpu")
    assert cast.batches[0].args[0].dtype == torch.float32
    assert cast.notes == ["floating inputs cast from float64 to the model's float32"]


def test_a_token_models_4d_output_is_not_guessed_as_a_conv_map(tmp_path):
    """(batch, tokens, heads, head_dim) from a token model must not be read as channels = tokens."""

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 8)
            self.split = torch.nn.Unflatten(-1, (2, 4))

        def forward(self, input_ids):
            return self.split(self.emb(input_ids))

    ids = torch.randint(0, 10, (6, 5))
    with pytest.raises(PhasescopeError, match=r"a token model's output of shape \(N, 5, 2, 4\) is not \(N, T, d\)"):
        phasescope.Observatory(Heads(), store=str(tmp_path / "h.zarr"), probes=["split"], probe_inputs=ids)
    ds = capture_once(Heads(), tmp_path / "ok.zarr", probes=["emb"], probe_inputs=ids)
    assert ds.attrs["probe_reductions"]["emb"]["reduction"] == "tokens:last"


def test_padding_forward_on_a_rank_without_batches(tmp_path):
    """FSDP pads every rank to as many probe forwards; a rank whose shard holds no batch (5 batches on
    4 ranks... here 3 on 4) must still run them with a sampled reduction's plans."""
    from phasescope.probes import distributed as D
    from phasescope.probes.capture import ProbeSet
    from phasescope.probes.inputs import build_probe_inputs
    from phasescope.probes.registry import resolve_probes
    from phasescope.probes.tokens import TokenSelection

    cnn = SmallCNN()
    inputs = build_probe_inputs(torch.randn(9, 3, 4, 4), cnn, "cpu", batch_size=3)
    ps = ProbeSet(cnn, resolve_probes(cnn, ["conv"]), inputs, TokenSelection("last", 20, 0), "positions")
    ps.discover_dims()
    pad = ps.batches[0].head(1)
    D.shard_probe_set(ps, rank=3, world=4)
    assert ps.batches == [] and ps.plans == []
    ps.padding_forward(pad)  # no IndexError
