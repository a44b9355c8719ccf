"""Curvature and gradient noise on a fixed batch, for the Observatory's ``diagnostics`` schedule.

The user hands the Observatory one fixed batch (``diagnostics_batch``: a mapping of tensors passed as
``model(**batch)``, a tuple/list passed as ``model(*batch)``, or one tensor) and, unless the model's
output has a ``.loss`` (a Hugging Face model given ``labels``), a loss ``diagnostics_loss(output, batch)
-> scalar tensor``. On a diagnostics step the registry's ``curvature`` statistic
(:mod:`phasescope.gradients.curvature`: the Hessian's top eigenvalue and Hutchinson trace of that loss)
and ``gradient_noise`` (:mod:`phasescope.gradients.noise`: GSNR and the three batch-size tests from
``splits`` micro-batches) run on it. Neither touches ``.grad``, the optimizer or the buffers, and the
random state (dropout) is forked and restored, so training is bit-identical with and without them.
``scaled_dot_product_attention`` runs its math kernel there (the fused kernels have no double backward).

A statistic that cannot be computed (a loss that is not twice differentiable, a batch too small to
split) stores NaN, and its reason goes to the run's ``statistics_skipped`` attribute, shown in the
dashboard's data-quality table; training goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from phasescope.errors import PhasescopeError
from phasescope.gradients.curvature import hessian_top_eigenvalue, hessian_trace, model_loss_fn
from phasescope.gradients.noise import NOISE_STATS, gradient_noise, micro_batch_gradients

#: the step variables (scalars) and the per-parameter one the two statistics store
SCALARS = ("hessian_top", "hessian_trace", *NOISE_STATS)
PARAM_STATS = ("gsnr",)


def call_args(batch: Any) -> tuple[tuple, dict]:
    """How a batch is passed to ``forward``: a mapping as keywords, a tuple/list as positional arguments,
    anything else as the one argument."""
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, tuple | list):
        return tuple(batch), {}
    return (batch,), {}


def forward(model: Any, batch: Any) -> Any:
    """The model's output on ``batch``, passed as :func:`call_args` says."""
    args, kwargs = call_args(batch)
    return model(*args, **kwargs)


def default_loss(output: Any, batch: Any) -> Any:
    """``output.loss`` (a Hugging Face model given labels), else a clear error naming the fix."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None:
        raise PhasescopeError(
            "the model's output on diagnostics_batch has no .loss; pass diagnostics_loss=fn(output, batch) "
            "returning the scalar loss (or put labels in the batch of a Hugging Face model)"
        )
    return loss


@dataclass
class Diagnostics:
    """The fixed batch, the loss and the settings; :meth:`run` measures both statistics once."""

    batch: Any
    loss: Callable[[Any, Any], Any] | None = None
    splits: int = 4
    hessian_iters: int = 20
    hutchinson_samples: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss is not None and not callable(self.loss):
            raise PhasescopeError(f"diagnostics_loss must be a callable (output, batch) -> loss, got {self.loss!r}")
        for name in ("splits", "hessian_iters", "hutchinson_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "splits" else 1):
                low = 2 if name == "splits" else 1
                raise PhasescopeError(f"{name} must be an integer >= {low}, got {v!r}")

    def _loss(self, output: Any, batch: Any) -> Any:
        return (self.loss or default_loss)(output, batch)

    def run(self, model: Any, names: list[str]) -> tuple[dict[str, float], np.ndarray, dict[str, str]]:
        """(scalars by name, GSNR per parameter in ``names`` order, reasons of NaN statistics)."""
        import torch

        params = dict(model.named_parameters())
        # the CUDA devices the model lives on (none for a CPU model: no CUDA context is started)
        devices = sorted({p.device.index for p in params.values() if p.is_cuda and p.device.index is not None})
        reasons: dict[str, str] = {}
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # dropout draws leave the training's stream as it was; scaled_dot_product_attention takes its
        # math kernel, the one with a double backward (the fused CPU/flash kernels have none)
        args, kwargs = call_args(self.batch)
        f = model_loss_fn(model, lambda out: self._loss(out, self.batch), *args, **kwargs)
        with torch.random.fork_rng(devices=devices), sdpa_kernel([SDPBackend.MATH]):
            top = hessian_top_eigenvalue(f, params, iters=self.hessian_iters, seed=self.seed)
            trace = hessian_trace(f, params, samples=self.hutchinson_samples, seed=self.seed)
            grads = micro_batch_gradients(model, lambda m, b: self._loss(forward(m, b), b), self.batch, self.splits)
            noise = gradient_noise(grads)
        for name, r in (("curvature", top.reason or trace.reason), ("gradient_noise", noise["reason"])):
            if r:
                reasons[name] = r
        scalars = {"hessian_top": top.value, "hessian_trace": trace.value}
        scalars.update({k: float(noise[k]) for k in NOISE_STATS})
        per = noise.get("groups") or {}
        gsnr = np.array([float(per[n]["gsnr"]) if n in per else np.nan for n in names], dtype=np.float32)
        return scalars, gsnr, reasons
