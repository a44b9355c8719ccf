"""`phasescope phases RUN`: real run stores on disk (RunWriter), the stored `phases` group, staleness, errors."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from test_phases_detect import log_steps, piecewise

from phasescope import cli_phases
from phasescope.errors import PhasescopeError
from phasescope.spectra.phases import COLLAPSE, COMPRESSION, ENTROPY
from phasescope.store import RunWriter, open_group, open_run

PROBES = ["block.0", "block.1", "final_norm"]


def trajectories(steps: np.ndarray, seed: int = 0):
    """(rankme, alpha) of shape (captures, probes): collapse to step 40, entropy to 900, then compression."""
    rng = np.random.default_rng(seed)
    x = np.log1p(steps)
    kn = [math.log1p(40), math.log1p(900)]
    R = np.stack(
        [
            np.exp(piecewise(x, kn, [-0.7, 0.5, -0.35], math.log(40 + 5 * j)) + rng.normal(0, 0.02, len(x)))
            for j in range(len(PROBES))
        ],
        axis=1,
    )
    A = np.stack(
        [piecewise(x, kn, [0.5, -0.3, 0.25], 1.1 + 0.1 * j) + rng.normal(0, 0.02, len(x)) for j in range(len(PROBES))],
        axis=1,
    )
    return R, A


def write_run(path, steps, R, A, *, metrics=("rankme", "alpha"), resume=False, start=0):
    with RunWriter(path, probes=PROBES, params=["w"], metrics=list(metrics), max_rank=4, resume=resume) as w:
        for i, s in enumerate(steps):
            if i < start:
                continue
            w.append_step(
                int(s), {"loss": 5.0 / (1 + s) ** 0.2, "lr": 1e-3, "grad_norm": 1.0}, params={"grad_norm": np.ones(1)}
            )
            vals = {"rankme": R[i], "alpha": A[i]}
            w.append_capture(
                int(s),
                {m: vals[m] for m in metrics},
                eigenvalues=np.ones((len(PROBES), 4)),
                n_samples=np.full(len(PROBES), 64),
            )


def args(run, **kw):
    base = dict(
        run=run,
        json=False,
        penalty=None,
        metrics=("rankme", "alpha"),
        hmm=False,
        recompute=False,
        no_save=False,
        per_probe=False,
    )
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture
def run_path(tmp_path):
    steps = log_steps(36, 8000, np.random.default_rng(1))
    R, A = trajectories(steps)
    path = tmp_path / "run.zarr"
    write_run(path, steps, R, A)
    return path, steps, R, A


def test_prints_summary_and_table_and_stores_group(run_path, capsys):
    path, steps, _R, _A = run_path
    assert cli_phases.run(args(path)) == 0
    out, err = capsys.readouterr()
    assert out.startswith("model: warmup collapse from step 0 to ")
    assert "entropy-seeking from" in out and "compression-seeking from" in out and out.count("final_norm") == 3
    assert "computed, saved" in err
    g = open_group(path, "phases").load()
    assert int(g.attrs["n_captures"]) == len(steps)
    labels = [str(v) for v, p in zip(g["label"].values, g["probe"].values) if str(p) == "model"]
    assert labels == [COLLAPSE, ENTROPY, COMPRESSION]
    # the run itself is untouched
    assert int(open_run(path).sizes["capture_step"]) == len(steps)
    # a second call reuses the stored result
    assert cli_phases.run(args(path)) == 0
    out2, err2 = capsys.readouterr()
    assert out2 == out and "stored" in err2


def test_recomputed_when_the_run_grows(tmp_path, capsys):
    steps = log_steps(36, 8000, np.random.default_rng(1))
    R, A = trajectories(steps)
    path = tmp_path / "run.zarr"
    k = 20  # first only the collapse and entropy-seeking part
    write_run(path, steps[:k], R[:k], A[:k])
    res, status = cli_phases.phases_for_run(path)
    assert status == "computed, saved" and res.labels() == [COLLAPSE, ENTROPY] and res.n_captures == k
    assert cli_phases.phases_for_run(path)[1] == "stored"
    write_run(path, steps, R, A, resume=True, start=k)  # the run grows
    res, status = cli_phases.phases_for_run(path)
    assert status == "computed, saved" and res.n_captures == len(steps)
    assert res.labels() == [COLLAPSE, ENTROPY, COMPRESSION]
    assert int(open_group(path, "phases").attrs["n_captures"]) == len(steps)
    # different settings are not served from the stored result either
    one, status = cli_phases.phases_for_run(path, penalty=1e6)  # one piece: a single phase
    assert status == "computed, saved" and len(one.labels()) == 1
    assert cli_phases.phases_for_run(path, penalty=1e6)[1] == "stored"
    assert cli_phases.phases_for_run(path)[1] == "computed, saved"  # settings changed back
    assert cli_phases.phases_for_run(path, recompute=True, save=False)[1] == "computed"


def test_json_output(run_path, capsys):
    path, steps, *_ = run_path
    assert cli_phases.run(args(path, json=True, no_save=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "computed" and out["n_captures"] == len(steps)
    model = [s for s in out["segments"] if s["probe"] == "model"]
    assert [s["label"] for s in model] == [COLLAPSE, ENTROPY, COMPRESSION]
    assert [(e["before"], e["after"]) for e in out["events"] if e["probe"] == "model"] == [
        (COLLAPSE, ENTROPY),
        (ENTROPY, COMPRESSION),
    ]
    assert out["summary"].startswith("model: warmup collapse")
    with pytest.raises(PhasescopeError, match="no group 'phases'"):
        open_group(path, "phases")  # --no-save wrote nothing


def test_errors_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for bad in (tmp_path / "missing.zarr", tmp_path / "empty", tmp_path / "file.txt"):
        assert cli_phases.run(args(bad)) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    steps = log_steps(12, 500)
    R, A = trajectories(steps)
    norank = tmp_path / "norank.zarr"
    write_run(norank, steps, R, A, metrics=("alpha",))
    assert cli_phases.run(args(norank)) == 2
    err = capsys.readouterr().err
    assert "no 'rankme' variable" in err and err.count("\n") == 1


def test_real_cli_process(run_path):
    path, *_ = run_path
    res = subprocess.run(
        [sys.executable, "-m", "phasescope.cli", "phases", str(path), "--json", "--no-save"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["summary"].startswith("model: warmup collapse")
    bad = subprocess.run(
        [sys.executable, "-m", "phasescope.cli", "phases", str(path.parent / "nope.zarr")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


def test_explain_prints_the_rules_and_exits_0(capsys):
    from phasescope.cli import main
    from phasescope.spectra.phases import RULES, explain

    assert main(["phases", "--explain"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == explain().strip()
    for rule in RULES:
        assert rule.label in out
    assert "confidence = " in out and "erf" in out and "Minimum captures per phase: 3" in out
    assert main(["phases"]) == 2  # no run and no --explain: one line, exit 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--explain" in err


def test_each_segment_says_which_rule_decided_it(run_path, capsys):
    path, *_ = run_path
    assert cli_phases.run(args(path, json=True, no_save=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["min_captures"] == 3 and out["params"]["min_size"] == 3
    for seg in out["segments"]:
        assert seg["rule"].startswith(seg["label"].replace("collapse", "warmup collapse")), seg
        assert seg["n_fit"] >= 3 and 0 <= seg["confidence"] <= 1
    model = [s for s in out["segments"] if s["probe"] == "model"]
    assert all(s["probes_agree"] >= 0.5 for s in model)
    assert cli_phases.run(args(path, no_save=True)) == 0
    assert "phasescope phases --explain" in capsys.readouterr().out
