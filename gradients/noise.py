"""Gradient noise from micro-batch splits: GSNR and the norm, inner-product and orthogonality tests.

A batch of N = B·b samples is split into B ≥ 2 micro-batches of b samples each; g_i (i = 1…B) is the
mean-loss gradient of micro-batch i and ḡ = (1/B) Σ_i g_i the gradient of the whole batch. The
micro-batch gradients take the place of the per-sample gradients that Cockpit (Schneider, Dangel &
Hennig 2021) gets from BackPACK, so no per-example machinery is needed. With d_i = g_i − ḡ:

- **GSNR** (Liu et al. 2020, "Understanding why neural networks generalize well through GSNR of
  parameters"; Cockpit's ``MeanGSNR``): for each parameter entry j, r_j = ḡ_j² / σ̂_j², where
  σ̂_j² = b · (1/(B−1)) Σ_i d_ij² is the unbiased estimate of the *per-sample* gradient variance
  (Var g_ij = σ_j²/b for a mean over b samples). A group's GSNR is the mean of r_j over its entries
  with σ̂_j² > 0; entries with σ̂_j² = 0 and ḡ_j = 0 (a parameter no sample touches) are left out,
  and any entry with σ̂_j² = 0 < ḡ_j² makes the group's GSNR +inf (noise-free signal). A group with
  no entry left gives NaN. (Cockpit instead divides by the ddof = 0 per-sample variance + ε = 1e-5.)
- **Norm test** (Byrd, Chin, Nocedal & Wu 2012, "Sample size selection in optimization methods for
  machine learning", eq. 3.9: ‖Var_{i∈S} ∇ℓ_i‖₁ / |S| ≤ θ² ‖∇J_S‖²):
  ``norm_test`` = θ_min = √( Σ_i ‖d_i‖² / ((B−1) · B · ‖ḡ‖²) ).
- **Inner-product test** (Bollapragada, Byrd & Nocedal 2018, "Adaptive sampling strategies for
  stochastic optimization", eq. 2.6: Var_{i∈S}(∇ℓ_iᵀ∇J_S) / |S| ≤ θ² ‖∇J_S‖⁴):
  ``inner_product_test`` = θ_min = √( Σ_i (g_iᵀḡ − ‖ḡ‖²)² / ((B−1) · B · ‖ḡ‖⁴) ).
- **Orthogonality test** (ibid., eq. 3.3: Var_{i∈S} of ∇ℓ_i's component orthogonal to ∇J_S, over |S|,
  ≤ ν² ‖∇J_S‖²): ``orthogonality_test`` = ν_min =
  √( Σ_i ‖g_i − (g_iᵀḡ/‖ḡ‖²) ḡ‖² / ((B−1) · B · ‖ḡ‖²) ), computed as Σ_i (‖d_i‖² − (d_iᵀḡ)²/‖ḡ‖²).

Each test value is the θ (or ν) at which the test is tight, Cockpit's ``_compute_theta_max`` /
``_compute_nu_max``: the batch passes the test with parameter θ iff value ≤ θ, and the batch size the
test suggests for a target θ is N · (value/θ)² (Byrd et al. eq. 3.12). The paper formulas use |S|
per-sample gradients; here the B micro-batch means are the samples. Since Var g_i = Σ/b, the sample
variance of the micro-batch means estimates tr Σ / b and the test statistic of the whole batch,
tr Σ / (N ‖ḡ‖²) = tr Σ / (B b ‖ḡ‖²), equals (tr Σ / b) / (B ‖ḡ‖²): b cancels, so the three tests
use only the B micro-batch gradients (with b = 1 they are exactly Cockpit's), and ``micro_batch_size``
enters only the GSNR. With ‖ḡ‖ = 0 a test is +inf (NaN when all d_i = 0 too). Identical micro-batches
give 0 for all three tests and +inf GSNR.

All statistics are computed per parameter on the gradients' device in float64 (one (B, n) block at
a time), then reduced to a few sums per parameter that reach the host in one transfer.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from phasescope.errors import PhasescopeError

NOISE_STATS = ("gsnr", "norm_test", "inner_product_test", "orthogonality_test")


@dataclass(frozen=True)
class MicroBatchGradients:
    """What :func:`micro_batch_gradients` returns; :func:`gradient_noise` takes it as it is."""

    grads: list[dict[str, Any]] = field(default_factory=list)  # B dicts name -> gradient tensor (detached)
    micro_batch_size: int = 0  # b, samples per micro-batch
    reason: str | None = None  # why there are no gradients (too few samples, a failing loss, …); None when fine


def micro_batch_gradients(
    model: Any, loss_fn: Callable[[Any, Any], Any], batch: Any, splits: int
) -> MicroBatchGradients:
    """Split ``batch`` into ``splits`` equal micro-batches along dim 0 and return the gradient of
    ``loss_fn(model, micro_batch)`` (a scalar, typically the mean loss) for each, by
    ``torch.autograd.grad`` over the model's parameters that require grad.

    ``batch``: a tensor, a mapping of tensors or a tuple/list of tensors; every tensor with a leading
    dimension is sliced, anything else is passed to each micro-batch unchanged. The model's ``.grad``
    stays untouched and its buffers (BatchNorm running statistics) are restored afterwards; random
    state (dropout) is consumed as in ``splits`` forward passes. Call it on the unwrapped module under
    DDP/FSDP. Memory: ``splits`` gradient copies.

    Runtime trouble never raises: splits < 2, a batch smaller than ``splits`` or not divisible by it,
    tensors of different lengths, no parameter requiring grad, or a micro-batch loss that raises, is
    non-finite or has no graph give an empty result with ``reason`` (and :func:`gradient_noise` turns
    it into NaN statistics). Wrong argument types raise :class:`~phasescope.errors.PhasescopeError`.
    """
    import torch

    if isinstance(splits, bool) or not isinstance(splits, int):
        raise PhasescopeError(f"splits must be an integer, got {splits!r}")
    if not callable(loss_fn):
        raise PhasescopeError(f"loss_fn must be a callable (model, micro_batch) -> loss, got {type(loss_fn).__name__}")
    if not hasattr(model, "named_parameters"):
        raise PhasescopeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(batch, torch.Tensor | Mapping | tuple | list):
        raise PhasescopeError(
            f"batch must be a tensor, a mapping or a tuple/list of tensors, got {type(batch).__name__}"
        )
    sizes = {int(t.shape[0]) for t in _tensors(batch) if t.ndim >= 1}
    if not sizes:
        raise PhasescopeError("batch holds no tensor with a leading (sample) dimension to split")
    if splits < 2:
        return MicroBatchGradients(reason=f"need splits >= 2 micro-batches, got {splits}")
    if len(sizes) > 1:
        return MicroBatchGradients(reason=f"batch tensors differ in length along dim 0: {sorted(sizes)}")
    (n,) = sizes
    if n < splits:
        return MicroBatchGradients(reason=f"batch of {n} samples is smaller than splits={splits}")
    if n % splits:
        return MicroBatchGradients(reason=f"batch of {n} samples does not split into {splits} equal micro-batches")
    b = n // splits
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        return MicroBatchGradients(micro_batch_size=b, reason="no parameter requires grad")
    params = [p for _, p in named]
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    grads: list[dict[str, Any]] = []
    try:
        for i in range(splits):
            micro = _slice(batch, i * b, (i + 1) * b)
            with torch.enable_grad():
                try:
                    loss = loss_fn(model, micro)
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        what = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
                        return MicroBatchGradients(
                            micro_batch_size=b, reason=f"loss_fn must return a scalar tensor, got {what}"
                        )
                    if not torch.isfinite(loss.detach()).all():
                        return MicroBatchGradients(micro_batch_size=b, reason=f"micro-batch {i}: loss is not finite")
                    if not loss.requires_grad:
                        return MicroBatchGradients(
                            micro_batch_size=b, reason=f"micro-batch {i}: loss has no autograd graph to the parameters"
                        )
                    out = torch.autograd.grad(loss.reshape(()), params, allow_unused=True)
                except Exception as e:  # noqa: BLE001 - reported as the reason, never raised into training
                    msg = str(e).strip().splitlines()
                    reason = f"micro-batch {i}: {type(e).__name__}: {msg[0] if msg else ''}"[:200]
                    return MicroBatchGradients(micro_batch_size=b, reason=reason)
            grads.append(
                {
                    name: torch.zeros_like(p) if g is None else g.detach()
                    for (name, p), g in zip(named, out, strict=True)
                }
            )
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name in saved:
                    buf.copy_(saved[name])
    return MicroBatchGradients(grads=grads, micro_batch_size=b)


def gradient_noise(
    micro_grads: Any, *, micro_batch_size: int | None = None, groups: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """GSNR and the three sampling tests of B micro-batch gradients (formulas in the module notes).

    ``micro_grads``: a :class:`MicroBatchGradients` (its ``micro_batch_size`` is used), a list of B dicts
    name → gradient tensor (same names and shapes in each), or a (B, P) torch tensor / numpy array of
    flattened gradients. ``micro_batch_size``: b, samples per micro-batch (required unless given by a
    MicroBatchGradients). ``groups``: for dicts, group name → list of parameter names (default: one group
    per parameter); for a (B, P) array, group name → slice or list of column indices (default: none).

    Returns ``{"gsnr", "norm_test", "inner_product_test", "orthogonality_test"}`` (floats over all
    parameters) plus ``"groups"``: group name → the same four floats, ``"micro_batches"`` (B),
    ``"micro_batch_size"`` (b) and ``"reason"`` (None, or why every value is NaN: fewer than 2
    micro-batches, a failed split, a non-finite gradient). Inconsistent names/shapes, unknown group
    members or wrong types raise :class:`~phasescope.errors.PhasescopeError`.
    """
    import numpy as np
    import torch

    reason = None
    if isinstance(micro_grads, MicroBatchGradients):
        if micro_batch_size is not None and micro_batch_size != micro_grads.micro_batch_size:
            raise PhasescopeError(
                f"micro_batch_size={micro_batch_size} disagrees with the gradients' {micro_grads.micro_batch_size}"
            )
        micro_batch_size, reason = micro_grads.micro_batch_size, micro_grads.reason
        micro_grads = micro_grads.grads
        if reason is not None:
            return _nan_result(groups, len(micro_grads), micro_batch_size, reason)
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) or micro_batch_size < 1:
        raise PhasescopeError(f"micro_batch_size must be an integer >= 1, got {micro_batch_size!r}")
    b = micro_batch_size

    if isinstance(micro_grads, torch.Tensor | np.ndarray):
        mat = torch.as_tensor(micro_grads)
        if mat.ndim != 2:
            raise PhasescopeError(f"a gradient matrix must be (B, P), got shape {tuple(mat.shape)}")
        B = int(mat.shape[0])
        if B < 2:
            return _nan_result(groups, B, b, f"need at least 2 micro-batches, got {B}")
        cols = {name: _columns(name, sel, int(mat.shape[1])) for name, sel in (groups or {}).items()}
        rows = [_partials(mat, b)] + [_partials(mat[:, c], b) for c in cols.values()]
        table = _to_host(rows)
        total, per_group = table[0], {name: table[1 + k] for k, name in enumerate(cols)}
    elif isinstance(micro_grads, Sequence) and all(isinstance(g, Mapping) for g in micro_grads):
        B = len(micro_grads)
        if B < 2:
            return _nan_result(groups, B, b, f"need at least 2 micro-batches, got {B}")
        names = list(micro_grads[0])
        _check_dicts(micro_grads, names)
        members = {name: [name] for name in names} if groups is None else dict(groups)
        for group, member_names in members.items():
            if isinstance(member_names, str) or not isinstance(member_names, Sequence):
                raise PhasescopeError(f"groups[{group!r}] must be a list of parameter names, got {member_names!r}")
            unknown = [m for m in member_names if m not in micro_grads[0]]
            if unknown:
                raise PhasescopeError(f"groups[{group!r}] names unknown parameters {unknown[:3]}")
        table = _to_host([_partials(torch.stack([g[name].reshape(-1) for g in micro_grads]), b) for name in names])
        index = {name: k for k, name in enumerate(names)}
        total = table.sum(axis=0)
        per_group = {group: table[[index[m] for m in ms]].sum(axis=0) for group, ms in members.items()}
    else:
        raise PhasescopeError(
            "micro_grads must be a MicroBatchGradients, a list of dicts name -> tensor or a (B, P) array, "
            f"got {type(micro_grads).__name__}"
        )
    if not np.isfinite(total[: 2 * B + 1]).all():
        return _nan_result(per_group, B, b, "a micro-batch gradient is not finite")
    out: dict[str, Any] = _stats(total, B)
    out["groups"] = {name: _stats(part, B) for name, part in per_group.items()}
    out.update(micro_batches=B, micro_batch_size=b, reason=None)
    return out


def _tensors(batch: Any) -> list:
    import torch

    if isinstance(batch, torch.Tensor):
        return [batch]
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, tuple | list) else []
    return [t for v in values for t in _tensors(v)]


def _slice(batch: Any, start: int, stop: int) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch[start:stop] if batch.ndim >= 1 else batch
    if isinstance(batch, Mapping):
        return {k: _slice(v, start, stop) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_slice(v, start, stop) for v in batch)
    return batch


def _check_dicts(micro_grads: Sequence[Mapping], names: list[str]) -> None:
    import torch

    first = micro_grads[0]
    for name in names:
        if not isinstance(first[name], torch.Tensor):
            raise PhasescopeError(f"micro_grads[0][{name!r}] must be a torch tensor, got {type(first[name]).__name__}")
    for i, g in enumerate(micro_grads[1:], start=1):
        if list(g) != names:
            raise PhasescopeError(f"micro_grads[{i}] has parameter names {list(g)[:3]}…, not those of micro_grads[0]")
        for name in names:
            if not isinstance(g[name], torch.Tensor) or g[name].shape != first[name].shape:
                raise PhasescopeError(f"micro_grads[{i}][{name!r}] is not a tensor of shape {tuple(first[name].shape)}")


def _columns(name: str, sel: Any, width: int) -> Any:
    if isinstance(sel, slice):
        return sel
    try:
        idx = [operator.index(j) for j in sel]
    except TypeError:
        raise PhasescopeError(f"groups[{name!r}] must be a slice or a list of column indices, got {sel!r}") from None
    bad = [j for j in idx if not -width <= j < width]
    if bad:
        raise PhasescopeError(f"groups[{name!r}] holds column indices outside 0…{width - 1}: {bad[:3]}")
    return idx


def _partials(G: Any, b: int) -> Any:
    """Additive per-block sums of a (B, n) gradient block, in float64 on its device, as one vector:
    [‖d_i‖² (B), d_iᵀḡ (B), ‖ḡ‖², Σ r_j over σ̂_j² > 0, #(σ̂_j² > 0), #(σ̂_j² = 0 < ḡ_j²)]."""
    import torch

    G = G.to(torch.float64)
    B = G.shape[0]
    mean = G.mean(dim=0)
    D = G - mean
    sq = D * D
    var = sq.sum(dim=0) * (b / (B - 1))
    m2 = mean * mean
    pos = var > 0
    ratio = torch.where(pos, m2 / torch.where(pos, var, torch.ones_like(var)), torch.zeros_like(var))
    tail = torch.stack([m2.sum(), ratio.sum(), pos.sum().to(G.dtype), ((~pos) & (m2 > 0)).sum().to(G.dtype)])
    return torch.cat([sq.sum(dim=1), D @ mean, tail])


def _to_host(rows: list) -> Any:
    import torch

    device = rows[0].device
    return torch.stack([r.to(device) for r in rows]).cpu().numpy()


def _stats(part: Any, B: int) -> dict[str, float]:
    """The four statistics from summed partials (see :func:`_partials`)."""
    dsq, c = part[:B], part[B : 2 * B]
    sgg, ratio_sum, n_pos, n_inf = (float(x) for x in part[2 * B :])
    var_sum, proj_sum = float(dsq.sum()), float((c * c).sum())
    gsnr = math.inf if n_inf > 0 else ratio_sum / n_pos if n_pos > 0 else math.nan
    if sgg > 0:
        scale = (B - 1) * B
        norm = math.sqrt(var_sum / (scale * sgg))
        inner = math.sqrt(proj_sum / (scale * sgg * sgg))
        ortho = math.sqrt(max(var_sum - proj_sum / sgg, 0.0) / (scale * sgg))
    else:
        norm = inner = ortho = math.inf if var_sum > 0 else math.nan
    return {"gsnr": gsnr, "norm_test": norm, "inner_product_test": inner, "orthogonality_test": ortho}


def _nan_result(groups: Mapping | None, B: int, b: int, reason: str) -> dict[str, Any]:
    nan = dict.fromkeys(NOISE_STATS, math.nan)
    out: dict[str, Any] = dict(nan)
    out["groups"] = {name: dict(nan) for name in (groups or {})}
    out.update(micro_batches=B, micro_batch_size=b, reason=reason)
    return out
