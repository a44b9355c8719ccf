"""`phasescope demo --stages --quick`: one real run through pretraining (a torch loop), SFT, DPO and RLVR
(TRL's trainers) on the King James Bible; its printed tables checked against the values stored in it."""

import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("trl")

import itertools

from phasescope.spectra.phases import MODEL, PhaseResult, stage_summary
from phasescope.store import open_group, open_run, run_stages

STAGES = ["pretrain", "sft", "dpo", "rlvr"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("stages") / "s.zarr"
    cmd = [sys.executable, "-m", "phasescope.cli", "demo", "--stages", "--quick", "--out", str(out), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout


def test_one_run_holds_the_four_stages_on_one_step_axis(quick):
    out, _ = quick
    ds = open_run(out)
    stages = run_stages(ds)
    assert [s["name"] for s in stages] == STAGES
    assert [s["trainer"] for s in stages] == ["torch loop", "SFTTrainer", "DPOTrainer", "GRPOTrainer"]
    steps = ds.step.values
    assert (np.diff(steps) == 1).all() and steps[0] == 0  # continuous across the four processes' trainers
    for a, b in itertools.pairwise(stages):
        assert b["first_step"] == a["last_step"] + 1
    assert ds.attrs["finished"] is True and len(ds.attrs["resumed"]) == 3
    # each trainer's own loss, DPO's margins and GRPO's reward at their stages' steps, NaN elsewhere
    dpo = slice(stages[2]["first_step"], stages[2]["last_step"])
    assert np.isfinite(ds.loss.values).all()
    assert np.isfinite(ds["dpo_reward_margin"].sel(step=dpo).values).all()
    assert np.isnan(ds["dpo_reward_margin"].sel(step=slice(0, stages[1]["last_step"])).values).all()
    assert np.isfinite(ds["reward_mean"].sel(step=slice(stages[3]["first_step"], None)).values).all()


def test_printed_table_is_the_stored_phases_and_forgetting(quick):
    out, stdout = quick
    ds = open_run(out)
    result = PhaseResult.from_dataset(open_group(out, "phases").load())  # written by the demo
    assert {s.stage for s in result.segments} == set(STAGES)
    rows = stage_summary(ds, result)
    for r in rows:
        line = next(
            ln
            for ln in stdout.splitlines()
            if re.match(rf"^{r['stage']}\s+{r['first_step']}–{r['last_step']}\s", ln)
            and re.search(rf"\s{re.escape(r['probe'])}\s", ln)
        )
        assert " → ".join(r["phases"])[:40] in line
        assert f"{r['rankme_start']:.1f}→{r['rankme_end']:.1f}" in line
        if r["probe"] == MODEL:  # the loss on each stage's set at the stage's ends: forgetting
            for name, (a, b) in r["set_loss"].items():
                assert f"{name} {a:.3f}→{b:.3f}" in line
    # the forgetting curves: the loss on every set at every capture, equal to what the table read
    loss = ds["set_loss"].transpose("capture_step", "loss_set").values
    assert list(ds["loss_set"].values) == ["pretrain", "sft"] and np.isfinite(loss).all()
    ev = open_group(out, "stage_eval")
    assert list(ev["stage"].values) == STAGES
    assert ((ev["accuracy"].values >= 0) & (ev["accuracy"].values <= 1)).all()
    assert ((ev["distinct_answers"].values >= 1) & (ev["distinct_answers"].values <= 8)).all()
    for stage in ("sft", "dpo", "rlvr"):
        assert re.search(rf"^\s+{stage}\s+expected .* measured: ln RankMe [+-]\d", stdout, re.M)
