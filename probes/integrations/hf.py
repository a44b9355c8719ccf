"""Hugging Face ``Trainer`` integration: one callback, the same store as :class:`Observatory`.

    from phasescope.probes.integrations.hf import PhasescopeCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[PhasescopeCallback("runs/x.zarr", probe_inputs=probe_batch)])

The callback creates an :class:`~phasescope.probes.Observatory` on ``on_train_begin`` and records at
``on_pre_optimizer_step``: once per optimizer step, after all gradient-accumulation micro-batches and
after the Trainer's gradient clipping, i.e. the gradients the optimizer is about to apply. The stored
step is ``state.global_step`` before the update (0, 1, …; Trainer's logs call the same update
``global_step + 1``). The loss is the loss of the accumulated batch, measured the way the Trainer logs
it: the model's ``loss`` output summed over micro-batches when the Trainer passes
``num_items_in_batch`` (each micro-batch loss is then a share of the batch mean), otherwise their mean.
The learning rate is the optimizer's, read before ``lr_scheduler.step()`` (what Trainer logs). The
store is closed at ``on_train_end``. Extra keyword arguments go to the Observatory.

The training is one stage of the run (``Observatory.stage``), named after the trainer unless
``stage=`` names it: the kind of its arguments tells it (TRL's ``SFTConfig`` → "sft" by ``SFTTrainer``,
``DPOConfig`` → "dpo", ``GRPOConfig`` → "grpo"; plain ``TrainingArguments`` → "train" by ``Trainer``);
``stage=False`` marks none.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..observatory import Observatory
from ._common import NoOptimizerStepError, current_lr, no_step_error

__all__ = ["NoOptimizerStepError", "PhasescopeCallback"]


class PhasescopeCallback(TrainerCallback):
    """Record a ``transformers.Trainer`` run into a phasescope store (see the module docstring)."""

    def __init__(
        self, store, probes="auto", schedule=None, probe_inputs=None, *, stage=None, **observatory_kwargs: Any
    ):
        self.store, self.probes, self.schedule, self.probe_inputs = store, probes, schedule, probe_inputs
        self.stage = stage
        self.kwargs = observatory_kwargs
        self.obs: Observatory | None = None
        self._hook = None
        self._loss_sum = None
        self._loss_n = 0
        self._summed = False
        self._stepped = False

    # ------------------------------------------------------------------ loss of the accumulated batch
    def _on_forward(self, module, args, kwargs, output) -> None:
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if loss is None:
            return
        loss = loss.detach().float().mean()
        self._summed = kwargs.get("num_items_in_batch") is not None
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_n += 1

    def _take_loss(self):
        if self._loss_sum is None:
            return None
        loss = self._loss_sum if self._summed else self._loss_sum / self._loss_n
        self._loss_sum, self._loss_n = None, 0
        return loss

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            raise NoOptimizerStepError(
                "PhasescopeCallback.on_train_begin got no model; add the callback to a "
                "transformers.Trainer (callbacks=[...]) rather than calling it yourself"
            )
        meta = {
            "integration": "transformers.Trainer",
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "max_grad_norm": args.max_grad_norm,
            "step_convention": "global_step before the update (0-based)",
        }
        kw = dict(self.kwargs)
        meta.update(kw.pop("metadata", None) or {})
        kw.setdefault("optimizer", optimizer)
        self.obs = Observatory(
            model,
            store=self.store,
            probes=self.probes,
            schedule=self.schedule,
            probe_inputs=self.probe_inputs,
            metadata=meta,
            **kw,
        )
        if self.stage is not False:
            name, trainer = trainer_stage(args)
            self.obs.stage(self.stage or name, trainer=trainer)
        self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.obs is None:
            return
        self._stepped = True
        self.obs.step(state.global_step, loss=self._take_loss(), lr=current_lr(optimizer))

    def on_step_end(self, args, state, control, **kwargs):
        if self.obs is None:
            return
        if not self._stepped:
            err = no_step_error(
                "Hugging Face",
                args.gradient_accumulation_steps,
                "this Trainer never called on_pre_optimizer_step (transformers >= 4.45 does); "
                "use a Trainer whose training loop calls it, or phasescope.Observatory directly",
            )
            self._close(err)
            raise err
        self._stepped = False

    def on_train_end(self, args, state, control, **kwargs):
        self._close(None)

    def _close(self, error) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.obs is not None:
            self.obs.close(error=error)


def trainer_stage(args) -> tuple[str, str]:
    """(default stage name, trainer) for a Trainer's arguments: TRL's ``XConfig`` is ``XTrainer``'s,
    stage "x" in lower case ("SFTConfig" → ("sft", "SFTTrainer")); ``TrainingArguments`` → ("train",
    "Trainer")."""
    kind = type(args).__name__
    if kind.endswith("Config") and kind != "Config":
        base = kind[: -len("Config")]
        return base.lower(), f"{base}Trainer"
    return "train", "Trainer"
