"""Run checkpoint tasks: in this process, on a Dask LocalCluster, or on an existing Dask scheduler.

Checkpoints are independent, so each is one task (`analyze_checkpoint`); the tokenized probe set is
scattered to every worker once. Results are yielded as they complete (any order); the caller writes
them in step order through a single store writer. A worker that dies takes only its task down: the
failure comes back as an error result for that checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, Sequence

from phasescope.errors import PhasescopeError

from .capture import CaptureSpec, CheckpointResult, analyze_checkpoint
from .sources import Checkpoint, ProbeData, checkpoint_bytes


def auto_workers(ckpts: Sequence[Checkpoint], device: str = "cpu") -> int:
    """Worker processes for a LocalCluster: one per CPU core, at most one per checkpoint, and no more than
    fit in half the available memory at ~3× a checkpoint's weight size each; one for a GPU device."""
    if not ckpts:
        return 1
    if device != "cpu":
        return 1
    n = min(len(ckpts), os.cpu_count() or 1)
    size = max((checkpoint_bytes(c) for c in ckpts[:3]), default=0)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 0
    if size and avail:
        n = min(n, max(1, int(0.5 * avail // (3 * size))))
    return max(1, n)


def run_serial(ckpts: Sequence[Checkpoint], data: ProbeData, spec: CaptureSpec) -> Iterator[CheckpointResult]:
    for c in ckpts:
        yield analyze_checkpoint(c, data, spec)


def local_cluster(workers: int, threads_per_worker: int):
    """A LocalCluster of worker processes, without Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` worker default.

    That default makes glibc return freed memory to the OS eagerly, so torch's large temporaries are
    mapped and faulted in again on every batch: measured here, a checkpoint's capture took 2.2 s in such a
    worker against 1.1–1.2 s in-process or in a worker without it. Other worker settings (one BLAS/OpenMP
    thread) are kept.
    """
    import dask
    from distributed import LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                            dashboard_address=None, silence_logs=logging.ERROR)


def run_dask(ckpts: Sequence[Checkpoint], data: ProbeData, spec: CaptureSpec, *, workers: int,
             threads_per_worker: int = 1, scheduler: str | None = None) -> Iterator[CheckpointResult]:
    """Yield one result per checkpoint from Dask (a new LocalCluster unless ``scheduler`` is given)."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise PhasescopeError("Dask's distributed scheduler is not installed: `pip install distributed` "
                              "(or pass --workers 0 to analyze in this process)") from None
    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise PhasescopeError(f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__}); "
                                      "check the address or omit --scheduler for a local cluster") from None
        else:
            cluster = local_cluster(workers, threads_per_worker)
            client = Client(cluster)
        try:
            shared = client.scatter(data, broadcast=True)
            futures = {client.submit(analyze_checkpoint, c, shared, spec, key=f"phasescope-ckpt-{c.step}-{id(spec)}",
                                     pure=False): c for c in ckpts}
            for fut in as_completed(futures):
                c = futures[fut]
                try:
                    yield fut.result()
                except Exception as exc:  # e.g. KilledWorker: the process died on this checkpoint
                    yield CheckpointResult(c.step, error=f"{type(exc).__name__}: {str(exc)[:300]}")
                fut.release()
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
