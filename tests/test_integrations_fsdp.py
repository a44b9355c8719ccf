"""FSDP2 (``fully_shard``) over 2 real gloo processes on CPU equals one process seeing all the data.

Gradients are sharded DTensors: per-parameter norms come from all-reduced squared shard norms, the
singular-value statistics are skipped with the reason stored, probe captures run the same forwards on
every rank (FSDP all-gathers inside them) and leave the sharded parameters in place for the optimizer.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from phasescope.store import open_run

pytest.importorskip("torch")
pytest.importorskip("torch.distributed.fsdp", reason="torch without FSDP2")

WORKER = textwrap.dedent(
    """
    import datetime, os, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import GPT2Config, GPT2LMHeadModel
    import phasescope
    from phasescope.probes import schedules as S

    V, T, B, STEPS = 96, 12, 8, 4

    def model():
        torch.manual_seed(0)
        cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=V, n_positions=T, bos_token_id=0,
                         eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(cfg).double()   # float64: equal to 1e-6 despite different reductions

    g = torch.Generator().manual_seed(1)
    PROBE = torch.randint(1, V, (10, T), generator=g)
    MASK = torch.ones_like(PROBE)
    MASK[::3, 7:] = 0
    DATA = [torch.randint(0, V, (B, T), generator=g) for _ in range(STEPS)]

    def train(out, rank=0, world=1, shard=False, hsdp=False):
        m = model()
        if shard:   # HSDP: a (replicate, shard) mesh; gradients are Replicate on one dimension, Shard on the other
            mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("replicate", "shard")) if hsdp else None
            for block in m.transformer.h:
                fully_shard(block, mesh=mesh)
            fully_shard(m, mesh=mesh)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)   # after fully_shard: the sharded DTensor parameters
        # 10 probe sequences in batches of 4: rank 0 runs 2 batches, rank 1 one (plus a padding forward)
        kw = dict(schedule=S.explicit([0, 3]), strict=True, write_interval=0.0)
        probe = phasescope.Observatory(m, store=os.path.join(out, "probe.zarr"),
                                       probes=["transformer.h.0", "transformer.ln_f"],
                                       probe_inputs={"input_ids": PROBE, "attention_mask": MASK},
                                       probe_batch_size=4, **kw)
        every = phasescope.Observatory(m, store=os.path.join(out, "all.zarr"), probes=["transformer.h.1"], tokens="all",
                                       max_tokens=60, probe_inputs={"input_ids": PROBE, "attention_mask": MASK},
                                       probe_batch_size=4, grad_norms=False, **kw)
        fly = phasescope.Observatory(m, store=os.path.join(out, "flight.zarr"), probes=["transformer.ln_f"],
                                     capture="in_flight", tokens="all", max_tokens=None, grad_norms=False, **kw)
        with probe, every, fly:
            for step in range(STEPS):
                x = DATA[step].chunk(world)[rank]
                loss = m(input_ids=x, labels=x).loss
                loss.backward()
                probe.step(step, loss=loss, lr=0.1)
                every.step(step, loss=loss, lr=0.1)
                fly.step(step, loss=loss, lr=0.1)
                opt.step(); opt.zero_grad()
        if shard:   # the weights after training, gathered, for the comparison with one process
            full = {n: p.full_tensor() for n, p in m.named_parameters()}
        else:
            full = dict(m.named_parameters())
        if rank == 0:
            torch.save({n: p.detach() for n, p in full.items()}, os.path.join(out, "weights.pt"))

    def run(rank, world, port, out, name, hsdp=False):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=30))
        try:
            where = os.path.join(out, f"{name}-r{rank}") if rank else os.path.join(out, name)
            train(where, rank, world, shard=True, hsdp=hsdp)
        finally:
            dist.destroy_process_group()

    if __name__ == "__main__":
        port, port1, port2, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        torch.set_num_threads(1)
        fork = mp.get_context("fork")
        ref = fork.Process(target=train, args=(os.path.join(out, "single"),))
        ref.start()
        ref.join()
        assert ref.exitcode == 0, ref.exitcode
        one = fork.Process(target=run, args=(0, 1, port1, out, "fsdp1"))   # fully_shard on a 1-rank group
        one.start()
        one.join()
        assert one.exitcode == 0, one.exitcode
        procs = [fork.Process(target=run, args=(r, 2, port, out, "fsdp")) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if max(p.exitcode for p in procs) == 0:
            procs = [fork.Process(target=run, args=(r, 2, port2, out, "hsdp", True)) for r in range(2)]
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


def _assert_equal_runs(ref, run, world: int) -> None:
    import torch

    w1, w2 = torch.load(ref / "weights.pt"), torch.load(run / "weights.pt")
    assert w1.keys() == w2.keys()
    for name in w1:  # training itself is untouched by the observer (probe forwards included)
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-9, atol=1e-12, msg=name)
    for name in ("probe.zarr", "all.zarr", "flight.zarr"):
        one, two = open_run(ref / name), open_run(run / name)
        assert two.attrs["finished"] is True
        assert two.attrs.get("distributed", {}).get("world_size", 1) == world
        assert two.step.values.tolist() == [0, 1, 2, 3] and two.capture_step.values.tolist() == [0, 3]
        np.testing.assert_allclose(two.loss.values, one.loss.values, rtol=1e-6)
        np.testing.assert_array_equal(two.n_samples.values, one.n_samples.values)
        ev1, ev2 = one.eigenvalues.values, two.eigenvalues.values
        np.testing.assert_allclose(ev2, ev1, rtol=1e-6, atol=1e-9 * np.nanmax(ev1))
        for metric in ("rankme", "alpha", "participation_ratio", "stable_rank"):
            np.testing.assert_allclose(two[metric].values, one[metric].values, rtol=1e-6, err_msg=metric)
    one, two = open_run(ref / "probe.zarr"), open_run(run / "probe.zarr")
    assert two.n_samples.values.tolist() == [[10, 10], [10, 10]]  # every probe sequence (split over ranks)
    assert list(two.param.values) == list(one.param.values)
    np.testing.assert_allclose(two.param_grad_norm.values, one.param_grad_norm.values, rtol=1e-6)
    np.testing.assert_allclose(two.grad_norm.values, one.grad_norm.values, rtol=1e-6)
    assert np.isfinite(two.param_grad_norm.values).all() and (two.param_grad_norm.values > 0).all()
    # Nuclear/spectral norms need whole matrices: skipped, with the reason in the run's attributes.
    assert "matrix_grad_nuclear" in one and "matrix_grad_nuclear" not in two
    assert "sharded DTensors" in two.attrs["matrix_stats_skipped"] and "matrix_stats_skipped" not in one.attrs
    assert int(open_run(run / "all.zarr").n_samples.values[0, 0]) == 60  # one seeded token sample
    assert int(open_run(run / "flight.zarr").n_samples.values[0, 0]) == 8 * 12  # every token of each batch


def test_fsdp2_two_gloo_ranks_equal_single_process(tmp_path):
    """Also fully_shard on a 1-rank group (its root keeps an unsharded copy after a no_grad forward) and
    HSDP on a (replicate 2, shard 1) mesh (a replicated gradient dimension is not summed over)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    res = subprocess.run(
        [sys.executable, str(script), str(_port()), str(_port()), str(_port()), str(tmp_path)],
        timeout=150,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (tmp_path / "fsdp-r1" / "probe.zarr").exists()  # only rank 0 writes
    _assert_equal_runs(tmp_path / "single", tmp_path / "fsdp1", world=1)
    _assert_equal_runs(tmp_path / "single", tmp_path / "fsdp", world=2)
    # HSDP over (replicate 2, shard 1): squared norms summed over the shard dimension only, not the replicas
    _assert_equal_runs(tmp_path / "single", tmp_path / "hsdp", world=2)
