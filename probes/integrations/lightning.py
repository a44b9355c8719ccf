"""Lightning integration: one ``Callback``, the same store as :class:`Observatory`.

    from phasescope.probes.integrations.lightning import PhasescopeCallback
    trainer = lightning.Trainer(callbacks=[PhasescopeCallback("runs/x.zarr", probe_inputs=probe_batch)])

The callback creates an :class:`~phasescope.probes.Observatory` for the LightningModule on
``on_fit_start`` and records at ``on_before_optimizer_step``: once per optimizer step, after every
``accumulate_grad_batches`` micro-batch has been back-propagated and before Lightning's gradient
clipping (Lightning clips right after this hook). The stored step is ``trainer.global_step`` before the
update (0, 1, …). The loss is the loss of the accumulated batch: the sum of the losses Lightning
back-propagates (``on_before_backward`` sees each micro-batch loss divided by
``accumulate_grad_batches``), i.e. the mean micro-batch loss. The learning rate is the optimizer's.
``on_train_batch_end`` checks that optimizer steps happen (manual optimisation that never steps is
an error); the store is closed on ``on_fit_end`` or, marked failed, on ``on_exception``.
Extra keyword arguments go to the Observatory.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from ..observatory import Observatory
from ._common import NoOptimizerStepError, current_lr, no_step_error

__all__ = ["NoOptimizerStepError", "PhasescopeCallback"]


class PhasescopeCallback(pl.Callback):
    """Record a ``lightning.Trainer`` fit into a phasescope store (see the module docstring)."""

    def __init__(self, store, probes="auto", schedule=None, probe_inputs=None, **observatory_kwargs: Any):
        super().__init__()
        self.store, self.probes, self.schedule, self.probe_inputs = store, probes, schedule, probe_inputs
        self.kwargs = observatory_kwargs
        self.obs: Observatory | None = None
        self._loss = None
        self._batches_since_step = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        kw = dict(self.kwargs)
        meta = {
            "integration": "lightning.Trainer",
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "step_convention": "trainer.global_step before the update (0-based)",
        }
        meta.update(kw.pop("metadata", None) or {})
        self.obs = Observatory(
            pl_module,
            store=self.store,
            probes=self.probes,
            schedule=self.schedule,
            probe_inputs=self.probe_inputs,
            metadata=meta,
            **kw,
        )
        self._loss, self._batches_since_step = None, 0

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        loss = loss.detach().float()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.obs is None:
            return
        loss, self._loss = self._loss, None
        self._batches_since_step = 0
        self.obs.step(trainer.global_step, loss=loss, lr=current_lr(optimizer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.obs is None:
            return
        self._batches_since_step += 1
        if self._batches_since_step > max(1, int(trainer.accumulate_grad_batches)):
            raise no_step_error(
                "Lightning",
                self._batches_since_step,
                "with automatic_optimization=False call opt.step() on the optimizer from "
                "self.optimizers() (Lightning runs on_before_optimizer_step there)",
            )

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.obs is not None:
            self.obs.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.obs is not None:
            self.obs.close(error=exception)
