"""Sinks: send the scalars a run stores to TensorBoard, Weights & Biases or MLflow as well, while it records.

    obs = Observatory(model, "runs/x.zarr", probe_inputs=batch,
                      sinks=["tensorboard:runs/tb", "wandb", "mlflow:file:./mlruns"])

Every front-end takes ``sinks``: the Observatory and the torch callbacks as an option, :class:`Recorder`
and ``FlaxObserver`` as a keyword. What is sent is what the store keeps, taken at the one reduced point
on the store's writer thread (``Recorder._rows``) and handed to one sinks thread, so tracker I/O never
runs on the training thread and a slow tracker delays neither training nor the store: every step ``loss``,
``lr``, ``grad_norm`` (the global L2 norm) and ``loss_scale`` when there is one; at each capture every
per-probe metric the run stores, tagged ``"{metric}/{probe}"`` (``rankme/block.0``, ``alpha/final_norm``,
…). Non-finite values are not sent (the store keeps and flags them). At a normal close the phases that
``phasescope phases RUN`` finds in the run are sent as text at the last step: ``phases/summary``,
``phases/events`` and one sentence per trajectory (``phases/model``, ``phases/{probe}``).

Specs (a tracker's package is imported only when its sink first writes; a missing one is refused when
the Observatory or Recorder is built, naming the extra to install):

- ``"tensorboard"`` / ``"tensorboard:DIR"``: a ``torch.utils.tensorboard.SummaryWriter`` writing into DIR
  (default ``<store's folder>/tensorboard/<run name>``).
- ``"wandb"`` / ``"wandb:PROJECT"``: a W&B run (project ``phasescope``) named after the store, offline
  unless ``WANDB_MODE`` says otherwise: no account and no network; ``wandb sync`` uploads it later. Its
  files go under ``<store's folder>/wandb`` (``WANDB_DIR`` overrides).
- ``"mlflow"`` / ``"mlflow:URI"``: an MLflow run in experiment ``MLFLOW_EXPERIMENT_NAME`` (default
  ``phasescope``) at URI, default ``MLFLOW_TRACKING_URI``, else the local file store
  ``<store's folder>/mlruns``; naming a file store opts in to it (MLflow 3 asks for
  ``MLFLOW_ALLOW_FILE_STORE=true``: :mod:`.trackers` says how and why).

A sink object is anything with the :class:`Sink` methods; a torch ``SummaryWriter`` or a ``wandb`` run
is accepted as it is (flushed, not closed: its owner closes it). Only the writing process (rank 0 under
torch.distributed) uses sinks. Every sink failure goes through the run's FailureLog (stage ``"sink"``):
warned once, counted in the store's ``failures``, never stops training, the store or the other sinks;
``strict=True`` raises it. Sinks are closed when the run closes, on errors and Ctrl-C too; where each
tracker put the run is stored in the run's ``sinks`` attribute.
"""

from __future__ import annotations

import difflib
import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from phasescope.errors import PhasescopeError
from phasescope.failures import FailureLog

from .reduce import CaptureValues, StepValues
from .trackers import KINDS, TrackerSink, adopt, tracker_sink

#: steps that may wait for slow trackers; beyond, the oldest is dropped (counted as a "sink" failure)
MAX_PENDING = 10_000
#: seconds close() waits for the trackers to take what is queued before it gives up on them
DRAIN_TIMEOUT_S = 120.0
INTERRUPTED_DRAIN_S = 5.0  # after Ctrl-C the user is waiting: give the trackers this long, not minutes


@runtime_checkable
class Sink(Protocol):
    """What a sink does; pass any object with these methods in ``sinks=[...]``.

    ``log_scalars(step, {tag: value})``: one call per recorded step with the finite values of that step
    (python floats; tags ``loss``, ``lr``, ``grad_norm``, ``loss_scale``, ``"{metric}/{probe}"``).
    ``log_text(step, tag, text)``: text events (the phases found at close). ``close()``: flush and
    release; called once when the run closes. Calls come from one thread at a time (the sinks thread
    while recording, the closing thread at close). Optional ``describe() -> dict`` (JSON values) is
    stored in the run's ``sinks`` attribute.
    """

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_text(self, step: int, tag: str, text: str) -> None: ...

    def close(self) -> None: ...


def parse_sink(spec: Any, store: Any = None) -> Any:
    """One sink from a spec string (module docstring), a SummaryWriter, a wandb run or a :class:`Sink`;
    nothing is opened here. Mistakes are one-line PhasescopeErrors."""
    if isinstance(spec, str):
        kind, _, arg = spec.partition(":")
        kind, arg = kind.strip().lower(), arg.strip()
        if kind not in KINDS:
            close = difflib.get_close_matches(kind, KINDS, n=2, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise PhasescopeError(
                f"unknown sink {spec!r}; {hint}sinks are {', '.join(KINDS)} (as 'name' or "
                "'name:argument'), or an object with log_scalars, log_text and close"
            )
        return tracker_sink(kind, arg, store)
    adopted = adopt(spec)
    if adopted is not None:
        return adopted
    if isinstance(spec, Sink):
        return spec
    raise PhasescopeError(
        f"a sink must be one of {', '.join(KINDS)} (a string), a SummaryWriter, a wandb run or "
        f"an object with log_scalars, log_text and close; got {type(spec).__name__}"
    )


def build_sinks(specs: Any, store: Any = None) -> list:
    """The sinks of ``sinks=`` (a spec, a sink object, or a list of them; None or () for none)."""
    if specs is None:
        return []
    if isinstance(specs, (str, bytes)) or not isinstance(specs, (list, tuple)):
        specs = [specs]
    return [parse_sink(s, store) for s in specs]


def _label(sink: Any) -> str:
    return f"{sink.kind} sink" if isinstance(sink, TrackerSink) else f"sink {type(sink).__name__}"


class _Behind(Exception):
    """Not raised: the message of a step dropped because the trackers fell behind."""


class SinkError(PhasescopeError):
    """A tracker sink's failure, raised into the training loop under ``strict=True`` (counted already)."""

    counted = True


class SinkSet:
    """The sinks of one run. The Recorder's writer thread hands each reduced step to :meth:`send`, which
    queues its values for one sinks thread, so a slow tracker delays neither training nor the store;
    at close :meth:`drain`, :meth:`send_phases` and :meth:`close`. Each call to each sink is guarded apart."""

    def __init__(self, sinks: Sequence[Any], failures: FailureLog, scalars: Sequence[str], probes: Sequence[str]):
        self.sinks = list(sinks)
        self.failures = failures
        self.scalars, self.probes = tuple(scalars), list(probes)
        self._tags: dict[str, list[str]] = {}  # metric -> its "{metric}/{probe}" tags, made once
        self.last_step: int | None = None
        self._pending: deque = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None  # a failure raised under strict, for the run

    def _each(self, what: str, call) -> None:
        for sink in self.sinks:
            with self.failures.guard("sink", f"{_label(sink)}: {what}"):
                call(sink)

    def send(self, step: StepValues, cap: CaptureValues | None) -> None:
        """Queue the step's stored scalars and, at a capture, each probe's stored metrics (NaN/Inf left out).
        Runs on the store's writer thread: a strict failure is raised on the training thread instead
        (:meth:`raise_failure`), so the store does not count it again as its own."""
        values = {k: float(v) for k, v in step.scalars.items() if k in self.scalars and math.isfinite(v)}
        if cap is not None:
            for metric, per_probe in cap.metrics.items():
                tags = self._tags.get(metric)
                if tags is None:
                    tags = self._tags[metric] = [f"{metric}/{p}" for p in self.probes]
                for tag, v in zip(tags, per_probe):
                    if math.isfinite(v):
                        values[tag] = float(v)
        if not values or self._stopping:
            return
        self.last_step = step.step
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="phasescope-sinks", daemon=True)
                self._thread.start()
            behind = len(self._pending) >= MAX_PENDING
            if behind:
                self._pending.popleft()
            self._pending.append((step.step, values))
            self._cond.notify()
        if behind:
            self.failures.record(
                "sink",
                _Behind(f"the trackers are {MAX_PENDING} steps behind: dropping the oldest step they have not taken"),
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._stopping):
                    self._cond.wait()
                if not self._pending:
                    return
                batch = list(self._pending)
                self._pending.clear()
            try:
                for step, values in batch:
                    self._each(
                        f"scalars of step {step}", lambda s, step=step, values=values: s.log_scalars(step, values)
                    )
            except Exception as exc:  # noqa: BLE001 - strict: raised by the failure log, handed to the run
                self._error = exc
                return

    def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until the sinks thread has sent everything queued and ended; False (a failure) if it is
        still busy after ``timeout`` s. Under strict, a sink failure raised on that thread is raised here."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.failures.record(
                    "sink",
                    TimeoutError(
                        f"the trackers took more than {timeout:.0f} s to take the queued steps; closing without them"
                    ),
                )
                return False
        self.raise_failure()
        return True

    def raise_failure(self) -> None:
        """Under strict: raise, once, on the calling thread the sink failure the sinks thread met (as a
        :class:`SinkError`: counted already, under "sink", so no front-end counts it again)."""
        error, self._error = self._error, None
        if error is not None:
            raise SinkError(f"a tracker sink failed (strict=True): {type(error).__name__}: {error}") from error

    def send_phases(self, store: Any) -> None:
        """The phases ``phasescope phases`` finds in the (flushed) run, as text at the last step sent."""
        if self.last_step is None:
            return
        from phasescope.cli_phases import phases_for_run
        from phasescope.spectra.phases import MODEL

        texts: dict[str, str] = {}
        with self.failures.guard("sink", "phases of the run"):
            try:
                result, _ = phases_for_run(store, save=False)
            except PhasescopeError as exc:  # e.g. no RankMe captures: nothing to segment
                texts["phases/summary"] = f"no phases: {exc}"
            else:
                texts["phases/summary"] = result.summary()
                texts["phases/events"] = (
                    "\n".join(
                        f"step {e.step}: {e.probe} {e.before} -> {e.after} (confidence {e.confidence:.2f})"
                        for e in result.events()
                    )
                    or "no phase changes"
                )
                for probe in [MODEL, *result.probes]:
                    texts[f"phases/{probe}"] = result.sentence(probe)
        step = self.last_step
        for tag, text in texts.items():
            self._each(f"text {tag}", lambda s, tag=tag, text=text: s.log_text(step, tag, text))

    def close(self, status: str = "finished") -> None:
        """Close every sink (built-in ones learn the run's status), each guarded apart; not while the sinks
        thread is still inside one of them (a tracker that hung: see :meth:`drain`)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._each("close", lambda s: s.close(status) if isinstance(s, TrackerSink) else s.close())

    def describe(self) -> list[dict]:
        """Where each sink put the run (its ``describe()``, else its type), for the run's ``sinks`` attribute."""
        out = []
        for sink in self.sinks:
            entry = {"kind": type(sink).__name__}
            with self.failures.guard("sink", f"{_label(sink)}: describe"):
                d = getattr(sink, "describe", None)
                entry = dict(d()) if callable(d) else entry
            out.append(entry)
        return out
