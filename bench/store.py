"""Benchmark of the run store: training-thread cost, writer throughput, read time, size per step.

    OMP_NUM_THREADS=1 .venv/bin/python bench/store.py            # full: 10,000 steps x 48 probes x 1,024
    OMP_NUM_THREADS=1 .venv/bin/python bench/store.py --steps 1000 --quick

Figures, all measured in this one run on the same disk:
1. training-thread cost of AsyncRunWriter.append_step / append_capture (median, p99, max) with a
   simulated training step, next to the synchronous RunWriter's cost (the ratio is the point);
2. writer throughput (committed steps per second) for both, back to back;
3. open + read-all of a run with a capture on every step (open_run lazy+load, eager, and plain
   xarray.open_zarr for comparison);
4. store size per step.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def spectrum(step: int, n_probes: int, rank: int, rng) -> np.ndarray:
    """Power-law spectra λ_k ∝ k^-α with a per-probe α and mild noise (realistic compressibility)."""
    alpha = 1.0 + 0.5 * np.sin(step / 500 + np.arange(n_probes))[:, None]
    k = np.arange(1, rank + 1)[None, :]
    return k ** (-alpha) * (1 + 0.01 * rng.standard_normal((n_probes, rank)))


def pct(a, q) -> float:
    return float(np.percentile(np.asarray(a) * 1e3, q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--probes", type=int, default=48)
    ap.add_argument("--rank", type=int, default=1024)
    ap.add_argument("--params", type=int, default=100)
    ap.add_argument("--latency-steps", type=int, default=1000)
    ap.add_argument("--train-ms", type=float, default=5.0, help="simulated training time per step")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir on /tmp)")
    ap.add_argument("--quick", action="store_true", help="skip the plain-xarray comparison")
    ap.add_argument("--big-only", action="store_true", help="only parts 3-4 (the big run)")
    args = ap.parse_args()

    from phasescope.store import AsyncRunWriter, RunWriter, open_run

    P, R, Q = args.probes, args.rank, args.params
    probes = [f"gpt_neox.layers.{i}" for i in range(P)]
    params = [f"p{i}.weight" for i in range(Q)]
    metrics = ["rankme", "rankme_raw", "alpha", "alpha_r2", "participation_ratio", "stable_rank"]
    kw = dict(probes=probes, params=params, metrics=metrics, max_rank=R)
    root = Path(tempfile.mkdtemp(prefix="phasescope-bench-store-", dir=args.dir))
    rng = np.random.default_rng(0)
    print(f"store bench: {P} probes x {R} eigenvalues, {Q} params, root {root}")

    # 1. Training-thread cost with a simulated training step (sleep: compute that releases the GIL,
    #    as torch kernels do), async vs sync writer, same rows.
    n = args.latency_steps
    eigs = [spectrum(s, P, R, rng) for s in range(8)]
    mvals = {m: rng.random(P) for m in metrics}
    pvals = {"grad_norm": rng.random(Q)}
    ns = np.full(P, 400)
    train_s = args.train_ms / 1e3

    def feed(w, n_steps, every, step_t=None, cap_t=None, flush_every=0):
        for s in range(n_steps):
            if train_s:
                time.sleep(train_s)
            t = time.perf_counter()
            w.append_step(s, {"loss": 1.0 / (s + 1), "lr": 1e-3, "grad_norm": 0.5}, params=pvals)
            if step_t is not None:
                step_t.append(time.perf_counter() - t)
            if s % every == 0:
                t = time.perf_counter()
                w.append_capture(s, mvals, eigs[s % 8] * (1 + s * 1e-4), ns)
                if cap_t is not None:
                    cap_t.append(time.perf_counter() - t)
            if flush_every and s % flush_every == flush_every - 1:
                w.flush()

    if args.big_only:
        n = 0
    print(
        f"\n1. training-thread cost: {n} steps, {args.train_ms} ms simulated training per step, "
        f"scalars + {Q} param grad norms per step, a capture every k steps"
    )
    print(
        f"{'writer':>6} {'k':>3} {'step p50 ms':>11} {'p99':>7} {'max':>7} {'capture p50':>11} {'p99':>7} "
        f"{'mean/step':>9} {'captures kept':>13}"
    )
    mean = {}
    for every in (10, 1) if n else ():
        for name in ("async", "sync"):
            st, ct = [], []
            path = root / f"{name}{every}.zarr"
            w = AsyncRunWriter(path, **kw) if name == "async" else RunWriter(path, **kw)
            feed(w, n, every, st, ct)
            w.close()
            ds = open_run(path)
            kept = ds.sizes["capture_step"]
            assert kept + int(ds.flag_dropped.sum()) == len(range(0, n, every))
            mean[name, every] = (np.sum(st) + np.sum(ct)) / n
            print(
                f"{name:>6} {every:>3} {pct(st, 50):11.3f} {pct(st, 99):7.3f} {max(st) * 1e3:7.1f} "
                f"{pct(ct, 50):11.3f} {pct(ct, 99):7.3f} {mean[name, every] * 1e3:9.3f} {kept:>6}/{len(ct):<6}"
            )
        print(
            f"   k={every}: async costs the training thread {mean['async', every] * 1e3:.3f} ms per step, "
            f"sync {mean['sync', every] * 1e3:.2f} ms -> {mean['sync', every] / mean['async', every]:.0f}x less"
        )

    # 2. Writer throughput (no training time; the async writer batches whatever is queued).
    train_s = 0.0
    print(f"\n2. writer throughput, {n} steps back to back")
    for every in (10, 1) if n else ():
        res = {}
        for name in ("async", "sync"):
            path = root / f"tp-{name}{every}.zarr"
            t0 = time.perf_counter()
            if name == "async":
                w = AsyncRunWriter(path, max_pending_captures=10**6, **kw)
                feed(w, n, every, flush_every=200)
            else:
                w = RunWriter(path, **kw)
                feed(w, n, every)
            w.close()
            res[name] = n / (time.perf_counter() - t0)
            assert open_run(path).sizes["capture_step"] == len(range(0, n, every))
        print(
            f"   k={every}: committed steps/s async (batched) {res['async']:.0f}, sync (one commit per row) "
            f"{res['sync']:.0f} -> {res['async'] / res['sync']:.1f}x"
        )

    # 3-4. The big run: a capture on every step, written by the synchronous writer.
    N = args.steps
    big = root / "big.zarr"
    t0 = time.perf_counter()
    with AsyncRunWriter(big, max_pending_captures=10**6, **kw) as w:
        feed(w, N, 1, flush_every=200)  # flushing bounds the queue's memory
    t_write = time.perf_counter() - t0
    size = du(big)
    print(f"\n3-4. {N} steps with a capture on every step ({P} x {R} eigenvalues each)")
    print(
        f"write (AsyncRunWriter, flushed every 200 steps): {t_write:.1f} s = "
        f"{t_write / N * 1e3:.2f} ms per step+capture"
    )
    print(
        f"store size: {size / 2**20:.1f} MiB = {size / N / 1024:.1f} KiB per step "
        f"(raw float32 eigenvalues alone: {P * R * 4 / 1024:.1f} KiB)"
    )

    os.sync()
    t0 = time.perf_counter()
    ds = open_run(big)
    t_open = time.perf_counter() - t0
    ds = ds.load()
    t_lazy = time.perf_counter() - t0
    assert ds.sizes["capture_step"] == N and np.isfinite(ds.eigenvalues.values).all()
    t0 = time.perf_counter()
    ds2 = open_run(big, lazy=False)
    t_eager = time.perf_counter() - t0
    print(f"open_run (lazy): open {t_open * 1e3:.0f} ms; open + read all {t_lazy:.2f} s")
    print(f"open_run(lazy=False): open + read all {t_eager:.2f} s")
    t0 = time.perf_counter()
    ds2 = open_run(big, lazy=False)
    t_warm = time.perf_counter() - t0
    print(
        f"open_run(lazy=False) again (files now in the page cache): {t_warm:.2f} s "
        f"({size / t_warm / 2**20:.0f} MiB/s); the first reads were bound by the disk"
    )
    if not args.quick:
        import xarray as xr

        t0 = time.perf_counter()
        raw = xr.open_zarr(big, consolidated=False).load()
        t_xr = time.perf_counter() - t0
        print(
            f"xarray.open_zarr + load (no phasescope, untrimmed capacity {raw.sizes['capture_step']}): "
            f"{t_xr:.2f} s -> open_run eager is {t_xr / t_eager:.1f}x faster"
        )
    del ds, ds2
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
