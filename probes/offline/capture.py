"""One checkpoint, analysed: nnsight traces over the probe set, reduced on the device to spectra.

For each batch (sequences sorted by length, so padding is small; right-padded; attention-masked) one
``model.trace`` reads every probe's output, keeps only the selected token states (the last non-pad
token by default, as Li et al. 2025) and feeds them to a :class:`~phasescope.spectra.CovarianceAccumulator`
per probe, on the model's device. The forward pass is stopped right after the last probe fires
(``tracer.stop()``), so an LM head over a large vocabulary never runs over the whole padded batch.

Options, per checkpoint:
- gradients: the mean next-token cross-entropy over the probe set (only response tokens for
  prompt/response pairs) is back-propagated, batch by batch; logits are formed by the model's output
  embedding (``get_output_embeddings()``) at the counted positions only (no logit soft-capping), and
  every selected 2-D weight gradient is summarised by :func:`phasescope.gradients.gradient_matrix_stats`
  (nuclear norm Σσ, spectral norm σ₁, stable rank Σσ²/σ₁², σ₁/Σσ, …; after Layer_Gradient, Li et al. 2024
  "Fast vs. slow thinking");
- weights: spectra of the weights themselves (``weight_*``: ESD power-law α à la WeightWatcher, stable
  rank, spectral and nuclear norms, WeightWatcher's norm metrics, MP soft rank, spikes and correlation
  traps; :mod:`phasescope.spectra.weights`).

Everything returned is numpy (small): this runs inside a Dask worker and the result travels back.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phasescope.gradients import gradient_matrix_stats
from phasescope.spectra import CovarianceAccumulator, to_numpy
from phasescope.spectra.similarity import CKA_SAMPLES, GramSampler
from phasescope.spectra.weights import WeightReference, weight_matrix_stats

from ..capture import accepts, first_tensor
from ..diagnostics import Diagnostics
from ..reduce import host_spectrum
from ..result import CaptureResult
from ..tokens import TokenSelection, select
from .sources import Checkpoint, ProbeData, load_model


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture (picklable; identical for every checkpoint of a sweep)."""

    probes: tuple[tuple[str, str], ...]  # (stored name, module name), in the order modules finish
    dims: tuple[int, ...]  # output width of each probe
    metrics: tuple[str, ...]
    max_rank: int
    tokens: str = "last"
    max_tokens: int | None = None  # cap for tokens="all" (seeded subsample of the probe set)
    seed: int = 0
    batch_size: int = 64
    fit_range: Any = "auto"
    gradients: bool = False
    weights: bool = False
    weight_fit: str = "clauset"  # the weight ESD tail's fit: "clauset" (phasescope's) or "ww" (WeightWatcher's)
    reference: Checkpoint | None = None  # with weights: the base model each matrix is compared with
    diagnostics: bool = False  # the Hessian's λ_max and trace and the gradient noise on the diagnostics batch
    matrices: tuple[str, ...] = ()  # parameter names of the 2-D weights summarised
    grad_stats: tuple[str, ...] = ()
    device: str = "cpu"
    dtype: str | None = None
    trust_remote_code: bool = False
    cka_samples: int = CKA_SAMPLES  # first probe samples whose Gram is kept for linear CKA
    rankme_raw: bool = False  # keep the raw rows' singular values too (rankme_raw)
    spectra_precision: str = "auto"  # of the covariance products (CovarianceAccumulator's precision)


@dataclass
class CheckpointResult:
    """One checkpoint: its capture (spectra, CKA Grams, matrix statistics; numpy, reduced later by the
    one reducer) and timings, or the error that stopped it."""

    step: int
    capture: CaptureResult | None = None
    loss: float = float("nan")
    load_seconds: float = float("nan")
    capture_seconds: float = float("nan")
    n_tokens: int = 0
    error: str | None = None
    skipped: dict = field(default_factory=dict)  # statistic -> why it stored NaN at this checkpoint

    @property
    def ok(self) -> bool:
        return self.error is None


def analyze_checkpoint(ckpt: Checkpoint, data: ProbeData, spec: CaptureSpec) -> CheckpointResult:
    """Load ``ckpt`` and measure it; never raises (a failure comes back as ``error``)."""
    try:
        t0 = time.perf_counter()
        dtype = None
        if spec.dtype:
            import torch

            dtype = getattr(torch, spec.dtype)
        model = load_model(ckpt, trust_remote_code=spec.trust_remote_code, device=spec.device, dtype=dtype)
        load = time.perf_counter() - t0
        res = capture_model(model, data, spec, step=ckpt.step)
        res.load_seconds = load
        del model
        return res
    except Exception as exc:  # noqa: BLE001 - recorded with the checkpoint; the sweep goes on
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        msg = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
        return CheckpointResult(ckpt.step, error=msg + where)


#: (location, revision, matrices, fit) -> the reference's selected weights and spectra: once per process
_REFERENCE: dict[tuple, WeightReference] = {}


def reference_matrices(spec: CaptureSpec) -> WeightReference:
    """The reference (base) model's selected weights on the host and their `weight_spectra` (with the
    sweep's tail fit), loaded and computed once per process."""
    import torch

    ref = spec.reference
    assert ref is not None
    key = (ref.location, ref.revision, spec.matrices, spec.weight_fit)
    if key not in _REFERENCE:
        model = load_model(ref, trust_remote_code=spec.trust_remote_code)
        params = dict(model.named_parameters())
        with torch.no_grad():
            weights = {n: params[n].detach().float() for n in spec.matrices if n in params}
            _REFERENCE[key] = WeightReference(weights, fit=spec.weight_fit)
        _REFERENCE[key].spectra  # noqa: B018 - computed once, here, not inside the first checkpoint's time
        del model
    return _REFERENCE[key]


def batches(data: ProbeData, batch_size: int) -> list[np.ndarray]:
    """Index batches of sequences sorted by length (stable), so each batch is padded to a near width."""
    order = np.argsort(data.lengths, kind="stable")
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def all_tokens_plan(data: ProbeData, max_tokens: int | None, seed: int) -> np.ndarray:
    """(N, L) bool: the token positions used by ``tokens="all"``; with a cap, a seeded subsample
    without replacement drawn once for the whole probe set (every checkpoint sees the same tokens)."""
    keep = data.attention_mask.astype(bool)
    if max_tokens is not None and keep.sum() > max_tokens:
        flat = np.flatnonzero(keep)
        chosen = np.random.default_rng(seed).choice(flat, max_tokens, replace=False)
        keep = np.zeros(keep.size, dtype=bool)
        keep[chosen] = True
        keep = keep.reshape(data.attention_mask.shape)
    return keep


def capture_model(model, data: ProbeData, spec: CaptureSpec, step: int = 0) -> CheckpointResult:
    """Run the probe set through ``model`` (already loaded, eval mode) with nnsight; see module doc."""
    import torch
    from nnsight import NNsight

    t0 = time.perf_counter()
    device = torch.device(spec.device)
    model.eval()
    envoy = NNsight(model)
    sel = TokenSelection(spec.tokens, None, spec.seed)
    plan_all = all_tokens_plan(data, spec.max_tokens, spec.seed) if spec.tokens == "all" else None
    accs = [CovarianceAccumulator(d, spec.rankme_raw, precision=spec.spectra_precision) for d in spec.dims]
    samplers = [GramSampler(spec.cka_samples) for _ in spec.dims]  # CKA: the first rows, fixed order
    params = dict(model.named_parameters())
    mats = [params[n] for n in spec.matrices]
    grads = spec.gradients and bool(mats)
    n_loss = int(data.loss_mask.sum())
    head = model.get_output_embeddings() if grads else None
    if grads and head is None:
        raise RuntimeError(
            f"{type(model).__name__} has no output embeddings (LM head); gradients need a language model"
        )
    head_name = next((n for n, m in model.named_modules() if m is head), None) if grads else None
    loss_sum = 0.0
    if grads:
        for p in model.parameters():
            p.grad = None
    module_names = [m for _, m in spec.probes]
    extra = {"use_cache": False} if accepts(model, "use_cache") else {}
    for idx in batches(data, spec.batch_size):
        width = int(data.lengths[idx].max())
        ids = torch.from_numpy(data.input_ids[idx, :width]).to(device)
        mask = torch.from_numpy(data.attention_mask[idx, :width]).to(device)
        plan = None
        if plan_all is not None:
            rows, cols = np.nonzero(plan_all[idx, :width])
            plan = (torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device))
        # Values leave the trace through containers created outside it: nnsight runs the body in its
        # own frame and does not hand back names first bound inside a function's trace block.
        saved: list = []
        with torch.set_grad_enabled(grads), envoy.trace(input_ids=ids, attention_mask=mask, **extra) as tracer:
            for name in module_names:
                h = first_tensor(envoy.get(name).output).detach()
                saved.append(select(h, mask, sel, plan=plan).save())
            if grads:  # the head's input; logits are formed below at loss positions only
                saved.append(envoy.get(head_name).input.save())
            tracer.stop()
        hidden = saved.pop() if grads else None
        if len(saved) != len(accs):
            raise RuntimeError(f"the trace returned {len(saved)} of {len(accs)} probe outputs")
        for i, (acc, x) in enumerate(zip(accs, saved)):
            acc.update(x)
            samplers[i].update(x)
        del saved
        if grads:
            # Next-token loss at the counted positions only: position t predicts token t+1.
            lm = torch.from_numpy(data.loss_mask[idx, :width]).to(device)
            rows, cols = torch.nonzero(lm, as_tuple=True)
            logits = head(hidden[rows, cols - 1]).float()
            batch_loss = torch.nn.functional.cross_entropy(logits, ids[rows, cols], reduction="sum") / max(n_loss, 1)
            batch_loss.backward()
            loss_sum += float(batch_loss.detach())
            del hidden, logits, batch_loss

    spectra = [host_spectrum(acc.compute()) for acc in accs]  # numpy: small enough to leave a Dask worker
    grams = [None if (g := s.gram()) is None else to_numpy(g) for s in samplers]
    cap = CaptureResult(step, spectra=spectra, grams=grams, capture=True)
    res = CheckpointResult(step, capture=cap, n_tokens=data.n_tokens)
    if grads:
        stats = gradient_matrix_stats([p.grad for p in mats])
        cap.matrices.update({k: to_numpy(v) for k, v in stats.items() if k in spec.grad_stats})
        res.loss = loss_sum
        for p in model.parameters():
            p.grad = None
    if spec.weights and mats:
        with torch.no_grad():  # against the base model's spectra, computed once, when there is one
            ref = reference_matrices(spec) if spec.reference is not None else None
            stats = weight_matrix_stats(list(spec.matrices), mats, fit=spec.weight_fit, rng=spec.seed, reference=ref)
            cap.matrices.update(stats)
    if spec.diagnostics:
        with torch.enable_grad():
            scalars, _, res.skipped = Diagnostics(diagnostics_batch(data, spec), seed=spec.seed).run(model, [])
        cap.scalars.update(scalars)
    res.capture_seconds = time.perf_counter() - t0
    return res


def diagnostics_batch(data: ProbeData, spec: CaptureSpec) -> dict:
    """The fixed batch of ``analyze --diagnostics``: the probe set's first ``batch_size`` sequences, with
    labels = the tokens whose prediction the loss counts (``loss_mask``; −100 elsewhere), on the device."""
    import torch

    n = min(len(data.input_ids), spec.batch_size)
    width = int(data.lengths[:n].max())
    ids = torch.as_tensor(data.input_ids[:n, :width], device=spec.device)
    mask = torch.as_tensor(data.attention_mask[:n, :width], device=spec.device)
    labels = torch.where(torch.as_tensor(data.loss_mask[:n, :width], device=spec.device).bool(), ids, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
