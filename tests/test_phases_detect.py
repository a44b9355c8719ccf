"""Phase detection on synthetic trajectories with known boundaries and labels (spectra/phases/)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from phasescope.errors import PhasescopeError
from phasescope.spectra.phases import (
    COLLAPSE,
    COMPRESSION,
    ENTROPY,
    INSUFFICIENT,
    MODEL,
    STABLE,
    PhaseResult,
    detect_phases,
    trajectory_phases,
)
from phasescope.spectra.phases.segmentation import segment


def log_steps(n: int, last: int, rng=None) -> np.ndarray:
    """Uneven, roughly log-spaced capture steps starting at 0 (jittered so spacing is irregular)."""
    raw = np.logspace(0, math.log10(last), n - 1)
    if rng is not None:
        raw = raw * np.exp(rng.uniform(-0.15, 0.15, len(raw)))
    return np.unique(np.r_[0, np.round(raw)]).astype(np.int64)


def piecewise(x: np.ndarray, knots: list[float], slopes: list[float], y0: float) -> np.ndarray:
    """Continuous piecewise-linear function of x with kinks at ``knots`` (in x units)."""
    y = np.full_like(x, y0, dtype=float)
    edges = [x[0], *list(knots), np.inf]
    for lo, hi, s in zip(edges[:-1], edges[1:], slopes):
        y += s * (np.clip(x, lo, hi) - lo)
    return y


def expected_index(steps: np.ndarray, boundary_step: float) -> int:
    """Index of the first capture at or after the true boundary."""
    return int(np.searchsorted(steps, boundary_step))


def three_phase(rng, n=40, noise=0.03, b1=40, b2=900, last=10_000):
    steps = log_steps(n, last, rng)
    x = np.log1p(steps)
    kn = [math.log1p(b1), math.log1p(b2)]
    ln_r = piecewise(x, kn, [-0.7, 0.5, -0.35], math.log(50)) + rng.normal(0, noise, len(x))
    alpha = piecewise(x, kn, [0.5, -0.3, 0.25], 1.2) + rng.normal(0, noise, len(x))
    return steps, np.exp(ln_r), alpha


@pytest.mark.parametrize("seed", range(6))
def test_three_phases_recovered(seed):
    rng = np.random.default_rng(seed)
    steps, rankme, alpha = three_phase(rng)
    segs = trajectory_phases(steps, rankme, alpha)
    assert [s.label for s in segs] == [COLLAPSE, ENTROPY, COMPRESSION]
    idx = {int(s): i for i, s in enumerate(steps)}
    for seg, true in zip(segs[1:], (40, 900)):
        assert abs(idx[seg.start_step] - expected_index(steps, true)) <= 1, (seg.start_step, true, steps)
    # slopes per ln(1+step) come back close to the generating ones
    assert segs[1].slope_rankme == pytest.approx(0.5, abs=0.1)
    assert segs[1].slope_alpha == pytest.approx(-0.3, abs=0.1)
    assert segs[2].slope_alpha == pytest.approx(0.25, abs=0.1)
    assert segs[0].start_step == 0 and segs[-1].open_end and segs[-1].end_step == steps[-1]
    assert all(0.5 < s.confidence <= 1 for s in segs)


def test_alpha_nan_at_some_steps_and_missing_entirely():
    rng = np.random.default_rng(11)
    steps, rankme, alpha = three_phase(rng)
    holey = alpha.copy()
    holey[[0, 1, 2, 17, 30]] = np.nan  # too few eigenvalues early on, a few gaps later
    for a in (holey, np.full_like(alpha, np.nan), None):
        segs = trajectory_phases(steps, rankme, a)
        assert [s.label for s in segs] == [COLLAPSE, ENTROPY, COMPRESSION]
    segs = trajectory_phases(steps, rankme, np.full_like(alpha, np.nan))
    assert all(math.isnan(s.slope_alpha) for s in segs)


def test_flat_trajectories_are_stable():
    rng = np.random.default_rng(3)
    steps = log_steps(30, 5000, rng)
    for noise in (0.0, 1e-6, 0.02):
        r = 30 * np.exp(rng.normal(0, noise, len(steps)))
        a = 1.1 + rng.normal(0, noise, len(steps))
        segs = trajectory_phases(steps, r, a)
        assert [s.label for s in segs] == [STABLE], noise
        assert segs[0].confidence > 0.5


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_short_is_insufficient(n):
    segs = trajectory_phases(np.arange(n) * 10, np.linspace(40, 5, n), np.ones(n))
    assert [s.label for s in segs] == [INSUFFICIENT]
    assert segs[0].n_points == n


@pytest.mark.parametrize("n", [3, 4, 5])
def test_short_trajectories_get_one_label(n):
    steps = log_steps(n, 100)
    falling = trajectory_phases(steps, np.exp(np.linspace(4, 2, len(steps))), np.linspace(1, 2, len(steps)))
    assert [s.label for s in falling] == [COLLAPSE]
    flat = trajectory_phases(steps, np.full(len(steps), 20.0), np.full(len(steps), 1.0))
    assert [s.label for s in flat] == [STABLE]


def test_nonfinite_rankme_captures_are_dropped():
    rng = np.random.default_rng(5)
    steps, rankme, alpha = three_phase(rng)
    rankme[[5, 25]] = np.nan
    rankme[12] = np.inf
    segs = trajectory_phases(steps, rankme, alpha)
    assert [s.label for s in segs] == [COLLAPSE, ENTROPY, COMPRESSION]
    assert sum(s.n_points for s in segs) == len(steps) - 3


# --- reference: exhaustive optimal partitioning must agree with PELT -------------------------------


def brute_force(x, Z, pen, min_size):
    """Minimise Σ_segments SSR(linear fit per channel) + pen·(#segments) over all segmentations."""
    n = len(x)

    def ssr(s, e):
        X = np.column_stack([np.ones(e - s), x[s:e]])
        tot = 0.0
        for c in range(Z.shape[1]):
            coef, *_ = np.linalg.lstsq(X, Z[s:e, c], rcond=None)
            tot += float(((Z[s:e, c] - X @ coef) ** 2).sum())
        return tot

    best = (ssr(0, n) + pen, [n])
    for k in range(1, n // min_size):
        for cut in itertools.combinations(range(min_size, n - min_size + 1), k):
            b = [*list(cut), n]
            if any(e - s < min_size for s, e in zip([0, *b[:-1]], b)):
                continue
            cost = sum(ssr(s, e) for s, e in zip([0, *b[:-1]], b)) + pen * (k + 1)
            if cost < best[0] - 1e-9:
                best = (cost, b)
    return best[1]


@pytest.mark.parametrize("seed", range(4))
def test_pelt_matches_exhaustive_search(seed):
    from phasescope.spectra.phases.segmentation import normalise

    rng = np.random.default_rng(100 + seed)
    steps = log_steps(14, 3000, rng)
    x = np.log1p(steps)
    knots = sorted(rng.uniform(x[3], x[-4], 2))
    Y = np.column_stack(
        [piecewise(x, knots, rng.normal(0, 1, 3), 0.0), piecewise(x, knots, rng.normal(0, 1, 3), 0.0)]
    ) + rng.normal(0, 0.05, (len(x), 2))
    pen = 10.0
    expected = brute_force(x, normalise(x, Y), pen, 3)
    assert segment(x, Y, penalty=pen, min_size=3) == expected
    assert segment(x, Y, penalty=pen, min_size=3, engine="ruptures") == expected


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_pelt_matches_ruptures(seed):
    rng = np.random.default_rng(seed)
    steps, rankme, alpha = three_phase(rng, n=[15, 40, 90][seed % 3], noise=[0.01, 0.1, 1.0][seed % 3])
    x, Y = np.log1p(steps), np.column_stack([np.log(rankme), alpha])
    for pen in (None, 1.0, 40.0):
        for min_size in (2, 3, 5):
            assert segment(x, Y, penalty=pen, min_size=min_size) == segment(
                x, Y, penalty=pen, min_size=min_size, engine="ruptures"
            )


def test_penalty_controls_number_of_segments():
    rng = np.random.default_rng(7)
    steps, rankme, alpha = three_phase(rng, noise=0.05)
    x, Y = np.log1p(steps), np.column_stack([np.log(rankme), alpha])
    counts = [len(segment(x, Y, penalty=p)) for p in (0.5, 5, 50, 1e6)]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] == 1 and counts[0] >= 3
    with pytest.raises(ValueError, match="penalty"):
        segment(x, Y, penalty=-1.0)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.01, 100), shift=st.floats(-5, 5), seed=st.integers(0, 50))
def test_invariant_to_rankme_scale_and_alpha_shift(scale, shift, seed):
    """ln RankMe and α are z-scored by their own noise: RankMe·c and α+k give the same phases."""
    rng = np.random.default_rng(seed)
    steps, rankme, alpha = three_phase(rng, n=30)
    a = [(s.label, s.start_step) for s in trajectory_phases(steps, rankme, alpha)]
    b = [(s.label, s.start_step) for s in trajectory_phases(steps, rankme * scale, alpha + shift)]
    assert a == b


# --- datasets: probes, model level, events, lags, errors ---------------------------------------


def run_dataset(n_probes=4, seed=0, lag=True):
    """A run-shaped Dataset: deeper probes start compression-seeking earlier (if ``lag``)."""
    rng = np.random.default_rng(seed)
    steps = log_steps(45, 20_000, rng)
    x = np.log1p(steps)
    R, A = [], []
    for j in range(n_probes):
        b2 = 4000 / (2.0**j) if lag else 1000
        kn = [math.log1p(30), math.log1p(b2)]
        R.append(np.exp(piecewise(x, kn, [-0.8, 0.5, -0.4], math.log(40 + 10 * j)) + rng.normal(0, 0.02, len(x))))
        A.append(piecewise(x, kn, [0.4, -0.3, 0.3], 1.0 + 0.1 * j) + rng.normal(0, 0.02, len(x)))
    all_steps = np.arange(steps[-1] + 1)
    return xr.Dataset(
        {
            "rankme": (("capture_step", "probe"), np.array(R).T),
            "alpha": (("capture_step", "probe"), np.array(A).T),
            "loss": (("step",), 10.0 / np.sqrt(1 + all_steps)),
        },
        coords={"capture_step": steps, "probe": [f"layer_{j}" for j in range(n_probes)], "step": all_steps},
    )


def test_dataset_probes_model_and_layer_lag():
    ds = run_dataset()
    res = detect_phases(ds)
    assert res.probes == [f"layer_{j}" for j in range(4)]
    for p in [*res.probes, MODEL]:
        assert res.labels(p) == [COLLAPSE, ENTROPY, COMPRESSION], p
    onsets = res.onsets(COMPRESSION)
    steps = ds.capture_step.values
    for j in range(4):
        assert abs(int(np.searchsorted(steps, onsets[f"layer_{j}"])) - expected_index(steps, 4000 / 2**j)) <= 1
    lag = next(lg for lg in res.lags() if lg["label"] == COMPRESSION)
    assert lag["first_probe"] == "layer_3" and lag["last_probe"] == "layer_0"
    assert lag["spearman_rho"] == pytest.approx(-1.0)
    assert "deeper layers first" in res.summary()
    assert res.summary().startswith("model: warmup collapse from step 0 to ")
    ev = res.events("layer_0")
    assert [(e.before, e.after) for e in ev] == [(COLLAPSE, ENTROPY), (ENTROPY, COMPRESSION)]
    seg = res.segments_for("layer_0")[0]
    assert seg.loss_start == pytest.approx(10.0) and seg.loss_end == pytest.approx(10 / math.sqrt(1 + seg.end_step))
    assert res.n_captures == len(steps) and res.last_capture_step == steps[-1]


def test_model_level_is_median_over_probes():
    ds = run_dataset(n_probes=3, lag=False)
    res = detect_phases(ds)
    med = trajectory_phases(
        ds.capture_step.values, np.exp(np.median(np.log(ds.rankme.values), axis=1)), np.median(ds.alpha.values, axis=1)
    )
    assert [(s.label, s.start_step, s.end_step) for s in res.segments_for(MODEL)] == [
        (s.label, s.start_step, s.end_step) for s in med
    ]


def test_round_trip_dataset_and_zarr(tmp_path):
    res = detect_phases(run_dataset(n_probes=2))
    back = PhaseResult.from_dataset(res.to_dataset())
    assert len(back.segments) == len(res.segments)
    for a, b in zip(back.to_records(), res.to_records()):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])), k
    assert back.summary() == res.summary() and back.n_captures == res.n_captures
    path = tmp_path / "phases.zarr"
    res.to_dataset().to_zarr(path, zarr_format=3, consolidated=False)
    disk = PhaseResult.from_dataset(xr.open_zarr(path, consolidated=False).load())
    assert [(s.probe, s.label, s.start_step) for s in disk.segments] == [
        (s.probe, s.label, s.start_step) for s in res.segments
    ]
    assert [e.to_dict() for e in disk.events()] == [e.to_dict() for e in res.events()]
    json_ = res.to_json()
    import json

    json.dumps(json_, allow_nan=False)


def test_errors_are_clear():
    ds = run_dataset(n_probes=2)
    with pytest.raises(PhasescopeError, match=r"xarray\.Dataset"):
        detect_phases({"rankme": 1})
    with pytest.raises(PhasescopeError, match="no 'rankme' variable"):
        detect_phases(ds.drop_vars("rankme"))
    with pytest.raises(PhasescopeError, match="must include 'rankme'"):
        detect_phases(ds, metrics=("alpha",))
    with pytest.raises(PhasescopeError, match="stable_rank"):
        detect_phases(ds, metrics=("rankme", "stable_rank"))
    with pytest.raises(PhasescopeError, match="unknown probe"):
        detect_phases(ds, probes=["nope"])


def test_empty_and_partly_nan_runs_do_not_crash():
    ds = run_dataset(n_probes=2)
    empty = ds.isel(capture_step=slice(0, 0))
    res = detect_phases(empty)
    assert res.labels(MODEL) == [INSUFFICIENT] and res.last_capture_step == -1
    nan = ds.copy(deep=True)
    nan["rankme"][:, 1] = np.nan
    res = detect_phases(nan)
    assert res.labels("layer_1") == [INSUFFICIENT]
    assert res.labels(MODEL) == [COLLAPSE, ENTROPY, COMPRESSION]
    one = detect_phases(ds.isel(probe=[0]))
    assert one.labels(MODEL) == one.labels("layer_0")


def test_flat_start_belongs_to_warmup_collapse():
    """lr warmup: RankMe is flat for the first steps, then collapses, then re-expands (as in the demo)."""
    rng = np.random.default_rng(21)
    steps = np.r_[np.arange(0, 10), log_steps(25, 3000, rng)[5:]]
    steps = np.unique(steps)
    x = np.log1p(steps)
    kn = [math.log1p(9), math.log1p(50)]
    ln_r = piecewise(x, kn, [-0.02, -2.0, 0.6], math.log(24)) + rng.normal(0, 0.02, len(x))
    segs = trajectory_phases(steps, np.exp(ln_r), None)
    assert [s.label for s in segs] == [COLLAPSE, ENTROPY]
    assert segs[0].start_step == 0
    assert abs(int(np.searchsorted(steps, segs[1].start_step)) - expected_index(steps, 50)) <= 1


def test_noisy_trough_is_not_a_stable_phase():
    """A few noisy captures at the bottom of the collapse join a neighbour instead of becoming 'stable'."""
    rng = np.random.default_rng(4)
    steps = log_steps(30, 2000, rng)
    x = np.log1p(steps)
    b = math.log1p(45)
    ln_r = piecewise(x, [b], [-1.5, 0.5], math.log(25)) + rng.normal(0, 0.02, len(x))
    trough = np.flatnonzero((steps > 45) & (steps < 90))[:3]
    ln_r[trough] += np.array([0.5, -0.2, 0.4])[: len(trough)]  # large, non-significant wiggle
    labels = [s.label for s in trajectory_phases(steps, np.exp(ln_r), None)]
    assert labels == [COLLAPSE, ENTROPY], labels
