"""Observatory: attach phasescope to a plain PyTorch training loop in a few lines.

    with Observatory(model, store="runs/x.zarr", probe_inputs=probe_batch) as obs:
        for step, batch in enumerate(loader):
            loss = loss_fn(model(**batch)); loss.backward()
            obs.step(step, loss=loss, lr=sched.get_last_lr()[0])   # after backward, before optimizer.step
            opt.step(); opt.zero_grad()

A torch adapter over :class:`~phasescope.probes.Recorder`: every step it fills one
:class:`~phasescope.probes.result.CaptureResult` — per-parameter gradient L2 norms (one fused op,
one small host copy), loss, lr; on the capture schedule the covariance spectra (and CKA Grams) of the
probes' token states, from a fixed probe set under no_grad/eval or from the training forward itself;
on the matrix schedule the singular-value statistics of every selected 2-D gradient; on the update
schedule ‖Δw‖/‖w‖ — and submits it to the Recorder, whose one background writer reduces it
(:mod:`phasescope.probes.reduce`) and stores it. Options: :class:`~phasescope.probes.options.
ObservatoryOptions` (keywords of the constructor); torch.distributed/FSDP: :mod:`.distributed`.

Failures inside phasescope go through one :class:`~phasescope.failures.FailureLog`: warned once, counted
in the run (``failures``, ``flag_lost``), shown red in the dashboard, never raised into the training
loop unless ``strict=True``. Hooks exist only while a capture needs them and are always removed
(``close()``, ``with``), on exceptions too. A run ended by an exception is marked failed, by Ctrl-C
interrupted; an Observatory never closed is closed at interpreter exit and marked failed.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

from phasescope.errors import PhasescopeError
from phasescope.failures import FailureLog
from phasescope.gradients import (
    MATRIX_STATS,
    InitDistance,
    UpdateTracker,
    current_scale,
    grad_norms,
    gradient_matrix_stats,
    matrix_group,
    select_matrices,
)
from phasescope.gradients.curvature import set_losses
from phasescope.spectra.weights import CHANGE_STATS, WEIGHT_STATS, WeightReference, esd_size, weight_matrix_stats
from phasescope.statistics import statistics as registered_statistics

from . import distributed as D
from . import schedules as S
from .capture import InFlight, ProbeSet
from .diagnostics import PARAM_STATS as DIAG_PARAMS
from .diagnostics import SCALARS as DIAG_SCALARS
from .diagnostics import Diagnostics, default_loss, forward
from .inputs import Batch, build_probe_inputs
from .options import ObservatoryOptions
from .recorder import OPEN, HostCopier, Recorder
from .registry import describe_probes, resolve_probes
from .result import CaptureResult
from .sinks import build_sinks
from .stages import StageLog
from .tokens import as_selection
from .vision import default_tokens

DIST = ("distance_from_init",)  # the distance statistic's step scalar and per-parameter variable


class Observatory:
    """Live capture from a PyTorch training loop into a phasescope run store (see module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained (DDP and FSDP wrappers are seen through).
    store : str or path
        The run store to write: a Zarr v3 folder (or an fsspec URL).
    probes : str, list, dict or callable, default "auto"
        Which modules to read: a preset keyword (``auto``, ``blocks``, ``attn``, ``mlp``, ``final_norm``,
        ``all``), module names, globs, ``re:`` patterns, a predicate ``(name, module) -> bool``, or
        ``{probe name: selector}``. ``auto`` knows transformer blocks (Hugging Face, torchvision and timm
        ViTs), ResNets, timm CNNs and ``nn.Sequential`` stacks (:mod:`~phasescope.probes.presets`,
        :mod:`~phasescope.probes.vision`); an unknown name lists the closest valid ones.
    schedule : callable, list of steps or None
        When to capture spectra (default: the cost preset's); it also sets when the gradient SVD and the
        update ratios run unless ``matrix_schedule`` / ``update_schedule`` are given.
    probe_inputs : optional
        A fixed probe set: token ids ``{"input_ids", "attention_mask"}``, a tensor, a tuple or dict of
        tensors, or a DataLoader (:mod:`~phasescope.probes.inputs`), passed to ``forward`` as it takes
        them. None: the probes are read from the training forward itself (``capture="in_flight"``): no
        extra forward, but each spectrum has only the training batch's samples (32 samples cap a
        64-wide layer's spectrum at 31 eigenvalues; the data-quality table flags it).
    tokens : {"last", "first", "mean", "all"} or None
        Which token states of (N, T, d) outputs become samples; None: the architecture's (the class
        token of a ViT, else the last token, as Li et al. 2025). Other shapes have their own
        reductions (``reduction``, :mod:`~phasescope.probes.shapes`).
    metadata : dict, optional
        JSON values stored in the run's attributes.
    overwrite : bool, default False
        Replace an existing run store (otherwise it is refused, never overwritten silently).
    fit_range : "auto" or (start, stop), default "auto"
        The α-ReQ fit range (Li et al. 2025: (11, 100); "auto" adapts it to small models).
    options : ObservatoryOptions, optional
        Every other option, each also a keyword of this constructor (listed at the end): the cost
        ``preset``, ``reduction``, ``strict``, the writer's queue, ``sinks`` (TensorBoard, W&B, MLflow),
        torch.distributed, mixed precision.

    Notes
    -----
    Under ``torch.distributed`` (auto-detected) every rank creates the Observatory and calls ``step``
    at the same steps; each rank captures a shard of the probe set and the accumulators are
    all-reduced exactly before the eigendecomposition; gradient statistics come from rank 0's
    synchronised gradients (FSDP2: sharded norms, SVD statistics skipped with the reason stored);
    only rank 0 writes. See :mod:`phasescope.probes.distributed`. With a GradScaler pass
    ``grad_scaler`` and ``optimizer`` so statistics are of unscaled gradients.
    """

    def __init__(
        self,
        model,
        store,
        probes="auto",
        schedule=None,
        probe_inputs=None,
        tokens=None,
        metadata: dict | None = None,
        overwrite: bool = False,
        fit_range="auto",
        *,
        options: ObservatoryOptions | None = None,
        **option_overrides: Any,
    ):
        o = self.options = ObservatoryOptions.build(options, option_overrides)
        model = D.unwrap(model)
        self.model = model
        self.group = o.process_group
        self.rank, self.world = D.dist_info(o.distributed, o.process_group)
        self.fsdp_roots = D.fsdp_roots(model)  # FSDP2 on one rank too: its root keeps an unsharded copy
        self.is_writer = self.rank == 0
        pre = S.preset(o.preset)
        self.preset = pre
        self.capture_schedule = (
            S.as_schedule(schedule) if schedule is not None else pre.schedule_for("spectral_geometry")
        )
        # A user-given capture schedule also sets when the (costly) gradient SVD and update ratios run,
        # so capture_step rows are exactly the scheduled steps; pass matrix_schedule/update_schedule to differ.
        default_m = self.capture_schedule if schedule is not None else pre.schedule_for("matrix_svd")
        default_u = self.capture_schedule if schedule is not None else pre.schedule_for("update_ratio")
        self.matrix_schedule = S.as_schedule(o.matrix_schedule) if o.matrix_schedule is not None else default_m
        self.update_schedule = S.as_schedule(o.update_schedule) if o.update_schedule is not None else default_u
        self.weight_schedule = (
            S.as_schedule(o.weight_schedule) if o.weight_schedule is not None else pre.schedule_for("weight_spectra")
        )
        self.weights_on = not S.is_never(self.weight_schedule)
        self.distance_schedule = (
            S.as_schedule(o.distance_schedule)
            if o.distance_schedule is not None
            else pre.schedule_for("distance_from_init")
        )
        self.distance_on = not S.is_never(self.distance_schedule)
        self.diagnostics = None
        self._skipped: dict[str, str] = {}  # statistic -> why it stored NaN (run attribute statistics_skipped)
        self._skipped_sent = 0
        skipped: dict[str, str] = {}  # reasons known now, noted once the run's attributes exist (below)
        if self.world > 1:  # statistics that run the model on rank 0 alone
            why = "not computed under torch.distributed: rank 0 alone would enter the model's collectives"
            if o.diagnostics_batch is not None:
                skipped.update(curvature=why, gradient_noise=why)
            if o.loss_sets:
                skipped["forgetting"] = why
        if o.diagnostics_batch is not None and self.world == 1:
            self.diagnostics = Diagnostics(
                o.diagnostics_batch, o.diagnostics_loss, o.noise_splits, o.hessian_iters, o.hutchinson_samples, o.seed
            )
        pre_d = pre.schedule_for("curvature")
        if o.diagnostics_schedule is not None:
            self.diagnostics_schedule = S.as_schedule(o.diagnostics_schedule)
        elif not S.is_never(pre_d):
            self.diagnostics_schedule = pre_d
        else:  # a batch was given under a cheaper preset: the capture schedule
            self.diagnostics_schedule = self.capture_schedule
        self.grad_norms_on = bool(o.grad_norms and pre.grad_norms)
        self.selection = as_selection(tokens or default_tokens(model), o.max_tokens, o.seed)
        self.probes = resolve_probes(model, probes)
        try:
            self.device = next(model.parameters()).device
        except StopIteration:
            raise PhasescopeError("the model has no parameters to observe") from None
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]
        self.matrix_idx = select_matrices(self.named_params, o.matrices)
        mode = o.capture or ("probe_set" if probe_inputs is not None else "in_flight")
        if mode == "probe_set" and probe_inputs is None:
            raise PhasescopeError(
                "capture='probe_set' needs probe_inputs (token ids, a tensor, a tuple or dict of "
                "tensors, or a DataLoader)"
            )
        self.mode = mode
        self.recorder: Recorder | None = None
        self.failures = FailureLog(strict=o.strict)
        self.stages, self.step_offset = self._continued(store, overwrite) if o.continue_run else (StageLog(), 0)
        self._make_recorder_args(store, overwrite, fit_range)
        self.probe_set: ProbeSet | None = None
        self.in_flight: InFlight | None = None
        dims: dict[str, int] = {}
        self._pad_forwards = 0
        self._pad_batch: Batch | None = None
        if mode == "probe_set":
            dims = self._setup_probe_set(probe_inputs)
        else:
            self.in_flight = InFlight(
                model,
                self.probes,
                self.selection,
                failures=self.failures,
                reduction=o.reduction,
                raw=o.rankme_raw,
                precision=o.spectra_precision,
            )
        self.sharded = D.has_dtensor(self.params)
        self.updates = UpdateTracker(self.params if self.is_writer and not self.sharded else [])
        if self.sharded:
            self.matrix_idx = []
        self.weight_reference: WeightReference | None = None  # CHANGE_STATS on the weight schedule against it
        # the preset that runs weight change ("full") compares with the stage's weights unless told otherwise
        ref = o.weight_reference
        if ref is None and not S.is_never(pre.schedule_for("weight_change")):
            ref = "stage"
        self._reference_kind = ref
        if self.weights_on and self.matrix_idx and ref is not None:
            self._set_weight_reference(ref)
        self._attrs = self._run_attrs(model, tokens, fit_range, metadata)
        if dims:
            self._open_store(dims)
        elif self.in_flight is not None:
            self.in_flight.arm(0, dims_only=not self.capture_schedule(0))
        self._last_step: int | None = None
        self._pending: CaptureResult | None = None
        # keep each step's row until the next step (or close) so obs.log can add values logged after it
        self.hold_rows = False
        self._closed = False
        self._warned_order = False
        # θ₀ for the distance from initialisation: the weights as the Observatory finds them
        self.init_distance = None
        if self.distance_on and self.is_writer:
            if self.sharded:  # a rank holds shards: their norms are not the parameters'
                skipped["distance_from_init"] = "parameters are sharded DTensors (FSDP2): not computed"
            else:
                self.init_distance = InitDistance(self.params)
        if self.weights_on and not self.matrix_idx:
            why = f"no 2-D weight matrices selected (matrices={self.options.matrices!r}); pass matrices='all'"
            if self.sharded:
                why = "parameters are sharded DTensors (FSDP2)"
            skipped["weight_spectra"] = "not computed: " + why
        self._note_skipped(skipped)  # a probe set may have opened the store above already
        OPEN.add(self)

    # ------------------------------------------------------------------ set-up
    def _continued(self, store, overwrite: bool) -> tuple[StageLog, int]:
        """(its stages, step offset) of the run this Observatory continues (``continue_run``): steps are
        stored after the run's last step, so a second trainer's step 0 follows the first's last."""
        from phasescope.store.errors import StoreError
        from phasescope.store.reader import read_meta
        from phasescope.store.schema import COMMIT_ATTR

        if overwrite:
            raise PhasescopeError("continue_run=True and overwrite=True contradict each other; pass only one")
        try:
            attrs = read_meta(store)
        except (StoreError, OSError) as e:
            raise PhasescopeError(f"continue_run=True needs an existing run at {store}: {e}") from None
        last = (attrs.get(COMMIT_ATTR) or {}).get("last_step")
        # the earlier processes' failures stay counted (this process's attributes replace theirs)
        for stage, n in (attrs.get("failures") or {}).items():
            self.failures.counts[stage] = self.failures.counts.get(stage, 0) + int(n)
        for stage, text in (attrs.get("first_failures") or {}).items():
            self.failures.first.setdefault(stage, text)
        return StageLog(attrs.get("stages"), last), (int(last) + 1 if last is not None else 0)

    def _make_recorder_args(self, store, overwrite, fit_range) -> None:
        o = self.options
        self.fit_range = fit_range
        self._recorder_kw = dict(
            store=store,
            overwrite=overwrite,
            resume=o.continue_run,
            fit_range=fit_range,
            max_rank=o.max_rank,
            queue_size=o.queue_size,
            queue_captures=o.queue_captures,
            put_timeout=o.put_timeout,
            write_interval=o.write_interval,
            writer=self.is_writer,
            flush_at_exit=False,
            cka_samples=o.cka_samples,
            failures=self.failures,
            sinks=build_sinks(o.sinks, store),
        )  # validated now; only the writing rank opens them

    def _setup_probe_set(self, probe_inputs) -> dict[str, int]:
        batch_size = self.options.probe_batch_size
        inputs = build_probe_inputs(probe_inputs, self.model, self.device, batch_size)
        if self.world > 1 and inputs.rebatchable:  # at least one batch per rank
            per_rank = max(1, min(batch_size, -(-inputs.n // self.world)))
            if per_rank != batch_size:
                inputs = build_probe_inputs(probe_inputs, self.model, self.device, per_rank)
        self.probe_set = ProbeSet(
            self.model,
            self.probes,
            inputs,
            self.selection,
            self.options.reduction,
            raw=self.options.rankme_raw,
            precision=self.options.spectra_precision,
        )
        if self.fsdp_roots:
            D.check_fsdp_reset(self.fsdp_roots)
        with D.fsdp_resharded(self.fsdp_roots):
            dims = self.probe_set.discover_dims()
        if self.world > 1:
            n_batches = len(self.probe_set.batches)
            self._pad_batch = self.probe_set.batches[0].head(1)
            D.shard_probe_set(self.probe_set, self.rank, self.world)
            if self.fsdp_roots:  # FSDP all-gathers inside every forward: equal forward counts on all ranks
                self._pad_forwards = -(-n_batches // self.world) - len(self.probe_set.batches)
        return dims

    def _run_attrs(self, model, tokens, fit_range, metadata) -> dict:
        attrs = dict(
            model=type(model).__name__,
            probes_spec=describe_probes(self.probes),
            schedule=self.capture_schedule.describe(),
            matrix_schedule=self.matrix_schedule.describe(),
            update_schedule=self.update_schedule.describe(),
            weight_schedule=self.weight_schedule.describe(),
            diagnostics_schedule=self.diagnostics_schedule.describe() if self.diagnostics else None,
            distance_schedule=self.distance_schedule.describe(),
            preset=self.options.preset,
            preset_statistics=self._statistics_on(),
            capture_mode=self.mode,
            tokens=self.selection.describe(),
            fit_range=list(fit_range) if isinstance(fit_range, (tuple, list)) else fit_range,
            probe_set_size=self.probe_set.n_sequences if self.probe_set else None,
            probe_inputs=self.probe_set.inputs.describe() if self.probe_set else None,
            probe_reductions=self.probe_set.describe() if self.probe_set else None,
            cka_samples=self.options.cka_samples if self.mode == "probe_set" else 0,
            rankme_raw=bool(self.options.rankme_raw),
            spectra_precision=self.options.spectra_precision,
            matrix_groups={self.named_params[i][0]: matrix_group(self.named_params[i][0]) for i in self.matrix_idx},
            finished=False,
        )
        if self.world > 1:
            attrs["distributed"] = {
                "world_size": self.world,
                "backend": D.backend_name(self.group),
                "probe_set": "sharded by batch across ranks, accumulators all-reduced",
                "cka": "rank 0's shard of the probe set",
                "loss": "mean over ranks" if self.options.sync_loss else "rank 0",
            }
        if self.sharded:
            attrs["matrix_stats_skipped"] = (
                "gradients are sharded DTensors (FSDP); nuclear/spectral norms need "
                "whole matrices, so matrix statistics and update ratios are not computed"
            )
        cfg = getattr(model, "config", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            with contextlib.suppress(Exception):  # metadata only
                attrs["model_config"] = cfg.to_dict()
        attrs.update(metadata or {})
        return attrs

    def _open_store(self, dims: dict[str, int]) -> None:
        """Fix the layout; the store itself is created on the writing rank only (by the Recorder)."""
        self.recorder = Recorder(
            probes=[p.name for p in self.probes],
            params=[n for n, _ in self.named_params],
            dims={p.name: dims.get(p.name, 0) for p in self.probes},
            matrices=self.matrix_names,
            matrix_stats=(
                *MATRIX_STATS,
                *(WEIGHT_STATS if self.weights_on else ()),
                *(CHANGE_STATS if self.weight_reference is not None else ()),
            ),
            loss_sets=list(self.options.loss_sets or ()),
            weight_rank=max((esd_size(tuple(self.params[i].shape)) for i in self.matrix_idx), default=0)
            if self.weights_on
            else 0,
            scalars=(
                *(DIAG_SCALARS if self.diagnostics else ()),
                *(DIST if self.distance_on else ()),
                *self.options.log_scalars,
            ),
            param_stats=(*(DIAG_PARAMS if self.diagnostics else ()), *(DIST if self.distance_on else ())),
            metadata=self._attrs,
            **self._recorder_kw,
        )

    @property
    def matrix_names(self) -> list[str]:
        """Names of the 2-D weights whose gradient (and weight) statistics are stored, in store order."""
        return [self.named_params[i][0] for i in self.matrix_idx]

    @property
    def writer(self):
        """The store's RunWriter (None before the layout is known and on ranks other than 0)."""
        return self.recorder.writer if self.recorder is not None else None

    @property
    def async_writer(self):
        return self.recorder.async_writer if self.recorder is not None else None

    @property
    def n_captures(self) -> int:
        return self.recorder.n_captures if self.recorder is not None else 0

    @property
    def max_rank(self) -> int:
        return self._layout_known().max_rank

    @property
    def dims(self) -> list[int]:
        return self._layout_known().dims

    def _layout_known(self) -> Recorder:
        """The Recorder, which exists once the layout is known (at once with probe_inputs, else at the
        first in-flight capture)."""
        if self.recorder is None:
            raise PhasescopeError("the probes' layout is not known yet: no training forward has been captured")
        return self.recorder

    # ------------------------------------------------------------------ training-loop API
    def step(self, step: int, loss=None, lr: float | None = None) -> None:
        """Record training step ``step``; call after ``backward()`` and before ``optimizer.step()``.

        Call once per optimizer step (after all gradient-accumulation micro-batches), with strictly
        increasing ``step``. ``loss`` may be a tensor (no host sync is forced) or a float.
        """
        if self._closed:
            raise PhasescopeError("this Observatory is closed; create a new one to keep recording")
        step = int(step)
        if self._last_step is not None and step <= self._last_step:
            if not self._warned_order:
                self._warned_order = True
                warnings.warn(
                    f"phasescope: step {step} is not after {self._last_step}; ignored (call "
                    "obs.step once per optimizer step with increasing steps)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return
        if self.stages.on_step(step + self.step_offset):
            self._set_attrs(stages=self.stages.to_json())
        try:
            self._step(step, loss, lr)
        except PhasescopeError:
            raise
        except Exception as exc:  # noqa: BLE001 - never break the user's training
            self.failures.record("step", exc, what=f"step {step}")
        finally:  # whatever failed above, the next scheduled in-flight capture is armed
            self._arm_next(step)

    def _step(self, step: int, loss, lr) -> None:
        self._flush_pending()
        # stored after the continued run's steps (step_offset); schedules keep to this process's steps
        res = CaptureResult(step + self.step_offset, scalars={"lr": None if lr is None else float(lr)})
        res.stage = self.stages.seen
        copy = HostCopier()
        if loss is not None:
            if self.world > 1 and self.options.sync_loss:
                loss = D.collective(
                    step, "loss", self.rank, self.world, lambda: D.mean_over_ranks(loss, self.device, self.group)
                )
            res.scalars["loss"] = copy(loss.detach().float()) if hasattr(loss, "detach") else float(loss)
        self._capture(step, res)  # in-flight: also discovers dims and opens the store
        if self.recorder is None:  # in-flight run whose first forward has not been seen: nothing to write yet
            return
        norms = None
        if self.grad_norms_on and self.sharded:  # every rank holds a shard: sum squared norms across ranks
            norms, res.present = D.collective(
                step, "gradient norms", self.rank, self.world, lambda: D.sharded_norms(self.params)
            )
        self._last_step = step
        if self.device.type == "cuda":
            copy.from_cuda = True  # spectra and Grams stay on the GPU until the writer reads them
        if self.is_writer:
            self._gradients(step, res, norms, copy)

    def _gradients(self, step: int, res: CaptureResult, norms, copy: HostCopier) -> None:
        import torch

        scale = current_scale(self.options.grad_scaler, self.options.optimizer)
        if scale is not None:
            res.scalars["loss_scale"] = copy(scale)
        if self.grad_norms_on:
            with self.failures.guard("step", "gradient norms") as g:
                if norms is None:
                    norms, res.present = grad_norms(self.params)
                res.grad_norms = copy(norms / scale if scale is not None else norms)
            res.lost += g.failed
        if self.matrix_idx and self.matrix_schedule(step):
            res.capture = True  # a capture row even when the statistics fail (NaN, flag_lost)
            with self.failures.guard("capture", "gradient matrix statistics") as g, torch.no_grad():
                stats = gradient_matrix_stats([self.params[i].grad for i in self.matrix_idx], scale=scale)
                res.matrices = {k: copy(v) for k, v in stats.items()}
            res.lost += g.failed
        if self.matrix_idx and self.weights_on and self.weight_schedule(step):
            res.capture = True
            with self.failures.guard("capture", "weight spectra") as g, torch.no_grad():
                mats = [self.params[i] for i in self.matrix_idx]
                res.matrices.update(weight_matrix_stats(self.matrix_names, mats, reference=self.weight_reference))
            res.lost += g.failed
        if self.diagnostics is not None and self.diagnostics_schedule(step):
            self._diagnose(res)
        if self.options.loss_sets and self.world == 1 and self.capture_schedule(step):
            res.capture = True
            with self.failures.guard("capture", "loss on the evaluation sets") as g:
                res.sets["loss"] = set_losses(self.model, self.options.loss_sets, self._set_loss, self._set_failed)
            res.lost += g.failed
        if self.init_distance is not None and self.distance_schedule(step):
            with self.failures.guard("step", "distance from initialisation") as g:
                d = self.init_distance.distances()
                res.params["distance_from_init"] = copy(d)
                res.scalars["distance_from_init"] = copy(torch.linalg.vector_norm(d.double()))
            res.lost += g.failed
        if self.update_schedule(step) and self.updates.params:
            self.updates.snapshot()
        res.event = copy.event()
        self._pending = res
        if not self.updates.pending and not self.hold_rows:
            self._flush_pending()

    def _statistics_on(self) -> list[str]:
        """The registered statistics this run computes: the preset's, as the options turn them on or off
        (weight spectra need selected matrices; curvature and noise a diagnostics batch)."""
        on = {
            "weight_spectra": self.weights_on and bool(self.matrix_idx),
            "curvature": self.diagnostics is not None,
            "gradient_noise": self.diagnostics is not None,
            "distance_from_init": self.distance_on and not self.sharded,
            "weight_change": self.weight_reference is not None,
            "forgetting": bool(self.options.loss_sets) and self.world == 1,
        }
        chosen = set(self.preset.statistics()) | {k for k, v in on.items() if v}
        chosen -= {k for k, v in on.items() if not v}
        return [s.name for s in registered_statistics(where="live") if s.name in chosen]

    def _set_failed(self, name: str, exc: BaseException) -> None:
        """One evaluation set the model failed on: counted and warned (its loss is NaN), and the first
        reason kept in statistics_skipped (e.g. a batch on another device than the model)."""
        self.failures.record("capture", exc, what=f"loss on the evaluation set {name!r}")
        self._note_skipped({"forgetting": f"loss on {name!r} not computed: {type(exc).__name__}: {exc}"})

    def _set_loss(self, model, batch):
        """The loss of one evaluation set: ``diagnostics_loss(output, batch)`` or the output's ``.loss``."""
        return (self.options.diagnostics_loss or default_loss)(forward(model, batch), batch)

    def _diagnose(self, res: CaptureResult) -> None:
        """Curvature and gradient noise on the fixed diagnostics batch (probes/diagnostics.py)."""
        assert self.diagnostics is not None
        with self.failures.guard("step", "curvature and gradient noise") as g:
            scalars, gsnr, reasons = self.diagnostics.run(self.model, [n for n, _ in self.named_params])
            res.scalars.update(scalars)
            res.params["gsnr"] = gsnr
            self._note_skipped(reasons)
        res.lost += g.failed

    def log(self, step: int, **values: float) -> None:
        """Add step variables declared in ``log_scalars`` to step ``step``'s row after ``obs.step(step)``
        (a trainer's metrics logged after its optimizer step). The row must still be held
        (``hold_rows``, set by the integrations): values for a row already written are a counted failure."""
        unknown = sorted(set(values) - set(self.options.log_scalars) - {"loss"})
        if unknown:
            raise PhasescopeError(
                f"unknown logged scalars {unknown}; declare them with log_scalars= (this run has "
                f"{list(self.options.log_scalars)})"
            )
        if not self.is_writer:  # only the writing rank holds rows (the others' values are rank 0's too)
            return
        res = self._pending
        if res is None or res.step != int(step) + self.step_offset:
            self.failures.record(
                "step", PhasescopeError(f"values for step {step} arrived after its row was written (hold_rows=True)")
            )
            return
        res.scalars.update({k: float(v) for k, v in values.items()})

    def stage(self, name: str, *, trainer: str | None = None, **meta: Any) -> None:
        """Start training stage ``name`` (e.g. "pretrain", "sft", "dpo", "rlvr") at the next ``step``;
        ``trainer`` and ``meta`` (JSON values) are stored with it in the run's ``stages`` attribute
        (:mod:`~phasescope.probes.stages`). With ``weight_reference="stage"`` the weights as they are
        now become the reference of the weight-change statistics. A name used before, or two stages
        with no step between them, is a PhasescopeError."""
        self.stages.start(name, trainer=trainer, meta=meta)
        if isinstance(self._reference_kind, str) and self.weight_reference is not None:  # "stage"
            self._set_weight_reference("stage")

    def _set_weight_reference(self, ref: Any) -> None:
        """The weights CHANGE_STATS compare with: the selected matrices now ("stage"), or a module's /
        mapping's weights of the same names (a name it lacks, or of another shape, stores NaN)."""
        import torch

        if ref == "stage":
            weights = dict(zip(self.matrix_names, (self.params[i] for i in self.matrix_idx)))
        else:
            named = dict(D.unwrap(ref).named_parameters()) if hasattr(ref, "named_parameters") else dict(ref)
            weights = {n: named[n] for n in self.matrix_names if n in named}
            missing = [n for n in self.matrix_names if n not in named]
            if len(missing) == len(self.matrix_names):
                raise PhasescopeError(
                    f"weight_reference has none of the selected matrices (e.g. {self.matrix_names[0]!r}); "
                    "pass the same architecture's model or state dict"
                )
        with torch.no_grad():
            self.weight_reference = WeightReference(weights)

    def _set_attrs(self, **kv: Any) -> None:
        """Run attributes: now if the store exists, else in the attributes it will be created with."""
        self._attrs.update(kv)
        if self.recorder is not None:
            self.recorder.set_attrs(**kv)

    def _note_skipped(self, reasons: dict[str, str]) -> None:
        """Keep the first reason each statistic stored NaN, in the run's ``statistics_skipped`` attribute
        (now if the store exists, else in the attributes it will be created with)."""
        for k, v in reasons.items():
            self._skipped.setdefault(k, v)
        if len(self._skipped) > self._skipped_sent:
            self._set_attrs(statistics_skipped=dict(self._skipped))
            self._skipped_sent = len(self._skipped)

    def _capture(self, step: int, res: CaptureResult) -> None:
        """This step's probe capture (in-flight or probe set), all-reduced across ranks."""
        accs = grams = None
        if self.in_flight is not None and self.in_flight.armed:
            lost = self.in_flight.lost
            accs = self.in_flight.collect()
            if self.in_flight.error is not None:
                raise self.in_flight.error
            if self.recorder is None and (self.in_flight.dims or self.in_flight.forwards):
                self._first_in_flight(accs)
            due = self.recorder is not None and self.capture_schedule(step)
            if lost:
                res.lost += 1
                # Other ranks are entering the all-reduce: join it with nothing of this rank's.
                accs = [None] * len(self.probes) if due and self.world > 1 else None
            elif not (due and (self.world > 1 or any(a is not None for a in (accs or [])))):
                accs = None
        elif self.probe_set is not None and self.capture_schedule(step):
            with self.failures.guard("capture", "probe set"):
                accs, grams = self._capture_probe_set()
            if accs is None:
                res.lost += 1
                accs = [None] * len(self.probes) if self.world > 1 else None  # still join the all-reduce
        if accs is None:
            return
        if self.world > 1:
            accs = D.all_reduce_accumulators(
                accs,
                self.dims,
                [p.name for p in self.probes],
                step,
                self.rank,
                self.world,
                self.device,
                self.group,
                raw=self.options.rankme_raw,
                precision=self.options.spectra_precision,
            )
        if self.is_writer:
            spectra = [None] * len(accs)
            for i, acc in enumerate(accs):
                if acc is not None and acc.n:
                    with self.failures.guard("capture", f"probe {self.probes[i].name!r} spectrum"):
                        spectra[i] = acc.compute()
                        continue
                    res.lost += 1
            self._layout_known().add_spectra(
                res,
                spectra,
                grams,  # rows dropped for NaN/Inf, maybe all of them
                nonfinite=any(a is not None and a.n_nonfinite for a in accs),
            )

    def _first_in_flight(self, accs) -> None:
        """The first training forward seen: every probe must have run and, at a capture, have 2 samples;
        then the layout (and each probe's reduction) is known and the store opens."""
        fl = self.in_flight
        assert fl is not None  # called from the in-flight branch of _capture
        missing = [p.name for p in self.probes if p.name not in fl.dims]
        if missing:
            raise PhasescopeError(
                f"probe(s) {', '.join(missing)} did not run during the training forward; "
                "select modules that the model's forward calls"
            )
        few = [f"{p.name} ({a.n})" for p, a in zip(self.probes, accs or []) if a is not None and a.n < 2]
        if few:
            raise PhasescopeError(
                f"probe(s) {', '.join(few)} got fewer than 2 samples from the training batch; "
                "a covariance spectrum needs at least 2: pass probe_inputs or tokens='all'"
            )
        self._attrs["probe_reductions"] = fl.describe()
        self._open_store(fl.dims)

    def _capture_probe_set(self) -> tuple[list, list]:
        """This rank's probe batches; under FSDP2 also padding forwards (every rank runs as many, each
        all-gathering the same parameter groups) and a reset that re-registers the sharded parameters."""
        probe_set = self.probe_set
        assert probe_set is not None  # called in probe_set mode only
        with D.fsdp_resharded(self.fsdp_roots):
            accs, grams = probe_set.capture(self.options.cka_samples if self.rank == 0 else 0)
            if self._pad_batch is not None:  # set with _pad_forwards > 0 (world > 1)
                for _ in range(self._pad_forwards):
                    probe_set.padding_forward(self._pad_batch)
        if probe_set.autocast and self._attrs.get("probe_autocast") != probe_set.autocast:
            self._set_attrs(probe_autocast=probe_set.autocast)  # said once, shown in data quality
        return accs, grams

    def _arm_next(self, step: int) -> None:
        if self.in_flight is not None and self.capture_schedule(step + 1):
            self.in_flight.arm(step + 1)

    def _flush_pending(self) -> None:
        res, self._pending = self._pending, None
        if res is None:
            return
        if self.updates.pending:
            with self.failures.guard("step", "update ratios"):
                copy = HostCopier()
                res.update_ratios = copy(self.updates.ratios())
                res.event = copy.event(res.event)
        self._layout_known().submit(res)

    # ------------------------------------------------------------------ lifetime
    def close(self, *, error: BaseException | None = None) -> None:
        """Remove all hooks, write what is queued, and mark the run finished (idempotent).

        Under torch.distributed a normal close is collective: every rank returns once rank 0 has
        closed the store, so the run is complete for all of them, and a rank that goes on to
        ``destroy_process_group()`` no longer tears gloo down under a peer still closing (that
        aborted ~1 run in 8: "terminate called without an active exception"). After an error
        (a rank died) nobody waits."""
        if self._closed:
            return
        self._closed = True
        OPEN.discard(self)
        if self.in_flight is not None:
            self.in_flight.disarm()
        try:
            if self.recorder is None:
                return
            if self.stages.close():
                self._set_attrs(stages=self.stages.to_json())
            try:
                with self.failures.guard("close"):
                    self._flush_pending()
            except BaseException as exc:  # strict: the run it ends is marked failed with it
                error = error or exc
                raise
            finally:  # under strict the flush may raise: the run is still closed, and says how
                self.recorder.close(error=error)
        finally:
            self.updates.clear()
            if self.world > 1 and error is None:
                with self.failures.guard("close", "barrier"):
                    D.barrier(self.group)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Observatory:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error=exc)


Observatory.__doc__ = (
    (Observatory.__doc__ or "")
    + "\n    Options (ObservatoryOptions):"
    + ObservatoryOptions.described().replace("\n", "\n    ")
)
