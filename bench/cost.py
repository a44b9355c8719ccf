"""Benchmark: the cost of one capture — per-probe time and memory against N and d, a fitted cost model,
32 synthetic layers at d = 4,096 (a 7B model's probes), and gradient statistics of a Llama-7B-like block.

    .venv/bin/python bench/cost.py             # grid, fit, 32 layers at d=4096, one Llama-7B block (~15 min)
    .venv/bin/python bench/cost.py --quick     # d <= 1024, 4 layers at d=1024, a half-size block (~1 min)
    .venv/bin/python bench/cost.py --layers 4  # the full grid with a shorter layer loop
    .venv/bin/python bench/cost.py --device cuda   # the same on a GPU (wall-clock, synchronised)

What one probe's reduction costs, in the order a capture runs it (probes/capture.py), on synthetic float32
activations with a power-law spectrum (λ_k ∝ 1/k) and a mean 10× the largest spread, fed as batches of
`--batch` rows (numpy arrays; torch tensors with --device cuda):
  * update: CovarianceAccumulator(d).update() per batch. Float32 rows get float32 products (BLAS syrk on
    the CPU, a full GEMM on CUDA) summed into the float64 d × d state; small batches are gathered into
    blocks of chunk_rows = 4M // d rows (the last, partial block's product is flushed and counted here,
    where compute() would do it). While fewer than d rows have been seen the rows are kept in
    float64 (the dual route) and folded into the state with one float64 product when row d arrives:
    the tables' "f64 rows" N₀ = batch·⌊(d − 1)/batch⌋ go through float64 products, the rest float32.
  * eig: compute(): M₂ − s₁s₁ᵀ/n and the float64 eigvalsh of the d × d matrix (for N < d: the N × N
    Gram of the kept rows, its product included, and its eigvalsh)
  * metrics: spectrum_metrics() (RankMe, α-ReQ, …)
  * cka: GramSampler(1024) fed the same batches, then its centred 1024 × 1024 Gram (linear CKA's sample,
    on by default in probe-set captures); reported apart from the spectrum's total
Model, fitted by least squares on the covariance-route points (relative residuals, i.e. weights 1/t):
    update ≈ a32·(N − N₀)·d² + a64·N₀·d² + c_u          eig + metrics ≈ b·d³ + c_e
so a probe costs t ≈ a32·(N − N₀)·d² + a64·N₀·d² + b·d³ + c. The effective rates printed count the
products as a GEMM's 2·N·d² flops (syrk does half of them: its true rate is half the printed one) and
eigvalsh as the conventional 9·d³ budget (values only, LAPACK's sytrd + sterf, does ~4/3·d³: the true
rate is 4/27 of the printed one). The N < d points are predicted from the same constants
(a64·N²·d + b·N³ + c) as a check, not fitted.
Then "layers": a capture of --layers probes of width --d with --n rows each, interleaved as ProbeSet.capture
runs them (every batch goes to every probe's accumulator, all states alive together, then compute per
probe): per-layer seconds, the total, the peak memory, against the fitted model's prediction.
Then "gradients": gradient_matrix_stats() (the public function, whatever its current routes) on random
float32 torch tensors of one Llama-7B block, nn.Linear (out, in) shapes: q, k, v, o 4096×4096,
gate, up 11008×4096, down 4096×11008 (2048/5504 with --quick), one call per shape group, as the
Observatory groups them; seconds per group and per block, × 32 blocks.
Times are CPU seconds of this process (`time.process_time`, one BLAS thread: robust when other work
shares the machine, though a neighbour's load on the shared caches still shows: the grid keeps, per
point and part, the best of --repeats runs made round-robin); CUDA times are wall seconds with
synchronisation. Peak memory is what the probe allocates beyond its input batches (tracemalloc, numpy
allocations; torch.cuda.max_memory_allocated on CUDA); the state alone is 8·d² bytes per probe.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import time
import tracemalloc

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import numpy as np

from phasescope.spectra import CovarianceAccumulator, spectrum_metrics
from phasescope.spectra.similarity import CKA_SAMPLES, GramSampler

MiB = 2**20
OFFSET = 10.0  # the data's mean, in units of the largest spread


# ---------------------------------------------------------------- clocks, memory, data
class Meter:
    """Clock and peak-memory meter for one device: CPU seconds + tracemalloc on the CPU (numpy arrays),
    wall seconds with synchronisation + torch.cuda.max_memory_allocated on CUDA (torch tensors)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.base = 0

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def clock(self) -> float:
        if self.cuda:
            self.sync()
            return time.perf_counter()
        return time.process_time()

    def start(self) -> None:
        """Count peak memory from here, excluding what is already allocated (the input batches)."""
        gc.collect()
        if self.cuda:
            import torch

            self.sync()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            tracemalloc.start()
            self.base = tracemalloc.get_traced_memory()[0]

    def peak(self) -> float:
        """MiB allocated at the peak since start() beyond the baseline; stops tracing."""
        if self.cuda:
            import torch

            self.sync()
            return (torch.cuda.max_memory_allocated() - self.base) / MiB
        peak = tracemalloc.get_traced_memory()[1] - self.base
        tracemalloc.stop()
        return peak / MiB


def layer_rng(seed: int, d: int):
    """A generator and this layer's spectrum (scale k^-1/2, so λ_k ∝ 1/k) and mean."""
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, d + 1, dtype=np.float32) ** -0.5).astype(np.float32)
    mean = (rng.standard_normal(d) * OFFSET).astype(np.float32)
    return rng, scale, mean


def rows(gen, m: int, device: str):
    rng, scale, mean = gen
    x = rng.standard_normal((m, len(scale)), dtype=np.float32) * scale + mean
    if device == "cuda":
        import torch

        return torch.from_numpy(x).to(device)
    return x


def f64_rows(n: int, d: int, batch: int) -> int:
    """N₀: rows kept (float64) before the accumulator folds them into its state (see the docstring)."""
    return min(n, batch * ((d - 1) // batch)) if n >= d else n


# ---------------------------------------------------------------- one probe
def probe_cost(n: int, d: int, batch: int, device: str, seed: int = 0) -> dict:
    """Seconds of update / eig / metrics / cka and the peak MiB of one probe's reduction."""
    gen = layer_rng(seed, d)
    data = [rows(gen, min(batch, n - s), device) for s in range(0, n, batch)]
    meter = Meter(device)
    meter.start()
    acc, sampler = CovarianceAccumulator(d), GramSampler(CKA_SAMPLES)
    t_update = t_cka = 0.0
    for b in data:
        t0 = meter.clock()
        acc.update(b)
        t1 = meter.clock()
        sampler.update(b)
        t_update, t_cka = t_update + t1 - t0, t_cka + meter.clock() - t1
    t0 = meter.clock()
    acc._flush()  # the pending rows' product (compute() would do it): counted with the update
    t_update += meter.clock() - t0
    t0 = meter.clock()
    spec = acc.compute()
    t1 = meter.clock()
    spectrum_metrics(spec)
    t2 = meter.clock()
    sampler.gram()
    t3 = meter.clock()
    peak = meter.peak()
    return {
        "update": t_update,
        "eig": t1 - t0,
        "metrics": t2 - t1,
        "cka": t_cka + t3 - t2,
        "peak": peak,
        "route": spec.route,
    }


def grid(dims, sizes, batch, repeats, device) -> list[dict]:
    print(
        f"\n== One probe: accumulate N float32 rows of width d in batches of {batch}, compute, metrics "
        f"({'CUDA wall' if device == 'cuda' else 'CPU'} seconds, per part the best of {repeats} round-robin "
        "repeat(s); peak = MiB beyond the input) =="
    )
    points = [(d, n) for d in dims for n in sizes]
    best: dict[tuple[int, int], dict] = {}
    for r in range(repeats):  # round-robin, so that bursts of load on a shared machine hit every point alike
        for d, n in points:
            res = probe_cost(n, d, batch, device, seed=r)
            if (d, n) not in best:
                best[d, n] = res
            else:
                for k in ("update", "eig", "metrics", "cka", "peak"):
                    best[d, n][k] = min(best[d, n][k], res[k])
    print(
        f"{'d':>5s} {'N':>6s} {'route':>10s} {'f64 rows':>8s} {'update':>8s} {'eig':>8s} {'metrics':>7s} "
        f"{'total':>8s} {'cka':>6s} {'peak MiB':>8s} {'/8d²':>5s}"
    )
    out = []
    for d, n in points:
        p = best[d, n]
        p.update(d=d, n=n, n0=f64_rows(n, d, batch), total=p["update"] + p["eig"] + p["metrics"])
        out.append(p)
        print(
            f"{d:5d} {n:6d} {p['route']:>10s} {p['n0']:8d} {p['update']:8.3f} {p['eig']:8.3f} "
            f"{p['metrics']:7.3f} {p['total']:8.3f} {p['cka']:6.3f} {p['peak']:8.0f} "
            f"{p['peak'] * MiB / (8 * d * d):5.1f}"
        )
    return out


# ---------------------------------------------------------------- the model
def weighted_lstsq(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Least squares of t on the columns of x, minimising relative residuals (weights 1/t)."""
    return np.linalg.lstsq(x / t[:, None], np.ones_like(t), rcond=None)[0]


def fit(points: list[dict]) -> dict | None:
    cov = [p for p in points if p["route"] == "covariance"]
    if len(cov) < 4:
        print("\n(fewer than 4 covariance-route points: no fit)")
        return None
    d = np.array([p["d"] for p in cov], dtype=float)
    n = np.array([p["n"] for p in cov], dtype=float)
    n0 = np.array([p["n0"] for p in cov], dtype=float)
    t_u = np.array([p["update"] for p in cov])
    t_e = np.array([p["eig"] + p["metrics"] for p in cov])
    if n0.any():
        a32, a64, c_u = weighted_lstsq(np.stack([(n - n0) * d**2, n0 * d**2, np.ones_like(d)], 1), t_u)
    else:  # no float64 prefix in the grid (batch >= every d): a64 is not measured
        (a32, c_u), a64 = weighted_lstsq(np.stack([n * d**2, np.ones_like(d)], 1), t_u), math.nan
    b, c_e = weighted_lstsq(np.stack([d**3, np.ones_like(d)], 1), t_e)
    m = {"a32": a32, "a64": a64, "b": b, "c": c_u + c_e}
    print("\n== Fitted model (covariance route): t ≈ a32·(N − N₀)·d² + a64·N₀·d² + b·d³ + c ==")
    print(f"a32 = {a32:.3e} s per row·d² (float32 products): {2 / a32 / 1e9:6.1f} GFLOP/s counting 2·N·d² flops")
    if not math.isnan(a64):
        print(
            f"a64 = {a64:.3e} s per row·d² (float64 products, the first N₀ rows): {2 / a64 / 1e9:6.1f} GFLOP/s, "
            f"{a64 / a32:.1f}× a32"
        )
    print(f"b   = {b:.3e} s per d³ (float64 eigvalsh + metrics): {9 / b / 1e9:6.1f} GFLOP/s counting 9·d³ flops")
    print(f"c   = {c_u + c_e:.3e} s (update {c_u:.1e} + eig {c_e:.1e})")
    per_d = {int(p["d"]): p["eig"] for p in cov}  # the last N of each d
    print("eigvalsh alone, s/d³ at each d: " + ", ".join(f"{k}: {v / k**3:.2e}" for k, v in per_d.items()))
    print(f"{'d':>5s} {'N':>6s} {'route':>10s} {'measured':>9s} {'model':>9s} {'resid':>7s}")
    for p in points:
        t = p["total"]
        pred = predict(m, p["n"], p["d"], p["n0"])
        print(f"{p['d']:5d} {p['n']:6d} {p['route']:>10s} {t:9.3f} {pred:9.3f} {(t - pred) / t:+7.1%}")
    return m


def predict(m: dict, n: int, d: int, n0: int) -> float:
    """The model's seconds for one probe (update + eig + metrics); N < d: the dual Gram route."""
    a64 = m["a64"] if not math.isnan(m["a64"]) else m["a32"]
    if n < d:
        return a64 * n * n * d + m["b"] * n**3 + m["c"]
    return m["a32"] * (n - n0) * d * d + a64 * n0 * d * d + m["b"] * d**3 + m["c"]


# ---------------------------------------------------------------- a capture of many layers
def layers(count: int, n: int, d: int, batch: int, device: str, model: dict | None) -> None:
    print(
        f"\n== Capture of {count} probes (layers) of d={d}, N={n} rows each in batches of {batch}, "
        f"interleaved as ProbeSet.capture runs them ({'CUDA wall' if device == 'cuda' else 'CPU'} seconds) =="
    )
    gens = [layer_rng(1000 + i, d) for i in range(count)]
    meter = Meter(device)
    meter.start()
    accs = [CovarianceAccumulator(d) for _ in range(count)]
    samplers = [GramSampler(CKA_SAMPLES) for _ in range(count)]
    t = np.zeros((count, 4))  # update, eig, metrics, cka
    for s in range(0, n, batch):
        for i in range(count):
            x = rows(gens[i], min(batch, n - s), device)  # the model's activations: not timed
            t0 = meter.clock()
            accs[i].update(x)
            t1 = meter.clock()
            samplers[i].update(x)
            t[i, 0] += t1 - t0
            t[i, 3] += meter.clock() - t1
            del x
    for i in range(count):  # the pending rows' product (compute() would do it): counted with the update
        t0 = meter.clock()
        accs[i]._flush()
        t[i, 0] += meter.clock() - t0
    print(f"{'layer':>5s} {'update':>8s} {'eig':>8s} {'metrics':>7s} {'total':>8s} {'cka':>6s}")
    for i in range(count):
        t0 = meter.clock()
        spec = accs[i].compute()
        t1 = meter.clock()
        spectrum_metrics(spec)
        t2 = meter.clock()
        samplers[i].gram()
        t3 = meter.clock()
        t[i, 1:] += (t1 - t0, t2 - t1, t3 - t2)
        print(f"{i:5d} {t[i, 0]:8.3f} {t[i, 1]:8.3f} {t[i, 2]:7.3f} {t[i, :3].sum():8.3f} {t[i, 3]:6.3f}", flush=True)
    peak = meter.peak()
    per = t[:, :3].sum(1)
    print(
        f"total {per.sum():.1f} s for {count} layers (+ cka {t[:, 3].sum():.1f} s): per layer mean {per.mean():.3f} s, "
        f"min {per.min():.3f}, max {per.max():.3f}; update {t[:, 0].sum():.1f} s, eig {t[:, 1].sum():.1f} s"
    )
    state = count * 8 * d * d / MiB
    print(
        f"peak memory {peak:.0f} MiB: states, kept rows, CKA samples, one batch in flight "
        f"({count} states of 8·d² bytes = {state:.0f} MiB)"
    )
    if model is not None:
        pred = predict(model, n, d, f64_rows(n, d, batch))
        print(f"model: {pred:.3f} s per layer, {count * pred:.1f} s in all (measured/model {per.mean() / pred:.2f})")


# ---------------------------------------------------------------- gradient matrices
def gradients(blocks: int, quick: bool, device: str) -> None:
    import torch

    from phasescope.gradients import gradient_matrix_stats

    d, f = (2048, 5504) if quick else (4096, 11008)
    groups = {"q,k,v,o": [(d, d)] * 4, "gate,up": [(f, d)] * 2, "down": [(d, f)]}
    print(
        f"\n== gradient_matrix_stats on one Llama-7B-like block{' (half size)' if quick else ''}: "
        f"random float32 torch tensors on {device}, one call per shape group, {blocks} block(s) =="
    )
    print(f"{'block':>5s} {'group':>8s} {'shape':>12s} {'matrices':>8s} {'seconds':>8s} {'s/matrix':>8s}")
    meter = Meter(device)
    totals = []
    gen = torch.Generator().manual_seed(0)
    for blk in range(blocks):
        total = 0.0
        for name, shapes in groups.items():
            grads = [torch.randn(*s, generator=gen).to(device) for s in shapes]
            meter.sync()
            t0 = meter.clock()
            gradient_matrix_stats(grads)
            dt = meter.clock() - t0
            total += dt
            shape = f"{shapes[0][0]}×{shapes[0][1]}"
            print(f"{blk:5d} {name:>8s} {shape:>12s} {len(shapes):8d} {dt:8.2f} {dt / len(shapes):8.2f}", flush=True)
            del grads
        totals.append(total)
    mean = float(np.mean(totals))
    print(f"per block {mean:.1f} s; × 32 blocks = {32 * mean:.0f} s per matrix-statistics step")


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid, 4 layers at d=1024, a half-size block")
    ap.add_argument("--batch", type=int, default=1024, help="rows per update() call (default 1024)")
    ap.add_argument("--repeats", type=int, default=3, help="grid: best of this many runs per point and part")
    ap.add_argument("--layers", type=int, default=None, help="probes in the capture loop (default 32; 0 skips)")
    ap.add_argument("--n", type=int, default=4096, help="rows per probe in the capture loop")
    ap.add_argument("--d", type=int, default=None, help="width of the capture loop's probes (default 4096)")
    ap.add_argument("--grad-blocks", type=int, default=1, help="Llama blocks of gradient statistics (0 skips)")
    ap.add_argument("--no-grid", action="store_true", help="skip the grid and the fit")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    print(
        f"bench/cost.py: {args.device}, {os.environ['OMP_NUM_THREADS']} BLAS thread(s), numpy {np.__version__}, "
        f"torch {torch.__version__}, batches of {args.batch} rows"
    )
    probe_cost(2048, 256, args.batch, args.device)  # first-call costs (imports, BLAS/cuSOLVER set-up) out
    model = None
    if not args.no_grid:
        dims = [256, 512, 1024] if args.quick else [256, 512, 1024, 2048, 4096]
        sizes = [1024, 4096] if args.quick else [1024, 4096, 16384]
        model = fit(grid(dims, sizes, args.batch, 1 if args.quick else args.repeats, args.device))
    count = args.layers if args.layers is not None else (4 if args.quick else 32)
    if count:
        layers(count, args.n, args.d or (1024 if args.quick else 4096), args.batch, args.device, model)
    if args.grad_blocks:
        gradients(args.grad_blocks, args.quick, args.device)


if __name__ == "__main__":
    main()
