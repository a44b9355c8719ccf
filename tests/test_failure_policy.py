"""The one failure policy (issue 12, point 6), tried stage by stage on real CPU training loops.

A real failure is injected at each stage — a forward-hook body (hook), a probe-set forward (capture), a
metric on the writer thread (metric), a whole row that cannot be built (reduce), a store write (write) —
and each test checks what the policy promises:

(a) the training loop goes on: nothing raises from ``forward`` / ``backward`` / ``obs.step`` / close, and
    the steps after the failure are recorded;
(b) a burst of failures of one stage gives exactly one RuntimeWarning; a second one comes only after the
    FailureLog's interval (shortened here through ``obs.failures.interval``), with the count since;
(c) the loss is counted in the store: the ``failures`` attribute per stage with its first message, and
    ``flag_lost`` at the affected steps where a row survives;
(d) the dashboard's data-quality table shows it red (status "error").

``strict=True`` makes each injected failure raise. The last tests replay the new user's case from the
issue: a CNN probe whose pooled output has one feature.
"""

import itertools
import threading
import time
import warnings

import numpy as np
import pytest
import torch

import phasescope
from phasescope.dashboard.figures import quality_rows
from phasescope.errors import PhasescopeError
from phasescope.store import open_run

V, T, D, STEPS = 32, 6, 8, 12
BURST = (3, 4, 5)


class Block(torch.nn.Module):
    """Linear + tanh whose eval-mode forward (the probe-set forward runs under eval/no_grad) raises while
    ``fail`` is set: what a model that runs out of memory in its probe forward does."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(D, D)
        self.fail = False

    def forward(self, h):
        if self.fail and not self.training:
            raise RuntimeError("CUDA out of memory: tried to allocate 2.00 GiB (probe forward)")
        return torch.tanh(self.lin(h))


class Tiny(torch.nn.Module):
    """Embedding → Block → LM head. ``prefix``: a learned token is prepended inside the model (as ViT's CLS
    token or prefix tuning do), so the block's output has one position more than the input mask."""

    def __init__(self, prefix=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(V, D)
        self.block = Block()
        self.head = torch.nn.Linear(D, V)
        self.prefix = torch.nn.Parameter(torch.zeros(1, 1, D)) if prefix else None

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        if self.prefix is not None:
            h = torch.cat([self.prefix.expand(h.shape[0], 1, D), h], 1)
        h = self.block(h)
        if self.prefix is not None:
            h = h[:, 1:]
        return self.head(h)


def probe_inputs(n=12):
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, V, (n, T), generator=g)}


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, V, (8, T), generator=g)


def train(model, obs=None, steps=STEPS, before=lambda s: None, mask_at=(), per_sample_loss_at=()):
    """The user's loop: forward, backward, obs.step, optimizer step; returns the losses. ``mask_at``: steps
    whose batch comes with an attention mask; ``per_sample_loss_at``: steps whose loss is handed to
    obs.step unreduced (a per-token vector, a user's slip)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for s in range(steps):
        before(s)
        x = batch(s)
        kw = {"attention_mask": torch.ones_like(x)} if s in mask_at else {}
        per = torch.nn.functional.cross_entropy(model(x, **kw).reshape(-1, V), x.reshape(-1), reduction="none")
        loss = per.mean()
        loss.backward()
        if obs is not None:
            obs.step(s, loss=per.detach() if s in per_sample_loss_at else loss)
        losses.append(float(loss.detach()))
        opt.step()
        opt.zero_grad()
    return losses


def observatory(model, path, **kw):
    kw.setdefault("probes", ["block"])
    kw.setdefault("schedule", list(range(STEPS)))
    if kw.get("capture") != "in_flight":
        kw.setdefault("probe_inputs", probe_inputs())
    return phasescope.Observatory(model, store=str(path), write_interval=0, **kw)


def policy_warnings(record, stage):
    return [
        str(w.message)
        for w in record
        if issubclass(w.category, RuntimeWarning) and str(w.message).startswith(f"phasescope: {stage} failed")
    ]


def red(ds) -> dict:
    """The data-quality rows shown red: {check: value}."""
    return {r["check"]: r["value"] for r in quality_rows(ds) if r["status"] == "error"}


def lost_steps(ds) -> list[int]:
    return [int(s) for s in ds["step"].values[np.asarray(ds["flag_lost"].values) > 0]]


# ---------------------------------------------------------------------------------------------- hook
def test_hook_failure_inside_the_training_forward_is_warned_counted_and_shown_red(tmp_path):
    """Hook stage, a real failure: the model prepends a token, so at steps whose batch has an attention mask
    the in-flight hook's token selection finds a mask one position short of the probe output and raises
    inside the user's forward. Two bursts (3 then 2 failures) and a shortened warning interval: one warning
    per burst, the second one with the count since the first (its own failure included)."""
    bare = train(Tiny(prefix=True), mask_at=(*BURST, 9, 10))
    model = Tiny(prefix=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with observatory(model, tmp_path / "hook.zarr", capture="in_flight") as obs:
            obs.failures.interval = 1.0

            def before(s):
                if s == 9:  # the first burst (steps 3-5) took milliseconds; the second comes after the interval
                    time.sleep(1.1)

            losses = train(model, obs, before=before, mask_at=(*BURST, 9, 10))
    assert losses == bare  # (a) training is untouched
    warned = policy_warnings(record, "hook")
    assert len(warned) == 2, warned  # (b) one per burst
    assert "attention_mask shape (8, 6) does not match the probe output (8, 7)" in warned[0]
    assert "(3 more since the last warning, 4 in all)" in warned[1]  # at the first failure of the second burst
    ds = open_run(tmp_path / "hook.zarr")
    assert ds.sizes["step"] == STEPS and ds.attrs["status"] == "finished"
    assert ds.attrs["failures"] == {"hook": 5}  # (c)
    assert "attention_mask shape" in ds.attrs["first_failures"]["hook"]
    assert lost_steps(ds) == [3, 4, 5, 9, 10]
    kept = [s for s in range(STEPS) if s not in (3, 4, 5, 9, 10)]
    assert list(ds["capture_step"].values) == kept  # every other step still captured
    assert (ds["n_samples"].values > 0).all() and np.isfinite(ds["rankme"].values).all()
    shown = red(ds)  # (d)
    assert shown["phasescope failures: hook"].startswith("5 (first: PhasescopeError: attention_mask shape")
    assert shown["steps flagged lost"].startswith("5 steps, 5 ")


def test_strict_hook_failure_raises_from_the_forward(tmp_path):
    model = Tiny(prefix=True)
    with pytest.raises(PhasescopeError, match="attention_mask shape"):
        with observatory(model, tmp_path / "hook.zarr", capture="in_flight", strict=True) as obs:
            train(model, obs, mask_at=BURST)
    ds = open_run(tmp_path / "hook.zarr")
    assert ds.attrs["status"] == "failed" and ds.sizes["step"] == 3


# ---------------------------------------------------------------------------------------------- capture
def test_probe_set_forward_failure_is_warned_counted_and_shown_red(tmp_path):
    """Capture stage, a real failure: the model's eval-mode forward raises (an out-of-memory error) during
    the probe-set capture of steps 3-5; the training forward, in train mode, is unaffected."""
    model = Tiny()

    def before(s):
        model.block.fail = s in BURST

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with observatory(model, tmp_path / "capture.zarr") as obs:
            train(model, obs, before=before)
    warned = policy_warnings(record, "capture")
    assert len(warned) == 1 and "CUDA out of memory" in warned[0], warned
    ds = open_run(tmp_path / "capture.zarr")
    assert ds.sizes["step"] == STEPS and ds.attrs["status"] == "finished"
    assert ds.attrs["failures"] == {"capture": 3}
    assert "CUDA out of memory" in ds.attrs["first_failures"]["capture"]
    assert lost_steps(ds) == list(BURST)
    assert list(ds["capture_step"].values) == [s for s in range(STEPS) if s not in BURST]
    assert (ds["n_samples"].values == 12).all()
    shown = red(ds)
    assert shown["phasescope failures: capture"].startswith("3 (first: RuntimeError: CUDA out of memory")
    assert shown["steps flagged lost"].startswith("3 steps")


def test_strict_probe_set_failure_raises_from_obs_step(tmp_path):
    model = Tiny()

    def before(s):
        model.block.fail = s in BURST

    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        with observatory(model, tmp_path / "capture.zarr", strict=True) as obs:
            train(model, obs, before=before)
    assert open_run(tmp_path / "capture.zarr").attrs["status"] == "failed"


# ---------------------------------------------------------------------------------------------- metric
def failing_metric(monkeypatch, fail_calls):
    """Make ``spectral_metrics`` raise at the given calls on the store writer's thread.

    A monkeypatch is needed: since the α-ReQ 'auto' range gives NaN with a reason when a spectrum is too
    short, no input we found makes a registered metric raise (too few samples, one feature, a flat or
    constant spectrum all give NaN). The reducer calls it through the module, once per probe and capture,
    in step order, so call k is capture k of a one-probe run. Returns the names of the calling threads."""
    import phasescope.statistics.spectral as spectral

    real, calls, threads = spectral.spectral_metrics, itertools.count(), []

    def metric(spectrum, **kw):
        threads.append(threading.current_thread().name)
        if next(calls) in fail_calls:
            raise FloatingPointError("overflow in the eigenvalue entropy")
        return real(spectrum, **kw)

    monkeypatch.setattr(spectral, "spectral_metrics", metric)
    return threads


def test_metric_failure_on_the_writer_thread_is_warned_counted_and_shown_red(tmp_path, monkeypatch):
    threads = failing_metric(monkeypatch, BURST)
    model = Tiny()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with observatory(model, tmp_path / "metric.zarr") as obs:
            train(model, obs)
    assert set(threads) == {"phasescope-store-writer"}  # reduced off the training thread
    warned = policy_warnings(record, "metric")
    assert len(warned) == 1 and "overflow in the eigenvalue entropy" in warned[0], warned
    ds = open_run(tmp_path / "metric.zarr")
    assert ds.sizes["step"] == STEPS and ds.sizes["capture_step"] == STEPS
    assert ds.attrs["failures"] == {"metric": 3}
    assert lost_steps(ds) == list(BURST)
    rankme = ds["rankme"].values[:, 0]
    assert np.isnan(rankme[list(BURST)]).all() and np.isfinite(np.delete(rankme, list(BURST))).all()
    assert (ds["n_samples"].values == 12).all()  # the capture row survives, eigenvalues too
    assert np.isfinite(ds["eigenvalues"].values[list(BURST), 0, 0]).all()
    shown = red(ds)
    assert shown["phasescope failures: metric"].startswith("3 (first: FloatingPointError")
    assert shown["steps flagged lost"].startswith("3 steps, 3 ")


# ---------------------------------------------------------------------------------------------- reduce
def test_a_row_that_cannot_be_built_is_warned_counted_and_shown_red(tmp_path):
    """Reduce stage, a real input: at steps 3-5 the user hands obs.step the per-token loss vector instead of
    its mean; the writer thread cannot make a scalar of it, so those whole rows are lost (no row survives
    to carry flag_lost: the ``failures`` attribute is the count)."""
    model = Tiny()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with observatory(model, tmp_path / "reduce.zarr") as obs:
            train(model, obs, per_sample_loss_at=BURST)
    warned = policy_warnings(record, "reduce")
    assert len(warned) == 1 and "step 3" in warned[0], warned
    ds = open_run(tmp_path / "reduce.zarr")
    assert list(ds["step"].values) == [s for s in range(STEPS) if s not in BURST]
    assert ds.attrs["failures"] == {"reduce": 3} and ds.attrs["status"] == "finished"
    assert red(ds)["phasescope failures: reduce"].startswith("3 (first: TypeError")


def test_failures_reach_the_store_while_the_run_is_live(tmp_path):
    """A live run's dashboard polls the store: the failures counted so far must be there before close
    (a lost row leaves no flag_lost to show; a killed run never closes)."""
    model = Tiny()
    obs = observatory(model, tmp_path / "live.zarr")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            train(model, obs, per_sample_loss_at=BURST)
        obs.async_writer.flush()
        ds = open_run(tmp_path / "live.zarr")
        assert ds.attrs["status"] == "running"
        assert ds.attrs.get("failures", {}).get("reduce") == 3, ds.attrs.get("failures")
        assert "phasescope failures: reduce" in red(ds)
    finally:
        obs.close()


# ---------------------------------------------------------------------------------------------- write
def disk_full(obs, at=3, freed=6):
    """A ``before`` hook: store writes fail with ENOSPC from step ``at`` until step ``freed``."""
    w = obs.async_writer.writer
    real = w._put

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    def before(s):
        if s == at:
            obs.async_writer.flush()  # steps before are committed
            w._put = no_space
        elif s == freed:  # once the writer has tried (write_interval=0) and failed
            deadline = time.monotonic() + 30
            while not obs.failures.counts.get("write") and obs.async_writer.alive and time.monotonic() < deadline:
                time.sleep(0.01)
            w._put = real

    return before


def test_store_write_failure_is_warned_counted_and_shown_red(tmp_path):
    model = Tiny()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with observatory(model, tmp_path / "write.zarr") as obs:
            losses = train(model, obs, before=disk_full(obs))  # nothing raises, close included
    assert len(losses) == STEPS
    warned = policy_warnings(record, "write")
    assert len(warned) == 1 and "No space left on device" in warned[0], warned
    ds = open_run(tmp_path / "write.zarr")
    assert ds.sizes["step"] >= 2 and list(ds["step"].values[:2]) == [0, 1]  # what was committed stays
    n_failed = ds.attrs["failures"]["write"]  # one per batch that could not be written
    assert set(ds.attrs["failures"]) == {"write"} and n_failed >= 1 and ds.attrs["n_lost_rows"] >= n_failed
    assert "No space left on device" in ds.attrs["first_failures"]["write"]
    assert ds.attrs["status"] == "finished"  # the writer went on once the disk had room
    assert set(range(6, STEPS)) <= set(ds["step"].values.tolist())
    shown = red(ds)
    assert shown["phasescope failures: write"].startswith(f"{n_failed} (first: OSError: [Errno 28] No space left")


def test_steps_after_a_failed_write_are_recorded_once_the_disk_has_room(tmp_path):
    """(a) for the write stage: the store works again from step 6 on, so steps 6-11 are recorded (today the
    writer thread stops at the first failed write and every later row is lost, counted as one failure)."""
    model = Tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with observatory(model, tmp_path / "write.zarr") as obs:
            train(model, obs, before=disk_full(obs))
    ds = open_run(tmp_path / "write.zarr")
    assert set(range(6, STEPS)) <= set(ds["step"].values.tolist()), ds["step"].values


def test_rows_queued_after_a_failed_write_stay_bounded(tmp_path):
    """After a failed write the writer thread is gone, yet every later step is still queued: the queue
    (each entry holds a step's statistics, spectra and Grams) grows without bound over a long run
    instead of being held to ``queue_size`` by the drop policy."""
    model = Tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with observatory(model, tmp_path / "write.zarr", queue_size=4, preset="norms") as obs:
            train(model, obs, steps=40, before=disk_full(obs, at=3, freed=39))
            queued = len(obs.async_writer._queue)
    assert queued <= 4, f"{queued} entries queued behind a dead writer (queue_size=4)"


# ---------------------------------------------------------------------------------------------- strict
@pytest.mark.parametrize("stage", ["metric", "reduce", "write"])
def test_strict_raises_writer_thread_failures(stage, tmp_path, monkeypatch):
    """strict=True: a failure on the store writer's thread (a metric, a row, a write) must reach the user's
    code — at a later obs.step or at close — as the hook and capture failures do."""
    model = Tiny()
    if stage == "metric":
        failing_metric(monkeypatch, BURST)
    with pytest.raises(Exception, match=r"overflow in the eigenvalue|0-dimensional|No space left"):
        with observatory(model, tmp_path / f"{stage}.zarr", strict=True) as obs:
            if stage == "write":
                # The disk gets room again before the run is closed (with a full disk no status can be
                # written at all: the run would read "running" and turn stale), so the close records it.
                real = obs.async_writer.writer._put
                try:
                    train(model, obs, before=disk_full(obs, freed=STEPS + 1))
                finally:
                    obs.async_writer.writer._put = real
            else:
                train(model, obs, per_sample_loss_at=BURST if stage == "reduce" else ())
    assert open_run(tmp_path / f"{stage}.zarr").attrs["status"] == "failed"


# ---------------------------------------------------------------------------------------------- the CNN
class CNN(torch.nn.Module):
    """Conv2d → ReLU → AdaptiveAvgPool2d(1) (B, 8, 1, 1) → Flatten → Linear(8 → 1): modules "2" (the pool)
    and "4" (the 1-feature regression head)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 1),
        )

    def forward(self, x):
        return self.net(x)


def train_cnn(path, probes, steps=6):
    model = CNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with phasescope.Observatory(
            model.net,
            store=str(path),
            probes=probes,
            capture="in_flight",
            schedule=list(range(steps)),
            write_interval=0,
        ) as obs:
            for s in range(steps):
                x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randn(16, 1, generator=g)
                loss = ((model(x) - y) ** 2).mean()
                loss.backward()
                obs.step(s, loss=loss)
                opt.step()
                opt.zero_grad()
    return open_run(path), [w for w in record if "phasescope" in str(w.message)]


def test_cnn_probe_with_one_feature_is_refused_at_the_first_capture_and_the_run_says_why(tmp_path):
    """The new user's case (it once lost every capture silently; then it was kept with NaN α). A 1-feature
    probe has no spectrum: the in-flight Observatory learns its width at the first training forward and
    raises there, one line naming the probe and the fix — not a loss that only the store's counters know."""
    with pytest.raises(PhasescopeError, match=r"probe '4' has 1 feature\(s\).*probe a wider module") as err:
        train_cnn(tmp_path / "cnn.zarr", ["4"])
    assert "\n" not in str(err.value)


def test_cnn_pooled_probe_is_read_with_its_channels_as_features(tmp_path):
    """The pool's output is (batch, 8 channels, 1, 1): a probe of it has 8 features (it was once read as 8
    "tokens" of 1 feature, keeping channel 7 alone). The spatial-mean reduction is recorded with it."""
    ds, warned = train_cnn(tmp_path / "pool.zarr", ["2"])
    assert not warned, [str(w.message) for w in warned]
    assert ds.sizes["rank"] == 8, f"the pooled probe was recorded {ds.sizes['rank']} wide, not 8 (its channels)"
    assert (ds["n_samples"].values == 16).all()
    assert np.isfinite(ds["eigenvalues"].values).all()
    assert ds.attrs["probe_reductions"]["2"] == {
        "reduction": "spatial_mean",
        "source": "output",
        "output_shape": ["N", 8, 1, 1],
        "features": 8,
    }


# ---------------------------------------------------------------------------------------------- review fixes
def test_an_in_flight_capture_is_armed_again_after_a_failed_step(tmp_path, monkeypatch):
    """A failure late in obs.step (here the loss-scale lookup) used to skip re-arming the in-flight hooks,
    so no capture was ever taken again after one warning."""
    import phasescope.probes.observatory as O

    real, calls = O.current_scale, itertools.count()

    def flaky(*a, **k):
        if next(calls) == 1:
            raise RuntimeError("scaler state unreadable")
        return real(*a, **k)

    monkeypatch.setattr(O, "current_scale", flaky)
    model = Tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with observatory(model, tmp_path / "rearm.zarr", capture="in_flight") as obs:
            train(model, obs)
    ds = open_run(tmp_path / "rearm.zarr")
    assert ds.attrs["failures"] == {"step": 1}
    assert set(range(2, STEPS)) <= set(ds["capture_step"].values.tolist())  # captures go on after step 1


def test_offline_metric_failure_marks_the_checkpoint_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from phasescope.probes.offline import analyze
    from phasescope.testing.toy_checkpoints import train_checkpoints, write_probe_file

    train_checkpoints(tmp_path / "ck", [0, 2, 4], n_layer=1, n_embd=16, n_head=2, seq_len=16)
    write_probe_file(tmp_path / "p.txt", n=24)
    failing_metric(monkeypatch, {3})  # call 3 (one per probe and checkpoint): a probe of the 2nd checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        report = analyze(tmp_path / "ck", str(tmp_path / "p.txt"), tmp_path / "o.zarr", workers=0, progress=False)
    ds = open_run(tmp_path / "o.zarr")
    assert list(ds["capture_step"].values) == [0, 2, 4] and report.analyzed == [0, 4] and list(report.failed) == [2]
    assert list(ds["flag_failed"].values) == [0, 1, 0] and ds.attrs["failures"] == {"metric": 1}
    assert "overflow in the eigenvalue entropy" in ds.attrs["checkpoint_errors"]["2"]
    assert np.isfinite(ds["rankme"].sel(capture_step=4).values).all()


def test_strict_failure_seen_before_close_still_closes_the_run_failed(tmp_path, monkeypatch):
    """The writer thread fails (strict), the user's code sees it before the block ends, and close's own
    flush of the pending step raises again: the run must still be closed, as failed (it read "running")."""
    from phasescope.store import StoreError

    failing_metric(monkeypatch, {0})
    model = Tiny()
    with pytest.raises(StoreError, match="overflow in the eigenvalue"):
        with observatory(model, tmp_path / "s.zarr", strict=True) as obs:
            train(model, obs, steps=2)
            obs.async_writer.flush(timeout=30)  # the writer has failed: raised here, in the user's code
    assert open_run(tmp_path / "s.zarr").attrs["status"] == "failed"
