"""End to end: a shortened real demo run (KJV corpus, GPT-2 from a config) → Zarr store → xarray.

This trains for real (about a minute on one CPU thread) and checks real values: shapes, RankMe within
[1, d], and the warmup collapse of Li et al. 2025 after initialisation on every default probe.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

pytestmark = pytest.mark.slow

N_EMBD = 64
STEPS = 160


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo.zarr"
    cmd = [
        sys.executable,
        "-m",
        "phasescope.cli",
        "demo",
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--probe-size",
        "128",
        "--vocab-size",
        "2048",
        "--n-embd",
        str(N_EMBD),
        "--capture-every",
        "40",
        "--warmup",
        "50",
        "--no-progress",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout


def test_store_opens_with_plain_xarray(demo_run):
    out, _ = demo_run
    ds = xr.open_zarr(out, consolidated=False)
    for name in ("rankme", "alpha", "eigenvalues", "loss", "lr", "param_grad_norm"):
        assert name in ds, name
    assert ds["rankme"].dims == ("capture_step", "probe")
    assert ds["eigenvalues"].dims == ("capture_step", "probe", "rank")
    assert list(ds["probe"].values) == ["block.0", "block.1", "final_norm"]


def test_values_are_real(demo_run):
    from phasescope.store import open_run

    out, stdout = demo_run
    ds = open_run(out)
    assert ds.sizes["step"] == STEPS
    np.testing.assert_array_equal(ds["step"].values, np.arange(STEPS))
    steps = ds["capture_step"].values
    assert steps[0] == 0 and steps[-1] == STEPS - 1 and np.all(np.diff(steps) > 0)
    # Dense early: at least 10 captures in the first 50 steps.
    assert (steps < 50).sum() >= 10
    rk = ds["rankme"].values
    assert np.isfinite(rk).all()
    assert (rk >= 1).all() and (rk <= N_EMBD).all()
    loss = ds["loss"].values
    assert np.isfinite(loss).all() and loss[-10:].mean() < loss[:10].mean() - 1.0  # it learned
    grads = ds["param_grad_norm"].values
    assert grads.shape[1] == ds.sizes["param"] and (grads > 0).all()
    # Eigenvalues are descending, non-negative, and RankMe is recomputable from them.
    eig = ds["eigenvalues"].isel(capture_step=-1, probe=-1).values[:N_EMBD]
    assert (np.diff(eig) <= 1e-9 * eig[0]).all() and (eig >= -1e-9 * eig[0]).all()
    p = eig / eig.sum() + 1e-7
    assert float(ds["rankme"].isel(capture_step=-1, probe=-1).values) == pytest.approx(
        np.exp(-(p * np.log(p)).sum()), rel=1e-6
    )
    # The summary names the store.
    assert str(out.resolve()) in stdout


def test_collapse_after_init_on_every_probe(demo_run):
    from phasescope.store import open_run

    ds = open_run(demo_run[0])
    for probe in ds["probe"].values:
        rk = ds["rankme"].sel(probe=probe).values
        early = rk[ds["capture_step"].values <= 100]
        assert early.min() < 0.5 * rk[0], (probe, rk[0], early.min())


def test_metadata_describes_the_run(demo_run):
    from phasescope.store import open_run

    ds = open_run(demo_run[0])
    assert ds.attrs["model"] == "GPT2LMHeadModel"
    cfg = ds.attrs["model_config"]
    cfg = json.loads(cfg) if isinstance(cfg, str) else cfg
    assert cfg["n_embd"] == N_EMBD and cfg["n_layer"] == 2
    assert "King James" in ds.attrs["corpus"]
    # issue 21: the probe set and the schedule are the defaults, and the store says which
    demo = ds.attrs["demo_config"]
    demo = json.loads(demo) if isinstance(demo, str) else demo
    assert ds.attrs["probe_set"].startswith("mid-text") and demo["probes_from"] == "midtext"
    assert ds.attrs["lr_schedule"] == f"linear warmup over 50 steps, then {demo['schedule']}"
