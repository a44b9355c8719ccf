"""Recorder: the framework-neutral recording path (numpy, torch or jax arrays in, store rows out).

    rec = Recorder("runs/x.zarr")
    for step in range(n):
        ...
        rec.record(step, activations={"block.0": h0, "final": hN},    # (samples, dim) or (batch, seq, dim)
                   grads={"dense.kernel": g, ...}, loss=loss, lr=lr)
    rec.close()

Per step the Recorder fills one :class:`~phasescope.probes.result.CaptureResult` — gradient L2 norms
‖g_i‖₂ computed by the arrays' own backend on their device (:func:`phasescope.gradients.array_norms`),
the covariance spectrum of each probe's samples (:class:`~phasescope.spectra.CovarianceAccumulator`,
on the device), the centred Gram of the first samples (linear CKA), and for the 2-D gradients named in
``matrices`` their singular-value statistics — and submits it to the run's one background writer
(:class:`phasescope.store.AsyncRunWriter`), whose thread runs the one reducer
(:class:`phasescope.probes.reduce.Reducer`: every registered metric, once) and writes the rows. The
:class:`~phasescope.probes.Observatory`, the JAX observer and the HF/Lightning callbacks record
through this class; ``phasescope analyze`` reduces with the same Reducer.

The layout (probe names and widths, parameter names and shapes) is fixed by the constructor or by the
first :meth:`Recorder.record`; a later step with an unknown name or another width/shape is a misuse
and raises :class:`~phasescope.errors.PhasescopeError` before anything of that step is stored. Any
other failure inside phasescope goes through the run's :class:`~phasescope.failures.FailureLog`:
warned once, counted in the store (``failures`` attribute, ``flag_lost``), never raised unless
``strict``. CUDA values are copied to the host without blocking; the writer waits on a CUDA event
recorded after the copies before it reads them.
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from phasescope.errors import PhasescopeError
from phasescope.failures import FailureLog
from phasescope.gradients import MATRIX_STATS, array_norms, gradient_matrix_stats
from phasescope.probes.options import check_precision
from phasescope.spectra import CovarianceAccumulator
from phasescope.spectra.similarity import CKA_SAMPLES, centered_gram
from phasescope.statistics import names as stat_names
from phasescope.store import AsyncRunWriter, status_for
from phasescope.store.lifecycle import error_for

from .reduce import FLAG_BITS, FLAGS, NONFINITE_ACT, Reducer, RunSpec
from .result import CaptureResult
from .sinks import DRAIN_TIMEOUT_S, INTERRUPTED_DRAIN_S, SinkSet, build_sinks
from .stages import StageLog

PARAM_STATS = ("grad_norm", "update_ratio")
SCALARS = ("loss", "lr", "grad_norm", "loss_scale")
OPEN: weakref.WeakSet = weakref.WeakSet()  # Observatories and Recorders to close at interpreter exit


class HostCopier:
    """The device→host copies of one step: ``copy(x)`` starts a non-blocking copy of a CUDA tensor (a
    no-op for CPU tensors and other arrays); ``event()`` then records the CUDA event that completes
    them all (None when nothing came from a GPU). The writer synchronises on it before reading."""

    def __init__(self) -> None:
        self.from_cuda = False

    def __call__(self, x):
        if type(x).__module__.startswith("torch"):
            if x.device.type == "cuda":
                self.from_cuda = True
                return x.detach().to("cpu", non_blocking=True)
            return x.detach()
        return x

    def note(self, x) -> None:
        """Count ``x`` (read later on the writer thread, not copied now) as a GPU value if it is one."""
        if type(x).__module__.startswith("torch") and x.device.type == "cuda":
            self.from_cuda = True

    def event(self, previous: Any = None) -> Any:
        if not self.from_cuda:
            return previous
        import torch

        event = torch.cuda.Event()
        event.record()
        return event


def spectrum_of(value, dim: int, raw: bool = False, precision: str = "auto"):
    """The covariance spectrum of (samples, …, dim) rows or of a filled accumulator (``raw``: with the
    raw singular values of the rows, for ``rankme_raw``; ``precision``: of the covariance products)."""
    if isinstance(value, CovarianceAccumulator):
        return value.compute()
    return CovarianceAccumulator(dim, raw, precision=precision).update(value).compute()


def gram_of(value, max_samples: int = CKA_SAMPLES):
    """Centred Gram of the first ``max_samples`` rows of a (samples, dim) array (None for accumulators)."""
    if isinstance(value, CovarianceAccumulator) or value is None:
        return None
    rows = value.reshape(-1, value.shape[-1]) if len(value.shape) > 2 else value
    return centered_gram(rows[:max_samples]) if rows.shape[0] >= 2 else None


class Recorder:
    """Record training steps from any framework into a phasescope run store (see module docstring).

    ``probes``/``params``: names in store order (default: the keys of the first step's
    ``activations``/``grads``); ``dims``: each probe's width (default: read from the first step's
    activations); ``matrices``: names of 2-D gradients whose singular-value statistics are stored
    when that gradient is given together with activations (a capture step), or ``"all"`` for every
    2-D gradient seen in the first step. ``writer=False`` validates but writes nothing (ranks other
    than 0); ``None`` means "rank 0 of torch.distributed if it is initialised, else True".
    ``cka_samples``: the samples (first rows) kept per capture for linear CKA; pass 0 when the
    activations are not the same samples at every step. Queue bounds: ``queue_size`` entries and
    ``queue_captures`` captures wait at most; ``put_timeout`` seconds of waiting before the oldest
    entry is dropped (:class:`phasescope.store.AsyncRunWriter`'s drop policy). ``rankme_raw``: also
    RankMe of the raw rows' singular values (Garrido et al. 2023; off by default). ``spectra_precision``:
    of the covariance products ("auto": the activations' float32 or float64; "float64" | "float32" |
    "tf32"; :class:`phasescope.spectra.CovarianceAccumulator`). ``sinks``: trackers that
    also get the stored scalars, e.g. ``["tensorboard", "wandb", "mlflow"]`` (:mod:`phasescope.probes.sinks`).
    ``scalars`` / ``param_stats``: step variables stored beyond loss, lr, grad_norm and loss_scale, and
    per-parameter ones beyond grad_norm and update_ratio (e.g. the Observatory's ``hessian_top``, ``gsnr``).
    """

    def __init__(
        self,
        store,
        probes: list[str] | None = None,
        params: list[str] | None = None,
        *,
        dims: Mapping[str, int] | None = None,
        matrices: Sequence[str] | str = (),
        metadata: dict | None = None,
        overwrite: bool = False,
        resume: bool = False,
        fit_range="auto",
        max_rank: int | None = None,
        queue_size: int = 256,
        queue_captures: int = 32,
        put_timeout: float = 1.0,
        write_interval: float = 0.5,
        writer: bool | None = None,
        matrix_stats: tuple[str, ...] | None = None,
        flush_at_exit: bool = True,
        cka_samples: int = CKA_SAMPLES,
        strict: bool = False,
        failures: FailureLog | None = None,
        sinks: Any = (),
        rankme_raw: bool = False,
        spectra_precision: str = "auto",
        scalars: tuple[str, ...] = (),
        param_stats: tuple[str, ...] = (),
        weight_rank: int = 0,
        loss_sets: Sequence[str] = (),
    ):
        self._store_path, self._overwrite, self._resume = store, overwrite, resume
        self._sink_list = build_sinks(sinks, store)  # validated now, opened at their first write
        self.sinks: SinkSet | None = None
        self._flush_at_exit = flush_at_exit
        self.probe_names = list(probes) if probes is not None else None
        self.param_names = list(params) if params is not None else None
        self._dims_given = dict(dims or {})
        self._matrices = matrices
        self.matrix_stats = tuple(matrix_stats) if matrix_stats is not None else MATRIX_STATS
        # step variables beyond loss/lr/grad_norm/loss_scale and per-parameter ones beyond the gradient
        # norms and update ratios (the curvature and gradient-noise statistics)
        self.scalars = (*SCALARS, *(s for s in scalars if s not in SCALARS))
        self.param_stats = (*PARAM_STATS, *(s for s in param_stats if s not in PARAM_STATS))
        self.fit_range = fit_range
        self.max_rank_cap = max_rank
        self.weight_rank = int(weight_rank)  # ESD length stored per weight matrix (weight spectra), 0: none
        self.loss_sets = list(loss_sets)  # evaluation sets whose loss each capture stores (set_loss)
        self.cka_samples = int(cka_samples)
        self._queue: dict[str, Any] = dict(
            max_pending_steps=int(queue_size),
            max_pending_captures=int(queue_captures),
            block_timeout_s=float(put_timeout),
            interval_s=float(write_interval),
        )
        self.attrs = dict(metadata or {})
        self.attrs.setdefault("rankme_raw", bool(rankme_raw))  # an Observatory's metadata says it already
        self.rankme_raw = bool(self.attrs["rankme_raw"])
        self.attrs.setdefault("spectra_precision", check_precision(spectra_precision))
        self.spectra_precision = str(self.attrs["spectra_precision"])
        self.failures = failures if failures is not None else FailureLog(strict=strict)
        self.stages = StageLog()  # stages started with Recorder.stage (an Observatory keeps its own)
        self.is_writer = bool(rank() == 0 if writer is None else writer)
        self.async_writer: AsyncRunWriter | None = None
        self.reducer: Reducer | None = None
        self._ready = False
        self._closed = False
        self._last_step: int | None = None
        self._grad_shapes: dict[str, tuple] = {}
        self.n_captures = 0
        self.dims: list[int] = []
        self.max_rank = 0
        self.matrix_names: list[str] = []
        if (
            self.probe_names is not None
            and self.param_names is not None
            and all(p in self._dims_given for p in self.probe_names)
            and not isinstance(matrices, str)
        ):
            self._open(self._dims_given)

    # ------------------------------------------------------------------ layout
    @property
    def _probes(self) -> list[str]:
        """The probe names, fixed by probes= or the first recorded step."""
        if self.probe_names is None:
            raise PhasescopeError("the Recorder's probe names are not known yet (no step recorded)")
        return self.probe_names

    @property
    def _params(self) -> list[str]:
        """The parameter names, fixed by params= or the first recorded step."""
        if self.param_names is None:
            raise PhasescopeError("the Recorder's parameter names are not known yet (no step recorded)")
        return self.param_names

    def _open(self, dims: Mapping[str, int]) -> None:
        """Fix the layout and (on the writing process) create the store."""
        self.dims = [int(dims.get(p, 0)) for p in self._probes]
        max_rank = max(self.dims) if self.dims else 0
        if self.max_rank_cap is not None:
            max_rank = min(max_rank, int(self.max_rank_cap))
        self.max_rank = max_rank
        if isinstance(self._matrices, str):
            self.matrix_names = (
                [n for n, s in self._grad_shapes.items() if len(s) == 2] if self._matrices == "all" else []
            )
        else:
            self.matrix_names = list(self._matrices)
        unknown = [m for m in self.matrix_names if m not in self._params]
        if unknown:
            raise PhasescopeError(
                f"matrices {unknown} are not among the params {self._params[:6]}…; name gradients that are recorded"
            )
        weight_rank = self.weight_rank if self.matrix_names else 0
        spec = RunSpec(
            tuple(self._probes),
            tuple(self.dims),
            max_rank,
            self.fit_range,
            stat_names("metric", where="live"),
            weight_rank=weight_rank,
        )
        self.reducer = Reducer(spec, self.failures, fresh=not self._resume)
        self._ready = True
        if not self.is_writer:
            return
        self.attrs.setdefault("finished", False)
        self.attrs.setdefault("flag_bits", FLAG_BITS)
        if self._sink_list:
            self.sinks = SinkSet(self._sink_list, self.failures, self.scalars, self._probes)
        self.async_writer = AsyncRunWriter(
            self._store_path,
            reduce=self._rows,
            failures=self.failures,
            raise_errors=self.failures.strict,
            **self._queue,
            probes=list(self._probes),
            params=list(self._params),
            metrics=list(spec.metrics),
            max_rank=max_rank,
            scalars=list(self.scalars),
            param_stats=list(self.param_stats),
            matrices=self.matrix_names,
            matrix_stats=list(self.matrix_stats) if self.matrix_names else [],
            weight_rank=weight_rank,
            loss_sets=self.loss_sets,
            set_stats=["loss"] if self.loss_sets else [],
            flags=FLAGS,
            attrs=self.attrs,
            overwrite=self._overwrite,
            resume=self._resume,
        )
        _register_exit_hook()  # after zarr is imported
        if self._flush_at_exit:
            OPEN.add(self)

    def _rows(self, res: CaptureResult) -> tuple[dict, dict | None]:
        """Writer thread: the reducer's values as the writer's row arguments."""
        if self.reducer is None:
            raise PhasescopeError("a capture reached the writer before the Recorder's layout was fixed")
        step, cap = self.reducer.reduce(res)
        if self.sinks is not None:  # the values the store gets, queued for the sinks thread
            self.sinks.send(step, cap)
        return vars(step), (vars(cap) if cap is not None else None)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def writer(self):
        """The store's RunWriter (None before the layout is known and on ranks other than 0)."""
        return self.async_writer.writer if self.async_writer is not None else None

    def _first_layout(self, step: int, activations: Mapping, grads: Mapping) -> None:
        if self.probe_names is None:
            self.probe_names = list(activations)
        if self.param_names is None:
            self.param_names = list(grads)
        dims = dict(self._dims_given)
        for name, a in activations.items():
            if name in self._probes and name not in dims:
                dims[name] = _width(a)
        missing = [p for p in self._probes if p not in dims]
        if missing:
            raise PhasescopeError(
                f"step {step}: no width known for probe(s) {missing}; pass dims={{name: width}} "
                "to Recorder or give activations for every probe at the first recorded step"
            )
        for name, g in grads.items():
            if g is not None:
                self._grad_shapes.setdefault(name, _shape(g))
        self._open(dims)

    def _check(self, step: int, activations: Mapping, grads: Mapping) -> None:
        bad = [k for k in activations if k not in self._probes]
        if bad:
            raise PhasescopeError(
                f"step {step}: unknown activation name(s) {bad}; this run records probes "
                f"{self._probes} (names are fixed by the first step or probes=)"
            )
        bad = [k for k in grads if k not in self._params]
        if bad:
            raise PhasescopeError(
                f"step {step}: unknown gradient name(s) {bad}; this run records params "
                f"{self._params[:8]} (names are fixed by the first step or params=)"
            )
        for name, a in activations.items():
            if a is None:
                continue
            d = self.dims[self._probes.index(name)]
            w = _width(a)
            if w != d:
                raise PhasescopeError(
                    f"step {step}: activations[{name!r}] has width {w} but this run records "
                    f"width {d} for it; pass (samples, {d}) arrays every step"
                )
        for name, g in grads.items():
            if g is None:
                continue
            s, first = _shape(g), self._grad_shapes.setdefault(name, _shape(g))
            if s != first:
                raise PhasescopeError(
                    f"step {step}: grads[{name!r}] has shape {s} but had shape {first} before; "
                    "gradients must keep their parameter's shape"
                )

    # ------------------------------------------------------------------ public recording
    def record(
        self,
        step: int,
        activations: Mapping[str, Any] | None = None,
        grads: Mapping[str, Any] | None = None,
        loss: Any = None,
        lr: float | None = None,
        *,
        flags: Mapping[str, int] | None = None,
    ) -> None:
        """Record training step ``step`` (strictly increasing): see the module docstring."""
        if self._closed:
            raise PhasescopeError("this Recorder is closed; create a new one (resume is not supported here)")
        step = int(step)
        if self._last_step is not None and step <= self._last_step:
            raise PhasescopeError(
                f"step {step} is not after the last recorded step {self._last_step}; "
                "record each step once, with increasing step numbers"
            )
        activations = dict(activations or {})
        grads = dict(grads or {})
        if not self._ready:
            self._first_layout(step, activations, grads)
        self._check(step, activations, grads)
        self._last_step = step
        if self.stages.on_step(step):
            self.set_attrs(stages=self.stages.to_json())
        if not self.is_writer:
            return
        copy = HostCopier()
        res = CaptureResult(step, scalars={"loss": copy(_detached(loss)), "lr": lr}, flags=dict(flags or {}))
        res.stage = self.stages.seen
        if grads:
            with self.failures.guard("step", f"gradient norms at step {step}") as g:
                norms, res.present = array_norms([grads.get(n) for n in self._params])
                res.grad_norms = copy(norms)
            res.lost += g.failed
        if activations:
            self.capture_arrays(res, [activations.get(p) for p in self._probes])
            for s in res.spectra or []:
                copy.note(s.eigenvalues if s is not None else None)  # device spectra: the event covers them
            if self.matrix_names and grads:
                with self.failures.guard("capture", "matrix statistics") as g:
                    stats = gradient_matrix_stats([grads.get(n) for n in self.matrix_names])
                    res.matrices = {k: copy(v) for k, v in stats.items() if k in self.matrix_stats}
                res.lost += g.failed
        res.event = copy.event()
        self.submit(res)

    def capture_arrays(self, res: CaptureResult, values: list) -> None:
        """Spectra (and CKA Grams) of each probe's samples — arrays or filled accumulators — into ``res``;
        a probe whose reduction fails is counted as lost (``flag_lost``) and left empty."""
        spectra, grams = [None] * len(values), [None] * len(values)
        for i, v in enumerate(values):
            if v is None:
                continue
            with self.failures.guard("capture", f"probe {self._probes[i]!r}"):
                spectra[i] = spectrum_of(v, self.dims[i], self.rankme_raw, self.spectra_precision)
                if self.cka_samples:
                    grams[i] = gram_of(v, self.cka_samples)
                continue
            res.lost += 1
        self.add_spectra(res, spectra, grams)

    def add_spectra(
        self, res: CaptureResult, spectra: list, grams: list | None = None, *, nonfinite: bool = False
    ) -> None:
        """Attach per-probe spectra (and Grams) to ``res`` as this step's capture; rows dropped for
        NaN/Inf (in a spectrum, or ``nonfinite``: in accumulators that kept no row at all) set the
        activation bit of ``flag_nonfinite`` now, so a later drop of the capture payload keeps it."""
        if nonfinite or any(s is not None and s.n_nonfinite for s in spectra):
            res.flags["nonfinite"] = res.flags.get("nonfinite", 0) | NONFINITE_ACT
        res.spectra, res.grams = spectra, grams
        res.capture = True
        self.n_captures += 1

    def submit(self, res: CaptureResult) -> None:
        """Queue a finished result for the writer thread (its drop policy applies; raises only a strict
        failure of a sink, here on the training thread)."""
        if self.async_writer is None:
            return
        if self.sinks is not None:
            self.sinks.raise_failure()
        with self.failures.guard("write", f"step {res.step}"):
            self.async_writer.submit(res)

    # ------------------------------------------------------------------ lifetime
    def stage(self, name: str, *, trainer: str | None = None, **meta: Any) -> None:
        """Start training stage ``name`` at the next recorded step (see ``phasescope.probes.stages``)."""
        self.stages.start(name, trainer=trainer, meta=meta)

    def set_attrs(self, **kv: Any) -> None:
        """Add run attributes (before or after the store exists)."""
        self.attrs.update(kv)
        if self.async_writer is not None:
            with self.failures.guard("write", "attributes"):
                self.async_writer.set_attrs(**kv)

    def close(self, *, error: BaseException | None = None) -> None:
        """Write what is queued, trim the run and mark it finished (interrupted on KeyboardInterrupt,
        failed on another ``error``); idempotent."""
        if self._closed:
            return
        self._closed = True
        OPEN.discard(self)
        if self.stages.close():
            self.set_attrs(stages=self.stages.to_json())
        w = self.async_writer
        if w is None:
            return
        try:
            if self.sinks is not None:
                self._close_sinks(w, self.sinks, error)
        except BaseException as exc:  # strict: a sink's failure met while closing fails the run, as at a step
            error = error or exc
            raise
        finally:
            with self.failures.guard("close", "closing the store"):
                if w.alive:
                    w.set_attrs(n_captures_taken=self.n_captures)
                w.close(status=status_for(error), error=error_for(error))

    def _close_sinks(self, w: AsyncRunWriter, sinks: SinkSet, error: BaseException | None) -> None:
        """Before the store closes (so their failures are counted in it): once every row is written and
        the sinks have taken every value, the run's phases (at a normal close); then the sinks close,
        and where they wrote is kept in the ``sinks`` attribute."""
        try:
            with self.failures.guard("close", "writing the queued rows"):
                w.flush()  # every row reduced, so every value handed to the sinks
        finally:
            try:
                wait = INTERRUPTED_DRAIN_S if isinstance(error, KeyboardInterrupt) else DRAIN_TIMEOUT_S
                if sinks.drain(wait) and error is None:
                    sinks.send_phases(self._store_path)
            finally:
                sinks.close(status_for(error))
                if w.alive:
                    with self.failures.guard("close", "the sinks attribute"):
                        w.set_attrs(sinks=sinks.describe())

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error=exc)


def _detached(x):
    return x.detach().float() if type(x).__module__.startswith("torch") else x


def _shape(x) -> tuple:
    return tuple(int(s) for s in x.shape)


def _width(a) -> int:
    if isinstance(a, CovarianceAccumulator):
        return a.dim
    if len(a.shape) < 2:
        raise PhasescopeError(f"activations must be (samples, dim) or (batch, …, dim) arrays, got shape {_shape(a)}")
    return int(a.shape[-1])


def rank() -> int:
    """This process's torch.distributed rank (0 when torch is not imported or not initialised)."""
    if "torch" not in sys.modules:
        return 0
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


_EXIT_HOOK = False
_UNCAUGHT: list = []  # the exception that is ending the process, seen by sys.excepthook before atexit


def _register_exit_hook() -> None:
    """Run :func:`_close_forgotten` at exit *before* thread pools shut down (zarr writes through one),
    and note an uncaught exception on its way out (``sys.excepthook`` runs before the exit hooks).

    ``threading._register_atexit`` callbacks run in reverse registration order before the
    interpreter joins threads, so registering after zarr/asyncio are imported runs ours first.
    """
    global _EXIT_HOOK
    if _EXIT_HOOK:
        return
    _EXIT_HOOK = True
    previous = sys.excepthook

    def note_uncaught(kind, value, tb):
        _UNCAUGHT.append(value)
        previous(kind, value, tb)

    sys.excepthook = note_uncaught
    reg = getattr(threading, "_register_atexit", None)
    with contextlib.suppress(RuntimeError):  # already shutting down
        if reg is not None:
            reg(_close_forgotten)
        else:
            atexit.register(_close_forgotten)


def _close_forgotten() -> None:
    """At interpreter exit, write what unclosed Observatories/Recorders still hold: "interrupted" when
    Ctrl-C ended the process, "failed" with the uncaught error, else failed for the missing close()."""
    error = _UNCAUGHT[-1] if _UNCAUGHT else RuntimeError("the process exited without Observatory.close()")
    for obs in list(OPEN):
        with contextlib.suppress(Exception):  # best effort at exit
            obs.close(error=error)
