"""Training stages in one run (obs.stage / Recorder.stage), and the weight-change statistics against the
stage's weights or a given base model, on a real GPT-2 trained on CPU."""

import copy

import numpy as np
import pytest
import torch

import phasescope
from phasescope.errors import PhasescopeError
from phasescope.probes import Recorder
from phasescope.spectra.weights import CHANGE_STATS, weight_change_stats
from phasescope.store import RunWriter, open_run, run_stages

V, T = 64, 12


def _gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=V, n_positions=T, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def _batch(step, n=8):
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(100 + step))


def _train(obs, model, steps, stage_at, snaps=None, opt=None):
    """Train ``steps`` steps, calling obs.stage(name, ...) before the steps in ``stage_at``; ``snaps``
    collects the matrices' weights at each obs.step and at each stage start."""
    opt = opt or torch.optim.AdamW(model.parameters(), lr=3e-2)
    for step in range(steps):
        if step in stage_at:
            name, kw = stage_at[step]
            obs.stage(name, **kw)
            if snaps is not None:
                snaps[f"start-{name}"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        x = _batch(step)
        model(input_ids=x, labels=x).loss.backward()
        if snaps is not None:
            snaps[step] = {n: p.detach().clone() for n, p in model.named_parameters()}
        obs.step(step)
        opt.step()
        opt.zero_grad()


def test_stages_are_stored_in_order_with_their_steps_trainer_and_metadata(tmp_path):
    model = _gpt2()
    store = tmp_path / "s.zarr"
    with phasescope.Observatory(model, store=store, probe_inputs=_batch(99, 16), schedule=[0, 5], strict=True) as obs:
        _train(
            obs,
            model,
            9,
            {0: ("pretrain", {}), 4: ("sft", {"trainer": "SFTTrainer", "lr": 1e-4}), 7: ("dpo", {"beta": 0.1})},
        )
        assert obs.stages.current == "dpo"
        live = open_run(store).attrs["stages"]  # written as each stage begins, not only at close
        assert [s["name"] for s in live] == ["pretrain", "sft", "dpo"] and live[-1]["last_step"] is None
    ds = open_run(store)
    want = [
        {"name": "pretrain", "first_step": 0, "last_step": 3, "trainer": None, "meta": {}},
        {"name": "sft", "first_step": 4, "last_step": 6, "trainer": "SFTTrainer", "meta": {"lr": 1e-4}},
        {"name": "dpo", "first_step": 7, "last_step": 8, "trainer": None, "meta": {"beta": 0.1}},
    ]
    assert ds.attrs["stages"] == want and run_stages(ds) == want


def test_bad_stage_calls_are_one_line_errors_and_the_run_goes_on(tmp_path):
    model = _gpt2()
    store = tmp_path / "bad.zarr"
    with phasescope.Observatory(model, store=store, probe_inputs=_batch(99, 16), schedule=[0], strict=True) as obs:
        _train(obs, model, 2, {0: ("sft", {})})
        obs.stage("dpo")
        with pytest.raises(PhasescopeError, match=r"stage 'rl' would start at the same step as stage 'dpo'") as e:
            obs.stage("rl")
        assert "\n" not in str(e.value)
        obs.step(2)
        with pytest.raises(PhasescopeError, match=r"stage 'sft' was already run \(steps 0–1\).*'sft-2'"):
            obs.stage("sft")
        with pytest.raises(PhasescopeError, match="non-empty string"):
            obs.stage("")
        with pytest.raises(PhasescopeError, match="JSON"):
            obs.stage("rl", trainer="GRPOTrainer", fn=object())
        obs.step(3)
    ds = open_run(store)
    assert [int(s) for s in ds["step"].values] == [0, 1, 2, 3]  # nothing committed was lost
    assert [(s["name"], s["first_step"], s["last_step"]) for s in ds.attrs["stages"]] == [("sft", 0, 1), ("dpo", 2, 3)]


def test_a_run_cut_off_mid_stage_ends_its_stage_at_the_last_step(tmp_path):
    path = tmp_path / "cut.zarr"
    stages = [{"name": "sft", "first_step": 0, "last_step": None, "trainer": None, "meta": {}}]
    w = RunWriter(path, probes=[], params=[], metrics=[], max_rank=0, attrs={"stages": stages})
    for step in range(5):
        w.append_step(step, {"loss": 1.0})
    # no close: the process died; the stage is still "running" in the attributes
    assert run_stages(open_run(path))[0]["last_step"] == 4
    assert open_run(path).attrs["stages"][0]["last_step"] is None


def test_recorder_stages(tmp_path):
    rng = np.random.default_rng(0)
    with Recorder(str(tmp_path / "r.zarr"), write_interval=0.0, strict=True) as rec:
        rec.stage("pretrain")
        for step in range(3):
            rec.record(step, activations={"a": rng.standard_normal((20, 4))}, loss=1.0)
        rec.stage("sft", trainer="custom")
        rec.record(10, activations={"a": rng.standard_normal((20, 4))}, loss=1.0)
    got = [
        (s["name"], s["first_step"], s["last_step"], s["trainer"])
        for s in open_run(tmp_path / "r.zarr").attrs["stages"]
    ]
    assert got == [("pretrain", 0, 2, None), ("sft", 10, 10, "custom")]


def test_weight_change_against_the_stage_start_and_a_base_model(tmp_path):
    """weight_reference="stage": on the weight schedule each matrix is compared with its weights as the
    current stage started (before any stage: as the Observatory found them); weight_reference=<module>:
    with that model. Both equal weight_change_stats of the snapshots."""
    model = _gpt2()
    base = copy.deepcopy(_gpt2(seed=5))
    snaps: dict = {"init": {n: p.detach().clone() for n, p in model.named_parameters()}}
    store = tmp_path / "wc.zarr"
    kw = dict(probe_inputs=_batch(99, 16), schedule=[0, 2, 6], weight_schedule=[2, 6], strict=True)
    with phasescope.Observatory(model, store=store, weight_reference="stage", **kw) as obs:
        _train(obs, model, 7, {4: ("sft", {})}, snaps)
    ds = open_run(store, lazy=False)
    assert all(f"matrix_{k}" in ds.data_vars for k in CHANGE_STATS)
    names = [str(m) for m in ds["matrix"].values]
    for step, ref in ((2, snaps["init"]), (6, snaps["start-sft"])):
        want = weight_change_stats(names, [snaps[step][n] for n in names], [ref[n] for n in names])
        for k in CHANGE_STATS:
            np.testing.assert_allclose(
                ds[f"matrix_{k}"].sel(capture_step=step).values, want[k], rtol=1e-5, atol=1e-7, err_msg=f"{k}@{step}"
            )
        assert np.isnan(ds["matrix_weight_distance_from_ref"].sel(capture_step=0).values).all()  # off schedule
    # the stage moved the reference: at step 6 the distance is from step 4's weights, smaller than from init
    since_init = weight_change_stats(names, [snaps[6][n] for n in names], [snaps["init"][n] for n in names])
    assert (
        ds["matrix_weight_distance_from_ref"].sel(capture_step=6).values < since_init["weight_distance_from_ref"]
    ).all()

    model2 = _gpt2()
    store2 = tmp_path / "base.zarr"
    snaps2: dict = {}
    with phasescope.Observatory(model2, store=store2, weight_reference=base, **kw) as obs:
        _train(obs, model2, 3, {}, snaps2)
    ds2 = open_run(store2, lazy=False)
    bw = dict(base.named_parameters())
    want = weight_change_stats(names, [snaps2[2][n] for n in names], [bw[n].detach() for n in names])
    for k in CHANGE_STATS:
        np.testing.assert_allclose(ds2[f"matrix_{k}"].sel(capture_step=2).values, want[k], rtol=1e-5, atol=1e-7)
    with pytest.raises(PhasescopeError, match="weight_reference='base'"):
        phasescope.Observatory(model2, store=tmp_path / "x.zarr", weight_reference="base", **kw)
    with pytest.raises(PhasescopeError, match="none of the selected matrices"):
        phasescope.Observatory(model2, store=tmp_path / "y.zarr", weight_reference={"nope": torch.ones(2, 2)}, **kw)


def test_preset_full_records_weight_change_against_the_stage_by_default(tmp_path):
    """preset="full" records every statistic it can without a user batch: the weight change too, against
    the weights the run (or its current stage) started from, so at step 0 every change is zero."""
    model = _gpt2()
    store = tmp_path / "full.zarr"
    with phasescope.Observatory(model, store=store, probe_inputs=_batch(99, 16), preset="full", strict=True) as obs:
        _train(obs, model, 3, {})
    ds = open_run(store, lazy=False)
    assert "weight_change" in ds.attrs["preset_statistics"]
    at0 = {k: ds[f"matrix_{k}"].sel(capture_step=0).values for k in CHANGE_STATS}
    for k, v in at0.items():
        np.testing.assert_allclose(v, 0.0, atol=1e-6, err_msg=k)
    dist = ds["matrix_weight_distance_from_ref"].values
    weighed = np.isfinite(dist).all(axis=1)  # the capture rows on the weight schedule
    assert weighed.sum() >= 2 and (dist[weighed][-1] > 0).all()  # after training steps, the weights moved
    plain = tmp_path / "economy.zarr"
    with phasescope.Observatory(model, store=plain, probe_inputs=_batch(99, 16), strict=True) as obs:
        obs.step(0)
    assert "matrix_weight_distance_from_ref" not in open_run(plain).data_vars


def test_cka_stage_is_the_drift_within_each_stage(tmp_path):
    """cka_stage: linear CKA of each capture to its stage's first capture (1 there), against the CKA of
    snapshots' final-norm representations; cka_first keeps the run's first capture. An Observatory
    that continues a run in the stage another process began cannot know that stage's first capture:
    NaN; a stage it begins itself starts at 1 again."""
    from phasescope.spectra.similarity import centered_gram, linear_cka

    model = _gpt2()
    probe = _batch(99, 16)
    store = tmp_path / "cka.zarr"
    snaps: dict = {}
    kw = dict(probe_inputs=probe, schedule=[0, 2, 4, 6], strict=True)
    with phasescope.Observatory(model, store=store, **kw) as obs:
        _train(obs, model, 7, {0: ("a", {}), 4: ("b", {})}, snaps)

    def gram(step):
        m = _gpt2()
        m.load_state_dict(snaps[step], strict=False)  # lm_head is tied to wte
        m.eval()
        with torch.no_grad():
            h = m(input_ids=probe, output_hidden_states=True).hidden_states[-1][:, -1]
        return centered_gram(h.double().numpy())

    ds = open_run(store, lazy=False)
    got = ds["cka_stage"].sel(probe="final_norm").values
    want = [1.0, linear_cka(gram(2), gram(0)), 1.0, linear_cka(gram(6), gram(4))]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert abs(float(ds["cka_first"].sel(probe="final_norm", capture_step=6)) - want[3]) > 1e-3  # another reference

    with phasescope.Observatory(model, store=store, continue_run=True, **kw) as obs:
        _train(obs, model, 3, {2: ("c", {})})  # steps 7, 8 in stage b (begun elsewhere), 9 in c
    ds = open_run(store, lazy=False)
    cont = ds["cka_stage"].sel(probe="final_norm", capture_step=[7, 9]).values
    assert np.isnan(cont[0]) and cont[1] == 1.0
    assert [s["name"] for s in ds.attrs["stages"]] == ["a", "b", "c"]
    assert ds.attrs["stages"][1]["last_step"] == 8


def _tokens(lo, hi, step, n=8):
    return torch.randint(lo, hi, (n, T), generator=torch.Generator().manual_seed(500 + step))


def test_forgetting_is_the_loss_on_each_stage_set(tmp_path):
    """loss_sets: at every capture the model's loss on each stage's fixed set (eval mode, no grad), equal
    to the loss of the model as it was then; training on stage b's tokens (32–63) after stage a's (0–31)
    raises the loss on a's set (forgetting) while b's falls. The training itself is unchanged (dropout's
    random stream included), and the per-stage table carries the losses at each stage's ends."""
    from phasescope.spectra.phases import MODEL, detect_phases, stage_summary

    sets = {"a": {"input_ids": _tokens(0, 32, 900), "labels": _tokens(0, 32, 900)}}
    sets["b"] = {"input_ids": _tokens(32, 64, 901), "labels": _tokens(32, 64, 901)}
    losses = {}
    for with_sets in (True, False):
        model = _gpt2()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
        snaps = {}
        store = tmp_path / f"f{with_sets}.zarr"
        kw = {"loss_sets": sets} if with_sets else {}
        sched = [0, 5, 10, 15, 20, 25, 30, 35, 39]
        with phasescope.Observatory(
            model, store=store, probe_inputs=_batch(99, 16), schedule=sched, strict=True, **kw
        ) as obs:
            for step in range(40):
                if step in (0, 20):
                    obs.stage("a" if step == 0 else "b")
                x = _tokens(0, 32, step) if step < 20 else _tokens(32, 64, step)
                loss = model(input_ids=x, labels=x).loss
                loss.backward()
                snaps[step] = {n: p.detach().clone() for n, p in model.state_dict().items()}
                obs.step(step, loss=loss)
                opt.step()
                opt.zero_grad()
        losses[with_sets] = open_run(store).loss.values
    np.testing.assert_array_equal(losses[True], losses[False])  # training untouched
    ds = open_run(tmp_path / "fTrue.zarr", lazy=False)
    got = ds["set_loss"].transpose("capture_step", "loss_set").values
    assert list(ds["loss_set"].values) == ["a", "b"]
    for i, step in enumerate(ds.capture_step.values):
        m = _gpt2()
        m.load_state_dict(snaps[int(step)])
        m.eval()
        with torch.no_grad():
            want = [float(m(**sets[k]).loss) for k in ("a", "b")]
        np.testing.assert_allclose(got[i], want, rtol=1e-5)
    on_a = ds["set_loss"].sel(loss_set="a").values
    on_b = ds["set_loss"].sel(loss_set="b").values
    assert on_a[4] < on_a[0] - 0.3 and on_a[-1] > on_a[4] + 0.2  # learnt in a, forgotten in b (3.57 → 3.90)
    assert on_b[-1] < on_b[4]  # while b is learnt
    rows = {r["stage"]: r for r in stage_summary(ds, detect_phases(ds)) if r["probe"] == MODEL}
    a0, a1 = rows["b"]["set_loss"]["a"]
    assert (a0, a1) == (on_a[4], on_a[-1])  # stage b: loss on a's set at its first and last capture
    from phasescope.dashboard.panel_figures import figure_panel

    fig = figure_panel({"f": ds}, "forgetting")  # the registry's panel: one line per set
    lines = {t.name: np.asarray(t.y, float) for t in fig.data}
    assert fig.layout.meta["variables"] == ["set_loss"] and set(lines) == {"on a", "on b"}
    np.testing.assert_allclose(lines["on a"], on_a, rtol=1e-6)


def test_continuing_a_stage_extends_it_and_keeps_earlier_failures(tmp_path):
    """A process that continues the run in the stage another began (a resumed trainer) extends that
    stage to its own last step, and the earlier processes' failure counts stay in the run."""
    model = _gpt2()
    store = tmp_path / "cont.zarr"
    kw = dict(probe_inputs=_batch(99, 16), schedule=[0])
    with phasescope.Observatory(model, store=store, **kw) as obs:
        _train(obs, model, 5, {0: ("sft", {})})
        obs.log(0, loss=1.0)  # too late: step 0's row is written -> one counted failure
    assert open_run(store).attrs["failures"]["step"] == 1
    with phasescope.Observatory(model, store=store, continue_run=True, **kw) as obs:
        _train(obs, model, 5, {})  # no stage call: still sft
    ds = open_run(store)
    assert [(s["name"], s["first_step"], s["last_step"]) for s in run_stages(ds)] == [("sft", 0, 9)]
    assert ds.attrs["stages"][0]["last_step"] == 9 and ds.attrs["failures"]["step"] == 1
    assert "arrived after its row was written" in ds.attrs["first_failures"]["step"]


def test_an_evaluation_set_the_model_fails_on_is_counted_and_said(tmp_path):
    """A loss set the model cannot run (token ids past the vocabulary) stores NaN for that set only; the
    failure is counted and its reason kept in statistics_skipped, the other set is still measured."""
    good = {"input_ids": _tokens(0, 32, 1), "labels": _tokens(0, 32, 1)}
    bad = {"input_ids": _tokens(V, V + 8, 2), "labels": _tokens(V, V + 8, 2)}
    model = _gpt2()
    store = tmp_path / "bad.zarr"
    with phasescope.Observatory(
        model, store=store, probe_inputs=_batch(99, 16), schedule=[0, 1], loss_sets={"good": good, "bad": bad}
    ) as obs:
        with pytest.warns(RuntimeWarning, match="evaluation set 'bad'"):
            _train(obs, model, 2, {})
    ds = open_run(store)
    loss = ds["set_loss"].transpose("capture_step", "loss_set").values
    assert np.isfinite(loss[:, 0]).all() and np.isnan(loss[:, 1]).all()
    assert ds.attrs["failures"]["capture"] == 2 and "'bad'" in ds.attrs["statistics_skipped"]["forgetting"]
