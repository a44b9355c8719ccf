"""Overhead of phasescope on a training step, measured side by side in one run.

Models (``--model``): ``gpt2`` — the demo-sized GPT-2, 2 layers, d=64, 4 heads, vocab 8192, batch 16 × 64
tokens, AdamW, probe set of 400 sequences; ``resnet18`` — torchvision's ResNet-18 (weights=None) on
scikit-learn's digits upsampled to 32×32, batch 32, Adam, probe set of 256 held-out digits, the ResNet
preset (stem, layer1…4, avgpool: channels by spatial mean). One torch thread.
Four kinds of training step are interleaved round-robin (order shuffled each round) on one model so
that machine noise hits them alike:

  bare       forward + backward + optimizer step
  norms      + Observatory(preset="norms"): per-parameter L2 gradient norms, loss, lr every step
  default    + Observatory(default economy preset) on a step without a capture
  capture    + a full capture step: the probe set through the default probes (GPT-2: last token of
               3 block/final-norm probes), covariance spectra + metrics, batched SVD of every 2-D block
               weight gradient, update ratio

Reported: median step times and ratios to bare; the capture cost as a multiple of a bare step; the
amortized overhead of the default preset over a 3,000-step run (its log-spaced capture count), and
over the demo's own schedule. Published Cockpit figures (Schneider et al. 2021, RTX 2080 Ti): economy
preset 1.51× every step, 1.17× every 4th, 1.04× every 16th; per-parameter gradient norms alone 1.02×.

    OMP_NUM_THREADS=1 .venv/bin/python bench/overhead.py [--rounds 60] [--model resnet18] [--load 2]

``--load N`` starts N background processes that keep a core busy each (a single-threaded float32
matrix product in a loop) for the whole measurement, as a second job sharing the machine would: the
writer thread then competes with training for the cores. Issue 18's targets: per-step ≤ 1% of a bare
step, amortised default preset ≤ 2% over 10,000 steps (quiet), and ≤ 3% under load.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")


def gpt2_workload(torch, g):
    """(label, model, optimizer, probe inputs, loss of one fresh batch)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab, seq, batch = 8192, 64, 16
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    )
    n_probe = 400
    probe_ids = torch.randint(1, vocab, (n_probe, seq), generator=g)
    lengths = torch.randint(11, seq + 1, (n_probe,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()

    def loss_fn():
        x = torch.randint(0, vocab, (batch, seq + 1), generator=g)
        logits = model(input_ids=x[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))

    return (
        "demo-sized GPT-2 (2 layers, d=64, vocab 8192, batch 16x64)",
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        {"input_ids": probe_ids * mask, "attention_mask": mask},
        loss_fn,
    )


def resnet18_workload(torch, g):
    import torch.nn.functional as F
    import torchvision
    from sklearn.datasets import load_digits

    d = load_digits()
    x = F.interpolate(torch.tensor(d.images, dtype=torch.float32)[:, None] / 16, size=32).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    n_train = len(x) - 256

    def loss_fn():
        i = torch.randint(0, n_train, (32,), generator=g)
        return F.cross_entropy(model(x[i]), y[i])

    return (
        "torchvision ResNet-18 on digits 32x32 (batch 32, probe set 256 images)",
        model,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        x[n_train:],
        loss_fn,
    )


def neox_workload(torch, g):
    """A small GPT-NeoX (2 layers, d=64, vocab 2048, batch 8 × 64): a ~15 ms step, where a fixed cost
    per step (the writer thread's) weighs most."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    vocab, seq, batch = 2048, 64, 8
    cfg = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=seq,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPTNeoXForCausalLM(cfg)
    n_probe = 256
    probe_ids = torch.randint(1, vocab, (n_probe, seq), generator=g)

    def loss_fn():
        x = torch.randint(0, vocab, (batch, seq + 1), generator=g)
        logits = model(input_ids=x[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))

    return (
        "small GPT-NeoX (2 layers, d=64, vocab 2048, batch 8x64)",
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        {"input_ids": probe_ids, "attention_mask": torch.ones_like(probe_ids)},
        loss_fn,
    )


def _busy_process():
    """A process that keeps one core busy (float32 products in a loop) until killed."""
    import subprocess
    import sys

    code = "import numpy as np\na = np.ones((512, 512), np.float32)\nwhile True:\n    a = (a @ a) * 1e-3 + 1"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code], env=env)


WORKLOADS = {"neox": neox_workload, "gpt2": gpt2_workload, "resnet18": resnet18_workload}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--capture-every", type=int, default=6, help="time a capture step every N rounds")
    ap.add_argument("--total-steps", type=int, default=10_000)
    ap.add_argument("--load", type=int, default=0, help="busy background processes during the measurement")
    ap.add_argument("--model", choices=sorted(WORKLOADS), default="gpt2")
    args = ap.parse_args()

    import torch

    import phasescope
    from phasescope.probes import schedules as S
    from phasescope.probes.options import ObservatoryOptions

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    label, model, opt, probe_inputs, loss_fn = WORKLOADS[args.model](torch, g)

    loaders = [_busy_process() for _ in range(args.load)]
    tmp = tempfile.mkdtemp(prefix="phasescope-bench-")
    # Round-robin gives each Observatory about one step in 3.2 (bare, norms, default every round, capture
    # every 6th): its write interval is stretched as much, so that it commits once per as many of its own
    # steps as in a run of its own (the default 0.5 s); otherwise the writer's cost per step is overstated.
    spread = 3 + 1 / args.capture_every
    wi = ObservatoryOptions().write_interval * spread
    kw = {"probe_inputs": probe_inputs, "write_interval": wi}
    obs_norms = phasescope.Observatory(model, store=f"{tmp}/norms.zarr", preset="norms", **kw)
    obs_default = phasescope.Observatory(model, store=f"{tmp}/default.zarr", **kw)
    obs_full = phasescope.Observatory(model, store=f"{tmp}/full.zarr", schedule=S.always(), **kw)
    default_sched = obs_default.capture_schedule

    inloop: dict = {}

    def train_step(observe=None, step=0):
        t0 = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        if observe is not None:
            t1 = time.perf_counter()
            observe.step(step, loss=loss, lr=1e-3)
            inloop.setdefault(observe, []).append(time.perf_counter() - t1)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for _ in range(5):  # warm-up
        train_step()
    times: dict[str, list[float]] = {"bare": [], "norms": [], "default": [], "capture": []}
    step = {"norms": 0, "default": 10_000_000 + 1, "capture": 0}  # default: far past its dense early captures
    while default_sched(step["default"]):
        step["default"] += 1
    for r in range(args.rounds):
        kinds = ["bare", "norms", "default"] + (["capture"] if r % args.capture_every == 0 else [])
        random.Random(r).shuffle(kinds)
        for kind in kinds:
            if kind == "bare":
                times[kind].append(train_step())
                continue
            obs = {"norms": obs_norms, "default": obs_default, "capture": obs_full}[kind]
            step[kind] += 1
            while kind == "default" and default_sched(step[kind]):
                step[kind] += 1
            times[kind].append(train_step(obs, step[kind]))
    for o in (obs_norms, obs_default, obs_full):
        o.close()
    for p in loaders:
        p.kill()

    med = {k: statistics.median(v) for k, v in times.items()}
    bare = med["bare"]
    print(f"{label}, 1 torch thread, {args.rounds} rounds, {args.load} busy background process(es)")
    for k, v in med.items():
        print(f"  {k:<8} median {v * 1e3:8.2f} ms   x{v / bare:6.3f}   (n={len(times[k])})")
    capture_cost = (med["capture"] - bare) / bare
    print(
        f"  one full capture step = {med['capture'] / bare:.2f} plain steps "
        f"(extra work = {capture_cost:.2f} plain steps)"
    )
    n = args.total_steps
    per_step = (med["default"] - bare) / bare
    for label, sched in (
        ("default economy preset", default_sched),
        (
            "demo schedule (log_spaced per_decade=12 + every 100)",
            S.union(S.log_spaced(n, per_decade=12), S.every(100), [n - 1]),
        ),
    ):
        caps = len(sched.steps(n))
        amort = per_step + caps * capture_cost / n
        print(
            f"  amortized over {n} steps, {label}: {caps} captures -> overhead {amort * 100:.2f}% "
            f"(per-step {per_step * 100:.2f}% + captures {caps * capture_cost / n * 100:.2f}%)"
        )
    print(f"  per-step gradient norms only: overhead {(med['norms'] - bare) / bare * 100:.2f}%")
    # Noise-robust view: the time spent inside obs.step itself (the training thread's only extra work
    # on an uncaptured step; the store is written by the background thread).
    for label, o in (("norms", obs_norms), ("default", obs_default), ("capture", obs_full)):
        t = statistics.median(inloop[o])
        print(f"  in-loop obs.step ({label}): median {t * 1e3:.3f} ms = {t / bare * 100:.3f}% of a bare step")
    for label, o, n in (("norms", obs_norms, len(times["norms"])), ("default", obs_default, len(times["default"]))):
        cpu = o.async_writer.cpu_seconds / n
        print(
            f"  writer thread ({label}): {o.async_writer.batches} commits for {n} steps, CPU {cpu * 1e3:.2f} ms/step "
            f"= {cpu / bare * 100:.2f}% of a bare step (runs on the other core)"
        )
    print("  Cockpit (published, RTX 2080 Ti): economy 1.51x every step, 1.04x every 16 steps; grad norms 1.02x")


if __name__ == "__main__":
    main()
