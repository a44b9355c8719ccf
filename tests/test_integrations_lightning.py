"""lightning.Trainer + PhasescopeCallback: real CPU fits, gradient accumulation against a plain loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from integrations_data import assert_stored_eigs, corpus_blocks, ref_last_token_eigs, tiny_gpt2  # noqa: E402

from phasescope.probes import schedules as S  # noqa: E402
from phasescope.probes.integrations.lightning import NoOptimizerStepError, PhasescopeCallback  # noqa: E402
from phasescope.store import open_run  # noqa: E402

LR, ACC, STEPS, BS = 3e-3, 2, 6, 4


class LM(pl.LightningModule):
    def __init__(self, model, manual=False):
        super().__init__()
        self.model = model
        self.automatic_optimization = not manual

    def forward(self, input_ids, attention_mask=None, **kw):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kw)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.model(input_ids=x, labels=x).loss
        if not self.automatic_optimization:
            self.manual_backward(loss)  # ... and never steps the optimizer
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=LR)


def _trainer(cb, **kw):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        accumulate_grad_batches=ACC,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def test_lightning_callback_matches_plain_loop_with_accumulation(tmp_path):
    train, pids, pmask, _ = corpus_blocks(tmp_path / "tok", n_train=STEPS * ACC * BS)
    model = tiny_gpt2()
    ref_model = copy.deepcopy(model)
    init = copy.deepcopy(model)

    # Independent reference: a plain loop with the same micro-batches, loss/ACC per backward.
    opt = torch.optim.AdamW(ref_model.parameters(), lr=LR)
    ref_loss, ref_norm = [], []
    for s in range(STEPS):
        total = 0.0
        for m in range(ACC):
            x = train[(s * ACC + m) * BS : (s * ACC + m + 1) * BS]
            loss = ref_model(input_ids=x, labels=x).loss / ACC
            loss.backward()
            total += float(loss)
        ref_loss.append(total)
        ref_norm.append(float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in ref_model.parameters()))))
        opt.step()
        opt.zero_grad()

    store = tmp_path / "pl.zarr"
    cb = PhasescopeCallback(
        str(store),
        probes=["model.transformer.h.0", "model.transformer.ln_f"],
        schedule=S.explicit([0, 5]),
        probe_inputs={"input_ids": pids, "attention_mask": pmask},
        strict=True,
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train), batch_size=BS, shuffle=False)
    _trainer(cb).fit(LM(model), loader)

    ds = open_run(store)
    assert ds.step.values.tolist() == list(range(STEPS))
    assert ds.capture_step.values.tolist() == [0, 5]
    assert ds.attrs["finished"] is True and ds.attrs["accumulate_grad_batches"] == ACC
    np.testing.assert_allclose(ds.loss.values, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(ds.grad_norm.values, ref_norm, rtol=1e-5)
    np.testing.assert_allclose(ds.lr.values, LR)
    ref = ref_last_token_eigs(init, pids, pmask)
    probe = ds.probe.values[-1]
    assert_stored_eigs(
        ds.eigenvalues.sel(capture_step=0, probe=probe).values, ref, int(ds.n_samples.sel(capture_step=0, probe=probe))
    )


def test_manual_optimisation_without_step_fails_clearly(tmp_path):
    train, pids, pmask, _ = corpus_blocks(tmp_path / "tok", n_train=16)
    store = tmp_path / "pl-bad.zarr"
    cb = PhasescopeCallback(
        str(store), probes=["model.transformer.ln_f"], probe_inputs={"input_ids": pids, "attention_mask": pmask}
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train), batch_size=BS)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(NoOptimizerStepError, match="without an optimizer step"):
        trainer.fit(LM(tiny_gpt2(), manual=True), loader)
    ds = open_run(store)
    assert ds.sizes["step"] == 0 and ds.attrs["status"] == "failed"
