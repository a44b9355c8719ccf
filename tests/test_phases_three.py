"""All three phases of Li et al. 2025 in one real run: `phasescope demo --preset three-phases` (issue 15).

A 2-layer GPT-2 with d = 16, built from a config, pretrained for 12,000 steps on the synthetic Zipfian
language of phasescope.zipf (2,048 tokens, |V|/d = 128, fresh text every step), observed by the
Observatory. On the final norm (Li et al.'s probe) the labeller must find warmup collapse, then
entropy-seeking, then compression-seeking, and the stored values must say the same: RankMe falls to a
minimum, rises to a peak, then falls by more than 10 % while α rises. About six minutes on one thread.
"""

from __future__ import annotations

import numpy as np
import pytest

from phasescope.spectra.phases import COLLAPSE, COMPRESSION, ENTROPY, detect_phases

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from phasescope.cli import main

    out = tmp_path_factory.mktemp("runs") / "three.zarr"
    assert main(["demo", "--preset", "three-phases", "--out", str(out), "--no-progress"]) == 0
    return out


def test_final_norm_shows_collapse_entropy_then_compression(run):
    from phasescope.store import open_run

    ds = open_run(run, lazy=False)
    res = detect_phases(ds)
    labels = res.labels("final_norm")
    assert labels[:3] == [COLLAPSE, ENTROPY, COMPRESSION], res.table()
    _collapse, entropy, compression = res.segments_for("final_norm")[:3]
    # the stored values, not the labeller's fits: a minimum, a peak, then consolidation
    steps = ds["capture_step"].values
    rk = ds["rankme"].sel(probe="final_norm").values
    al = ds["alpha"].sel(probe="final_norm").values
    i_low = int(np.searchsorted(steps, entropy.start_step))
    i_peak = int(np.searchsorted(steps, compression.start_step))
    assert rk[i_low] < 0.5 * rk[0]  # warmup collapse
    assert rk[i_peak] > 2 * rk[i_low] and al[i_peak] < al[i_low]  # entropy-seeking: RankMe up, α down
    assert rk[-1] < 0.9 * rk[i_peak] and al[-1] > al[i_peak] + 0.1  # compression: RankMe down, α up
    assert compression.slope_rankme < 0 < compression.slope_alpha and compression.confidence > 0.5
    assert steps[i_peak] < 2000 and steps[-1] == 11_999


def test_the_cli_names_the_third_phase(run, capsys):
    from phasescope.cli import main

    assert main(["phases", str(run)]) == 0
    out = capsys.readouterr().out
    final = [ln for ln in out.splitlines() if ln.startswith("final_norm")]
    assert [ln.split()[1] for ln in final][:3] == ["collapse", "entropy-seeking", "compression-seeking"], out
