"""Benchmark: weight spectra (ESD power-law α, stable rank, norms) of phasescope vs WeightWatcher 0.7.7.

    OMP_NUM_THREADS=1 .venv/bin/python bench/weights.py [--repeats 2] [--layers 12]

Weights: a GPT-2-small-shaped model built from its config (`GPT2Config()`: 12 blocks, d=768; random
initial weights, plus the same model with a heavy-tailed low-rank term added to every matrix, as trained
layers have). Both tools see the same 49 matrices (WeightWatcher skips the 50,257-row token embedding):
wpe and, per block, c_attn 768×2304, attn c_proj 768×768, c_fc 768×3072, mlp c_proj 3072×768.

Timed side by side, interleaved, best of `--repeats`, CPU seconds of the process (one BLAS thread):
  * phasescope: `weight_spectra(model)` — Gram matrix of the smaller side in the weights' float32
    (BLAS syrk), float64 eigvalsh, the Clauset–Shalizi–Newman tail fit
  * weightwatcher: `WeightWatcher(model).analyze()` with its defaults (a float32 SVD per matrix, its
    own power-law fit; no plots, no MP fit, no randomisation)
Agreement: the largest |Δα| between the two per matrix (phasescope's fit: two-sided KS, tails ≥ 10;
WeightWatcher's: one-sided KS, tails ≥ 2), and the same for `esd_metrics.esd_power_law_ww` (WW's own
fit) applied to phasescope's eigenvalues. Issue 18's target: phasescope ≥ 3× faster, same α.

`--full` adds WeightWatcher's whole layer table (issue 19): `weight_spectra(fit="ww", mp=True,
traps=True)` against `analyze(mp_fit=True, randomize=True)` — the MP fit (soft rank, spikes) and the
correlation traps of one shuffled copy per matrix — with the largest relative difference over the
columns alpha, log_norm, log_spectral_norm, alpha_weighted, log_alpha_norm, mp_softrank and the count of
matrices whose num_spikes differ.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

import numpy as np


def model(layers: int, heavy: bool):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(n_layer=layers))
    if heavy:  # a power-law low-rank term on every matrix: heavy-tailed ESDs, α in WeightWatcher's 2–6
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, w in m.named_parameters():
                if w.ndim == 2 and "wte" not in name:
                    r = 32
                    u = torch.randn(w.shape[0], r, generator=g) * torch.arange(1, r + 1) ** -0.6
                    w.add_(0.05 * u @ torch.randn(r, w.shape[1], generator=g) / r**0.5)
    return m


def run_phasescope(m, full: bool = False):
    from phasescope.spectra.weights import weight_spectra

    kw = {"fit": "ww", "mp": True, "traps": True} if full else {}
    t0 = time.process_time()
    out = weight_spectra(m, select=lambda name: "wte" not in name, **kw)
    return time.process_time() - t0, {n.removesuffix(".weight"): s for n, s in out.items()}


def run_weightwatcher(m, full: bool = False):
    import weightwatcher

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    kw = {"mp_fit": True, "randomize": True} if full else {}
    t0 = time.process_time()
    df = weightwatcher.WeightWatcher(model=m).analyze(**kw)
    return time.process_time() - t0, df


FULL_COLUMNS = {
    "alpha": "alpha",
    "log_norm": "log_norm",
    "log_spectral_norm": "log_spectral_norm",
    "alpha_weighted": "alpha_weighted",
    "log_alpha_norm": "log_alpha_norm",
    "mp_softrank": "mp_soft_rank",
}


def pairs(ours, df):
    """(phasescope's WeightSpectrum, WeightWatcher's row) of every matrix both analysed."""
    for _, row in df.iterrows():
        s = ours.get(row["longname"])
        if s is not None:
            yield s, row


def compare_full(ours, df) -> tuple[int, float, int]:
    """(matrices, largest relative difference over FULL_COLUMNS, matrices whose num_spikes differ)."""
    worst, spikes, k = 0.0, 0, 0
    for s, row in pairs(ours, df):
        k += 1
        for col, attr in FULL_COLUMNS.items():
            worst = max(worst, abs(getattr(s, attr) - row[col]) / max(abs(row[col]), 1e-300))
        spikes += int(s.num_spikes != row["num_spikes"])
    return k, worst, spikes


def compare(ours, df) -> tuple[int, float, float]:
    from phasescope.spectra.esd_metrics import esd_power_law_ww

    da, dww, k = 0.0, 0.0, 0
    for s, row in pairs(ours, df):
        k += 1
        da = max(da, abs(s.alpha - row["alpha"]) / row["alpha"])
        dww = max(dww, abs(esd_power_law_ww(s.eigenvalues).alpha - row["alpha"]) / row["alpha"])
    return k, da, dww


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12, help="GPT-2 blocks (12 = GPT-2 small)")
    ap.add_argument("--full", action="store_true", help="also WeightWatcher's MP fit and correlation traps")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(f"== Weight spectra: GPT-2-small-shaped ({args.layers} blocks, d=768), one thread, best of {args.repeats} ==")
    head = f"{'weights':10s} {'matrices':>8s} {'phasescope s':>12s} {'WW s':>8s} {'speed-up':>8s}"
    print(f"{head} {'max rel Δα':>10s} {'WW fit':>8s}")
    ratios = []
    for heavy in (False, True):
        m = model(args.layers, heavy)
        best_p, best_w, ours, df = np.inf, np.inf, None, None
        for _ in range(args.repeats):  # interleaved
            t, ours = run_phasescope(m)
            best_p = min(best_p, t)
            t, df = run_weightwatcher(m)
            best_w = min(best_w, t)
        k, da, dww = compare(ours, df)
        ratios.append(best_w / best_p)
        label = "heavy-tail" if heavy else "init"
        print(f"{label:10s} {k:8d} {best_p:12.2f} {best_w:8.2f} {best_w / best_p:7.1f}x {da:10.1e} {dww:8.1e}")
    print(f"speed-up over WeightWatcher: {min(ratios):.1f}x (target >= 3x: {'met' if min(ratios) >= 3 else 'NOT met'})")
    if not args.full:
        return
    print("\n== The whole layer table: + MP fit and correlation traps (fit='ww', mp=True, traps=True) ==")
    print(f"{head} {'max rel Δ':>10s} {'spikes≠':>8s}")
    for heavy in (False, True):
        m = model(args.layers, heavy)
        best_p, best_w, ours, df = np.inf, np.inf, None, None
        for _ in range(args.repeats):
            t, ours = run_phasescope(m, full=True)
            best_p = min(best_p, t)
            t, df = run_weightwatcher(m, full=True)
            best_w = min(best_w, t)
        k, worst, spikes = compare_full(ours, df)
        label = "heavy-tail" if heavy else "init"
        print(f"{label:10s} {k:8d} {best_p:12.2f} {best_w:8.2f} {best_w / best_p:7.1f}x {worst:10.1e} {spikes:8d}")


if __name__ == "__main__":
    main()
