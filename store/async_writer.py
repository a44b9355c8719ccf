"""AsyncRunWriter: the one background writer of phasescope runs (live capture writes through it).

The training thread only queues; a writer thread wakes every ``interval_s`` (default 20 ms), drains
everything queued, turns it into rows, writes them as one batch and commits once (a batch of k steps
costs about one step's file writes). A live reader lags the training loop by about ``interval_s`` plus
one write. Two kinds of entries:

- rows given through :meth:`append_step` / :meth:`append_capture` (validated on the caller's thread);
- results given through :meth:`submit`, turned into rows on the writer thread by the ``reduce``
  callable passed to the constructor (``reduce(item) -> (step_kwargs, capture_kwargs or None)``, the
  keyword arguments of ``RunWriter.prepare_step`` / ``prepare_capture``). A submitted item has a
  ``capture`` attribute (True when it carries a capture) and a ``release_capture()`` method.

The drop policy (one for everything; training never waits on a stalled disk for long):

- at most ``max_pending_captures`` captures wait: beyond that the **oldest** queued capture is
  dropped — a capture row is removed, a submitted item keeps its step row and frees its capture
  payload. Each drop is counted in ``flag_dropped`` (of the step row of the dropped capture for
  submitted items, of the next step row written for capture rows) and in the ``n_dropped`` attribute;
- at most ``max_pending_steps`` entries wait: beyond that the caller waits up to ``block_timeout_s``
  for room, then the **oldest** queued entry is dropped whole (counted in ``n_dropped_steps``);
- every drop and every failure on the writer thread (a row that cannot be built, a write that fails)
  is counted in the run's ``failures`` attribute by stage ("reduce", "write", "queue") and warned about
  once (then at most once a minute; :class:`phasescope.failures.FailureLog`). With ``raise_errors``
  (the default, and live capture under ``strict``) a failed write stops the thread and is raised on
  the caller's next call; without (live capture) the batch's rows are lost — counted in ``failures``
  and ``n_lost_rows`` — and the writer goes on with the next batch.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from phasescope.failures import FailureLog

from .errors import StoreError
from .lifecycle import CLOSE_STATUSES, FAILED, FINISHED, error_for, status_for
from .schema import CAPTURE, STEP
from .writer import CaptureRow, RunWriter, StepRow


class _Drop(Exception):
    """Not raised: the message of a drop recorded in the failure log."""


class AsyncRunWriter:
    """Same arguments as RunWriter, plus queue bounds and ``reduce``; see the module docstring."""

    def __init__(
        self,
        path: Any,
        *,
        reduce: Callable[[Any], tuple] | None = None,
        max_pending_captures: int = 16,
        max_pending_steps: int = 10_000,
        block_timeout_s: float = 1.0,
        interval_s: float = 0.02,
        failures: FailureLog | None = None,
        raise_errors: bool = True,
        **writer_kwargs: Any,
    ) -> None:
        if max_pending_captures < 1 or max_pending_steps < 1:
            raise StoreError("max_pending_captures and max_pending_steps must be >= 1")
        self.writer = RunWriter(path, **writer_kwargs)  # errors (exists, bad names) surface here
        self.layout = self.writer.layout
        self._reduce = reduce
        self.failures = failures if failures is not None else FailureLog()
        self.raise_errors = bool(raise_errors)
        self.max_pending_captures = int(max_pending_captures)
        self.max_pending_steps = int(max_pending_steps)
        self.block_timeout_s = float(block_timeout_s)
        self.interval_s = float(interval_s)
        self._queue: deque = deque()  # ("step", StepRow) | ("capture", CaptureRow) | ("item", item)
        self._n_caps = 0  # queued entries that carry a capture
        self._cond = threading.Condition()
        self._io = threading.Lock()
        self._last = dict(self.writer.last)
        self._dropped_caps = 0  # dropped capture rows not yet flagged on a step row
        self.n_dropped = 0  # captures, in total
        self.n_dropped_steps = 0
        self.n_lost_rows = 0  # rows of batches whose write failed (raise_errors=False)
        self._inflight = False
        self._flushing = False
        self._stopping = False
        self._closed = False
        self._error: BaseException | None = None
        self.batches = 0
        self._failures_written = 0
        self.cpu_seconds = 0.0  # CPU time of the writer thread (time.thread_time)
        self._thread = threading.Thread(target=self._run, name="phasescope-store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ training thread
    def append_step(
        self,
        step: int,
        scalars: Mapping[str, float],
        params: Mapping[str, Any] | None = None,
        flags: Mapping[str, int] | None = None,
    ) -> None:
        self._check()
        row = self.writer.prepare_step(step, scalars, params, flags)
        if self.writer.accept(STEP, row.step, self._last[STEP]):
            self._last[STEP] = row.step
            self._put("step", row)

    def append_capture(
        self,
        step: int,
        metrics: Mapping[str, Any],
        eigenvalues: Any,
        n_samples: Any,
        matrices: Mapping[str, Any] | None = None,
        sketch: Any = None,
        weight_eigenvalues: Any = None,
        sets: Mapping[str, Any] | None = None,
    ) -> None:
        self._check()
        row = self.writer.prepare_capture(
            step, metrics, eigenvalues, n_samples, matrices, sketch, weight_eigenvalues, sets
        )
        if self.writer.accept(CAPTURE, row.step, self._last[CAPTURE]):
            self._last[CAPTURE] = row.step
            self._put("capture", row)

    def submit(self, item: Any) -> None:
        """Queue a result for ``reduce`` on the writer thread (the caller orders steps)."""
        if self._reduce is None:
            raise StoreError("submit() needs AsyncRunWriter(..., reduce=fn); use append_step/append_capture for rows")
        self._check()
        self._put("item", item)

    def _carries_capture(self, kind: str, payload: Any) -> bool:
        return kind == "capture" or (kind == "item" and bool(getattr(payload, "capture", False)))

    def _put(self, kind: str, payload: Any) -> None:
        with self._cond:
            if len(self._queue) >= self.max_pending_steps:
                deadline = time.monotonic() + self.block_timeout_s
                while len(self._queue) >= self.max_pending_steps and self._error is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        old_kind, old = self._queue.popleft()
                        self._n_caps -= self._carries_capture(old_kind, old)
                        self.n_dropped_steps += 1
                        self.failures.record(
                            "queue",
                            _Drop("the store writer is behind: dropping the oldest queued steps (n_dropped_steps)"),
                        )
                        break
                    self._cond.wait(left)
            cap = self._carries_capture(kind, payload)
            if cap and self._n_caps >= self.max_pending_captures:
                self._drop_oldest_capture()
            self._queue.append((kind, payload))
            self._n_caps += cap
            if (
                self.interval_s == 0
                or len(self._queue) >= self.max_pending_steps // 2
                or self._n_caps >= max(1, self.max_pending_captures // 2)
            ):
                self._cond.notify_all()

    def _drop_oldest_capture(self) -> None:
        for j, (kind, payload) in enumerate(self._queue):
            if kind == "capture":
                del self._queue[j]
                self._dropped_caps += 1
            elif kind == "item" and getattr(payload, "capture", False):
                payload.release_capture()  # its step row stays, with flag_dropped
            else:
                continue
            self._n_caps -= 1
            self.n_dropped += 1
            return

    def set_attrs(self, **kv: Any) -> None:
        self._check()
        with self._io:
            self.writer.set_attrs(**kv)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is written and committed."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            try:
                while (self._queue or self._inflight) and self._error is None:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        raise StoreError(f"store writer did not drain within {timeout} s; the disk may be stalled")
                    self._cond.wait(left)
            finally:  # a timed-out flush must not leave the writer waking on every append
                self._flushing = False
        self._check()

    def close(self, *, status: str = FINISHED, error: str | None = None) -> None:
        """Write everything queued, stop the thread, trim the arrays and record ``status``
        ("finished", "interrupted" or "failed"; "failed" whatever was asked if the writer thread failed)."""
        if self._closed:
            return
        if status not in CLOSE_STATUSES:
            raise StoreError(f"close(status={status!r}): the status must be one of {CLOSE_STATUSES}")
        self._closed = True
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        try:
            with self._io:
                if self._error is not None:
                    status, error = FAILED, error or f"store writer: {self._error!r}"
                self.writer.set_attrs(
                    n_dropped=self.n_dropped,
                    n_dropped_steps=self.n_dropped_steps,
                    n_lost_rows=self.n_lost_rows,
                    **self.failures.attrs(),
                )
                self.writer.add_dropped(self._dropped_caps)
                self.writer.close(status=status, error=error)  # trims the arrays, one write of the root attrs
        except Exception as e:
            if self._error is None:
                raise StoreError(f"closing the run failed: {e}; committed steps are kept") from e
        if self._error is not None and self.raise_errors:
            raise StoreError(f"the background store writer failed: {self._error}") from self._error

    def __enter__(self) -> AsyncRunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """KeyboardInterrupt closes the run "interrupted", another exception "failed" (see status_for)."""
        if exc_type is None:
            self.close()
        else:
            with contextlib.suppress(StoreError):  # the training error is the one to see
                self.close(status=status_for(exc_type), error=error_for(exc))

    @property
    def n_steps(self) -> int:
        return self.writer.n_steps

    @property
    def n_captures(self) -> int:
        return self.writer.n_captures

    @property
    def last_step(self) -> int | None:
        """The last step accepted (queued or written)."""
        return self._last[STEP]

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    def _check(self) -> None:
        if self._error is not None and self.raise_errors:
            raise StoreError(
                f"the background store writer failed: {self._error}; the run is committed up to "
                f"step {self.writer.last_step}"
            ) from self._error
        if self._closed:
            raise StoreError("this AsyncRunWriter is closed; open a new one with resume=True")

    # ------------------------------------------------------------------ writer thread
    def _rows(self, entries: list) -> tuple[list[StepRow], list[CaptureRow]]:
        steps: list[StepRow] = []
        caps: list[CaptureRow] = []
        for kind, payload in entries:
            if kind == "step":
                steps.append(payload)
            elif kind == "capture":
                caps.append(payload)
            else:
                reduce = self._reduce
                assert reduce is not None  # submit() refuses entries without it
                with self.failures.guard("reduce", f"step {getattr(payload, 'step', '?')}"):
                    step_kw, cap_kw = reduce(payload)
                    srow = self.writer.prepare_step(**step_kw)
                    crow = self.writer.prepare_capture(**cap_kw) if cap_kw is not None else None
                    if self.writer.accept(STEP, srow.step, steps[-1].step if steps else self.writer.last[STEP]):
                        steps.append(srow)
                    if crow is not None and self.writer.accept(
                        CAPTURE, crow.step, caps[-1].step if caps else self.writer.last[CAPTURE]
                    ):
                        caps.append(crow)
        return steps, caps

    def _run(self) -> None:
        # The writer wakes every interval_s (or at once when a queue is half full, or on flush and
        # close) rather than on every append: waking per append made it take the GIL right when
        # the training thread needed it (measured: capture p50 3 ms instead of 0.1 ms).
        while True:
            with self._cond:
                if not (self._stopping or self._flushing):
                    self._cond.wait(self.interval_s)
                while not (self._queue or self._stopping):
                    # An idle writer sleeps: interval_s, or until notified when it is 0 (every append
                    # notifies then) — never wait(0), a spin that holds the GIL the training and zarr
                    # threads need.
                    self._cond.wait(self.interval_s if self.interval_s > 0 else None)
                if not self._queue:
                    return
                entries = list(self._queue)
                self._queue.clear()
                self._n_caps = 0
                dropped, self._dropped_caps = self._dropped_caps, 0
                self._inflight = True
                self._cond.notify_all()
            c0 = time.thread_time()
            steps: list[StepRow] = []
            caps: list[CaptureRow] = []
            try:
                steps, caps = self._rows(entries)
                with self._io:
                    self.writer.add_dropped(dropped)
                    self.writer.write_rows(steps, caps)
                    self.batches += 1
                    if self.failures.total != self._failures_written:  # a live reader sees them now
                        self._failures_written = self.failures.total
                        self.writer.set_attrs(**self.failures.attrs())
            except Exception as e:  # noqa: BLE001 - never into the training loop unless asked
                if self.raise_errors:  # handed to the caller's next call; the thread stops
                    with self._cond:
                        self._error = e
                        self._inflight = False
                        self._cond.notify_all()
                    return
                # Live capture: this batch's rows are lost (counted, warned), the next batch is tried
                # (a full disk may get room again). The commit protocol makes a retry safe: nothing
                # past the last commit is visible, and the next write starts at the committed row.
                self.n_lost_rows += len(steps) + len(caps)
                self.failures.record("write", e, what=f"{len(steps)} step and {len(caps)} capture row(s)")
            finally:
                self.cpu_seconds += time.thread_time() - c0
            with self._cond:
                self._inflight = False
                self._cond.notify_all()
