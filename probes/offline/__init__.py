"""phasescope.probes.offline: saved checkpoints analysed into the same run store as live capture.

    from phasescope.probes.offline import analyze
    report = analyze("out/", "probes.txt", "runs/offline.zarr", tokens="last", workers=2)

- :mod:`.sources` — where a sweep reads from: checkpoint discovery, safe model loading, probe texts.
- :mod:`.capture` — one checkpoint traced with nnsight and reduced on the device (a picklable task).
- :mod:`.workers` — where they run: ``workers="auto"`` picks a LocalCluster only when it pays off.
- :mod:`.dask` — the tasks run in this process, on a Dask LocalCluster or on an existing scheduler.
- :mod:`.interrupts` — Ctrl-C ends a sweep between checkpoint writes, quietly, cluster shut down.
- :mod:`.analyze` — the sweep: resume, one reducer (the live path's), one writer, in step order.

Nothing here imports torch, transformers, nnsight or dask until a checkpoint is loaded or traced.
"""

from .analyze import AnalyzeInterrupted, AnalyzeOptions, AnalyzeReport, analyze
from .capture import CaptureSpec, CheckpointResult, capture_model
from .sources import Checkpoint, find_checkpoints

__all__ = [
    "AnalyzeInterrupted",
    "AnalyzeOptions",
    "AnalyzeReport",
    "CaptureSpec",
    "Checkpoint",
    "CheckpointResult",
    "analyze",
    "capture_model",
    "find_checkpoints",
]
