"""Benchmark: singular-value statistics of weight gradients (gradient_matrix_stats), routes side by side.

    .venv/bin/python bench/gradients.py            # GPT-2-small set + Llama-7B shapes + σ_min sweep (~35 min)
    .venv/bin/python bench/gradients.py --quick    # 2 GPT-2 blocks, half-size Llama shapes (~4 min)

Gradient sets (random float32, fixed seeds):
  * gpt2: the 48 matrices `select_matrices(..., "blocks")` picks in GPT-2 small (12 blocks × c_attn
    768×2304, attn.c_proj 768×768, mlp.c_fc 768×3072, mlp.c_proj 3072×768; Conv1D weights are stored
    (in, out), so two of the four are wide); wte/wpe are embeddings, outside the default selection
  * llama: Llama-7B-like q_proj 4096×4096, up_proj 11008×4096 and down_proj 4096×11008 (nn.Linear
    weights are (out, in)); 2048×2048, 5504×2048, 2048×5504 with --quick
Each set in three kinds: lowrank = a rank-32 product plus 5% Gaussian noise (a decaying spectrum over a
noise floor, σ_min/σ₁ ~ 1e-3..1e-5), gaussian = plain N(0, 1), rankdef = an exact rank-32 product (what
a batch of fewer tokens than the smaller side gives; σ_min is float32 round-off, ~1e-9 σ₁).

Routes, timed side by side in one run on the same arrays (torch CPU tensors):
  * batched-old: gradient_matrix_stats as it was before issue 18 (a frozen copy below): per shape one
    stack, float32 cast, finite mask, `where`, one batched torch.linalg.svdvals
  * loop: torch.linalg.svdvals per matrix as stored (+ the same statistics in float32)
  * auto: gradient_matrix_stats() now, which on CPU arrays is route="gram": float64 syrk + eigvalsh of
    the smaller Gram side per matrix (stacked per shape up to HOST_STACK_MAX entries)
  * svd: gradient_matrix_stats(route="svd"): float32 svdvals per matrix of its tall orientation
  * gram-f32: the Gram product in float32 (eigvalsh still float64), to show float64 products are needed
Errors are against a float64 SVD of the same float32 arrays: per statistic the largest relative error
over the matrices; σ_min separately as relative error and as absolute error in units of σ₁.
The σ_min sweep builds 768×768 and 768×2304 matrices with log-spaced singular values from 1 down to
σ_min/σ₁ = 1e-1 … 1e-9 and prints each route's σ_min error (where SIGMA_MIN_FLOOR in
gradients/matrices.py comes from); the small-matrix table is where a size threshold would show. The
"anatomy" lines split the old batched route's time into its steps (best of --repeats each).
Times are CPU seconds of the process (`time.process_time`, one BLAS thread), best of --repeats with the
routes interleaved, so the ratios do not depend on what else shares the machine; CUDA times (a table
that runs when a GPU is present) are wall-clock with synchronisation.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import numpy as np
import torch

from phasescope.gradients import MATRIX_STATS, gradient_matrix_stats
from phasescope.gradients.matrices import HOST_STACK_MAX, SIGMA_MIN_FLOOR

NORMS = MATRIX_STATS[:-1]  # every statistic but σ_min
SHORT = {
    "grad_nuclear": "nuclear",
    "grad_spectral": "spectral",
    "grad_frobenius": "frobenius",
    "grad_stable_rank": "srank",
    "grad_top_ratio": "top/nuc",
}


def gpt2_shapes(blocks: int) -> list[tuple[int, int]]:
    return [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * blocks


def llama_shapes(quick: bool) -> list[tuple[int, int]]:
    d, f = (2048, 5504) if quick else (4096, 11008)
    return [(d, d), (f, d), (d, f)]


def make(shapes, kind: str, seed: int = 0) -> list[torch.Tensor]:
    """Float32 gradients of the given shapes (see the module docstring for the kinds)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for m, n in shapes:
        if kind == "gaussian":
            g = torch.randn(m, n, generator=gen)
        else:
            k = 32
            g = torch.randn(m, k, generator=gen) @ torch.randn(k, n, generator=gen) / k**0.5
            if kind == "lowrank":
                g += 0.05 * torch.randn(m, n, generator=gen)
        out.append(g.contiguous())
    return out


def stats_from_values(s: torch.Tensor) -> dict:
    """The six statistics from descending singular values (..., r), in their dtype."""
    nuc, top, fro2 = s.sum(-1), s[..., 0], (s * s).sum(-1)
    return {
        "grad_nuclear": nuc,
        "grad_spectral": top,
        "grad_frobenius": fro2.sqrt(),
        "grad_stable_rank": fro2 / (top * top),
        "grad_top_ratio": top / nuc,
        "grad_sigma_min": s[..., -1],
    }


def loop(grads) -> dict:
    """torch.linalg.svdvals per matrix as stored, statistics in float32."""
    rows = [stats_from_values(torch.linalg.svdvals(g)) for g in grads]
    return {k: torch.stack([r[k] for r in rows]) for k in MATRIX_STATS}


def gram_f32(grads) -> dict:
    """Smaller-side Gram product in float32, eigvalsh in float64 (numpy, as the Gram route)."""
    rows = []
    for g in grads:
        a = g.numpy()
        a = a.T if a.shape[0] > a.shape[1] else a
        lam = np.linalg.eigvalsh((a @ a.T).astype(np.float64))[::-1]
        rows.append(stats_from_values(torch.from_numpy(np.sqrt(np.maximum(lam, 0.0)).copy())))
    return {k: torch.stack([r[k] for r in rows]) for k in MATRIX_STATS}


def batched_old(grads, scale=None) -> dict:
    """gradient_matrix_stats before issue 18, verbatim (one batched float32 svdvals per shape)."""
    import array_api_compat

    m = len(grads)
    present = [g for g in grads if g is not None]
    if not present:
        return {k: np.full(m, np.nan, dtype=np.float32) for k in MATRIX_STATS}
    xp = array_api_compat.array_namespace(*present)
    device = array_api_compat.device(present[0])
    by_shape: dict[tuple, list[int]] = {}
    for i, g in enumerate(grads):
        if g is not None:
            by_shape.setdefault((tuple(g.shape), str(array_api_compat.device(g))), []).append(i)
    order: list[int] = []
    parts: dict[str, list] = {k: [] for k in MATRIX_STATS}
    for idx in by_shape.values():
        stack = xp.astype(xp.stack([grads[i].detach() for i in idx]), xp.float32)
        dev = array_api_compat.device(stack)
        finite = xp.all(xp.reshape(xp.isfinite(stack), (len(idx), -1)), axis=1)
        stack = xp.where(finite[:, None, None], stack, xp.zeros((), dtype=stack.dtype, device=dev))
        s = xp.linalg.svdvals(stack)
        stats = stats_from_values(s)
        if scale is not None:
            inv = 1.0 / xp.asarray(scale, dtype=xp.float32, device=dev)
            for k in ("grad_nuclear", "grad_spectral", "grad_frobenius", "grad_sigma_min"):
                stats[k] = stats[k] * inv
        nan = xp.asarray(float("nan"), dtype=xp.float32, device=dev)
        for k, v in stats.items():
            parts[k].append(xp.where(finite, v, nan))
        order.extend(idx)
    missing = [i for i in range(m) if grads[i] is None]
    inverse = [0] * m
    for pos, i in enumerate(order + missing):
        inverse[i] = pos
    take = xp.asarray(inverse, device=device)
    fill = xp.full((len(missing),), float("nan"), dtype=xp.float32, device=device)
    return {k: xp.take(xp.concat([*v, fill]), take) for k, v in parts.items()}


def reference(grads) -> dict:
    """Float64 SVD of the float32 arrays (tall orientation, torch/MKL: the quickest float64 SVD here)."""
    rows = []
    for g in grads:
        d = g.double()
        rows.append(stats_from_values(torch.linalg.svdvals(d if d.shape[0] >= d.shape[1] else d.T)))
    return {k: torch.stack([r[k] for r in rows]).numpy() for k in MATRIX_STATS}


def errors(out: dict, ref: dict) -> dict:
    """Largest relative error per statistic; σ_min also as max |Δσ_min| / σ₁."""
    e = {}
    for k in MATRIX_STATS:
        v = np.asarray(out[k], dtype=np.float64)
        e[k] = float(np.max(np.abs(v - ref[k]) / np.abs(ref[k])))
    smin = np.asarray(out["grad_sigma_min"], dtype=np.float64)
    e["sigma_min_abs"] = float(np.max(np.abs(smin - ref["grad_sigma_min"]) / ref["grad_spectral"]))
    return e


def clock(cuda: bool = False) -> float:
    if cuda:
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def race(routes: dict, grads, repeats: int, cuda: bool = False) -> dict:
    """Best time and last output per route, the routes interleaved round-robin."""
    best: dict = {}
    for _ in range(repeats):
        for name, fn in routes.items():
            gc.collect()
            t0 = clock(cuda)
            out = fn(grads)
            t = clock(cuda) - t0
            if name not in best or t < best[name][0]:
                best[name] = (t, {k: v.cpu() if hasattr(v, "cpu") else v for k, v in out.items()})
    return best


def table(title: str, shapes, kinds, repeats: int, with_old: bool = False, with_f32: bool = False) -> None:
    print(
        f"\n== {title}: {len(shapes)} float32 matrices {sorted(set(shapes))}, CPU seconds, one BLAS thread, "
        f"best of {repeats} (routes interleaved); errors vs a float64 SVD =="
    )
    routes: dict = {}
    if with_old:
        routes["batched-old"] = batched_old
    routes["loop"] = loop
    routes["auto"] = gradient_matrix_stats
    routes["svd"] = lambda g: gradient_matrix_stats(g, route="svd")
    if with_f32:
        routes["gram-f32"] = gram_f32
    head = " ".join(f"{SHORT[k]:>9s}" for k in NORMS)
    print(f"{'kind':9s} {'route':12s} {'cpu s':>8s} {'vs loop':>8s} {head} {'σmin rel':>9s} {'σmin/σ1':>9s}")
    for kind in kinds:
        grads = make(shapes, kind)
        ref = reference(grads)
        best = race(routes, grads, repeats)
        base = best["loop"][0]
        for name, (t, out) in best.items():
            e = errors(out, ref)
            cells = " ".join(f"{e[k]:9.1e}" for k in NORMS)
            print(
                f"{kind:9s} {name:12s} {t:8.3f} {base / t:7.2f}x {cells} {e['grad_sigma_min']:9.1e} "
                f"{e['sigma_min_abs']:9.1e}",
                flush=True,
            )
        ratio = ref["grad_sigma_min"] / ref["grad_spectral"]
        print(f"{kind:9s} {'(reference)':12s} σ_min/σ₁ from {ratio.min():.1e} to {ratio.max():.1e}")
        del grads
    print('("vs loop" = loop seconds / route seconds: above 1 is faster than the per-matrix svdvals loop)')


def anatomy(blocks: int, repeats: int) -> None:
    """Where the old batched route's time goes, per GPT-2 shape group (lowrank kind)."""
    print(f"\n== Anatomy of batched-old on {blocks} GPT-2 blocks (CPU seconds per shape group, best of {repeats}) ==")
    steps = ("stack", "cast", "finite", "where", "svd batch", "loop", "loop tall")
    print(f"{'shape':>11s} " + " ".join(f"{k:>9s}" for k in steps))
    for shape in gpt2_shapes(1):
        gs = make([shape] * blocks, "lowrank")
        best = dict.fromkeys(steps, float("inf"))

        def step(name, fn, *args):
            t0 = clock()
            out = fn(*args)
            best[name] = min(best[name], clock() - t0)
            return out

        for _ in range(repeats):
            st = step("stack", torch.stack, gs)
            st = step("cast", lambda x: x.to(torch.float32, copy=True), st)  # array-API astype copies
            fin = step("finite", lambda x: torch.isfinite(x).reshape(blocks, -1).all(1), st)
            st = step("where", lambda x: torch.where(fin[:, None, None], x, torch.zeros((), dtype=x.dtype)), st)
            step("svd batch", torch.linalg.svdvals, st)
            step("loop", lambda: [torch.linalg.svdvals(g) for g in gs])
            step("loop tall", lambda: [torch.linalg.svdvals(g if g.shape[0] >= g.shape[1] else g.T) for g in gs])
        print(f"{'x'.join(map(str, shape)):>11s} " + " ".join(f"{best[k]:9.3f}" for k in steps), flush=True)


def sweep(ratios) -> None:
    """σ_min error of each route on matrices with a prescribed σ_min/σ₁ (log-spaced spectrum)."""
    print(
        "\n== σ_min sweep: singular values log-spaced from 1 to σ_min/σ₁, float32 matrices, errors vs a "
        f"float64 SVD (SIGMA_MIN_FLOOR = {SIGMA_MIN_FLOOR:g}) =="
    )
    print(
        f"{'shape':>8s} {'target':>7s} {'actual':>8s} | {'svd rel':>8s} {'svd abs':>8s} {'norms':>8s} | "
        f"{'gram rel':>8s} {'gram abs':>8s} {'norms':>8s} | {'f32 rel':>8s} {'norms':>8s}"
    )
    rng = np.random.default_rng(1)
    for m, n in [(768, 768), (768, 2304)]:
        r = min(m, n)
        u, _ = np.linalg.qr(rng.standard_normal((m, r)))
        v, _ = np.linalg.qr(rng.standard_normal((n, r)))
        for ratio in ratios:
            s = np.logspace(0, np.log10(ratio), r)
            g = [torch.from_numpy(((u * s) @ v.T).astype(np.float32))]
            ref = reference(g)
            cells = []
            for out in (gradient_matrix_stats(g, route="svd"), gradient_matrix_stats(g, route="gram"), gram_f32(g)):
                e = errors(out, ref)
                cells.append((e["grad_sigma_min"], e["sigma_min_abs"], max(e[k] for k in NORMS)))
            (a, b, c), (d, e_, f), (h, _, i) = cells
            actual = ref["grad_sigma_min"][0] / ref["grad_spectral"][0]
            print(
                f"{m:>4d}x{n:<4d} {ratio:7.0e} {actual:8.1e} | {a:8.1e} {b:8.1e} {c:8.1e} | "
                f"{d:8.1e} {e_:8.1e} {f:8.1e} | {h:8.1e} {i:8.1e}",
                flush=True,
            )
    print("(rel = |Δσ_min|/σ_min, abs = |Δσ_min|/σ₁, norms = largest relative error of the other five)")


def cuda_table(shapes, repeats: int) -> None:
    """Batched routes on the GPU (wall-clock, synchronised): auto (= batched float32 svdvals there),
    route="gram" (batched float64 Gram + eigvalsh) and the per-matrix loop."""
    print(f"\n== CUDA: {len(shapes)} GPT-2 matrices, wall seconds, best of {repeats} ==")
    grads = [g.cuda() for g in make(shapes, "lowrank")]
    ref = reference([g.cpu() for g in grads])
    routes = {
        "loop": loop,
        "auto": gradient_matrix_stats,
        "gram": lambda g: gradient_matrix_stats(g, route="gram"),
    }
    race(routes, grads, 1, cuda=True)  # warm-up (cuSOLVER handles, kernels)
    best = race(routes, grads, repeats, cuda=True)
    for name, (t, out) in best.items():
        e = errors(out, ref)
        print(
            f"{name:6s} {t:8.3f} s  {best['loop'][0] / t:5.2f}x  norms {max(e[k] for k in NORMS):8.1e}  "
            f"σmin rel {e['grad_sigma_min']:8.1e}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 GPT-2 blocks, half-size Llama shapes, short sweep")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per route (default 3, quick 2)")
    ap.add_argument("--no-large", action="store_true", help="skip the Llama-shaped table")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    repeats = args.repeats or (2 if args.quick else 3)
    blocks = 2 if args.quick else 12
    print(f"torch {torch.__version__}, numpy {np.__version__}, HOST_STACK_MAX = {HOST_STACK_MAX}")
    kinds = ("lowrank", "gaussian", "rankdef")
    table(f"GPT-2 small, {blocks} blocks", gpt2_shapes(blocks), kinds, repeats, with_old=True, with_f32=True)
    small = [(8, 8), (16, 48), (32, 96), (48, 48), (64, 256), (128, 128)] * 32
    table("Small matrices", small, ("lowrank",), repeats)
    anatomy(blocks, repeats)
    sweep([1e-1, 1e-3, 1e-5, 1e-6, 1e-7, 1e-9] if args.quick else [10.0**-k for k in range(1, 10)])
    if not args.no_large:
        title = "Llama-7B-like" + (", half size" if args.quick else "")
        table(title, llama_shapes(args.quick), ("lowrank",), 1)
    if torch.cuda.is_available():
        cuda_table(gpt2_shapes(blocks), repeats)


if __name__ == "__main__":
    main()
