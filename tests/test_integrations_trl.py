"""TRL's post-training trainers with PhasescopeCallback: SFT, then DPO, then GRPO as three stages of one
run, each a real TRL trainer on a tiny GPT-2 built from a config, with in-memory data sets built from the
King James Bible (a verse → the name of its book)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset
from integrations_data import VOCAB, T, assert_stored_eigs, ref_last_token_eigs, tiny_gpt2
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from phasescope.corpus import hf_tokenizer, load_kjv_books, split_verses, train_tokenizer
from phasescope.probes import schedules as S
from phasescope.probes.integrations.hf import TRAINER_SCALARS, PhasescopeCallback
from phasescope.store import open_run, run_stages


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """(tokenizer, prompts, books, probe ids, probe mask): prompts are a verse's first words and
    "\\nBook:", the answer its book's name."""
    pairs = load_kjv_books()[:2000:7]
    split = split_verses([v for v, _ in pairs])
    tok = train_tokenizer(split.train, VOCAB, cache=tmp_path_factory.mktemp("tok"))
    hf = hf_tokenizer(tok)
    prompts = [" ".join(v.split()[:6]) + "\nBook:" for v, _ in pairs]
    books = [b for _, b in pairs]
    enc = hf(split.heldout[:16], padding="max_length", truncation=True, max_length=T, return_tensors="pt")
    return hf, prompts, books, enc["input_ids"], enc["attention_mask"]


def _common(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        learning_rate=1e-3,
        seed=0,
    )
    base.update(kw)
    return base


class Snapshot(TrainerCallback):
    """The model as it is at each optimizer step, before the update (placed before PhasescopeCallback)."""

    def __init__(self, model):
        self.model, self.at = model, {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.at[state.global_step] = _copy(self.model)


def _gpt2():
    """The tests' tiny GPT-2 with room for a prompt and its completion (64 positions)."""
    model = tiny_gpt2()
    cfg = model.config
    cfg.n_positions = 64
    return type(model)(cfg)


def _copy(model):
    """A copy of the tiny GPT-2's weights (deepcopy would follow the callbacks' hooks)."""
    fresh = _gpt2()
    fresh.load_state_dict(model.state_dict())
    return fresh


def _logged(trainer) -> dict[int, dict]:
    """The trainer's per-step logs by our step (its global_step − 1)."""
    return {h["step"] - 1: h for h in trainer.state.log_history if "loss" in h}


def _check_logged(ds, trainer, offset, keys):
    logs = _logged(trainer)
    for key in keys:
        name = TRAINER_SCALARS.get(key, key)
        got = ds[name].sel(step=[offset + s for s in sorted(logs)]).values
        want = [logs[s][key] for s in sorted(logs)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=key)


def test_sft_dpo_grpo_are_three_stages_of_one_run(task, tmp_path):
    hf, prompts, books, pids, pmask = task
    store = tmp_path / "post.zarr"
    probe = {"input_ids": pids, "attention_mask": pmask}
    model = _gpt2()

    def callback(**kw):
        return PhasescopeCallback(str(store), probe_inputs=probe, schedule=S.explicit([0, 3]), strict=True, **kw)

    sft_data = Dataset.from_list([{"prompt": p, "completion": " " + b} for p, b in zip(prompts, books)])
    snap = Snapshot(model)
    sft = SFTTrainer(
        model=model,
        args=SFTConfig(max_length=48, **_common(tmp_path)),
        train_dataset=sft_data,
        processing_class=hf,
        callbacks=[snap, callback()],
    )
    sft.train()

    wrong = books[1:] + books[:1]
    dpo_data = Dataset.from_list(
        [{"prompt": p, "chosen": " " + b, "rejected": " " + w} for p, b, w in zip(prompts, books, wrong) if b != w]
    )
    dpo = DPOTrainer(
        model=model,
        ref_model=_copy(model),
        args=DPOConfig(max_length=48, **_common(tmp_path)),
        train_dataset=dpo_data,
        processing_class=hf,
        callbacks=[callback(continue_run=True)],
    )
    dpo.train()

    answers = dict(zip(prompts, books))

    def exact_book(prompts, completions, **kwargs):  # the verifiable reward: the exact book name
        return [float(c.strip().split("\n")[0] == answers[p]) for p, c in zip(prompts, completions)]

    grpo_data = Dataset.from_list([{"prompt": p} for p in prompts])
    # GRPO (beta > 0) loads its KL reference from the policy's path: the policy as DPO left it
    model.save_pretrained(tmp_path / "after-dpo")
    model.config._name_or_path = str(tmp_path / "after-dpo")
    snap_rl = Snapshot(model)
    grpo = GRPOTrainer(
        model=model,
        reward_funcs=exact_book,
        args=GRPOConfig(max_completion_length=6, num_generations=4, beta=0.1, **_common(tmp_path)),
        train_dataset=grpo_data,
        processing_class=hf,
        callbacks=[snap_rl, callback(continue_run=True)],
    )
    grpo.train()

    ds = open_run(store)
    assert ds.step.values.tolist() == list(range(12))
    assert ds.capture_step.values.tolist() == [0, 3, 4, 7, 8, 11]
    stages = [(s["name"], s["first_step"], s["last_step"], s["trainer"]) for s in run_stages(ds)]
    assert stages == [("sft", 0, 3, "SFTTrainer"), ("dpo", 4, 7, "DPOTrainer"), ("grpo", 8, 11, "GRPOTrainer")]
    assert ds.attrs["finished"] is True

    # each trainer's own loss and its extras, at the step they describe
    _check_logged(ds.isel(step=slice(0, 4)), sft, 0, ["loss", "mean_token_accuracy", "entropy"])
    _check_logged(ds, dpo, 4, ["loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"])
    _check_logged(ds, grpo, 8, ["loss", "reward", "reward_std", "kl", "completions/mean_length"])
    assert np.isnan(ds["dpo_reward_margin"].sel(step=[0, 1, 2, 3, 8, 9, 10, 11]).values).all()  # DPO's only
    assert np.isfinite(ds["kl"].sel(step=[8, 9, 10, 11]).values).all()

    # captures read the fixed probe set, never the generation path: the stored spectrum at GRPO's first
    # step is the probe set's on the model as it was then (and at SFT's first, the initial model's), in
    # the trainers' bf16 autocast (TRL's default; Accelerate wraps the model's forward), which the run says
    assert ds.attrs["probe_autocast"] == "bfloat16"
    for snapshot, local, stored in ((snap, 0, 0), (snap_rl, 0, 8)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = ref_last_token_eigs(snapshot.at[local], pids, pmask)
        got = ds.eigenvalues.sel(capture_step=stored, probe="final_norm").values
        assert_stored_eigs(got, ref, int(ds.n_samples.sel(capture_step=stored, probe="final_norm")))


def test_grpo_in_flight_reads_the_training_forward_not_generation(task, tmp_path):
    """Without a probe set the probes read the training forward; GRPO's sampling (under no_grad) is not
    read: each capture holds the policy forward's samples (prompt-and-completion sequences), never
    the generation steps' one-token forwards."""
    hf, prompts, _, _, _ = task
    model = _gpt2()
    store = tmp_path / "inflight.zarr"
    data = Dataset.from_list([{"prompt": p} for p in prompts])
    GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
        args=GRPOConfig(max_completion_length=6, num_generations=4, **_common(tmp_path, max_steps=2)),
        train_dataset=data,
        processing_class=hf,
        callbacks=[PhasescopeCallback(str(store), schedule=S.explicit([0, 1]), tokens="last", strict=True)],
    ).train()
    ds = open_run(store)
    n = ds.n_samples.sel(probe="final_norm").values
    assert (n == 4).all(), n  # the 4 sequences of the training batch, once each
