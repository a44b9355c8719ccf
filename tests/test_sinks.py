"""Tracker sinks for real: a small model trains with TensorBoard, W&B (offline) and MLflow (local file store)
sinks, and what each tracker wrote — read back with TensorBoard's event reader, the W&B run's transaction
log and the MLflow client — equals what the store keeps, step by step; failures follow the one policy."""

from __future__ import annotations

import json
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import phasescope
import phasescope.probes
from phasescope.errors import PhasescopeError
from phasescope.probes import trackers
from phasescope.store import list_groups, open_run

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
pytest.importorskip("mlflow")

STEPS = 12


@pytest.fixture(autouse=True)
def tracker_env(monkeypatch):
    """No tracker settings from the caller's environment; MLFLOW_ALLOW_FILE_STORE restored afterwards."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR", "WANDB_MODE", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    )


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(256, 16, generator=g), torch.randint(0, 4, (256,), generator=g)


def _train(store, sinks, steps=STEPS, **kw):
    model, (x, y) = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with phasescope.Observatory(
        model, store=store, probe_inputs=x[:128], schedule=lambda s: s % 2 == 0 or s == steps - 1, sinks=sinks, **kw
    ) as obs:
        for step in range(steps):
            i = torch.arange(step * 16, step * 16 + 32) % 256
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            loss.backward()
            obs.step(step, loss=loss, lr=0.1 * (1 - step / steps))
            opt.step()
            opt.zero_grad()
    return open_run(store)


# ------------------------------------------------------------------------------------------- readers
def _tensorboard(log_dir):
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    scalars = {t: {e.step: e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"]}
    texts = {
        t.removesuffix("/text_summary"): tensor_util.make_ndarray(acc.Tensors(t)[-1].tensor_proto).item().decode()
        for t in acc.Tags()["tensors"]
    }
    return scalars, texts


def _wandb_records(path):
    """The records of a .wandb transaction log (W&B's documented LevelDB-style log: a 7-byte ':W&B' header,
    32 KiB blocks of chunks [crc32 of type+data, length, type]) parsed with the installed wandb's protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, parts, out = Path(path).read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer: padding
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        assert crc == zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):  # full, or last chunk of a record
            rec = pb.Record()
            rec.ParseFromString(parts)
            out.append(rec)
    return out


def _wandb_history(sync_dir):
    (log,) = Path(sync_dir).glob("*.wandb")
    rows = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in _wandb_records(log)
        if r.WhichOneof("record_type") == "history"
    ]
    return {row["_step"]: row for row in rows}


def _mlflow(entry):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=entry["tracking_uri"])
    run = client.get_run(entry["run_id"])

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(entry["run_id"], key)}

    return run, history


# ------------------------------------------------------------------------------------------- tests
def test_three_trackers_get_exactly_the_stored_values(tmp_path, monkeypatch):
    monkeypatch.setattr(trackers, "_NOTED_FILE_STORE", False)
    store = tmp_path / "runs" / "mlp.zarr"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _train(store, ["tensorboard", "wandb", "mlflow"])
    assert ds.attrs["status"] == "finished" and ds.attrs["failures"] == {}
    notes = [str(w.message) for w in caught if "MLFLOW_ALLOW_FILE_STORE" in str(w.message)]
    assert len(notes) == 1  # the file-store opt-in is said once
    where = {e["kind"]: e for e in ds.attrs["sinks"]}
    assert where["tensorboard"]["log_dir"] == str(tmp_path / "runs" / "tensorboard" / "mlp")
    assert where["mlflow"]["tracking_uri"] == (tmp_path / "runs" / "mlruns").as_uri()
    assert Path(where["wandb"]["sync_dir"]).parent == tmp_path / "runs" / "wandb"

    steps = ds.step.values.tolist()
    caps = ds.capture_step.values.tolist()
    assert steps == list(range(STEPS)) and caps == [0, 2, 4, 6, 8, 10, 11]
    stored = {"loss": ds.loss.values, "lr": ds.lr.values, "grad_norm": ds.grad_norm.values}
    probes = [str(p) for p in ds.probe.values]
    rankme = {p: ds.rankme.sel(probe=p).values for p in probes}
    alpha = {p: ds.alpha.sel(probe=p).values for p in probes}

    tb, tb_text = _tensorboard(where["tensorboard"]["log_dir"])
    wb = _wandb_history(where["wandb"]["sync_dir"])
    ml_run, ml = _mlflow(where["mlflow"])
    assert ml_run.info.status == "FINISHED" and ml_run.info.run_name == "mlp"
    assert "loss_scale" not in tb and all("loss_scale" not in row for row in wb.values())  # no scaler: not sent
    for name, values in stored.items():
        want = dict(zip(steps, values.tolist()))
        assert tb[name] == {s: float(np.float32(v)) for s, v in want.items()}  # TensorBoard keeps float32
        assert {s: wb[s][name] for s in steps} == want  # W&B and MLflow: float64
        assert ml(name) == want
    for p in probes:
        want = dict(zip(caps, rankme[p].tolist()))
        assert tb[f"rankme/{p}"] == {s: float(np.float32(v)) for s, v in want.items()}
        assert {s: wb[s][f"rankme/{p}"] for s in caps} == want
        assert ml(f"rankme/{p}") == want
        finite = {s: v for s, v in zip(caps, alpha[p].tolist()) if np.isfinite(v)}  # NaN is not sent
        assert ml(f"alpha/{p}") == finite and set(tb.get(f"alpha/{p}", {})) == set(finite)
        assert all(f"rankme/{p}" not in wb[s] for s in set(steps) - set(caps))

    # The phases `phasescope phases RUN` finds, as text at the last step, in every tracker.
    from phasescope.cli_phases import phases_for_run

    result, _ = phases_for_run(store, save=False)
    want = {
        "phases/summary": result.summary(),
        "phases/model": result.sentence("model"),
        **{f"phases/{p}": result.sentence(p) for p in probes},
    }
    for tag, text in want.items():
        assert tb_text[tag] == text and wb[STEPS - 1][tag] == text and ml_run.data.tags[tag] == text
    assert "phases" not in list_groups(store)  # sent, not written into the run


class Collect:
    """A user sink: keeps what it gets."""

    def __init__(self):
        self.scalars, self.texts, self.closed = {}, {}, 0

    def log_scalars(self, step, values):
        self.scalars[step] = dict(values)

    def log_text(self, step, tag, text):
        self.texts[tag] = (step, text)

    def close(self):
        self.closed += 1


class Broken(Collect):
    def log_scalars(self, step, values):
        raise OSError("tracker unreachable")


def test_a_failing_sink_is_counted_warned_once_and_stops_nothing(tmp_path):
    good, bad = Collect(), Broken()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _train(tmp_path / "r.zarr", [bad, good])
    msgs = [str(w.message) for w in caught if "sink failed" in str(w.message)]
    assert len(msgs) == 1 and "tracker unreachable" in msgs[0] and "sink Broken" in msgs[0]
    assert ds.attrs["status"] == "finished" and ds.sizes["step"] == STEPS and ds.sizes["capture_step"] == 7
    assert ds.attrs["failures"] == {"sink": STEPS}  # one per step, in the store
    assert sorted(good.scalars) == list(range(STEPS)) and good.closed == 1 and bad.closed == 1
    assert good.scalars[3]["loss"] == float(ds.loss.sel(step=3)) and "rankme/0" in good.scalars[2]
    assert good.texts["phases/summary"][0] == STEPS - 1 and "phases/summary" in bad.texts  # texts still go
    assert {e["kind"] for e in ds.attrs["sinks"]} == {"Broken", "Collect"}
    from phasescope.dashboard.figures import quality_rows

    row = {r["check"]: r for r in quality_rows(ds)}["phasescope failures: sink"]  # red in data quality
    assert row["status"] == "error" and row["value"].startswith(f"{STEPS} (first: OSError: tracker unreachable")


def test_recorder_sends_numpy_runs_too(tmp_path):
    """The framework-neutral path (FlaxObserver passes ``sinks`` to it): numpy arrays in, same values out."""
    good = Collect()
    rng = np.random.default_rng(0)
    with phasescope.probes.Recorder(tmp_path / "np.zarr", sinks=good) as rec:
        for step in range(4):
            acts = {"h": rng.normal(size=(64, 8))} if step % 2 == 0 else None
            rec.record(step, activations=acts, grads={"w": rng.normal(size=(8, 8))}, loss=1.0 / (step + 1), lr=0.01)
    ds = open_run(tmp_path / "np.zarr")
    assert [good.scalars[s]["grad_norm"] for s in range(4)] == ds.grad_norm.values.tolist()
    assert [good.scalars[s]["rankme/h"] for s in (0, 2)] == ds.rankme.sel(probe="h").values.tolist()
    assert "rankme/h" not in good.scalars[1] and good.closed == 1
    other = Collect()  # a rank that does not write uses no sink
    with phasescope.probes.Recorder(tmp_path / "rank1.zarr", sinks=other, writer=False) as rec:
        rec.record(0, activations={"h": rng.normal(size=(64, 8))}, loss=1.0)
    assert other.scalars == {} and other.closed == 0 and not (tmp_path / "rank1.zarr").exists()


def test_a_failing_sink_raises_under_strict(tmp_path):
    """Raised into the training loop (or at close), counted once as the sink's: not again as the store
    writer's own reduce, write and close failures, as when it was raised on the writer thread."""
    with pytest.raises(Exception, match="tracker unreachable"):
        _train(tmp_path / "r.zarr", [Broken()], steps=4, strict=True, write_interval=0.0)
    ds = open_run(tmp_path / "r.zarr")
    assert ds.attrs["status"] == "failed" and ds.attrs["failures"] == {"sink": 1}


def test_a_sink_failing_at_the_last_step_under_strict_fails_the_run_at_close(tmp_path):
    """The sinks thread meets it after the last obs.step: raised by close, and the run says failed."""

    class LastStepFails(Collect):
        def log_scalars(self, step, values):
            if step == 3:
                raise RuntimeError("tracker gone at the end")
            super().log_scalars(step, values)

    with pytest.raises(Exception, match="tracker gone at the end"):
        _train(tmp_path / "r.zarr", [LastStepFails()], steps=4, strict=True, write_interval=0.0)
    ds = open_run(tmp_path / "r.zarr")
    assert ds.attrs["status"] == "failed" and ds.attrs["failures"] == {"sink": 1}
    assert list(ds.step.values) == [0, 1, 2, 3]  # every row kept


def test_sinks_are_closed_on_ctrl_c_without_phases(tmp_path):
    model, (x, _y) = _mlp(), _data()
    good = Collect()
    with (
        pytest.raises(KeyboardInterrupt),
        phasescope.Observatory(
            model, store=tmp_path / "r.zarr", probe_inputs=x[:64], sinks=[good, f"mlflow:file:{tmp_path / 'ml'}"]
        ) as obs,
    ):
        for step in range(3):
            model(x[:8]).sum().backward()
            obs.step(step, loss=float(step))
        raise KeyboardInterrupt
    ds = open_run(tmp_path / "r.zarr")
    run, history = _mlflow({e["kind"]: e for e in ds.attrs["sinks"]}["mlflow"])
    assert ds.attrs["status"] == "interrupted" and run.info.status == "KILLED"
    assert history("loss") == {0: 0.0, 1: 1.0, 2: 2.0} and sorted(good.scalars) == [0, 1, 2]
    assert good.closed == 1 and good.texts == {}  # closed; no phases after Ctrl-C


def test_sink_specs_are_checked_before_training(tmp_path, monkeypatch):
    with pytest.raises(PhasescopeError, match=r"unknown sink 'tensorbord'; did you mean tensorboard\?") as err:
        phasescope.Observatory(_mlp(), tmp_path / "x.zarr", probe_inputs=torch.randn(8, 16), sinks=["tensorbord"])
    assert "\n" not in str(err.value) and not (tmp_path / "x.zarr").exists()
    with pytest.raises(PhasescopeError, match="an object with log_scalars"):
        phasescope.Observatory(_mlp(), tmp_path / "x.zarr", probe_inputs=torch.randn(8, 16), sinks=[object()])
    monkeypatch.setitem(sys.modules, "wandb", None)  # Python's own way to make an import fail
    with pytest.raises(PhasescopeError, match=r"pip install 'phasescope\[wandb\]'"):
        phasescope.Observatory(_mlp(), tmp_path / "x.zarr", probe_inputs=torch.randn(8, 16), sinks="wandb")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    with pytest.raises(PhasescopeError, match="MLFLOW_ALLOW_FILE_STORE is false"):
        phasescope.Observatory(_mlp(), tmp_path / "x.zarr", probe_inputs=torch.randn(8, 16), sinks="mlflow")


def test_lightning_callback_passes_sinks_through(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from phasescope.probes.integrations.lightning import PhasescopeCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    tb, ml = tmp_path / "tb", tmp_path / "ml"
    cb = PhasescopeCallback(
        str(tmp_path / "pl.zarr"),
        probes=["net.1", "net.3"],
        probe_inputs=x[:64],
        schedule=lambda s: s % 3 == 0,
        sinks=[f"tensorboard:{tb}", f"mlflow:file:{ml}"],
    )
    pl.Trainer(
        accelerator="cpu",
        max_steps=6,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(Module(), loader)
    ds = open_run(tmp_path / "pl.zarr")
    entry = {e["kind"]: e for e in ds.attrs["sinks"]}["mlflow"]
    run, history = _mlflow(entry)
    scalars, _ = _tensorboard(tb)
    want = dict(zip(ds.step.values.tolist(), ds.loss.values.tolist()))
    assert len(want) == 6 and history("loss") == want and run.info.status == "FINISHED"
    assert scalars["loss"] == {s: float(np.float32(v)) for s, v in want.items()}
    p = str(ds.probe.values[0])
    assert history(f"rankme/{p}") == dict(zip(ds.capture_step.values.tolist(), ds.rankme.sel(probe=p).values.tolist()))


def test_readme_sinks_snippet_runs_as_written(tmp_path):
    """As a user runs it: the snippet as a script in a fresh interpreter (in this process a test that
    imported nnsight earlier would have patched Tensor.backward, which parses the caller's source file)."""
    import os
    import re
    import subprocess

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (code,) = re.findall(
        r"```python\n(.*?)```", text.split("## Sinks to trackers", 1)[1].split("\n## ", 1)[0], flags=re.S
    )
    (tmp_path / "snippet.py").write_text(code)
    res = subprocess.run(
        [sys.executable, "snippet.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ds = open_run(tmp_path / "runs" / "sinks.zarr")
    assert ds.attrs["status"] == "finished" and ds.attrs["failures"] == {}
    assert [e["kind"] for e in ds.attrs["sinks"]] == ["tensorboard", "wandb", "mlflow"]
    scalars, texts = _tensorboard(tmp_path / "runs" / "tensorboard" / "sinks")
    assert len(scalars["loss"]) == 50 and "phases/summary" in texts


def test_a_users_wandb_run_keeps_values_logged_behind_its_own_step(tmp_path, monkeypatch):
    """A W&B run the user passes in has its own step counter (HF's WandbCallback logs without step=); W&B
    drops a value logged at an earlier step= with only a console warning. phasescope's sinks thread is
    behind, so in a user's run its values go under phasescope/ with phasescope/step as their x axis."""
    wandb = pytest.importorskip("wandb")
    from phasescope.probes.trackers import adopt

    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = wandb.Settings(x_disable_stats=True, x_disable_machine_info=True, disable_git=True, console="off")
    run = wandb.init(project="t", dir=str(tmp_path), mode="offline", settings=settings, reinit="create_new")
    try:
        for i in range(5):
            run.log({"user/loss": 1.0 / (i + 1)})  # the user's own logging moves W&B's step to 5
        sink = adopt(run)
        sink.log_scalars(2, {"rankme/block.0": 3.0})  # training step 2, logged late
        sink.log_text(3, "phases/summary", "collapse, then entropy-seeking")
        summary = dict(run.summary)
    finally:
        run.finish()
    assert summary["phasescope/rankme/block.0"] == 3.0 and summary["phasescope/step"] == 3
    assert summary["phasescope/phases/summary"] == "collapse, then entropy-seeking"
    assert summary["user/loss"] == pytest.approx(0.2)  # the user's own values are untouched
