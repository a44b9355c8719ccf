"""`analyze --workers auto`: this process unless a Dask LocalCluster pays off (a pure rule, any core count),
and the choice is printed and recorded in the run."""

from __future__ import annotations

import pytest

from phasescope.cli import main
from phasescope.probes.offline.workers import CLUSTER_STARTUP_S, choose_workers, needs_measurement


@pytest.mark.parametrize(("n", "seconds"), [(4, 1.2), (32, 1.2), (1000, 600.0)])
def test_one_core_never_starts_a_cluster(n, seconds):
    choice = choose_workers(n, seconds, 1)
    assert choice.workers == 0 and "1 core(s)" in choice.reason
    assert not needs_measurement(n, 1)  # decided without timing a checkpoint


def test_two_cores_start_a_cluster_only_for_a_sweep_of_minutes():
    """Measured on 2 quiet cores: a warm 2-worker cluster is 1.6x faster than this process, after ~8-20 s
    of start-up; so 4 or 32 one-second checkpoints stay here, 1,000 of them get both cores."""
    assert choose_workers(4, 1.2, 2).workers == 0 and choose_workers(32, 1.2, 2).workers == 0
    assert choose_workers(1000, 1.0, 2).workers == 2


@pytest.mark.parametrize("cores", [2, 4, 16, 64])
def test_short_sweeps_stay_in_process_on_many_cores(cores):
    """The issue's case: 4 checkpoints of ~1 s each cost far less than a cluster's start-up."""
    assert needs_measurement(4, cores)
    choice = choose_workers(4, 1.2, cores)
    assert choice.workers == 0
    assert "4 checkpoints x 1.2 s" in choice.reason and f"~{CLUSTER_STARTUP_S:.0f} s start-up" in choice.reason


@pytest.mark.parametrize(
    ("n", "seconds", "cores", "workers"),
    [
        (100, 1.2, 16, 16),  # long sweep of small checkpoints: one worker per core
        (40, 2.5, 4, 4),
        (3, 60.0, 16, 3),  # few, expensive checkpoints: one worker each
    ],
)
def test_long_sweeps_get_a_cluster_on_many_cores(n, seconds, cores, workers):
    choice = choose_workers(n, seconds, cores)
    assert choice.workers == workers, choice.reason
    assert choice.describe().startswith(f"workers: {workers} Dask worker(s) (auto: {n} checkpoints")


def test_crossover_grows_with_fewer_cores():
    """The smallest sweep of 1-s checkpoints that gets a cluster: shorter with more cores."""

    def crossover(cores):
        return next(n for n in range(2, 10_000) if choose_workers(n, 1.0, cores).workers)

    assert crossover(64) <= crossover(16) < crossover(4)


def test_accelerator_memory_and_single_checkpoint_stay_in_process():
    assert choose_workers(500, 30.0, 16, device="cuda").workers == 0
    assert not needs_measurement(500, 16, device="cuda")
    assert choose_workers(1, 600.0, 16).workers == 0
    fits_one = choose_workers(500, 30.0, 16, max_workers=1)
    assert fits_one.workers == 0 and "memory" in fits_one.reason
    assert choose_workers(500, 30.0, 16, max_workers=4).workers == 4
    with pytest.raises(ValueError, match="per-checkpoint time is needed"):
        choose_workers(500, None, 16)  # a cluster could pay off: the rule needs a checkpoint's time


def _analyze(sweep, out, *extra: str) -> int:
    """`phasescope analyze` of the conftest's tiny sweep into ``out``."""
    args = ["analyze", str(sweep / "ck"), "--text", str(sweep / "p.txt"), "--out", str(out), "--no-progress"]
    return main([*args, "--fit-range", "2,12", *extra])


def test_auto_choice_is_printed_and_recorded(tiny_sweep, capsys):
    from phasescope.store import open_run

    out = tiny_sweep / "auto.zarr"
    assert _analyze(tiny_sweep, out) == 0
    lines = capsys.readouterr().out.splitlines()
    chosen = [ln for ln in lines if ln.startswith("workers: ")]
    assert len(chosen) == 1 and chosen[0].startswith("workers: this process (auto: "), lines
    ds = open_run(out)
    assert ds.attrs["analyze_options"]["workers"] == "auto"
    rec = ds.attrs["analyze_workers"]
    assert rec["workers"] == 0 and rec["requested"] == "auto" and rec["reason"] in chosen[0]
    assert "in this process" in lines[-3] and list(ds["capture_step"].values) == [0, 4, 8]


def test_explicit_workers_are_recorded_and_bad_values_refused(tiny_sweep, capsys):
    from phasescope.store import open_run

    out = tiny_sweep / "zero.zarr"
    assert _analyze(tiny_sweep, out, "--workers", "0") == 0
    assert "workers: this process (as asked: --workers 0)" in capsys.readouterr().out
    assert open_run(out).attrs["analyze_workers"] == {"workers": 0, "reason": "as asked: --workers 0", "requested": 0}
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(tiny_sweep / "ck"), "--text", "kjv", "--out", str(out), "--workers", "many"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--workers" in err and "'many'" in err
