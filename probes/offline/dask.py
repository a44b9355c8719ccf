"""Run checkpoint tasks: in this process, on a Dask LocalCluster, or on an existing Dask scheduler.

Checkpoints are independent, so each is one task (`analyze_checkpoint`); the tokenized probe set is
scattered to every worker once. Results are yielded as they complete (any order); the caller writes
them in step order through a single store writer. A worker that dies takes only its task down: the
failure comes back as an error result for that checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from multiprocessing import resource_tracker

from phasescope.errors import PhasescopeError

from .capture import CaptureSpec, CheckpointResult, analyze_checkpoint
from .sources import Checkpoint, ProbeData


def run_serial(ckpts: Sequence[Checkpoint], data: ProbeData, spec: CaptureSpec) -> Iterator[CheckpointResult]:
    """Yield one result per checkpoint, analysed in this process, in order."""
    for c in ckpts:
        yield analyze_checkpoint(c, data, spec)


def local_cluster(workers: int, threads_per_worker: int):
    """A LocalCluster of worker processes, without Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` worker default.

    That default makes glibc return freed memory to the OS eagerly, so torch's large temporaries are
    mapped and faulted in again on every batch: measured here, a checkpoint's capture took 2.2 s in such a
    worker against 1.1–1.2 s in-process or in a worker without it. Other worker settings (one BLAS/OpenMP
    thread) are kept. The scheduler's HTTP server (no dashboard) listens on a free local port, so a second
    sweep does not warn that 8787 is taken; logs below CRITICAL are silenced: a checkpoint's failure comes back
    as its result, and the heartbeat errors workers log while a cluster closes are noise.
    """
    import dask
    from distributed import LocalCluster

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.CRITICAL,
        )


def run_dask(
    ckpts: Sequence[Checkpoint],
    data: ProbeData,
    spec: CaptureSpec,
    *,
    workers: int,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    critical: Callable[[], AbstractContextManager] = nullcontext,
) -> Iterator[CheckpointResult]:
    """Yield one result per checkpoint from Dask (a new LocalCluster unless ``scheduler`` is given).

    The cluster starts inside ``critical()`` (see :mod:`.interrupts`: its worker processes never see a
    terminal's Ctrl-C) and is closed when the generator ends, is closed, or is interrupted."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise PhasescopeError(
            "Dask's distributed scheduler is not installed: `pip install distributed` "
            "(or pass --workers 0 to analyze in this process)"
        ) from None
    cluster = client = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise PhasescopeError(
                    f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__}); "
                    "check the address or omit --scheduler for a local cluster"
                ) from None
        else:
            # CPython starts its resource tracker on the first spawn and then unblocks SIGINT in that thread:
            # start it now, so the workers spawned inside critical() inherit a blocked SIGINT.
            resource_tracker.ensure_running()
            with critical():
                cluster = local_cluster(workers, threads_per_worker)
                client = Client(cluster)
        shared = client.scatter(data, broadcast=True)
        # Earlier steps first (Dask's priority: higher runs sooner), so results arrive nearly in the order the
        # writer stores them: few wait in memory, and few are lost to a Ctrl-C.
        futures = {
            client.submit(
                analyze_checkpoint,
                c,
                shared,
                spec,
                key=f"phasescope-ckpt-{c.step}-{id(spec)}",
                pure=False,
                priority=len(ckpts) - i,
            ): c
            for i, c in enumerate(ckpts)
        }
        for fut in as_completed(futures):
            c = futures[fut]
            try:
                yield fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the process died on this checkpoint
                yield CheckpointResult(c.step, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            fut.release()
    finally:
        try:
            if client is not None:
                client.close()
        finally:  # the workers go even when the client's close fails (a timeout)
            if cluster is not None:
                cluster.close()
