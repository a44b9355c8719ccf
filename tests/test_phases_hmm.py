"""The optional Gaussian-HMM cross-check of phase detection (spectra/phases/hmm.py)."""

import math

import numpy as np
import pytest

from phasescope.spectra.phases import COLLAPSE, COMPRESSION, ENTROPY, detect_phases
from phasescope.spectra.phases.hmm import hmm_phases, n_params

pytest.importorskip("hmmlearn")

from test_phases_detect import run_dataset


def test_hmm_agrees_with_pelt_on_three_phases():
    res = detect_phases(run_dataset(seed=2), hmm=True)
    h = res.hmm
    assert "error" not in h, h
    labels = [s["label"] for s in h["segments"]]
    assert labels == [COLLAPSE, ENTROPY, COMPRESSION]
    assert h["agreement"] >= 0.8
    assert h["n_states"] == min(h["bic"], key=h["bic"].get) and h["n_states"] >= 3
    # the collapse/entropy boundary is the same capture or the next one in both methods
    steps = h["capture_steps"]
    pelt_b = res.segments_for("model")[1].start_step
    assert abs(steps.index(h["segments"][1]["start_step"]) - steps.index(pelt_b)) <= 1


def test_hmm_parameter_count_and_short_runs():
    # start probs (K-1) + transitions K(K-1) + diagonal means and variances 2KD
    assert n_params(3, 2) == 2 + 6 + 12
    short = {"rankme": np.exp(np.linspace(3, 1, 5))[:, None], "alpha": np.ones((5, 1))}
    out = hmm_phases(np.arange(5), short, ["p"])
    assert "error" in out and "8" in out["error"]


def test_hmm_survives_the_round_trip():
    from phasescope.spectra.phases import PhaseResult

    res = detect_phases(run_dataset(n_probes=2, seed=1), hmm=True)
    back = PhaseResult.from_dataset(res.to_dataset())
    assert back.hmm["segments"] == res.hmm["segments"] and math.isclose(back.hmm["agreement"], res.hmm["agreement"])
