"""Vision networks for real (issue 13): the presets of torchvision ResNets and ViTs, timm models and plain
``nn.Sequential`` stacks, and short training runs on real images — scikit-learn's handwritten digits
(1,797 8×8 images shipped with the package, no download) — with the Observatory attached."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import phasescope
from phasescope.store import open_run

torchvision = pytest.importorskip("torchvision")  # the vision extra; `make test` installs it
timm = pytest.importorskip("timm")
datasets = pytest.importorskip("sklearn.datasets")

from test_vision_inputs import hooked, rankme_ref  # noqa: E402

torch.set_num_threads(1)


def digits(size: int = 32, channels: int = 3):
    """The digits as float images in [0, 1], upsampled to ``size`` (bilinear) with ``channels`` copies."""
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, channels, 1, 1)
    return x, torch.tensor(d.target)


def small_vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=48, mlp_dim=96, num_classes=10
    )


def test_resnet_preset_reads_stem_stages_and_pool_with_channels_as_features(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    x, _ = digits()
    with phasescope.Observatory(model, store=str(tmp_path / "r.zarr"), probe_inputs=x[:80], schedule=[0]) as obs:
        obs.step(0)
    ds = open_run(tmp_path / "r.zarr")
    red = ds.attrs["probe_reductions"]
    assert list(red) == ["stem", "layer1", "layer2", "layer3", "layer4", "avgpool"]
    assert [red[p]["features"] for p in red] == [64, 64, 128, 256, 512, 512]
    assert red["layer2"]["output_shape"] == ["N", 128, 4, 4] and red["layer2"]["reduction"] == "spatial_mean"
    assert red["layer4"]["rank_cap"] == 79  # 80 images for 512 channels: capped, and said so
    got = dict(zip(ds["probe"].values.tolist(), ds["rankme"].values[0]))
    ref = rankme_ref(hooked(model, model.layer3, x[:80]).mean((2, 3)).numpy())
    assert abs(got["layer3"] - ref) < 1e-5 * ref
    assert ds.attrs["probes_spec"]["stem"] == "maxpool"
    blocks = phasescope.probes.resolve_probes(model, "blocks")
    assert [p.name for p in blocks] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]

    class Wrapped(torch.nn.Module):  # e.g. a LightningModule holding the network as self.net
        def __init__(self):
            super().__init__()
            self.net = model

    wrapped = {p.name: p.module_name for p in phasescope.probes.resolve_probes(Wrapped(), "auto")}
    assert wrapped == {
        "stem": "net.maxpool",
        **{f"layer{i}": f"net.layer{i}" for i in range(1, 5)},
        "avgpool": "net.avgpool",
    }


def test_vit_presets_read_the_class_token_torchvision_and_timm(tmp_path):
    """torchvision's encoder.layers (an nn.Sequential of named EncoderBlocks) and timm's blocks become
    block.{i} and final_norm; the token read is the class token (the one both models classify from)."""
    x, _ = digits()
    vit = small_vit()
    with phasescope.Observatory(vit, store=str(tmp_path / "v.zarr"), probe_inputs=x[:64], schedule=[0]) as obs:
        obs.step(0)
    ds = open_run(tmp_path / "v.zarr")
    assert ds.attrs["probes_spec"] == {
        "block.0": "encoder.layers.encoder_layer_0",
        "block.1": "encoder.layers.encoder_layer_1",
        "block.2": "encoder.layers.encoder_layer_2",
        "final_norm": "encoder.ln",
    }
    assert ds.attrs["tokens"]["mode"] == "first"
    red = ds.attrs["probe_reductions"]["final_norm"]
    assert red["reduction"] == "tokens:first" and red["output_shape"] == ["N", 17, 48] and red["features"] == 48
    ref = rankme_ref(hooked(vit, vit.encoder.ln, x[:64])[:, 0].numpy())
    assert abs(float(ds["rankme"].sel(probe="final_norm").values[0]) - ref) < 1e-5 * ref
    tv = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10)
    with phasescope.Observatory(tv, store=str(tmp_path / "t.zarr"), probe_inputs=x[:40], schedule=[0]) as obs:
        obs.step(0)
    ds = open_run(tmp_path / "t.zarr")
    assert ds.attrs["probes_spec"] == {"block.0": "blocks.0", "block.1": "blocks.1", "final_norm": "norm"}
    assert ds.attrs["tokens"]["mode"] == "first"
    assert phasescope.probes.vision.default_tokens(torch.nn.ModuleDict({"vit": tv})) == "first"  # wrapped too
    assert ds.attrs["probe_reductions"]["final_norm"]["features"] == 192


def test_timm_cnns_and_plain_stacks_have_presets(tmp_path):
    x, _ = digits()
    names = {}
    for label, model in (
        ("timm resnet", timm.create_model("resnet18", pretrained=False, num_classes=10)),
        ("convnext", timm.create_model("convnext_atto", pretrained=False, num_classes=10)),
    ):
        names[label] = [p.name for p in phasescope.probes.resolve_probes(model, "auto")]
    assert names["timm resnet"] == ["stem", "layer1", "layer2", "layer3", "layer4", "global_pool"]
    assert names["convnext"] == ["stages.0", "stages.1", "stages.2", "stages.3", "head.global_pool"]
    torch.manual_seed(0)
    stack = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 32 * 32, 32),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(32, 10),
    )
    with phasescope.Observatory(stack, store=str(tmp_path / "s.zarr"), probe_inputs=x[:50], schedule=[0]) as obs:
        obs.step(0)
    ds = open_run(tmp_path / "s.zarr")
    assert list(ds.attrs["probe_reductions"]) == ["1", "2", "4"]
    assert [v["features"] for v in ds.attrs["probe_reductions"].values()] == [32, 32, 10]


def train_on_digits(model, path, steps=30, batch=32, probe_n=128, **kw):
    """Cross-entropy on the digits with Adam; the Observatory on a fixed probe set of held-out digits."""
    x, y = digits()
    probe = x[-probe_n:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    with phasescope.Observatory(
        model, store=str(path), probe_inputs=probe, schedule=list(range(0, steps, 5)), write_interval=0, **kw
    ) as obs:
        for step in range(steps):
            idx = torch.randint(0, len(x) - probe_n, (batch,), generator=g)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            obs.step(step, loss=loss)
            opt.step()
            opt.zero_grad()
            losses.append(float(loss))
    return open_run(path), losses


@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_short_training_on_real_digits_records_finite_spectra_per_layer(tmp_path, arch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10) if arch == "resnet18" else small_vit()
    ds, losses = train_on_digits(model, tmp_path / f"{arch}.zarr")
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns
    assert ds.attrs["status"] == "finished" and ds.attrs["failures"] == {}
    assert list(ds["capture_step"].values) == [0, 5, 10, 15, 20, 25]
    rankme = ds["rankme"].values
    assert np.isfinite(rankme).all() and (rankme >= 1).all()
    feats = {p: v["features"] for p, v in ds.attrs["probe_reductions"].items()}
    for i, p in enumerate(ds["probe"].values.tolist()):
        assert (rankme[:, i] <= feats[p] + 1e-6).all(), p
        assert (ds["n_samples"].values[:, i] == 128).all()
    want = {
        "resnet18": {"stem": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512, "avgpool": 512},
        "vit": {"block.0": 48, "block.1": 48, "block.2": 48, "final_norm": 48},
    }[arch]
    assert feats == want
