"""Schedules: exhaustive checks of every factory against a direct definition, JSON round trips."""

import itertools
import json
import math

import pytest

from phasescope.errors import PhasescopeError
from phasescope.probes import schedules as S

N = 5000


@pytest.mark.parametrize(
    ("k", "offset", "start", "stop"),
    [(1, 0, 0, None), (7, 0, 0, None), (10, 3, 0, None), (4, 0, 9, 41), (1000, 0, 0, None), (3, 5, 2, 3)],
)
def test_every_matches_definition(k, offset, start, stop):
    s = S.every(k, offset, start, stop)
    for step in range(N):
        want = (step - offset) % k == 0 and step >= start and (stop is None or step < stop)
        assert s(step) == want, step


def _log_reference(end, per_decade, start=1):
    pts = {0}
    i = 0
    while True:
        p = round(start * 10 ** (i / per_decade))
        if p > end:
            return pts
        pts.add(p)
        i += 1


@pytest.mark.parametrize("per_decade", [1, 3, 3.321928, 6, 10, 12, 20])
def test_log_spaced_bounded_and_unbounded_match_reference(per_decade):
    ref = _log_reference(N, per_decade)
    bounded = S.log_spaced(N, per_decade=per_decade)
    unbounded = S.log_spaced(per_decade=per_decade)
    assert set(bounded.steps(N + 1)) == ref
    assert set(unbounded.steps(N + 1)) == ref


def test_log_spaced_is_dense_early_sparse_late():
    steps = S.log_spaced(100_000, per_decade=10).steps(100_001)
    assert steps[:6] == [0, 1, 2, 3, 4, 5]
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert all(g2 >= g1 - 1 for g1, g2 in itertools.pairwise(gaps))  # non-decreasing up to rounding
    assert gaps[-1] > 1000 * gaps[0]
    assert 35 <= len(steps) <= 52  # ~10 per decade over 5 decades
    pow2 = S.log_spaced(512, per_decade=1 / math.log10(2)).steps(513)
    assert pow2 == [0] + [2**i for i in range(10)]  # Pythia's early checkpoints


def test_log_spaced_options():
    got = S.log_spaced(1000, per_decade=10, start=8, include_zero=False).steps(2000)
    assert got[0] == 8 and 0 not in got and max(got) <= 1000
    assert not S.log_spaced(50)(51)


def test_explicit_union_and_operators():
    assert S.explicit([3, 1, 4, 1, 5]).steps(10) == [1, 3, 4, 5]
    u = S.union(S.every(100), [7, 250], 9, lambda s: s == 11)
    for step in range(N):
        assert u(step) == (step % 100 == 0 or step in (7, 250, 9, 11))
    assert (S.every(10) | S.explicit([5])).steps(31) == [0, 5, 10, 20, 30]
    assert S.never().steps(100) == [] and S.always().steps(5) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "sched",
    [
        S.every(5, 1, 2, 90),
        S.log_spaced(3000, per_decade=12),
        S.log_spaced(per_decade=6),
        S.explicit([0, 2, 99]),
        S.union(S.every(100), S.log_spaced(400), [7]),
        S.never(),
        S.always(),
    ],
)
def test_describe_is_json_and_round_trips(sched):
    d2 = json.loads(json.dumps(sched.describe()))
    assert S.from_description(d2).steps(N) == sched.steps(N)


def test_plain_callables_are_described_not_rebuilt():
    def my_sched(step):
        return step % 3 == 0

    d = S.describe(my_sched)
    assert d["kind"] == "callable" and "my_sched" in d["name"]
    assert S.as_schedule(my_sched).steps(10) == [0, 3, 6, 9]
    with pytest.raises(PhasescopeError, match="callable"):
        S.from_description(d)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: S.every(0),
        lambda: S.every(2.5),
        lambda: S.every(True),
        lambda: S.log_spaced(per_decade=0),
        lambda: S.explicit([-1]),
        lambda: S.explicit("12"),
        lambda: S.as_schedule(object()),
        lambda: S.preset("deluxe"),
    ],
)
def test_bad_arguments_raise_clear_errors(bad):
    with pytest.raises(PhasescopeError):
        bad()


def test_presets_order_by_cost():
    counts = {}
    for name in ("norms", "economy", "business", "full"):
        p = S.preset(name)
        json.dumps(p.describe())
        counts[name] = sum(len(sch.steps(10_000)) for sch in (p.capture, p.matrices, p.updates))
    assert counts["norms"] == 0 < counts["economy"] < counts["business"] < counts["full"]
    assert S.as_schedule("economy").steps(10_000) == S.preset("economy").capture.steps(10_000)


def test_presets_read_the_statistic_registry():
    """Every registered statistic gets its steps from the schedule it names; a preset lists what it runs."""
    from phasescope.statistics import REGISTRY

    eco, norms, full = S.preset("economy"), S.preset("norms"), S.preset("full")
    for stat in REGISTRY.values():
        want = {
            "step": S.always(),
            "capture": eco.capture,
            "matrices": eco.matrices,
            "updates": eco.updates,
            "weights": S.never(),
            "diagnostics": S.never(),
            "distance": S.never(),
        }[stat.schedule]
        assert eco.schedule_for(stat).steps(2000) == want.steps(2000), stat.name
    assert {"spectral_geometry", "cka", "grad_norm", "matrix_svd", "update_ratio"} <= set(eco.statistics())
    # the weights' spectra, the curvature and the gradient noise cost seconds a call: "full" only, sparsely
    assert "distance_from_init" in full.statistics() and "distance_from_init" not in eco.statistics()
    for name in ("weight_spectra", "curvature", "gradient_noise"):
        assert name not in eco.statistics() and name in full.statistics()
        sparse = {0, 1, 3, 10, 32, 100, 316, 1000, 3162, *range(0, 10_000, 1000)}  # 2 per decade, every 1000
        assert full.schedule_for(name).steps(10_000) == sorted(sparse)
    assert norms.statistics() == ["grad_norm"]  # the cheapest preset: norms every step
    assert eco.describe()["statistics"] == eco.statistics()
