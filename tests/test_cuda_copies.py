"""Device→host copies: every non-blocking copy is followed by an event the writer waits on.

On CPU the copies are synchronous, so what CPU can test is the protocol: the reducer synchronises a
result's event before it reads any value (checked with a stand-in event object — a mock, because no
CUDA event exists without a GPU), and no event is made for CPU tensors. The CUDA tests run the real
thing and are skipped without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phasescope.probes import Recorder
from phasescope.probes.recorder import HostCopier
from phasescope.probes.reduce import Reducer, RunSpec
from phasescope.probes.result import CaptureResult
from phasescope.spectra import CovarianceAccumulator
from phasescope.store import open_run


class RecordingEvent:
    """Stand-in for torch.cuda.Event: fills the 'copied' values only when synchronize() is called."""

    def __init__(self, res: CaptureResult, norms: np.ndarray):
        self.res, self.norms, self.calls = res, norms, 0

    def synchronize(self) -> None:
        self.calls += 1
        self.res.grad_norms[:] = self.norms  # the copy "lands" when the event completes


def test_reducer_waits_on_the_event_before_reading():
    res = CaptureResult(3, scalars={"loss": 1.0}, grad_norms=np.full(2, np.nan, dtype=np.float32), present=[True, True])
    res.event = RecordingEvent(res, np.array([3.0, 4.0], dtype=np.float32))
    step, cap = Reducer(RunSpec(("p",), (4,), 4)).reduce(res)
    assert res.event.calls == 1 and cap is None
    np.testing.assert_array_equal(step.params["grad_norm"], [3.0, 4.0])
    assert step.scalars["grad_norm"] == pytest.approx(5.0) and step.flags["nonfinite"] == 0


def test_no_event_for_cpu_values():
    copy = HostCopier()
    t = torch.ones(3, requires_grad=True)
    out = copy(t)
    assert not out.requires_grad and copy(np.ones(2)).shape == (2,)
    assert copy.event() is None and copy.event("previous") == "previous"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_record_copies_behind_an_event(tmp_path):
    g = torch.randn(64, 32, device="cuda")
    x = torch.randn(256, 32, device="cuda")
    with Recorder(str(tmp_path / "c.zarr"), write_interval=0.0, strict=True) as rec:
        rec.record(0, activations={"h": x}, grads={"w": g}, loss=torch.tensor(2.5, device="cuda"))
    ds = open_run(tmp_path / "c.zarr")
    assert float(ds.loss[0]) == 2.5
    np.testing.assert_allclose(float(ds.param_grad_norm[0, 0]), float(g.norm()), rtol=1e-5)
    ref = CovarianceAccumulator(32).update(x.double().cpu()).compute().eigenvalues
    np.testing.assert_allclose(ds.eigenvalues.values[0, 0], np.asarray(ref), rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_event_is_made_for_device_values():
    copy = HostCopier()
    host = copy(torch.ones(3, device="cuda"))
    ev = copy.event()
    assert isinstance(ev, torch.cuda.Event) and host.device.type == "cpu"
    ev.synchronize()
    assert host.tolist() == [1.0, 1.0, 1.0]
