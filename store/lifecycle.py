"""A run's lifecycle: the ``status`` a writer records and the ``state`` the catalog derives from it.

Stored ``status`` (root attribute, see docs/schema.md): ``"running"`` while a writer has the run
open; on close ``"finished"`` (normal end), ``"interrupted"`` (the process ended by
KeyboardInterrupt, i.e. Ctrl-C / SIGINT) or ``"failed"`` (any other exception; the ``error``
attribute holds ``"<ExceptionType>: <message>"``).

Catalog ``state`` (``phasescope.store.catalog``): the stored status, except that a run still
``"running"`` whose last commit is older than the live window is ``"stale"`` (its writer was killed
without closing, e.g. SIGKILL or a machine crash), and a recent one is ``"live"``.
"""

from __future__ import annotations

from typing import Any

RUNNING, FINISHED, INTERRUPTED, FAILED = "running", "finished", "interrupted", "failed"
CLOSE_STATUSES = (FINISHED, INTERRUPTED, FAILED)
LIVE, STALE = "live", "stale"
STATES = (LIVE, STALE, FINISHED, INTERRUPTED, FAILED)


def status_for(exc: BaseException | type[BaseException] | None) -> str:
    """The status to close a run with after ``exc`` (an exception, its type, or None):
    None -> "finished", KeyboardInterrupt -> "interrupted", anything else -> "failed"."""
    if exc is None:
        return FINISHED
    kind = exc if isinstance(exc, type) else type(exc)
    return INTERRUPTED if issubclass(kind, KeyboardInterrupt) else FAILED


def error_for(exc: BaseException | None) -> str | None:
    """The ``error`` text to store with the run after ``exc``: ``"<Type>: <message>"`` when the
    status is "failed", None otherwise (a normal end or an interrupt)."""
    if status_for(exc) != FAILED:
        return None
    return f"{type(exc).__name__}: {exc}"


def run_stages(ds: Any) -> list[dict]:
    """The training stages of a run (its ``stages`` attribute, see ``phasescope.probes.stages``): each
    ``{"name", "first_step", "last_step", "trainer", "meta"}`` in order; a stage still running (or cut
    off by a crash) ends at the run's last recorded step. ``ds``: an opened run (or its attributes)."""
    attrs = getattr(ds, "attrs", ds)
    stages = [dict(s) for s in attrs.get("stages") or []]
    if stages and stages[-1].get("last_step") is None and hasattr(ds, "coords") and "step" in ds.coords:
        steps = ds["step"].values
        stages[-1]["last_step"] = int(steps.max()) if steps.size else stages[-1]["first_step"]
    return stages
