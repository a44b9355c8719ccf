"""Gradient statistics through the Observatory under gradient accumulation and torch.amp.GradScaler (CPU)."""

import numpy as np
import torch

import phasescope
from phasescope.probes import schedules as S
from phasescope.store import open_run

V, T = 96, 12


def _model(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=V,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


def _data(step, n=8):
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(step))


def _run(tmp_path, name, *, micro=1, scaler=None, steps=4, inject_inf_at=None):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    path = tmp_path / f"{name}.zarr"
    weights_before_skip = None
    with phasescope.Observatory(
        model,
        store=str(path),
        preset="norms",
        matrix_schedule=S.always(),
        optimizer=opt,
        grad_scaler=scaler,
        strict=True,
        probe_inputs={"input_ids": _data(99, 4)},
    ) as obs:
        for step in range(steps):
            x = _data(step)
            for chunk in x.chunk(micro):
                loss = model(input_ids=chunk, labels=chunk).loss / micro
                (scaler.scale(loss) if scaler is not None else loss).backward()
            if step == inject_inf_at:
                model.transformer.h[0].mlp.c_fc.weight.grad[0, 0] = float("inf")
                weights_before_skip = [p.detach().clone() for p in model.parameters()]
            obs.step(step, loss=loss.detach() * micro, lr=0.05)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if step == inject_inf_at:
                assert all(torch.equal(a, b) for a, b in zip(weights_before_skip, model.parameters()))
            opt.zero_grad()
    return open_run(path)


def test_accumulated_gradient_stats_equal_full_batch(tmp_path):
    full = _run(tmp_path, "full", micro=1)
    acc = _run(tmp_path, "acc", micro=4)
    assert acc.sizes["step"] == full.sizes["step"] == 4  # once per optimizer step
    np.testing.assert_allclose(acc.param_grad_norm.values, full.param_grad_norm.values, rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(acc.grad_norm.values, full.grad_norm.values, rtol=2e-4)
    for stat in ("matrix_grad_nuclear", "matrix_grad_spectral", "matrix_grad_stable_rank"):
        np.testing.assert_allclose(acc[stat].values, full[stat].values, rtol=1e-3)


def test_grad_scaler_stats_are_unscaled_and_skips_recorded(tmp_path):
    plain = _run(tmp_path, "plain")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000)
    amp = _run(tmp_path, "amp", scaler=scaler)
    np.testing.assert_allclose(amp.param_grad_norm.values, plain.param_grad_norm.values, rtol=1e-5)
    np.testing.assert_allclose(amp.matrix_grad_nuclear.values, plain.matrix_grad_nuclear.values, rtol=1e-4)
    np.testing.assert_allclose(amp.loss_scale.values, 2.0**12)
    assert int(amp.flag_skipped.sum()) == 0

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000)
    skip = _run(tmp_path, "skip", scaler=scaler, inject_inf_at=2)
    assert list(skip.flag_skipped.values) == [0, 0, 1, 0]
    assert list(skip.flag_nonfinite.values & 1) == [0, 0, 1, 0]
    assert list(skip.loss_scale.values) == [2.0**12] * 3 + [2.0**11]  # GradScaler backed off
    np.testing.assert_allclose(skip.param_grad_norm.values[:2], plain.param_grad_norm.values[:2], rtol=1e-5)
    assert skip.attrs["finished"] is True


def test_disabled_scaler_and_bf16_autocast(tmp_path):
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ds = _run(tmp_path, "off", scaler=scaler)
    assert np.isnan(ds.loss_scale.values).all() and int(ds.flag_skipped.sum()) == 0
    model = _model()
    with phasescope.Observatory(
        model, store=str(tmp_path / "bf16.zarr"), probe_inputs={"input_ids": _data(5, 6)}, schedule=[0, 1], strict=True
    ) as obs:
        for step in range(2):
            x = _data(step)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            obs.step(step, loss=loss)
    ds = open_run(tmp_path / "bf16.zarr")
    assert np.isfinite(ds.param_grad_norm.values).all() and np.isfinite(ds.rankme.values).all()
