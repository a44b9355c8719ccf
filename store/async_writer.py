"""AsyncRunWriter: the RunWriter's interface, with the I/O on a background thread.

The training thread only validates a row and puts it on a bounded queue (tens of microseconds); a
writer thread wakes every ``interval_s`` (default 20 ms), drains everything queued, writes it as
one batch and commits once (so throughput grows with load: a batch of k steps costs about one
step's file writes). A live reader therefore lags the training loop by about ``interval_s`` plus
one write. Bounds:

- captures (large: eigenvalues) beyond ``max_pending_captures`` drop the *oldest* queued capture;
  each drop is counted into ``flag_dropped`` of the next step written (and ``n_dropped`` attr);
- steps (small: scalars) beyond ``max_pending_steps`` wait up to ``block_timeout_s`` for room,
  then drop the oldest queued step (counted in the ``n_dropped_steps`` attr) — training is never
  blocked indefinitely, and scalars are dropped only after every capture has been given up.

An error on the writer thread is re-raised on the training thread at the next call.
"""
from __future__ import annotations

import threading
import time
import warnings
from collections import deque
from typing import Any, Mapping

from .errors import StoreError
from .lifecycle import CLOSE_STATUSES, FINISHED, error_for, status_for
from .schema import CAPTURE, STEP
from .writer import CaptureRow, RunWriter, StepRow


class AsyncRunWriter:
    """Same arguments as RunWriter, plus queue bounds; see the module docstring for the drop policy."""

    def __init__(self, path: Any, *, max_pending_captures: int = 16, max_pending_steps: int = 10_000,
                 block_timeout_s: float = 1.0, interval_s: float = 0.02, **writer_kwargs: Any) -> None:
        if max_pending_captures < 1 or max_pending_steps < 1:
            raise StoreError("max_pending_captures and max_pending_steps must be >= 1")
        self.writer = RunWriter(path, **writer_kwargs)  # errors (exists, bad names) surface here
        self.layout = self.writer.layout
        self.max_pending_captures = int(max_pending_captures)
        self.max_pending_steps = int(max_pending_steps)
        self.block_timeout_s = float(block_timeout_s)
        self.interval_s = float(interval_s)
        self._steps: deque[StepRow] = deque()
        self._caps: deque[CaptureRow] = deque()
        self._cond = threading.Condition()
        self._io = threading.Lock()
        self._last = dict(self.writer.last)
        self._dropped_caps = 0  # not yet flagged
        self.n_dropped = 0  # captures, in total
        self.n_dropped_steps = 0
        self._inflight = False
        self._flushing = False
        self._stopping = False
        self._closed = False
        self._error: BaseException | None = None
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="phasescope-store-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ training thread
    def append_step(self, step: int, scalars: Mapping[str, float], params: Mapping[str, Any] | None = None,
                    flags: Mapping[str, int] | None = None) -> None:
        self._check()
        row = self.writer.prepare_step(step, scalars, params, flags)
        if not self.writer._accept(STEP, row.step, self._last[STEP]):
            return
        self._last[STEP] = row.step
        with self._cond:
            if len(self._steps) >= self.max_pending_steps:
                deadline = time.monotonic() + self.block_timeout_s
                while len(self._steps) >= self.max_pending_steps and self._error is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._steps.popleft()
                        self.n_dropped_steps += 1
                        if self.n_dropped_steps == 1:
                            warnings.warn("phasescope store writer is behind: dropping the oldest queued "
                                          "steps (counted in the run's n_dropped_steps attribute)", stacklevel=2)
                        break
                    self._cond.wait(left)
            self._steps.append(row)
            if len(self._steps) >= self.max_pending_steps // 2:
                self._cond.notify_all()

    def append_capture(self, step: int, metrics: Mapping[str, Any], eigenvalues: Any, n_samples: Any,
                       matrices: Mapping[str, Any] | None = None, sketch: Any = None) -> None:
        self._check()
        row = self.writer.prepare_capture(step, metrics, eigenvalues, n_samples, matrices, sketch)
        if not self.writer._accept(CAPTURE, row.step, self._last[CAPTURE]):
            return
        self._last[CAPTURE] = row.step
        with self._cond:
            if len(self._caps) >= self.max_pending_captures:
                self._caps.popleft()
                self._dropped_caps += 1
                self.n_dropped += 1
            self._caps.append(row)
            if len(self._caps) >= max(1, self.max_pending_captures // 2):
                self._cond.notify_all()

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
            while (self._steps or self._caps or self._inflight) and self._error is None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise StoreError(f"store writer did not drain within {timeout} s; the disk may be stalled")
                self._cond.wait(left)
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
                    status, error = "failed", error or f"store writer: {self._error!r}"
                if self.n_dropped or self.n_dropped_steps:
                    self.writer.attrs.update(n_dropped=self.n_dropped, n_dropped_steps=self.n_dropped_steps)
                    self.writer.group.metadata.attributes.update(
                        n_dropped=self.n_dropped, n_dropped_steps=self.n_dropped_steps)
                self.writer.add_dropped(self._dropped_caps)
                self.writer.close(status=status, error=error)  # one write of the root attrs
        except Exception as e:  # noqa: BLE001
            if self._error is None:
                raise StoreError(f"closing the run failed: {e}; committed steps are kept") from e
        if self._error is not None:
            raise StoreError(f"the background store writer failed: {self._error}") from self._error

    def __enter__(self) -> "AsyncRunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """KeyboardInterrupt closes the run "interrupted", another exception "failed" (see status_for)."""
        if exc_type is None:
            self.close()
        else:
            try:
                self.close(status=status_for(exc_type), error=error_for(exc))
            except StoreError:
                pass  # the training error is the one to see

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

    def _check(self) -> None:
        if self._error is not None:
            raise StoreError(f"the background store writer failed: {self._error}; the run is committed up to "
                             f"step {self.writer.last_step}") from self._error
        if self._closed:
            raise StoreError("this AsyncRunWriter is closed; open a new one with resume=True")

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        # The writer wakes every interval_s (or at once when a queue is half full, or on flush and
        # close) rather than on every append: waking per append made it take the GIL right when
        # the training thread needed it (measured: capture p50 3 ms instead of 0.1 ms).
        while True:
            with self._cond:
                if not (self._stopping or self._flushing):
                    self._cond.wait(self.interval_s)
                while not (self._steps or self._caps or self._stopping):
                    self._cond.wait(self.interval_s)
                if not (self._steps or self._caps):
                    return
            with self._cond:
                steps, caps = list(self._steps), list(self._caps)
                self._steps.clear()
                self._caps.clear()
                dropped, self._dropped_caps = self._dropped_caps, 0
                self._inflight = True
                self._cond.notify_all()
            try:
                with self._io:
                    self.writer.add_dropped(dropped)
                    self.writer.write_rows(steps, caps)
                    self.batches += 1
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                with self._cond:
                    self._error = e
                    self._inflight = False
                    self._cond.notify_all()
                return
            with self._cond:
                self._inflight = False
                self._cond.notify_all()
