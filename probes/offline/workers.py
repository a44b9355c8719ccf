"""Where a sweep runs: ``workers="auto"`` picks this process unless a Dask LocalCluster pays off.

A LocalCluster costs a fixed start-up before its first result — worker processes spawned, each importing
torch, transformers and nnsight and tracing once — and its close. Measured with ``bench/offline.py
--crossover`` (2 shared cores, checkpoints of ~1 s): start 3.4 s, worker imports 6.1 s, first trace +0.5 s,
close 1.7 s on a quiet machine (~12 s), ~22 s under load; two workers on two cores ran a checkpoint
1.25–1.5x slower than this process does (quiet: 16 checkpoints took 4.5 s here and 2.8 s on a warm
2-worker cluster, 1.6x faster, after 8.2 s of start-up). Whole sweeps of 2–32 checkpoints were 1.8–7.5x
slower on a 2-worker cluster than here (medians of 2 interleaved rounds, loaded machine). So a cluster
pays off only when the sweep's work dwarfs that start-up and there are cores to spread it over:

    in this process:  T₀ = n · t                      (t = seconds per checkpoint, measured on the first)
    on w workers:     T_w = S + ⌈n / w⌉ · t · f        (S = CLUSTER_STARTUP_S, f = WORKER_SLOWDOWN)
    w = min(cores, n, workers that fit in memory)       (this process only waits and writes meanwhile)

and the cluster is chosen when T_w ≤ MIN_GAIN · T₀. On one core w < 2: always this process (a cluster of
one only adds S). On two cores a cluster needs ~400 s of work here before it saves a fifth.
The choice is a pure function of its inputs (:func:`choose_workers`), so it is tested for any core count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .sources import Checkpoint, checkpoint_bytes

CLUSTER_STARTUP_S = 20.0  # S: LocalCluster start, worker imports, first trace, close (measured 12 s quiet, 22 s loaded)
WORKER_SLOWDOWN = 1.5  # f: a checkpoint in a worker process vs in this one (measured: 1.4 s a pair vs 0.94 s each)
MIN_GAIN = 0.8  # the cluster must save at least a fifth of the in-process time

__all__ = ["WorkerChoice", "choose_workers", "memory_workers", "needs_measurement", "usable_cores"]


@dataclass(frozen=True)
class WorkerChoice:
    """Where a sweep runs: ``workers`` Dask workers (0 = this process) and why, in words."""

    workers: int
    reason: str
    requested: str | int = "auto"  # what was asked: "auto", an explicit count, or "scheduler"

    def describe(self) -> str:
        """One line for the terminal: ``workers: this process (auto: …)``."""
        where = "this process" if self.workers == 0 else f"{self.workers} Dask worker(s)"
        if self.requested == "scheduler":
            where = "the Dask scheduler given"
        return f"workers: {where} ({self.reason})"

    def to_json(self) -> dict:
        """The run metadata entry (``analyze_workers``)."""
        return asdict(self)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_workers(ckpts: Sequence[Checkpoint]) -> int | None:
    """Workers that fit in half the available memory at ~3× a checkpoint's weight size each (None: unknown)."""
    size = max((checkpoint_bytes(c) for c in ckpts[:3]), default=0)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return max(1, int(0.5 * avail // (3 * size))) if size and avail else None


def _cluster_size(n_checkpoints: int, cores: int, max_workers: int | None) -> int:
    return max(0, min(cores, n_checkpoints, max_workers if max_workers is not None else n_checkpoints))


def needs_measurement(n_checkpoints: int, cores: int, *, device: str = "cpu", max_workers: int | None = None) -> bool:
    """Whether the auto choice depends on the per-checkpoint time (else it is this process whatever it is)."""
    return device == "cpu" and n_checkpoints >= 2 and _cluster_size(n_checkpoints, cores, max_workers) >= 2


def choose_workers(
    n_checkpoints: int,
    seconds_per_checkpoint: float | None,
    cores: int,
    *,
    device: str = "cpu",
    max_workers: int | None = None,
) -> WorkerChoice:
    """``workers="auto"``: this process or a LocalCluster for ``n_checkpoints`` still to analyse, each taking
    ``seconds_per_checkpoint`` here (None when not measured: only the cases that need no time are decided)."""
    n = n_checkpoints
    if n < 2:
        return WorkerChoice(0, f"auto: {n} checkpoint(s) to analyse, nothing to spread")
    if device != "cpu":
        return WorkerChoice(0, f"auto: device {device} is one accelerator, checkpoints take turns on it")
    w = _cluster_size(n, cores, max_workers)
    if w < 2:
        why = (
            f"{cores} core(s): a cluster needs 2 or more to pay off"
            if cores < 2
            else f"memory fits {max_workers} worker(s) of this checkpoint size"
        )
        return WorkerChoice(0, f"auto: {why}")
    if seconds_per_checkpoint is None:
        raise ValueError("choose_workers: the per-checkpoint time is needed for this sweep (see needs_measurement)")
    t = max(float(seconds_per_checkpoint), 0.0)
    here = n * t
    cluster = CLUSTER_STARTUP_S + math.ceil(n / w) * t * WORKER_SLOWDOWN
    est = (
        f"{n} checkpoints x {t:.1f} s = ~{here:.0f} s here vs ~{cluster:.0f} s on {w} workers incl. "
        f"~{CLUSTER_STARTUP_S:.0f} s start-up"
    )
    if cluster <= MIN_GAIN * here:
        return WorkerChoice(w, f"auto: {est}")
    return WorkerChoice(0, f"auto: {est}")
