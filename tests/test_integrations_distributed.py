"""torch.distributed: 2 real gloo processes with DDP equal one process seeing all the data; rank death."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from phasescope.store import open_run

pytest.importorskip("torch")

WORKER = textwrap.dedent(
    """
    import datetime, os, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from transformers import GPT2Config, GPT2LMHeadModel
    import phasescope
    from phasescope.probes import schedules as S

    V, T, B, STEPS = 96, 12, 8, 4

    def model():
        torch.manual_seed(0)
        cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=V, n_positions=T, bos_token_id=0,
                         eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(cfg).double()   # float64: equal to 1e-6 despite different batch splits

    g = torch.Generator().manual_seed(1)
    PROBE = torch.randint(1, V, (10, T), generator=g)
    MASK = torch.ones_like(PROBE)
    MASK[::3, 7:] = 0
    DATA = [torch.randint(0, V, (B, T), generator=g) for _ in range(STEPS)]

    def train(out, rank=0, world=1, die_at=None):
        m = model()
        net = torch.nn.parallel.DistributedDataParallel(m) if world > 1 else m
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        kw = dict(schedule=S.explicit([0, 3]), strict=True, write_interval=0.0)
        probe = phasescope.Observatory(net, store=os.path.join(out, "probe.zarr"),
                                       probes=["transformer.h.0", "transformer.ln_f"],
                                       probe_inputs={"input_ids": PROBE, "attention_mask": MASK},
                                       probe_batch_size=4, **kw)
        fly = phasescope.Observatory(net, store=os.path.join(out, "flight.zarr"), probes=["transformer.ln_f"],
                                     capture="in_flight", tokens="all", max_tokens=None, grad_norms=False, **kw)
        with probe, fly:
            for step in range(STEPS):
                x = DATA[step].chunk(world)[rank]
                loss = net(input_ids=x, labels=x).loss
                loss.backward()
                if step == die_at and rank == 1:
                    os._exit(3)        # a rank that dies between backward and obs.step
                probe.step(step, loss=loss, lr=0.1)
                fly.step(step, loss=loss, lr=0.1)
                opt.step(); opt.zero_grad()
            if world > 1 and rank == 0:
                import time
                time.sleep(1.0)   # rank 0 is slow to close: rank 1 must still find its store finished
        if rank == 1:   # close is collective: rank 0's store is complete when rank 1 leaves the block
            from phasescope.store import open_run
            status = open_run(os.path.join(os.path.dirname(out), "ddp", "probe.zarr")).attrs["status"]
            open(os.path.join(os.path.dirname(out), "status-seen-by-rank1.txt"), "w").write(status)

    def run(rank, world, port, out, die_at):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=30))
        try:
            train(os.path.join(out, f"ddp-r{rank}") if rank else os.path.join(out, "ddp"), rank, world, die_at)
        except phasescope.errors.PhasescopeError as exc:
            open(os.path.join(out, f"error{rank}.txt"), "w").write(str(exc))
        finally:
            dist.destroy_process_group()

    if __name__ == "__main__":
        port, out, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        torch.set_num_threads(1)
        fork = mp.get_context("fork")
        if mode == "ddp":  # the one-process reference first, forked too (one import of torch and transformers;
            ref = fork.Process(target=train, args=(os.path.join(out, "single"),))  # the parent never opens a store)
            ref.start()
            ref.join()
            assert ref.exitcode == 0, ref.exitcode
        die_at = 2 if mode == "die" else None
        # fork: children inherit the imports; plain processes so a dead rank does not kill the others
        procs = [fork.Process(target=run, args=(r, 2, port, out, die_at)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        sys.exit(max(p.exitcode for p in procs))
    """
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, mode, check=True):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return subprocess.run(
        [sys.executable, str(script), str(_port()), str(tmp_path), mode],
        check=check,
        timeout=150,
        capture_output=True,
        text=True,
    )


def test_ddp_two_gloo_ranks_equal_single_process(tmp_path):
    _run(tmp_path, "ddp")
    assert not (tmp_path / "ddp-r1" / "probe.zarr").exists()  # only rank 0 writes
    assert (tmp_path / "status-seen-by-rank1.txt").read_text() == "finished"  # close waits for rank 0
    for name in ("probe.zarr", "flight.zarr"):
        one, two = open_run(tmp_path / "single" / name), open_run(tmp_path / "ddp" / name)
        assert two.attrs["distributed"]["world_size"] == 2 and two.attrs["finished"] is True
        assert two.step.values.tolist() == [0, 1, 2, 3] and two.capture_step.values.tolist() == [0, 3]
        np.testing.assert_allclose(two.loss.values, one.loss.values, rtol=1e-6)
        np.testing.assert_array_equal(two.n_samples.values, one.n_samples.values)
        ev1, ev2 = one.eigenvalues.values, two.eigenvalues.values
        np.testing.assert_allclose(ev2, ev1, rtol=1e-6, atol=1e-9 * np.nanmax(ev1))
        for metric in ("rankme", "alpha", "participation_ratio", "stable_rank"):
            np.testing.assert_allclose(two[metric].values, one[metric].values, rtol=1e-6, err_msg=metric)
    one, two = open_run(tmp_path / "single" / "probe.zarr"), open_run(tmp_path / "ddp" / "probe.zarr")
    assert two.n_samples.values.tolist() == [[10, 10], [10, 10]]  # every probe sequence, split over ranks
    np.testing.assert_allclose(two.param_grad_norm.values, one.param_grad_norm.values, rtol=1e-6)
    np.testing.assert_allclose(two.matrix_grad_nuclear.values, one.matrix_grad_nuclear.values, rtol=1e-6)
    # In flight, each rank saw half of each batch: together the 8 × 12 tokens of one step.
    flight = open_run(tmp_path / "ddp" / "flight.zarr")
    assert int(flight.n_samples.values[0, 0]) == 8 * 12


def test_rank_death_gives_clear_error_and_keeps_committed_steps(tmp_path):
    res = _run(tmp_path, "die", check=False)
    assert res.returncode != 0  # the spawner reports the dead rank
    msg = (tmp_path / "error0.txt").read_text()
    assert "all-reduce of loss at step 2 failed on rank 0 of 2" in msg and "rank probably died" in msg
    ds = open_run(tmp_path / "ddp" / "probe.zarr")
    assert ds.step.values.tolist() == [0, 1] and ds.capture_step.values.tolist() == [0]
    assert ds.attrs["status"] == "failed"
