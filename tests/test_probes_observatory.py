"""Observatory on real CPU training loops with transformers models built from configs."""

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import phasescope
from phasescope.errors import PhasescopeError
from phasescope.probes import schedules as S
from phasescope.store import open_run

V, T = 128, 16


def _gpt2(seed=0, layers=2, d=32, dropout=0.1):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=layers,
        n_embd=d,
        n_head=2,
        vocab_size=V,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return GPT2LMHeadModel(cfg)


def _probe_inputs(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, T), generator=g)
    mask = torch.ones_like(ids)
    lengths = torch.randint(4, T + 1, (n,), generator=g)
    for i, L in enumerate(lengths):
        mask[i, L:] = 0
        ids[i, L:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, V, (8, T), generator=g)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _ref_eigs(x):
    x = x.double().numpy()
    return np.sort(np.linalg.eigvalsh(np.cov(x.T, ddof=1)))[::-1]


def _ref_rankme(ev):
    p = ev / ev.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def test_probe_set_capture_matches_reference_and_training_is_untouched(tmp_path):
    steps, sched = 12, S.explicit([0, 3, 11])
    inputs = _probe_inputs()
    # Bare run: losses and the per-step references an independent observer would compute.
    bare = _gpt2()
    opt = torch.optim.AdamW(bare.parameters(), lr=3e-3)
    bare_losses, ref_norms, ref_eigs, ref_raw = [], {}, {}, {}
    for step in range(steps):
        x = _batch(step)
        loss = bare(input_ids=x, labels=x).loss
        loss.backward()
        bare_losses.append(float(loss.detach()))
        ref_norms[step] = np.array([float(p.grad.norm()) for p in bare.parameters()])
        if sched(step):
            bare.eval()
            with torch.no_grad():
                hs = bare(**inputs, output_hidden_states=True).hidden_states
            bare.train()
            last = inputs["attention_mask"].sum(1) - 1
            ref_eigs[step] = {
                name: _ref_eigs(hs[k][torch.arange(len(last)), last])
                for name, k in (("block.0", 1), ("final_norm", -1))
            }
            ref_raw[step] = {
                name: _ref_rankme(
                    np.linalg.svd(hs[k][torch.arange(len(last)), last].double().numpy(), compute_uv=False)
                )  # Garrido et al.: raw rows
                for name, k in (("block.0", 1), ("final_norm", -1))
            }
        opt.step()
        opt.zero_grad()

    model = _gpt2()
    model.transformer.h[1].ln_1.eval()  # a user's own per-module mode must survive captures
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    store = tmp_path / "run.zarr"
    losses = []
    with phasescope.Observatory(
        model,
        store=str(store),
        schedule=sched,
        probe_inputs=inputs,
        probe_batch_size=5,
        metadata={"seed": 0},
        strict=True,
        rankme_raw=True,
    ) as obs:
        assert _hooks(model) == 0
        for step in range(steps):
            x = _batch(step)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            obs.step(step, loss=loss, lr=3e-3)
            assert _hooks(model) == 0  # hooks live only during a capture
            assert model.training and not model.transformer.h[1].ln_1.training
            assert model.transformer.h[0].attn.training
            losses.append(float(loss.detach()))
            opt.step()
            opt.zero_grad()
    assert losses == bare_losses  # bit-identical training

    ds = open_run(store)
    assert list(ds.probe.values) == ["block.0", "block.1", "final_norm"]
    assert list(ds.capture_step.values) == [0, 3, 11] and list(ds.step.values) == list(range(steps))
    np.testing.assert_allclose(ds.loss.values, bare_losses, rtol=1e-6)
    assert (
        ds.attrs["finished"] is True
        and ds.attrs["seed"] == 0
        and ds.attrs["n_dropped_steps"] == 0
        and ds.attrs["n_dropped"] == 0
    )
    assert S.from_description(ds.attrs["schedule"]).steps(steps) == [0, 3, 11]
    for step in range(steps):
        np.testing.assert_allclose(ds.param_grad_norm.sel(step=step).values, ref_norms[step], rtol=1e-5)
        assert math.isclose(
            float(ds.grad_norm.sel(step=step)), float(np.sqrt((ref_norms[step] ** 2).sum())), rel_tol=1e-5
        )
    assert int(ds.flag_nonfinite.sum()) == 0
    for step, per_probe in ref_eigs.items():
        for name, ev in per_probe.items():
            got = ds.eigenvalues.sel(capture_step=step, probe=name).values
            k = min(24, len(ev))  # the first min(n, d) eigenvalues are stored, NaN past them
            np.testing.assert_allclose(got[:k], ev[:k], rtol=2e-4, atol=1e-6 * ev[0])
            assert np.isnan(got[k:]).all()
            assert int(ds.n_samples.sel(capture_step=step, probe=name)) == 24
            assert math.isclose(float(ds.rankme.sel(capture_step=step, probe=name)), _ref_rankme(ev), rel_tol=1e-4)
            assert math.isclose(
                float(ds.rankme_raw.sel(capture_step=step, probe=name)), ref_raw[step][name], rel_tol=1e-4
            )
    assert ds.attrs["rankme_raw"] is True


def test_hooks_removed_after_exception_and_run_marked_failed(tmp_path):
    model = _gpt2()
    before = _hooks(model)
    store = tmp_path / "boom.zarr"
    with (
        pytest.raises(RuntimeError, match="user bug"),
        phasescope.Observatory(
            model, store=str(store), probes="all", capture="in_flight", schedule=S.always(), strict=True
        ) as obs,
    ):
        for step in range(3):
            x = _batch(step)
            model(input_ids=x, labels=x).loss.backward()
            obs.step(step)
            assert _hooks(model) > before  # in-flight hooks armed for the next step
        model(input_ids=_batch(9))
        raise RuntimeError("user bug")
    assert _hooks(model) == before
    ds = open_run(store)
    assert ds.attrs["finished"] is False and "user bug" in ds.attrs["error"]
    assert ds.sizes["step"] == 3


def test_exception_inside_probe_forward_removes_hooks_and_restores_modes(tmp_path):
    model = _gpt2()
    calls = {"n": 0}

    def explode(module, args, output):
        if module.training:
            return
        calls["n"] += 1
        if calls["n"] > 1:  # let discover_dims pass, break the scheduled capture
            raise ValueError("broken module")

    h = model.transformer.h[0].register_forward_hook(explode)
    base = _hooks(model)
    obs = phasescope.Observatory(
        model, store=str(tmp_path / "r.zarr"), probe_inputs=_probe_inputs(), schedule=S.always()
    )
    model.train()
    x = _batch(0)
    model(input_ids=x, labels=x).loss.backward()
    with pytest.warns(RuntimeWarning, match="capture failed"):
        obs.step(0, loss=1.0)
    assert _hooks(model) == base and model.training and model.transformer.h[0].training
    obs.close()
    h.remove()
    ds = open_run(tmp_path / "r.zarr")
    assert ds.attrs["errors"] >= 1 and ds.sizes["step"] == 1


def test_nan_injection_training_continues_and_store_flagged(tmp_path):
    model = _gpt2(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    store = tmp_path / "nan.zarr"
    inject = 4
    with phasescope.Observatory(
        model, store=str(store), probe_inputs=_probe_inputs(), schedule=S.explicit([2, 5]), strict=True
    ) as obs:
        for step in range(7):
            if step == inject:
                with torch.no_grad():
                    model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
            x = _batch(step)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            obs.step(step, loss=loss, lr=1e-2)
            opt.step()
            opt.zero_grad()
    ds = open_run(store)
    flags = ds.flag_nonfinite.values
    assert list(flags[:inject]) == [0] * inject
    assert all(flags[inject:] & 1) and all(flags[inject:] & 4)  # gradient and loss bits
    assert flags[5] & 2  # activations at the capture step
    assert int(ds.n_samples.sel(capture_step=5, probe="final_norm")) == 0  # all rows were non-finite
    assert np.isnan(float(ds.rankme.sel(capture_step=5, probe="final_norm")))
    assert np.isfinite(ds.rankme.sel(capture_step=2).values).all()
    assert ds.attrs["finished"] is True


def test_in_flight_capture_reads_training_forward(tmp_path):
    model = _gpt2(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    store = tmp_path / "fly.zarr"
    ref = {}
    mask = torch.ones(8, T, dtype=torch.long)
    mask[:, 12:] = 0
    with phasescope.Observatory(
        model,
        store=str(store),
        capture="in_flight",
        schedule=S.explicit([1, 3]),
        probes=["blocks", "final_norm"],
        strict=True,
    ) as obs:
        for step in range(5):
            x = _batch(step)
            out = model(input_ids=x, attention_mask=mask, labels=x, output_hidden_states=True)
            out.loss.backward()
            ref[step] = out.hidden_states[-1][:, 11].detach()  # last non-pad token, after ln_f
            obs.step(step, loss=out.loss)
            opt.step()
            opt.zero_grad()
    ds = open_run(store)
    assert list(ds.capture_step.values) == [1, 3]
    assert ds.attrs["capture_mode"] == "in_flight"
    for step in (1, 3):
        got = ds.eigenvalues.sel(capture_step=step, probe="final_norm").values
        np.testing.assert_allclose(got[:8], _ref_eigs(ref[step])[:8], rtol=2e-4, atol=1e-6)  # n = 8 samples
        assert np.isnan(got[8:]).all()
        assert int(ds.n_samples.sel(capture_step=step, probe="final_norm")) == 8


def test_all_tokens_capped_and_batch_size_invariant(tmp_path):
    inputs = _probe_inputs(n=20)
    res = []
    for bs in (3, 64):
        model = _gpt2()
        with phasescope.Observatory(
            model,
            store=str(tmp_path / f"a{bs}.zarr"),
            probe_inputs=inputs,
            tokens="all",
            max_tokens=100,
            schedule=[0],
            probe_batch_size=bs,
            strict=True,
        ) as obs:
            x = _batch(0)
            model(input_ids=x, labels=x).loss.backward()
            obs.step(0)
        ds = open_run(tmp_path / f"a{bs}.zarr")
        assert int(ds.n_samples.sel(capture_step=0, probe="block.0")) == 100
        res.append(ds.eigenvalues.sel(capture_step=0).values)
    np.testing.assert_allclose(res[0], res[1], rtol=1e-4, atol=1e-7)


def test_other_families_train_with_auto_probes(tmp_path):
    import transformers as Tr

    small = dict(vocab_size=V, hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=2)
    for name, model in (
        ("neox", Tr.GPTNeoXForCausalLM(Tr.GPTNeoXConfig(**small, bos_token_id=0, eos_token_id=0))),
        ("llama", Tr.LlamaForCausalLM(Tr.LlamaConfig(**small, num_key_value_heads=2))),
    ):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with phasescope.Observatory(
            model, store=str(tmp_path / f"{name}.zarr"), probe_inputs=_probe_inputs(), schedule=[0, 2], strict=True
        ) as obs:
            for step in range(3):
                x = _batch(step)
                loss = model(input_ids=x, labels=x).loss
                loss.backward()
                obs.step(step, loss=loss)
                opt.step()
                opt.zero_grad()
        ds = open_run(tmp_path / f"{name}.zarr")
        assert list(ds.probe.values) == ["block.0", "block.1", "final_norm"]
        assert np.isfinite(ds.rankme.values).all() and ds.sizes["capture_step"] == 2
        kinds = {g["kind"] for g in ds.attrs["matrix_groups"].values()}
        want = {"qkv", "o", "mlp_in", "mlp_out"} if name == "neox" else {"q", "k", "v", "o", "gate", "up", "down"}
        assert kinds == want
        assert np.isfinite(ds.matrix_grad_nuclear.values).all()


def test_bad_inputs_raise_one_line_errors(tmp_path):
    model = _gpt2()
    with pytest.raises(PhasescopeError, match=r"closest: transformer\.h\.0\.mlp"):
        phasescope.Observatory(
            model, store=str(tmp_path / "x.zarr"), probes=["transformer.h.0.mlp_"], probe_inputs=_probe_inputs()
        )
    with pytest.raises(PhasescopeError, match="2-D"):
        phasescope.Observatory(
            model, store=str(tmp_path / "x.zarr"), probe_inputs={"input_ids": torch.zeros(5, dtype=torch.long)}
        )
    with pytest.raises(PhasescopeError, match="does not match"):
        phasescope.Observatory(
            model,
            store=str(tmp_path / "x.zarr"),
            probe_inputs={
                "input_ids": torch.zeros(4, 5, dtype=torch.long),
                "attention_mask": torch.ones(4, 6, dtype=torch.long),
            },
        )
    with pytest.raises(PhasescopeError, match="probe_inputs"):
        phasescope.Observatory(model, store=str(tmp_path / "x.zarr"), capture="probe_set")
    with pytest.raises(PhasescopeError, match="tokens"):
        phasescope.Observatory(model, store=str(tmp_path / "x.zarr"), probe_inputs=_probe_inputs(), tokens="second")
    assert _hooks(model) == 0


def test_full_queue_drops_are_counted_not_silent(tmp_path):
    import threading

    model = _gpt2()
    obs = phasescope.Observatory(
        model,
        store=str(tmp_path / "q.zarr"),
        preset="norms",
        queue_size=2,
        write_interval=0,
        put_timeout=0.001,
        probe_inputs=_probe_inputs(),
    )
    gate = threading.Event()
    w = obs.async_writer.writer
    real = w._put
    w._put = lambda items: (gate.wait(), real(items))  # a stalled disk: the queue fills
    x = _batch(0)
    model(input_ids=x, labels=x).loss.backward()
    with pytest.warns(RuntimeWarning, match="queue failed"):
        for step in range(12):
            obs.step(step, loss=1.0)
    gate.set()
    obs.close()
    ds = open_run(tmp_path / "q.zarr")
    dropped = ds.attrs["n_dropped_steps"]
    assert dropped > 0 and ds.sizes["step"] == 12 - dropped
    assert ds.attrs["failures"]["queue"] == dropped  # counted where the dashboard reads it
    assert ds.step.values[-1] == 11  # the oldest rows went, the newest stayed


def test_lazy_facade_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, phasescope; assert 'torch' not in sys.modules; print(phasescope.Observatory.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Observatory"


def _forgotten_observatory(store, steps: int, ending: str = "") -> subprocess.CompletedProcess:
    """Run a training script whose Observatory is never closed, ending with ``ending`` (a statement)."""
    script = textwrap.dedent(f"""
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
        import phasescope
        torch.set_num_threads(1)
        m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16,
                                       bos_token_id=0, eos_token_id=0))
        obs = phasescope.Observatory(m, store={str(store)!r}, capture="in_flight")
        x = torch.randint(0, 64, (2, 8))
        for s in range({steps}):
            m(input_ids=x, labels=x).loss.backward()
            obs.step(s, loss=1.0)
        {ending}
        """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)


def test_unclosed_observatory_is_flushed_at_exit(tmp_path):
    out = _forgotten_observatory(tmp_path / "exit.zarr", 5)
    assert out.returncode == 0, out.stderr
    ds = open_run(tmp_path / "exit.zarr")
    assert ds.sizes["step"] == 5 and ds.attrs["finished"] is False
    assert "without Observatory.close()" in ds.attrs["error"]


@pytest.mark.parametrize(
    ("ending", "status", "error"),
    [
        ("raise KeyboardInterrupt", "interrupted", None),
        ("raise ValueError('diverged')", "failed", "ValueError: diverged"),
    ],
)
def test_a_run_ended_by_an_uncaught_exception_says_how(tmp_path, ending, status, error):
    """A training script killed by Ctrl-C or an error, its Observatory never closed (as when a Trainer
    raises past its callbacks): the run is closed at exit as interrupted or failed with the error."""
    out = _forgotten_observatory(tmp_path / "end.zarr", 3, ending)
    assert out.returncode != 0
    ds = open_run(tmp_path / "end.zarr")
    assert ds.sizes["step"] == 3 and ds.attrs["status"] == status and ds.attrs.get("error") == error


def test_help_lists_every_option_with_its_default_and_meaning():
    import dataclasses
    import pydoc

    from phasescope.probes import ObservatoryOptions

    text = pydoc.render_doc(phasescope.Observatory, renderer=pydoc.plaintext)
    for f in dataclasses.fields(ObservatoryOptions):
        line = next((ln for ln in text.splitlines() if ln.strip(" |").startswith(f"{f.name} = ")), None)
        assert line is not None and f"= {f.default!r}: " in line and len(line.split(": ", 1)[1]) > 10, f.name
    with pytest.raises(PhasescopeError, match="unknown Observatory option 'queue_sise'; did you mean queue_size"):
        phasescope.Observatory(_gpt2(), store="unused.zarr", queue_sise=3)


def test_help_documents_every_parameter_and_option():
    """help(phasescope.Observatory): each constructor parameter under Parameters, each option listed."""
    import inspect
    from dataclasses import fields

    from phasescope.probes import ObservatoryOptions

    doc = phasescope.Observatory.__doc__
    assert doc.splitlines()[0].startswith("Live capture from a PyTorch training loop")
    params = [
        n
        for n, p in inspect.signature(phasescope.Observatory.__init__).parameters.items()
        if n != "self" and p.kind is not p.VAR_KEYWORD
    ]
    missing = [n for n in params if f"\n    {n} : " not in doc]
    assert not missing, missing
    assert all(f"    {f.name} = " in doc for f in fields(ObservatoryOptions))


def test_spectra_precision_option(tmp_path):
    """Float32 activations get float32 covariance products by default (issue 18); spectra_precision=
    "float64" asks for float64 products, is stored in the run's attributes, and a typo is one clear line."""
    model = _gpt2(dropout=0.0).eval()
    probe = _probe_inputs(n=48)
    runs = {}
    for precision in ("auto", "float64"):
        obs = phasescope.Observatory(
            model, store=tmp_path / f"{precision}.zarr", probe_inputs=probe, schedule=[0], spectra_precision=precision
        )
        obs.step(0)
        obs.close()
        runs[precision] = open_run(tmp_path / f"{precision}.zarr")
        assert runs[precision].attrs["spectra_precision"] == precision
    auto, exact = (runs[k]["eigenvalues"].isel(capture_step=0).values for k in ("auto", "float64"))
    top = np.nanmax(exact)
    assert np.nanmax(np.abs(auto - exact)) < 1e-5 * top  # float32 products: ~1e-7 of λ₁
    assert np.nanmax(np.abs(auto - exact)) > 0  # and really different arithmetic
    # the round-off floor each run's metrics used is stored with them: float32 products' ε, float64's k·ε
    k = np.minimum(runs["float64"]["n_samples"].isel(capture_step=0).values, 32)  # min(n, d) eigenvalues
    floors = {p: runs[p]["eigen_floor"].isel(capture_step=0).values for p in runs}
    np.testing.assert_array_equal(floors["auto"], 2.0**-23)
    np.testing.assert_array_equal(floors["float64"], k * np.finfo(np.float64).eps)
    with pytest.raises(PhasescopeError, match=r"unknown spectra precision 'float46'; did you mean 'float64'\?"):
        phasescope.Observatory(model, store=tmp_path / "bad.zarr", probe_inputs=probe, spectra_precision="float46")


def test_weight_spectra_live_on_their_own_schedule(tmp_path):
    """weight_schedule (preset "full" has one) stores WeightWatcher's layer metrics of the selected
    matrices as they are at obs.step on those steps, NaN on other matrix rows; presets below "full" and
    runs without the option store none."""
    from phasescope.spectra.weights import WEIGHT_EIGENVALUES, WEIGHT_STATS, weight_matrix_stats

    assert S.preset("full").schedule_for("weight_spectra")(0)
    assert not S.preset("economy").schedule_for("weight_spectra")(0)
    model = _gpt2(dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    snap = {}
    store = tmp_path / "w.zarr"
    with phasescope.Observatory(
        model, store=store, probe_inputs=_probe_inputs(n=24), schedule=[0, 1, 3], weight_schedule=[3], strict=True
    ) as obs:
        for step in range(4):
            x = _batch(step)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            if step == 3:
                snap = {n: p.detach().clone() for n, p in model.named_parameters()}
            obs.step(step, loss=loss)
            opt.step()
            opt.zero_grad()
    ds = open_run(store, lazy=False)
    assert all(f"matrix_{k}" in ds.data_vars for k in WEIGHT_STATS)
    mats = [str(m) for m in ds["matrix"].values]
    want = weight_matrix_stats(mats, [snap[m] for m in mats])
    for k in WEIGHT_STATS:
        got = ds[f"matrix_{k}"].sel(capture_step=3).values
        np.testing.assert_allclose(got, want[k], rtol=1e-6, equal_nan=True, err_msg=k)
        assert np.isnan(ds[f"matrix_{k}"].sel(capture_step=1).values).all()  # not on the weight schedule
    assert np.isfinite(ds["matrix_weight_alpha"].sel(capture_step=3).values).any()
    # the ESDs themselves, for the per-layer ESD plot: NaN-padded to the longest, NaN off the schedule
    esd = ds["weight_eigenvalues"]
    assert esd.dims == ("capture_step", "matrix", "weight_rank") and esd.sizes["weight_rank"] == 32
    np.testing.assert_allclose(esd.sel(capture_step=3).values, want[WEIGHT_EIGENVALUES], rtol=1e-6, equal_nan=True)
    assert np.isfinite(esd.sel(capture_step=3).values).all()  # every d=32 matrix has 32 eigenvalues
    assert np.isnan(esd.sel(capture_step=1).values).all()
    assert ds.attrs["weight_schedule"] == S.explicit([3]).describe()
    plain = tmp_path / "p.zarr"
    with phasescope.Observatory(model, store=plain, probe_inputs=_probe_inputs(n=24), schedule=[0]) as obs:
        obs.step(0)
    assert not any(v.startswith(("matrix_weight_", "weight_")) for v in open_run(plain).data_vars)


def test_curvature_and_gradient_noise_on_a_fixed_batch(tmp_path):
    """diagnostics_batch: on its schedule the Hessian's λ_max and trace and the gradient-noise statistics
    of that batch's loss are stored (step scalars and per-parameter GSNR), equal to the functions of
    phasescope.gradients on the model as it was at obs.step, NaN on other steps; training with dropout
    stays bit-identical (the random state is forked); a loss that is not twice differentiable and a batch
    too small to split store NaN with their reasons in statistics_skipped, and training goes on."""
    from phasescope.gradients.curvature import hessian_top_eigenvalue, hessian_trace, model_loss_fn
    from phasescope.gradients.noise import gradient_noise, micro_batch_gradients

    x = _batch(99)
    batch = {"input_ids": x, "labels": x}

    def train(store, dropout, **kw):
        model = _gpt2(dropout=dropout)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses, snap = [], None
        with phasescope.Observatory(model, store=store, probe_inputs=_probe_inputs(n=24), schedule=[0, 2], **kw) as obs:
            for step in range(3):
                loss = model(input_ids=_batch(step), labels=_batch(step)).loss
                loss.backward()
                if step == 2:
                    snap = {n: p.detach().clone() for n, p in model.named_parameters()}
                obs.step(step, loss=loss)
                losses.append(float(loss))
                opt.step()
                opt.zero_grad()
        return model, losses, snap

    _, _, snap = train(tmp_path / "d.zarr", 0.0, diagnostics_batch=batch, diagnostics_schedule=[2])
    ds = open_run(tmp_path / "d.zarr", lazy=False)
    ref = _gpt2(dropout=0.0)
    ref.load_state_dict(snap, strict=False)  # lm_head.weight is tied to wte
    f = model_loss_fn(ref, lambda out: out.loss, **batch)
    params = dict(ref.named_parameters())
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):  # the attention kernel with a double backward
        top, trace = hessian_top_eigenvalue(f, params), hessian_trace(f, params, samples=10)
    assert math.isfinite(top.value) and math.isfinite(trace.value)
    assert float(ds["hessian_top"].sel(step=2)) == pytest.approx(top.value, rel=1e-6)
    assert float(ds["hessian_trace"].sel(step=2)) == pytest.approx(trace.value, rel=1e-6)
    with sdpa_kernel([SDPBackend.MATH]):
        noise = gradient_noise(micro_batch_gradients(ref, lambda m, b: m(**b).loss, batch, 4))
    for k in ("gsnr", "norm_test", "inner_product_test", "orthogonality_test"):
        assert float(ds[k].sel(step=2)) == pytest.approx(noise[k], rel=1e-5), k
        assert np.isnan(ds[k].sel(step=1).values)
    gsnr = ds["param_gsnr"].sel(step=2).values
    names = [str(p) for p in ds["param"].values]
    want = np.array([noise["groups"][n]["gsnr"] for n in names])
    np.testing.assert_allclose(gsnr, want, rtol=1e-5)
    assert "statistics_skipped" not in ds.attrs

    # dropout on: the diagnostics' own dropout draws do not move the training's
    store = tmp_path / "drop.zarr"
    _, with_diag, _ = train(store, 0.1, diagnostics_batch=batch, diagnostics_schedule=[0, 1, 2])
    _, without, _ = train(tmp_path / "plain.zarr", 0.1)
    assert with_diag == without

    # bad input: a loss that is not twice differentiable; a batch too small to split in 16
    def relu_loss(out, b):
        return out.logits.relu().sign().sum() * 0 + out.logits.detach().sum()

    tiny = {"input_ids": x[:3], "labels": x[:3]}
    _, _, _ = train(tmp_path / "bad.zarr", 0.0, diagnostics_batch=tiny, diagnostics_loss=relu_loss, noise_splits=16)
    bad = open_run(tmp_path / "bad.zarr", lazy=False)
    assert np.isnan(bad["hessian_top"].values).all() and np.isnan(bad["gsnr"].values).all()
    skipped = bad.attrs["statistics_skipped"]
    assert set(skipped) == {"curvature", "gradient_noise"}, skipped
    assert bad.attrs["status"] == "finished" and int(bad["flag_lost"].values.sum()) == 0
    from phasescope.dashboard.figures import figure_panel, quality_rows

    rows = {r["check"]: r for r in quality_rows(bad)}
    curv, noise_row = rows["curvature not computed"], rows["gradient_noise not computed"]
    assert curv["status"] == noise_row["status"] == "error" and "identically zero" in curv["value"]
    assert noise_row["value"] == "batch of 3 samples is smaller than splits=16"
    # the registry's curvature and noise panels draw the stored values at their steps only
    fig = figure_panel({"d": ds}, "curvature")
    assert fig.layout.meta["variables"] == ["hessian_top", "hessian_trace"]
    top = next(t for t in fig.data if t.yaxis == "y")
    assert list(top.customdata) == [2] and float(top.y[0]) == pytest.approx(float(ds["hessian_top"].sel(step=2)))
    noise_fig = figure_panel({"d": ds}, "noise")
    assert "param_gsnr" in noise_fig.layout.meta["variables"]


def test_distance_from_initialisation(tmp_path):
    """distance_schedule (preset "full" has one) stores ‖θ − θ₀‖ per parameter and for the model, θ₀
    being the weights when the Observatory was attached, computed here by hand; the registry's
    "distance" panel draws the model's line and one line per block, each the root of its parameters'
    sum of squares; other presets keep no copy of the weights."""
    from phasescope.dashboard.figures import figure_panel

    assert S.preset("full").schedule_for("distance_from_init")(100)
    model = _gpt2(dropout=0.0)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    store = tmp_path / "d.zarr"
    with phasescope.Observatory(
        model, store=store, probe_inputs=_probe_inputs(n=24), schedule=[0], distance_schedule=[0, 3], strict=True
    ) as obs:
        for step in range(4):
            x = _batch(step)
            model(input_ids=x, labels=x).loss.backward()
            obs.step(step)
            if step == 3:
                want = {n: float((p.detach() - init[n]).norm()) for n, p in model.named_parameters()}
            opt.step()
            opt.zero_grad()
    ds = open_run(store, lazy=False)
    names = [str(p) for p in ds["param"].values]
    got = ds["param_distance_from_init"].sel(step=3).values
    np.testing.assert_allclose(got, [want[n] for n in names], rtol=1e-5)
    assert np.all(ds["param_distance_from_init"].sel(step=0).values == 0)  # attached before any update
    total = float(ds["distance_from_init"].sel(step=3))
    assert total == pytest.approx(math.sqrt(sum(v * v for v in want.values())), rel=1e-5)
    assert np.isnan(ds["distance_from_init"].sel(step=2).values)
    fig = figure_panel({"d": ds}, "distance")
    assert fig.layout.meta["variables"] == ["distance_from_init", "param_distance_from_init"]
    block0 = next(t for t in fig.data if t.name == "block 0")
    idx = [i for i, n in enumerate(names) if ".h.0." in n]
    assert float(block0.y[-1]) == pytest.approx(math.sqrt(sum(float(got[i]) ** 2 for i in idx)), rel=1e-5)
    with phasescope.Observatory(model, store=tmp_path / "e.zarr", probe_inputs=_probe_inputs(n=24)) as obs:
        assert obs.init_distance is None  # economy: no copy of the weights


def test_weight_spectra_of_a_model_without_selected_matrices_say_why(tmp_path):
    """A model whose 2-D weights the selection leaves out (an MLP has no transformer blocks) records the
    reason for the missing weight spectra; matrices='all' takes its Linear weights."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(32, 6)
    for matrices, stored in (("blocks", False), ("all", True)):
        store = tmp_path / f"{matrices}.zarr"
        with phasescope.Observatory(
            mlp, store=store, probe_inputs=x, schedule=[0], weight_schedule=[0], matrices=matrices
        ) as obs:
            mlp(x).sum().backward()
            obs.step(0)
            mlp.zero_grad()
        ds = open_run(store, lazy=False)
        skipped = ds.attrs.get("statistics_skipped", {})
        assert ("weight_spectra" in skipped) != stored, skipped
        if stored:
            assert np.isfinite(ds["matrix_weight_log_norm"].values).all()
            w = mlp[0].weight.detach().double()
            want = np.log10(float((w**2).sum()))
            assert float(ds["matrix_weight_log_norm"].sel(matrix="0.weight").values[0]) == pytest.approx(want, rel=1e-5)
        else:
            assert "pass matrices='all'" in skipped["weight_spectra"]
