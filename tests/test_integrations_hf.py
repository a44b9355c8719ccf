"""Hugging Face Trainer + PhasescopeCallback: a real Trainer on a tiny GPT-2 and the KJV corpus."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")

from integrations_data import assert_stored_eigs, corpus_blocks, ref_last_token_eigs, tiny_gpt2
from transformers import Trainer, TrainingArguments

from phasescope.probes import schedules as S
from phasescope.probes.integrations.hf import NoOptimizerStepError, PhasescopeCallback
from phasescope.store import open_run


class Blocks(torch.utils.data.Dataset):
    def __init__(self, ids, pad):
        self.ids, self.pad = ids, pad

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        x = self.ids[i]
        return {"input_ids": x, "labels": torch.where(x == self.pad, -100, x)}


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=8,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        max_grad_norm=0.5,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


def test_trainer_callback_records_accumulated_steps(tmp_path):
    train, pids, pmask, pad = corpus_blocks(tmp_path / "tok")
    model = tiny_gpt2()
    init = copy.deepcopy(model)
    store = tmp_path / "hf.zarr"
    cb = PhasescopeCallback(
        str(store),
        probes="auto",
        schedule=S.explicit([0, 4, 7]),
        probe_inputs={"input_ids": pids, "attention_mask": pmask},
        strict=True,
    )
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=Blocks(train, pad), callbacks=[cb])
    trainer.train()
    assert cb.obs.closed

    ds = open_run(store)
    logs = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert ds.step.values.tolist() == list(range(8))
    assert ds.capture_step.values.tolist() == [0, 4, 7]
    assert ds.attrs["finished"] is True and ds.attrs["gradient_accumulation_steps"] == 2
    # the training is one stage, named after the trainer (TRL's configs name theirs: see trainer_stage)
    assert ds.attrs["stages"] == [{"name": "train", "first_step": 0, "last_step": 7, "trainer": "Trainer", "meta": {}}]
    # Trainer logs update k as global_step k+1; loss of the accumulated batch, lr before the scheduler step.
    np.testing.assert_allclose(ds.loss.values, [logs[s + 1]["loss"] for s in range(8)], rtol=1e-5)
    np.testing.assert_allclose(ds.lr.values, [logs[s + 1]["learning_rate"] for s in range(8)], rtol=1e-6)
    # Gradients after the Trainer's clipping: ‖g‖ = logged pre-clip norm × min(1, 0.5/(norm + 1e-6)).
    pre = np.array([logs[s + 1]["grad_norm"] for s in range(8)])
    np.testing.assert_allclose(ds.grad_norm.values, pre * np.minimum(1, 0.5 / (pre + 1e-6)), rtol=1e-4)
    assert (pre > 0.5).any()  # clipping really happened somewhere
    # Capture at step 0 = the initial weights: eigenvalues against an independent reference.
    ref = ref_last_token_eigs(init, pids, pmask)
    assert_stored_eigs(
        ds.eigenvalues.sel(capture_step=0, probe="final_norm").values,
        ref,
        int(ds.n_samples.sel(capture_step=0, probe="final_norm")),
    )
    assert ds.rankme.sel(probe="final_norm").notnull().all()


def test_trainer_without_optimizer_step_event_fails_clearly(tmp_path):
    train, pids, pmask, pad = corpus_blocks(tmp_path / "tok")
    store = tmp_path / "hf-bad.zarr"
    cb = PhasescopeCallback(str(store), probe_inputs={"input_ids": pids, "attention_mask": pmask})
    trainer = Trainer(
        model=tiny_gpt2(), args=_args(tmp_path, max_steps=3), train_dataset=Blocks(train, pad), callbacks=[cb]
    )
    trainer.callback_handler.on_pre_optimizer_step = lambda args, state, control: control  # a loop without the event
    with pytest.raises(NoOptimizerStepError, match="without an optimizer step"):
        trainer.train()
    ds = open_run(store)
    assert ds.sizes["step"] == 0 and ds.attrs["status"] == "failed"


def test_a_second_trainer_continues_the_run_as_its_next_stage(tmp_path):
    """Pretraining, then fine-tuning by a second Trainer in the same store (continue_run=True): one run,
    one continuous step axis (the second Trainer's global_step 0 is stored after the first's last step),
    both stages with their steps, the second stage's losses its Trainer's own. Continuing a run with
    another layout, or a store with no run, is one line and loses nothing."""
    from phasescope.errors import PhasescopeError
    from phasescope.store import LayoutMismatchError, run_stages

    train, pids, pmask, pad = corpus_blocks(tmp_path / "tok")
    model = tiny_gpt2()
    store = tmp_path / "stages.zarr"
    probe = {"input_ids": pids, "attention_mask": pmask}
    first = PhasescopeCallback(
        str(store), schedule=S.explicit([0, 7]), probe_inputs=probe, stage="pretrain", strict=True
    )
    Trainer(model=model, args=_args(tmp_path), train_dataset=Blocks(train, pad), callbacks=[first]).train()
    second = PhasescopeCallback(
        str(store), schedule=S.explicit([0, 5]), probe_inputs=probe, stage="sft", continue_run=True, strict=True
    )
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, max_steps=6, learning_rate=1e-3),
        train_dataset=Blocks(train[8:], pad),
        callbacks=[second],
    )
    trainer.train()
    ds = open_run(store)
    assert ds.step.values.tolist() == list(range(14))
    assert ds.capture_step.values.tolist() == [0, 7, 8, 13]  # each trainer's schedule, on the run's axis
    stages = [(s["name"], s["first_step"], s["last_step"], s["trainer"]) for s in run_stages(ds)]
    assert stages == [("pretrain", 0, 7, "Trainer"), ("sft", 8, 13, "Trainer")]
    logs = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    np.testing.assert_allclose(ds.loss.values[8:], [logs[s + 1]["loss"] for s in range(6)], rtol=1e-5)
    assert ds.attrs["finished"] is True and len(ds.attrs["resumed"]) == 1
    # unnamed, the stage is named after the trainer: a new one ("train"), then a trainer that continues
    # in it (as a resumed Trainer does) extends it instead of failing on a name used twice
    for _ in range(2):
        cb = PhasescopeCallback(str(store), schedule=S.explicit([0]), probe_inputs=probe, continue_run=True)
        Trainer(
            model=model, args=_args(tmp_path, max_steps=2), train_dataset=Blocks(train, pad), callbacks=[cb]
        ).train()
    stages = [(s["name"], s["first_step"], s["last_step"]) for s in run_stages(open_run(store))]
    assert stages[2:] == [("train", 14, 17)]

    with pytest.raises(PhasescopeError, match="needs an existing run"):
        PhasescopeCallback(str(tmp_path / "none.zarr"), probe_inputs=probe, continue_run=True).on_train_begin(
            _args(tmp_path), None, None, model=model
        )
    other = PhasescopeCallback(str(store), probes="final_norm", probe_inputs=probe, continue_run=True, stage="dpo")
    with pytest.raises(LayoutMismatchError, match="cannot resume"):
        other.on_train_begin(_args(tmp_path), None, None, model=model)
    assert open_run(store).step.values.tolist() == list(range(18))  # nothing committed was lost
