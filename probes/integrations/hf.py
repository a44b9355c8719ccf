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

The trainers' own metrics, logged after each optimizer step (every ``logging_steps``; TRL averages them
over that window), are stored with the step they describe (``TRAINER_SCALARS``: DPO's reward margin,
accuracy and rewards, GRPO's reward mean and std and KL, the completions' mean length, SFT's token
accuracy, the policy's entropy). The stored ``loss`` is the trainer's objective: the model's loss for
``Trainer`` and ``SFTTrainer`` (measured at each step, whatever ``logging_steps``), the loss the trainer
logs for those that compute their objective outside the model (DPO, GRPO and TRL's others). Every run
the callback writes declares the same variables, so a run continued by another trainer
(``continue_run=True``, the next stage) keeps its layout. TRL's configs default to ``bf16=True``: the
probe forward then runs in the trainer's autocast too, and the run says so (``probe_autocast``).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..observatory import Observatory
from ._common import NoOptimizerStepError, current_lr, no_step_error

__all__ = ["TRAINER_SCALARS", "NoOptimizerStepError", "PhasescopeCallback"]

#: trainers whose objective is their model's own loss (others log theirs: DPO, GRPO, ...)
MODEL_LOSS_TRAINERS = ("Trainer", "SFTTrainer")
#: the trainers' logged metrics (Trainer's and TRL's log keys) -> the step variable they are stored as
TRAINER_SCALARS = {
    "rewards/margins": "dpo_reward_margin",
    "rewards/accuracies": "dpo_reward_accuracy",
    "rewards/chosen": "dpo_reward_chosen",
    "rewards/rejected": "dpo_reward_rejected",
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "kl": "kl",
    "completions/mean_length": "completion_length",
    "mean_token_accuracy": "token_accuracy",
    "entropy": "entropy",
}


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
        self._loss_from_log = False  # store the trainer's logged loss for the last step (see the module doc)
        self._model_loss = True  # the trainer optimises its model's own loss (Trainer, SFTTrainer)

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
        kw["log_scalars"] = tuple(dict.fromkeys((*TRAINER_SCALARS.values(), *kw.get("log_scalars", ()))))
        self.obs = Observatory(
            model,
            store=self.store,
            probes=self.probes,
            schedule=self.schedule,
            probe_inputs=self.probe_inputs,
            metadata=meta,
            **kw,
        )
        self.obs.hold_rows = True  # the step's logged metrics come after it (on_log): obs.log adds them
        name, trainer = trainer_stage(args)
        self._model_loss = trainer in MODEL_LOSS_TRAINERS
        if kw.get("continue_run") and state is not None and state.global_step:
            # a Trainer resumed from a checkpoint starts at its restored global_step: its first step follows
            # the run's last stored one
            self.obs.step_offset -= int(state.global_step)
        if self.stage is not False:
            self._start_stage(self.stage, name, trainer)
        self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)

    def _start_stage(self, asked, default: str, trainer: str) -> None:
        """Start the stage ``asked`` (a name given by the user: used as is), else one named after the
        trainer: the run's current stage when a continued run is in it already (a resumed trainer), else
        the first of "sft", "sft-2", … not yet used (a second SFT phase)."""
        assert self.obs is not None
        if asked:
            self.obs.stage(asked, trainer=trainer)
            return
        used = [s["name"] for s in self.obs.stages.stages]
        if used and used[-1] == default:
            return  # continues the stage it is in
        name, k = default, 2
        while name in used:
            name, k = f"{default}-{k}", k + 1
        self.obs.stage(name, trainer=trainer)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.obs is None:
            return
        self._stepped = True
        loss = self._take_loss()
        if not self._model_loss:
            loss = None  # the model's output loss (if any) is not this trainer's objective
        self._loss_from_log = loss is None
        self.obs.step(state.global_step, loss=loss, lr=current_lr(optimizer))

    def on_log(self, args, state, control, logs=None, **kwargs):
        """The metrics the trainer logged for the update it just made (global_step − 1 in our steps)."""
        if self.obs is None or not logs or self.obs.closed:
            return
        values = {name: logs[key] for key, name in TRAINER_SCALARS.items() if _number(logs.get(key))}
        if self._loss_from_log and _number(logs.get("loss")):
            values["loss"] = logs["loss"]
        if values:
            self.obs.log(state.global_step - 1, **values)

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


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
