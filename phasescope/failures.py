"""The one failure policy: every failure inside phasescope is counted per stage, warned about once
(then at most once a minute, with the count), and kept for the store; it never reaches the user's
training loop unless ``strict``.

    log = FailureLog(strict=False)
    with log.guard("capture"):          # a hook body, a reduction, a metric, a write
        ...
    log.counts   -> {"capture": 3}      # stored in the run's ``failures`` attribute; rows lost at a step
                                         # are counted in that step's ``flag_lost``

Stages used by phasescope: "hook" (a forward hook body), "capture" (probe forward / accumulation /
eigendecomposition / gradient SVD), "metric" (one probe's metrics in the reducer), "reduce" (a whole
row that cannot be built on the writer thread), "write" (the store), "queue" (the writer's drop
policy), "step" (anything else in ``Observatory.step``), "sink" (a tracker sink: TensorBoard, W&B, MLflow or
the user's own, ``phasescope.probes.sinks``), "close".
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

#: seconds between two warnings of the same stage after the first
WARN_INTERVAL_S = 60.0


@dataclass
class Outcome:
    """What a :meth:`FailureLog.guard` block did: ``failed`` once it raised and the failure was recorded."""

    failed: bool = False


class FailureLog:
    def __init__(self, *, strict: bool = False, interval: float = WARN_INTERVAL_S, name: str = "phasescope"):
        self.strict = bool(strict)
        self.interval = float(interval)
        self.name = name
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}
        self._warned_at: dict[str, float] = {}
        self._warned_count: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, stage: str, exc: BaseException, *, what: str = "") -> None:
        """Count a failure of ``stage`` and warn (first time, then rate-limited); re-raise if strict."""
        with self._lock:
            n = self.counts[stage] = self.counts.get(stage, 0) + 1
            text = f"{type(exc).__name__}: {exc}"
            self.first.setdefault(stage, text[:500])
            now = time.monotonic()
            last = self._warned_at.get(stage)
            due = last is None or now - last >= self.interval
            if due:
                since = n - self._warned_count.get(stage, 0)
                self._warned_at[stage], self._warned_count[stage] = now, n
        if self.strict:
            raise exc
        if due:
            more = "" if n == 1 else f" ({since} more since the last warning, {n} in all)"
            warnings.warn(
                f"{self.name}: {stage} failed ({what + ': ' if what else ''}{text}){more}; training "
                "continues, failures are counted in the run's 'failures' attribute and shown in the "
                "dashboard's data quality",
                RuntimeWarning,
                stacklevel=3,
            )

    @contextlib.contextmanager
    def guard(self, stage: str, what: str = "") -> Iterator[Outcome]:
        """Run the block; an Exception inside it is recorded (see :meth:`record`) instead of raised, unless
        it is one already recorded and raised on purpose (``counted = True``, e.g. a strict sink failure).
        Yields an :class:`Outcome` whose ``failed`` says, after the block, whether it was swallowed
        (``with log.guard(...) as g: ...`` then ``res.lost += g.failed``)."""
        outcome = Outcome()
        try:
            yield outcome
        except Exception as exc:  # the one place phasescope swallows its own failures
            if getattr(exc, "counted", False):
                raise
            outcome.failed = True
            self.record(stage, exc, what=what)

    def attrs(self) -> dict:
        """Run attributes: ``failures`` {stage: count}, ``first_failures`` {stage: message}, ``errors``."""
        with self._lock:
            return {"failures": dict(self.counts), "first_failures": dict(self.first), "errors": self.total}
