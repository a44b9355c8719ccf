"""Benchmark: what issue 19's statistics cost per call on the demo model, against one bare training step.

    OMP_NUM_THREADS=1 .venv/bin/python bench/diagnostics.py [--repeats 3] [--n-embd 64]

The model is the demo's GPT-2 (`phasescope demo`'s defaults: 2 layers, d = 64, 4 heads, 8,192-token
vocabulary, windows of 64 tokens, batch 16), built from its config; the batch is random token ids.
Timed side by side, interleaved, best of `--repeats`, CPU seconds of this process (one thread):

  * bare step: forward, backward, AdamW step (what the statistics are compared with)
  * weight spectra: `weight_matrix_stats` of the block matrices (the Observatory's default selection):
    ESD tail fit, WeightWatcher's norm metrics, MP fit and correlation traps (one shuffled copy each)
  * hessian_top: 20 power-iteration Hessian-vector products (double backward through the batch)
  * hessian_trace: 10 Rademacher Hutchinson samples
  * gradient noise: 4 micro-batch gradients + GSNR and the three tests
  * diagnostics (all three on the batch, as the Observatory runs them on a diagnostics step)

Each row prints its seconds, its cost in bare steps, and its amortised cost over 10,000 steps on preset
"full"'s sparse schedule for these statistics (2 per decade plus every 1,000 steps: 17 calls).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import numpy as np


def build(n_embd: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=n_embd, n_head=4, vocab_size=8192, n_positions=64)
    model = GPT2LMHeadModel(cfg)
    x = torch.randint(0, 8192, (16, 64), generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": x, "labels": x}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-embd", type=int, default=64, help="the demo's width (64)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from phasescope.gradients import select_matrices
    from phasescope.gradients.curvature import hessian_top_eigenvalue, hessian_trace, model_loss_fn
    from phasescope.gradients.noise import gradient_noise, micro_batch_gradients
    from phasescope.probes.diagnostics import Diagnostics
    from phasescope.spectra.weights import weight_matrix_stats

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model, batch = build(args.n_embd)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    named = list(model.named_parameters())
    idx = select_matrices(named, "blocks")
    names = [named[i][0] for i in idx]
    params = dict(model.named_parameters())
    f = model_loss_fn(model, lambda out: out.loss, **batch)

    def bare():
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()

    def weights():
        weight_matrix_stats(names, [named[i][1].detach() for i in idx])

    def top():
        with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
            hessian_top_eigenvalue(f, params, iters=20, tol=0.0)

    def trace():
        with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
            hessian_trace(f, params, samples=10)

    def noise():
        gradient_noise(micro_batch_gradients(model, lambda m, b: m(**b).loss, batch, 4))

    diag = Diagnostics(batch)

    def all_three():
        diag.run(model, [n for n, _ in named])

    rows = [
        ("bare step", bare),
        (f"weight spectra ({len(names)} matrices)", weights),
        ("hessian_top (20 HVPs)", top),
        ("hessian_trace (10 samples)", trace),
        ("gradient noise (4 splits)", noise),
        ("diagnostics (the three)", all_three),
    ]
    best = {name: np.inf for name, _ in rows}
    for _ in range(args.repeats):  # interleaved
        for name, fn in rows:
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    step = best["bare step"]
    from phasescope.probes.schedules import preset

    calls = len(preset("full").schedule_for("curvature").steps(10_000))
    print(f"== Issue 19's statistics on the demo model (GPT-2, 2 layers, d={args.n_embd}, batch 16x64), one thread ==")
    head = f"amortised, {calls} calls / 10k steps"
    print(f"{'statistic':36s} {'cpu s':>8s} {'bare steps':>10s} {head:>32s}")
    for name, _ in rows[1:]:
        s = best[name]
        print(f"{name:36s} {s:8.3f} {s / step:10.1f} {100 * calls * s / (10_000 * step):31.2f}%")
    print(f"(bare step: {step:.3f} s)")


if __name__ == "__main__":
    main()
