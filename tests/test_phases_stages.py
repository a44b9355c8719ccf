"""Phases of a multi-stage run (obs.stage): each stage segmented and labelled on its own, the per-stage
table, and `phasescope phases` on a stored staged run."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from phasescope.spectra.phases import COMPRESSION, ENTROPY, MODEL, detect_phases, stage_summary, stage_table
from phasescope.spectra.phases.detect import stage_parts

PROBES = ["h.0", "h.1", "h.2"]


def _local_steps(n: int, last: int) -> np.ndarray:
    return np.unique(np.r_[0, np.round(np.logspace(0, math.log10(last), n - 1))]).astype(np.int64)


def _staged(noise=0.02, seed=0):
    """SFT (steps 0–999): ln RankMe rises, α falls over the stage's own log-time; RL (1000–1999): ln RankMe
    falls, α rises. Each stage's captures are log-spaced from its first step, as a stage's schedule is."""
    rng = np.random.default_rng(seed)
    local = _local_steps(24, 999)
    steps = np.r_[local, 1000 + local]
    t = np.log1p(np.r_[local, local])
    sign = np.r_[np.ones(local.size), -np.ones(local.size)]
    base = np.r_[np.full(local.size, math.log(20)), np.full(local.size, math.log(20) + 0.3 * math.log1p(999))]
    a0 = np.r_[np.full(local.size, 1.5), np.full(local.size, 1.5 - 0.15 * math.log1p(999))]
    ln_r = (base + sign * 0.3 * t)[:, None] + rng.normal(0, noise, (steps.size, len(PROBES)))
    alpha = (a0 - sign * 0.15 * t)[:, None] + rng.normal(0, noise, (steps.size, len(PROBES)))
    ds = xr.Dataset(
        {
            "rankme": (("capture_step", "probe"), np.exp(ln_r)),
            "alpha": (("capture_step", "probe"), alpha),
            "cka_stage": (("capture_step", "probe"), np.tile(np.linspace(1, 0.8, local.size), 2)[:, None] * np.ones(3)),
        },
        coords={"capture_step": steps, "probe": PROBES},
    )
    ds.attrs["stages"] = [
        {"name": "sft", "first_step": 0, "last_step": 999, "trainer": "SFTTrainer", "meta": {}},
        {"name": "rl", "first_step": 1000, "last_step": 1999, "trainer": "GRPOTrainer", "meta": {}},
    ]
    return ds


def write_staged(path, metrics=("rankme", "alpha", "cka_stage")):
    """`_staged` written to a real run store with RunWriter (its stages in the run's attributes)."""
    from phasescope.store import RunWriter

    src = _staged()
    metrics = list(metrics)
    with RunWriter(
        path, probes=PROBES, params=[], metrics=metrics, max_rank=2, attrs={"stages": src.attrs["stages"]}
    ) as w:
        for i, s in enumerate(src.capture_step.values):
            w.append_step(int(s), {"loss": 1.0 / (1 + i)})
            w.append_capture(int(s), {m: src[m].values[i] for m in metrics}, np.ones((3, 2)), [8, 8, 8])
    return path


def test_each_stage_is_segmented_and_labelled_on_its_own():
    ds = _staged()
    res = detect_phases(ds)
    for probe in [MODEL, *PROBES]:
        segs = res.segments_for(probe)
        assert [s.stage for s in segs] == sorted((s.stage for s in segs), key=["sft", "rl"].index)
        assert all(s.end_step < 1000 or s.start_step >= 1000 for s in segs)  # none spans the boundary
        assert {s.stage: s.label for s in segs if s.stage == "sft"}["sft"] == ENTROPY, probe
        assert [s.label for s in segs if s.stage == "rl"] == [COMPRESSION], probe
        first_rl = next(s for s in segs if s.stage == "rl")
        assert first_rl.start_step == 1000
    assert res.params["stages"] == ["sft", "rl"]
    # the same data read as one run: the boundary is not forced, and the stages' phases are lost
    plain = detect_phases(ds, stages=[])
    assert all(s.stage == "" for s in plain.segments)
    assert not any(s.start_step == 1000 for s in plain.segments_for(MODEL))


def test_stage_parts_put_captures_before_the_first_stage_apart():
    steps = np.array([0, 5, 10, 20, 30])
    parts = stage_parts(steps, [{"name": "a", "first_step": 10}, {"name": "b", "first_step": 25}])
    assert [(n, f, m.tolist()) for n, f, m in parts] == [
        ("", 0, [True, True, False, False, False]),
        ("a", 10, [False, False, True, True, False]),
        ("b", 25, [False, False, False, False, True]),
    ]
    assert [(n, f) for n, f, _ in stage_parts(steps, None)] == [("", 0)]


def test_stage_summary_reads_the_stage_phases_and_the_run():
    ds = _staged()
    res = detect_phases(ds)
    rows = stage_summary(ds, res)
    model = {r["stage"]: r for r in rows if r["probe"] == MODEL}
    assert model["sft"]["phases"] == [ENTROPY] and model["rl"]["phases"] == [COMPRESSION]
    assert model["sft"]["trainer"] == "SFTTrainer" and (model["rl"]["first_step"], model["rl"]["last_step"]) == (
        1000,
        1999,
    )
    assert model["sft"]["rankme_end"] > model["sft"]["rankme_start"]  # entropy-seeking: RankMe up
    assert (
        model["rl"]["rankme_end"] < model["rl"]["rankme_start"]
        and model["rl"]["alpha_end"] > model["rl"]["alpha_start"]
    )
    assert model["rl"]["cka_stage"] == 0.8  # the stage's last capture to its first
    text = stage_table(rows)
    assert "entropy-seeking" in text and "GRPOTrainer" in text and len(text.splitlines()) == 2 + 2 * 4


def test_phases_cli_prints_the_per_stage_table_of_a_stored_run(tmp_path):
    """`phasescope phases RUN` on a run stored with stages: the segments' stage column, the per-stage
    table, and --json's "stages"; a stage added later makes the stored result stale."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    path = write_staged(tmp_path / "staged.zarr")
    cmd = [str(Path(sys.executable).with_name("phasescope")), "phases", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "Per stage" in out
    table = out[out.index("Per stage") :]
    assert "sft" in table and "rl" in table and "compression-seeking" in table and "GRPOTrainer" in table
    js = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True).stdout)
    model = {r["stage"]: r for r in js["stages"] if r["probe"] == MODEL}
    assert model["sft"]["phases"] == [ENTROPY] and model["rl"]["phases"] == [COMPRESSION]
    assert all(s["stage"] in ("sft", "rl") for s in js["segments"])
