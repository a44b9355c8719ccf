"""Offline analysis of saved checkpoints: the same run store as live capture, one checkpoint per task.

    from phasescope.probes.offline import analyze
    report = analyze("out/", "probes.txt", "runs/offline.zarr", tokens="last", workers=2)

``source`` is a folder of Hugging Face checkpoints (``checkpoint-<step>`` or any sub-folder whose name
holds its step) or a hub model id with ``revisions=["step1000", …]`` (needs a local cache or network).
For every checkpoint the probe set is traced with nnsight (batched, right-padded, attention-masked;
:mod:`.capture`), reduced on the device to covariance spectra and summarised with
``phasescope.spectra.spectrum_metrics`` — the formulas of live capture (RankMe, α-ReQ, … as in Li et
al. 2025, "Tracing the representation geometry of language models"). The run store gets one row per
checkpoint: ``capture_step`` = the checkpoint's training step, so the dashboard and phase detection
read an offline sweep exactly as a live run.

Resumable and safe: an existing store at ``out`` is continued (checkpoints already stored are skipped;
``overwrite=True`` starts afresh); a checkpoint that fails is written as a NaN row with
``flag_failed = 1`` and its error in the ``checkpoint_errors`` attribute, and the sweep goes on;
``trust_remote_code`` is off unless asked; ``.bin`` weights load with ``weights_only=True``.
Checkpoints run in this process or as independent Dask tasks (:mod:`.dask`); ``workers="auto"`` picks a
cluster only when it pays off (:mod:`.workers`). One writer stores them in step order. Ctrl-C ends a sweep
between checkpoint writes (:mod:`.interrupts`): the cluster is shut down, the run is closed
``"interrupted"`` with every committed checkpoint kept, and :class:`AnalyzeInterrupted` says how many.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from phasescope.errors import PhasescopeError
from phasescope.failures import FailureLog
from phasescope.gradients import MATRIX_STATS, select_matrices
from phasescope.probes.options import check_precision
from phasescope.spectra.weights import CHANGE_STATS, WEIGHT_STATS, esd_size
from phasescope.spectra.weights import FITS as WEIGHT_FITS
from phasescope.statistics import names as stat_names
from phasescope.store import RunWriter, open_run
from phasescope.store.lifecycle import error_for, status_for

from ..capture import first_tensor
from ..diagnostics import SCALARS as DIAG_SCALARS
from ..reduce import Reducer, RunSpec
from ..registry import resolve_probes
from ..result import CaptureResult
from .capture import CaptureSpec, CheckpointResult
from .dask import run_dask, run_serial
from .interrupts import Guard, sigint_guard
from .sources import (
    Checkpoint,
    ProbeData,
    build_meta_model,
    find_checkpoints,
    load_config,
    load_texts,
    load_tokenizer,
    tokenize,
)
from .workers import WorkerChoice, choose_workers, memory_workers, needs_measurement, usable_cores

SCALARS = ("loss", "load_seconds", "capture_seconds", "tokens_per_second")
FLAGS = ("failed",)
MODE = "offline-checkpoints"

__all__ = ["AnalyzeInterrupted", "AnalyzeOptions", "AnalyzeReport", "analyze", "probe_layout"]


@dataclass
class AnalyzeOptions:
    """Options of :func:`analyze` (the CLI flags of ``phasescope analyze``)."""

    probes: Any = "auto"  # preset keyword, module names/globs (see probes.registry)
    tokens: str = "last"  # last | all | mean (probes.tokens)
    max_tokens: int | None = None  # tokens="all": seeded subsample of the probe set's tokens
    max_length: int = 128  # truncate probe sequences (Li et al.: 128 for Pythia)
    min_tokens: int = 1  # drop shorter sequences (Li et al. keep > 10 tokens: 11)
    max_sequences: int | None = None  # keep the first N sequences
    batch_size: int = 64
    fit_range: Any = "auto"  # α-ReQ fit range: "auto" or (start, stop)
    gradients: bool = False  # per-matrix gradient statistics of the probe-set loss
    weights: bool = False  # per-matrix weight singular-value statistics
    weight_fit: str = "clauset"  # the weight ESD tail's power-law fit: "clauset" or "ww" (WeightWatcher's xmin)
    reference: str | None = None  # with weights: compare each matrix to a base model ("first", a path or hub id)
    diagnostics: bool = False  # Hessian λ_max and trace and the gradient noise of the first batch's loss
    rankme_raw: bool = False  # also RankMe of the raw rows' singular values (Garrido et al. 2023)
    spectra_precision: str = "auto"  # covariance products: "auto" (the states' dtype) | "float64" | "float32" | "tf32"
    matrices: Any = "blocks"  # which 2-D weights: "blocks" (as live capture), "all", "none" or fn(name, param)
    max_rank: int | None = None  # cap stored eigenvalues (Li et al. keep 2048)
    revisions: Sequence[str] | None = None
    tokenizer: str | None = None
    trust_remote_code: bool = False
    device: str = "cpu"
    dtype: str | None = None  # e.g. "float32", "bfloat16"; None = as saved
    workers: int | str = "auto"  # "auto" (a LocalCluster only if it pays off, see .workers), 0 = this process, N
    threads_per_worker: int = 1
    scheduler: str | None = None  # tcp://host:8786 of an existing Dask cluster
    overwrite: bool = False
    progress: bool = True
    seed: int = 0
    probes_from: str | None = None  # corpus probe sets only: "midtext" (default) or "verses"


@dataclass
class AnalyzeReport:
    """What a sweep did: steps analysed now, skipped (already stored), failed (step -> error)."""

    path: str
    analyzed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    results: list[CheckpointResult] = field(default_factory=list)
    not_computed: dict[str, str] = field(default_factory=dict)  # statistic -> why it stored NaN (first seen)
    workers: int = 0
    seconds: float = 0.0
    choice: WorkerChoice | None = None
    total: int = 0  # checkpoints found at the source
    unwritten: int = 0  # finished out of step order when the sweep was interrupted: not stored

    def where(self) -> str:
        """Where the checkpoints ran, in words."""
        if self.choice is not None and self.choice.requested == "scheduler":
            return "on the Dask scheduler given"
        return "in this process" if self.workers == 0 else f"{self.workers} Dask worker(s)"

    def kept(self) -> int:
        """Checkpoints the run store holds now (stored before, plus written by this sweep)."""
        return len(self.skipped) + len(self.analyzed) + len(self.failed)

    def interrupted(self) -> str:
        """The one line of a sweep ended by Ctrl-C."""
        extra = f" ({self.unwritten} more had finished out of step order and were not kept)" if self.unwritten else ""
        return (
            f"interrupted: {self.kept()} of {self.total} checkpoints analysed and kept in {self.path}{extra}; "
            "rerun the same command without --overwrite to continue (stored checkpoints are skipped)"
        )

    def summary(self) -> str:
        ok = [r for r in self.results if r.ok]
        lines = [
            f"analyzed {len(self.analyzed)} checkpoint(s) in {self.seconds:.1f} s ({self.where()}); "
            f"skipped {len(self.skipped)} already stored; {len(self.failed)} failed"
        ]
        if ok:
            load = sum(r.load_seconds for r in ok) / len(ok)
            tps = sum(r.n_tokens for r in ok) / max(sum(r.capture_seconds for r in ok), 1e-9)
            lines.append(f"per checkpoint: load {load:.2f} s, capture {tps:,.0f} tokens/s")
        for step, err in sorted(self.failed.items()):
            lines.append(f"  step {step} failed: {err}")
        lines.append(f"run store: {self.path}")
        return "\n".join(lines)


class AnalyzeInterrupted(KeyboardInterrupt):
    """Ctrl-C ended a sweep: the run at ``report.path`` is closed "interrupted" with what was committed."""

    def __init__(self, report: AnalyzeReport) -> None:
        super().__init__(report.interrupted())
        self.report = report


def _parse_fit_range(fr: Any) -> Any:
    if fr in (None, "auto"):
        return "auto"
    if isinstance(fr, str):
        try:
            a, b = (int(t) for t in fr.split(","))
        except ValueError:
            raise PhasescopeError(f"fit range {fr!r} must be 'auto' or START,STOP (e.g. 11,100)") from None
        return (a, b)
    return tuple(int(t) for t in fr)


def probe_layout(meta_model, probes: Any) -> tuple[list[tuple[str, str]], list[int]]:
    """Resolve probes on the weightless (meta) model and order them as their modules finish in a
    forward pass (nnsight reads outputs in execution order); widths come from the same pass."""
    import torch

    resolved = resolve_probes(meta_model, probes)
    seen: dict[str, int] = {}
    order: list[str] = []
    hooks = []
    for p in resolved:

        def hook(mod, args, out, name=p.name):
            if name not in seen:
                seen[name] = int(first_tensor(out).shape[-1])
                order.append(name)

        hooks.append(p.module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            # No mask and no pad id: the padding checks would call .item(), which meta tensors refuse.
            meta_model.config.pad_token_id = None
            meta_model(input_ids=torch.zeros((1, 4), dtype=torch.long, device="meta"))
    except Exception as exc:  # noqa: BLE001 - some architectures cannot run on meta: fall back to config widths
        warnings.warn(
            f"could not trace {type(meta_model).__name__} without weights ({type(exc).__name__}); "
            "probe widths taken from the config",
            stacklevel=2,
        )
        width = int(getattr(meta_model.config, "hidden_size", 0) or 0)
        return [(p.name, p.module_name) for p in resolved], [width] * len(resolved)
    finally:
        for h in hooks:
            h.remove()
    missing = [p.name for p in resolved if p.name not in seen]
    if missing:
        raise PhasescopeError(
            f"probe(s) {', '.join(missing)} are not called by the model's forward pass; "
            "choose modules that run (see model.named_modules())"
        )
    by_name = {p.name: p.module_name for p in resolved}
    return [(n, by_name[n]) for n in order], [seen[n] for n in order]


def _stored_steps(out: Path) -> tuple[list[int], dict]:
    """Capture steps committed in an existing run and its attributes; refuses non-offline runs."""
    ds = open_run(out)
    if ds.attrs.get("mode") != MODE:
        raise PhasescopeError(
            f"{out} is a run store not written by `phasescope analyze`; pass --overwrite "
            "to replace it or choose another --out"
        )
    return [int(s) for s in ds["capture_step"].values], dict(ds.attrs)


def analyze(
    source: str | Path, text: str, out: str | Path, options: AnalyzeOptions | None = None, **overrides: Any
) -> AnalyzeReport:
    """Analyse every checkpoint of ``source`` on the probe texts ``text`` into the run store ``out``."""
    opts = options or AnalyzeOptions()
    for k, v in overrides.items():
        if not hasattr(opts, k):
            raise PhasescopeError(f"unknown analyze option {k!r}")
        setattr(opts, k, v)
    t_start = time.perf_counter()
    check_precision(opts.spectra_precision)
    if opts.weight_fit not in WEIGHT_FITS:
        raise PhasescopeError(f"unknown weight fit {opts.weight_fit!r}; choose one of {', '.join(WEIGHT_FITS)}")
    if opts.tokens not in ("last", "all", "mean"):
        raise PhasescopeError(f"--tokens must be last, all or mean, got {opts.tokens!r}")
    if opts.batch_size < 1 or opts.max_length < 1:
        raise PhasescopeError("--batch-size and --max-length must be positive integers")
    if opts.workers not in (None, "auto") and not (isinstance(opts.workers, int) and opts.workers >= 0):
        raise PhasescopeError(f"--workers must be auto or an integer >= 0, got {opts.workers!r}")
    if opts.reference is not None and not opts.weights:
        raise PhasescopeError("--reference compares each checkpoint's weights with a base model's: add --weights")
    fit_range = _parse_fit_range(opts.fit_range)
    out = Path(out)
    ckpts, stages = staged_checkpoints(source, list(opts.revisions) if opts.revisions else None)
    reference = None
    if opts.reference is not None:
        reference = ckpts[0] if opts.reference == "first" else Checkpoint(-1, str(opts.reference))
        load_config(reference, opts.trust_remote_code)  # a missing or unreadable reference fails here, once
    texts = load_texts(str(text), probes_from=opts.probes_from, seed=opts.seed)

    config = load_config(ckpts[0], opts.trust_remote_code)
    meta = build_meta_model(config, opts.trust_remote_code)
    probes, dims = probe_layout(meta, opts.probes)
    named = list(meta.named_parameters()) if (opts.gradients or opts.weights) else []
    chosen = select_matrices(named, opts.matrices)
    matrices = [named[i][0] for i in chosen]
    weight_rank = max((esd_size(tuple(named[i][1].shape)) for i in chosen), default=0) if opts.weights else 0
    del meta, named

    n_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    max_length = min(opts.max_length, int(n_pos)) if n_pos else opts.max_length
    tok_src = opts.tokenizer or ckpts[0].location
    tokenizer = load_tokenizer(tok_src, None if opts.tokenizer else ckpts[0].revision, opts.trust_remote_code)
    data: ProbeData = tokenize(
        texts, tokenizer, max_length, min_tokens=opts.min_tokens, max_sequences=opts.max_sequences
    )
    if opts.tokens == "last" and data.input_ids.shape[0] < 2:
        raise PhasescopeError("the probe set has fewer than 2 sequences; a covariance spectrum needs at least 2")

    max_rank = max(dims) if dims else 0
    if opts.max_rank is not None:
        max_rank = min(max_rank, int(opts.max_rank))
    matrix_stats = ([*MATRIX_STATS] if opts.gradients else []) + ([*WEIGHT_STATS] if opts.weights else [])
    matrix_stats += [*CHANGE_STATS] if reference is not None else []
    spec = CaptureSpec(
        probes=tuple(probes),
        dims=tuple(dims),
        metrics=stat_names("metric", where="offline"),
        max_rank=max_rank,
        tokens=opts.tokens,
        max_tokens=opts.max_tokens,
        seed=opts.seed,
        batch_size=opts.batch_size,
        fit_range=fit_range,
        gradients=opts.gradients,
        weights=opts.weights,
        weight_fit=opts.weight_fit,
        reference=reference,
        diagnostics=opts.diagnostics,
        matrices=tuple(matrices),
        grad_stats=tuple(MATRIX_STATS) if opts.gradients else (),
        device=opts.device,
        dtype=opts.dtype,
        trust_remote_code=opts.trust_remote_code,
        rankme_raw=opts.rankme_raw,
        spectra_precision=opts.spectra_precision,
    )

    # Resume: keep what is stored, do only checkpoints after the last stored step.
    resume = out.exists() and not opts.overwrite
    stored: list[int] = []
    errors: dict[str, str] = {}
    metrics = spec.metrics
    if resume:
        stored, old_attrs = _stored_steps(out)
        errors = dict(old_attrs.get("checkpoint_errors") or {})
        # A run written before a statistic was registered keeps its own metric list.
        metrics = tuple((old_attrs.get("phasescope_layout") or {}).get("metrics") or metrics)
    last = max(stored) if stored else -1
    todo = [c for c in ckpts if c.step > last]
    skipped = [c.step for c in ckpts if c.step in set(stored)]
    unreachable = [c.step for c in ckpts if c.step <= last and c.step not in set(stored)]
    if unreachable:
        warnings.warn(
            f"{len(unreachable)} checkpoint(s) (steps {unreachable[:5]}…) come before the last stored "
            f"step {last} and cannot be appended; pass --overwrite to analyse every checkpoint",
            stacklevel=2,
        )

    attrs = {
        **({"stages": stages} if stages else {}),
        "mode": MODE,
        "model": type_name(config),
        "model_config": _json_config(config),
        "source": str(source) if not stages else {st["name"]: st["meta"]["source"] for st in stages},
        "revisions": list(opts.revisions) if opts.revisions else None,
        "checkpoints": {str(c.step): c.label for c in ckpts},
        "corpus": texts.source,
        "probes_spec": dict(probes),
        "tokens": opts.tokens,
        "max_length": max_length,
        "n_sequences": int(data.input_ids.shape[0]),
        "n_tokens": data.n_tokens,
        "fit_range": list(fit_range) if isinstance(fit_range, tuple) else fit_range,
        "analyze_options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
        "seed": opts.seed,
        "rankme_raw": bool(opts.rankme_raw),
        "spectra_precision": opts.spectra_precision,
    }
    writer = RunWriter(
        out,
        probes=[p for p, _ in probes],
        params=[],
        metrics=list(metrics),
        max_rank=max_rank,
        scalars=[*SCALARS, *(DIAG_SCALARS if opts.diagnostics else ())],
        param_stats=(),
        matrices=matrices,
        matrix_stats=matrix_stats,
        weight_rank=weight_rank,
        flags=FLAGS,
        attrs=attrs,
        overwrite=opts.overwrite,
        resume=resume,
    )
    report = AnalyzeReport(str(out), skipped=skipped, total=len(ckpts))
    with sigint_guard() as guard:
        try:
            # CKA to the first capture needs the first checkpoint's Gram: unknown when a sweep is resumed.
            reducer = Reducer(
                RunSpec(
                    tuple(p for p, _ in probes),
                    tuple(dims),
                    max_rank,
                    fit_range,
                    metrics,
                    flags=FLAGS,
                    weight_rank=writer.layout.weight_rank,
                ),
                FailureLog(),
                fresh=not stored,
            )
            stage_of = _stage_lookup(stages, last)
            _sweep(todo, data, spec, writer, reducer, report, errors, opts, guard, stage_of)
        except BaseException as exc:
            writer.close(status=status_for(exc), error=error_for(exc))
            if isinstance(exc, KeyboardInterrupt):
                raise AnalyzeInterrupted(report) from None
            raise
        with guard.critical():  # a Ctrl-C during the final trim and commit waits for them
            writer.close()
    report.seconds = time.perf_counter() - t_start
    return report


def staged_checkpoints(source: Any, revisions: list[str] | None) -> tuple[list[Checkpoint], list[dict]]:
    """The checkpoints of ``source``, and the stages when it maps stage names to checkpoint folders in
    training order (``{"sft": "ckpts/sft", "rl": "ckpts/grpo"}``, ``--stage sft=ckpts/sft``): each folder's
    steps follow the previous stage's last one (its own ``checkpoint-N`` numbering shifted by an offset),
    so the run has one step axis; each stage records its folder and offset in its metadata."""
    if not isinstance(source, Mapping):
        return find_checkpoints(source, revisions), []
    if not source:
        raise PhasescopeError("no stages given: pass --stage NAME=CHECKPOINT_FOLDER once per stage, in order")
    out: list[Checkpoint] = []
    stages: list[dict] = []
    offset = 0
    for name, folder in source.items():
        found = find_checkpoints(folder, revisions)
        shifted = [dataclasses.replace(c, step=c.step + offset) for c in found]
        stages.append(
            {
                "name": str(name),
                "first_step": shifted[0].step,
                "last_step": shifted[-1].step,
                "trainer": None,
                "meta": {"source": str(folder), "step_offset": offset},
            }
        )
        out += shifted
        offset = shifted[-1].step + 1
    return out, stages


def _stage_lookup(stages: list[dict], last_stored: int) -> Callable[[int], str | None]:
    """step → its stage's name for the reducer (CKA to the stage's first capture); "" for a stage whose
    first checkpoint a resumed sweep stored before (its start unseen); None without stages."""

    def stage_of(step: int) -> str | None:
        for st in reversed(stages):
            if step >= st["first_step"]:
                return "" if st["first_step"] <= last_stored else st["name"]
        return None

    return stage_of


def _plan(todo: list[Checkpoint], opts: AnalyzeOptions) -> WorkerChoice | None:
    """Where the sweep runs, decided before any checkpoint; None when "auto" needs a checkpoint's time."""
    if opts.scheduler:
        return WorkerChoice(0, f"as asked: --scheduler {opts.scheduler}", requested="scheduler")
    if opts.workers not in (None, "auto"):
        return WorkerChoice(opts.workers, f"as asked: --workers {opts.workers}", requested=opts.workers)
    cores, fit = usable_cores(), memory_workers(todo)
    if needs_measurement(len(todo), cores, device=opts.device, max_workers=fit):
        return None
    return choose_workers(len(todo), None, cores, device=opts.device, max_workers=fit)


def _results(
    todo: list[Checkpoint],
    data: ProbeData,
    spec: CaptureSpec,
    opts: AnalyzeOptions,
    guard: Guard,
    chosen: Callable[[WorkerChoice], None],
) -> Iterator[CheckpointResult]:
    """Checkpoint results in completion order, from where the workers choice puts them. Under "auto", when
    a cluster might pay off, the first checkpoint runs here and its time decides the rest."""
    choice, rest = _plan(todo, opts), todo
    if choice is None:
        t = time.perf_counter()
        first = next(run_serial(todo[:1], data, spec))
        seconds = time.perf_counter() - t
        rest = todo[1:]
        choice = choose_workers(
            len(rest), seconds, usable_cores(), device=opts.device, max_workers=memory_workers(todo)
        )
        chosen(WorkerChoice(choice.workers, f"{choice.reason}, timed on the first checkpoint"))
        yield first
    else:
        chosen(choice)
    if choice.workers == 0 and not opts.scheduler:
        yield from run_serial(rest, data, spec)
    elif rest:
        yield from run_dask(
            rest,
            data,
            spec,
            workers=max(1, choice.workers),
            threads_per_worker=opts.threads_per_worker,
            scheduler=opts.scheduler,
            critical=guard.critical,
        )


def _sweep(
    todo: list[Checkpoint],
    data: ProbeData,
    spec: CaptureSpec,
    writer,
    reducer: Reducer,
    report: AnalyzeReport,
    errors: dict[str, str],
    opts: AnalyzeOptions,
    guard: Guard,
    stage_of: Callable[[int], str | None] = lambda step: None,
) -> None:
    """Run the tasks and write their results in step order as soon as each prefix is complete."""
    if not todo:
        return

    def chosen(choice: WorkerChoice) -> None:
        report.choice, report.workers = choice, choice.workers
        tqdm.write(choice.describe())
        with guard.critical():
            writer.set_attrs(analyze_workers=choice.to_json())

    results = _results(todo, data, spec, opts, guard, chosen)
    bar = None
    if opts.progress:
        bar = tqdm(total=len(todo), desc="analyze", unit="ckpt", mininterval=0.5)
    pending: dict[int, CheckpointResult] = {}
    order = [c.step for c in todo]
    nxt = 0
    try:
        for res in results:
            if guard.raised:  # Ctrl-C came inside a checkpoint and was caught there as its failure: stop, keep it out
                raise KeyboardInterrupt
            pending[res.step] = res
            if bar is not None:
                bar.update(1)
                if res.ok:
                    bar.set_postfix(
                        step=res.step,
                        load=f"{res.load_seconds:.1f}s",
                        tok_s=f"{res.n_tokens / max(res.capture_seconds, 1e-9):,.0f}",
                    )
                else:
                    bar.set_postfix(step=res.step, failed=True)
            while nxt < len(order) and order[nxt] in pending:
                with guard.critical():  # a checkpoint's rows are written whole, even under Ctrl-C
                    _write(writer, reducer, pending.pop(order[nxt]), report, errors, stage_of)
                nxt += 1
    finally:
        report.unwritten = len(pending)
        results.close()  # shuts a cluster down now, not when the generator is collected
        if bar is not None:
            bar.close()


def _write(
    writer,
    reducer: Reducer,
    res: CheckpointResult,
    report: AnalyzeReport,
    errors: dict[str, str],
    stage_of: Callable[[int], str | None] = lambda step: None,
) -> None:
    """One checkpoint through the one reducer (the live path's), then into the store."""
    report.results.append(res)
    tps = res.n_tokens / res.capture_seconds if res.ok and res.capture_seconds > 0 else float("nan")
    cap = res.capture if res.ok else CaptureResult(res.step, capture=True)  # a failed checkpoint: a NaN row
    cap.stage = stage_of(res.step)
    cap.scalars.update(
        loss=res.loss, load_seconds=res.load_seconds, capture_seconds=res.capture_seconds, tokens_per_second=tps
    )
    cap.flags["failed"] = 0 if res.ok else 1
    step, row = reducer.reduce(cap)  # a metric that fails gives NaN for that probe (counted, warned)
    if res.ok and cap.lost:  # ... and marks the checkpoint failed; the sweep goes on
        res.error = (
            f"metrics failed for {cap.lost} probe(s) (first failure of the sweep: "
            f"{reducer.failures.first.get('metric', '?')})"
        )
        step.flags["failed"] = 1
    writer.append_step(step.step, step.scalars, step.params, step.flags)
    writer.append_capture(
        row.step, row.metrics, row.eigenvalues, row.n_samples, row.matrices, weight_eigenvalues=row.weight_eigenvalues
    )
    new = {k: f"{v} (checkpoint {res.step})" for k, v in res.skipped.items() if k not in report.not_computed}
    if new:  # a statistic that stored NaN: its first reason, in the run's attributes
        report.not_computed.update(new)
        writer.set_attrs(statistics_skipped=dict(report.not_computed))
    if res.error is None:
        report.analyzed.append(res.step)
    else:
        report.failed[res.step] = res.error or "unknown error"
        errors[str(res.step)] = res.error or "unknown error"
        writer.set_attrs(checkpoint_errors=errors, **reducer.failures.attrs())


def type_name(config) -> str:
    arch = getattr(config, "architectures", None)
    return arch[0] if arch else type(config).__name__.replace("Config", "")


def _json_config(config) -> dict:
    import json

    try:
        return json.loads(config.to_json_string())
    except (TypeError, ValueError):
        return {"model_type": getattr(config, "model_type", "?")}
