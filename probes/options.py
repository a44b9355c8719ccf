"""ObservatoryOptions: every option of :class:`phasescope.probes.Observatory` beyond the first few, with
its default and what it does (``help(ObservatoryOptions)`` shows this list).

    obs = Observatory(model, store, probe_inputs=batch, preset="business", max_rank=2048)
    obs = Observatory(model, store, probe_inputs=batch, options=ObservatoryOptions(strict=True))
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from phasescope.errors import PhasescopeError
from phasescope.spectra.similarity import CKA_SAMPLES

from .shapes import check_requested

_FIELD = re.compile(r"^(?P<name>\w+): [^=]+= (?P<default>.+?)\s+# (?P<comment>.+)$")


# fmt: off
# One line per option: described() reads the comment beside each field for help() (so no wrapping here).
@dataclass
class ObservatoryOptions:
    # -- what runs when (probes/schedules.py) --
    preset: str = "economy"  # cost preset: economy | business | full | norms (sets the default schedules)
    matrix_schedule: Any = None  # gradient-SVD steps; default: the capture schedule if one is given, else the preset's
    update_schedule: Any = None  # ‖Δw‖/‖w‖ steps; same default rule as matrix_schedule
    weight_schedule: Any = None  # weight-spectra steps (WeightWatcher's layer metrics of the selected matrices); default: the preset's ("full" only)
    loss_sets: Any = None  # {name: fixed batch}, e.g. one per training stage: the loss on each at every capture (set_loss; forgetting is its rise on earlier stages' sets), from diagnostics_loss or output.loss
    log_scalars: tuple = ()  # extra step variables this run stores, given after obs.step with obs.log(step, name=value) (the HF callback declares the trainers' logged metrics)
    continue_run: bool = False  # append to the run at store (an earlier stage, written by another process): steps are stored after its last one, its stages kept, its layout must match
    weight_reference: Any = None  # compare the weights on the weight schedule with: "stage" (the weights as each obs.stage() starts, as found before the first), a torch module or {name: tensor} (a base model); None: "stage" under preset "full", else off
    # -- curvature and gradient noise on a fixed batch (probes/diagnostics.py) --
    diagnostics_batch: Any = None  # one fixed batch (dict: model(**batch), tuple: model(*batch), tensor); None: off
    diagnostics_loss: Any = None  # fn(output, batch) -> scalar loss; default output.loss (an HF model given labels)
    diagnostics_schedule: Any = None  # steps of the Hessian λ_max/trace and GSNR/batch-size tests; default: the preset's ("full"), else the capture schedule
    noise_splits: int = 4  # micro-batches the diagnostics batch is split into for the gradient-noise statistics
    hessian_iters: int = 20  # most Hessian-vector products of the power iteration
    hutchinson_samples: int = 10  # Rademacher vectors of the Hessian trace estimate
    distance_schedule: Any = None  # steps of ‖θ − θ₀‖ per parameter (one copy of the initial weights is kept); default: the preset's ("full" only)
    grad_norms: bool = True  # per-parameter gradient L2 norms every step
    matrices: Any = "blocks"  # which 2-D gradients get SVD statistics: "blocks" | "all" | "none" | fn(name, param)
    # -- how probes are captured (probes/capture.py, probes/tokens.py) --
    capture: str | None = None  # "probe_set" (default when probe_inputs is given) or "in_flight" (the training forward)
    probe_batch_size: int = 64  # samples per probe forward (a DataLoader keeps its own batches)
    reduction: Any = "auto"  # output -> samples x features per probe: auto | features | tokens | spatial_mean | positions, or {probe or glob: ...} (probes/shapes.py)
    max_tokens: int | None = 8192  # tokens="all": seeded subsample of at most this many token states
    seed: int = 0  # seed of that subsample (and of in-flight subsampling)
    max_rank: int | None = None  # cap on stored eigenvalues and metric components (Li et al. keep 2048)
    cka_samples: int = CKA_SAMPLES  # probe samples whose Gram is kept for linear CKA (0: no CKA)
    rankme_raw: bool = False  # also RankMe of the raw (uncentred) samples (Garrido et al. 2023): one more d×d eigvalsh per probe
    spectra_precision: str = "auto"  # covariance products: "auto" (the activations' float32/float64) | "float64" | "float32" | "tf32" (CUDA)
    # -- mixed precision (gradients/amp.py) --
    optimizer: Any = None  # with grad_scaler: tells whether scaler.unscale_(optimizer) already ran
    grad_scaler: Any = None  # torch GradScaler: statistics of unscaled gradients, skipped steps flagged
    # -- the background writer (store/async_writer.py) --
    queue_size: int = 256  # entries waiting at most; then wait put_timeout, then drop the oldest
    queue_captures: int = 32  # captures waiting at most; beyond, the oldest capture is dropped (flag_dropped)
    put_timeout: float = 1.0  # seconds the training thread may wait for room in a full queue
    write_interval: float = 0.5  # seconds between store commits (rows are batched)
    strict: bool = False  # raise phasescope's own failures instead of warning and counting them
    # -- trackers (probes/sinks.py) --
    sinks: Any = ()  # also send the stored scalars to "tensorboard[:DIR]", "wandb[:PROJECT]", "mlflow[:URI]" or sink objects
    # -- torch.distributed (probes/distributed.py) --
    distributed: bool | None = None  # None: auto (a process group of > 1 rank); False: this process alone
    process_group: Any = None  # the group to reduce over (default: the world)
    sync_loss: bool = True  # store the loss averaged over ranks (else rank 0's)
    # fmt: on

    @classmethod
    def described(cls) -> str:
        """One line per option — name, default and the comment beside it in this file — for help()."""
        lines, section = [], ""
        for raw in inspect.getsource(cls).splitlines():
            line = raw.strip()
            if line.startswith("# --"):
                section = line.strip("# -")
                lines.append(f"\n{section}:")
            elif (m := _FIELD.match(line)) is not None:
                default = {f.name: f.default for f in fields(cls)}.get(m["name"], m["default"])
                lines.append(f"    {m['name']} = {default!r}: {m['comment']}")
        return "\n".join(lines)

    @classmethod
    def build(cls, options: ObservatoryOptions | None, overrides: dict) -> ObservatoryOptions:
        """``options`` (or the defaults) with keyword overrides; an unknown keyword names the closest."""
        known = [f.name for f in fields(cls)]
        bad = [k for k in overrides if k not in known]
        if bad:
            close = difflib.get_close_matches(bad[0], known, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"options are {', '.join(known)}"
            raise PhasescopeError(f"unknown Observatory option {bad[0]!r}; {hint}")
        opts = replace(options or cls(), **overrides)
        if opts.probe_batch_size < 1:
            raise PhasescopeError(f"probe_batch_size must be a positive integer, got {opts.probe_batch_size}")
        check_requested(opts.reduction)
        check_precision(opts.spectra_precision)
        if opts.loss_sets is not None and (not isinstance(opts.loss_sets, dict) or not opts.loss_sets):
            raise PhasescopeError(
                "loss_sets must be a non-empty {name: batch} dict (e.g. one fixed batch per training stage)"
            )
        ref = opts.weight_reference
        if isinstance(ref, str) and ref != "stage":
            raise PhasescopeError(
                f"weight_reference={ref!r}: pass 'stage', a torch module or a {{name: tensor}} mapping "
                "(load a checkpoint with from_pretrained first)"
            )
        if opts.capture not in (None, "probe_set", "in_flight"):
            raise PhasescopeError(f"capture must be 'probe_set' or 'in_flight', got {opts.capture!r}")
        return opts


def check_precision(precision: str) -> str:
    """``precision`` if it is one of the accumulator's product precisions, else one clear line."""
    from phasescope.spectra.accumulator import PRECISIONS

    if precision not in PRECISIONS:
        close = difflib.get_close_matches(str(precision), PRECISIONS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(PRECISIONS)}"
        raise PhasescopeError(f"unknown spectra precision {precision!r}; {hint}")
    return precision


ObservatoryOptions.__doc__ = (
    "Every option of Observatory beyond model, store, probes, schedule, probe_inputs, "
    "tokens, metadata, overwrite and fit_range; keywords of Observatory(...) set them." + ObservatoryOptions.described()
)
