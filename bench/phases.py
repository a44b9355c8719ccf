"""Benchmark: phase detection cost (spectra/phases/), measured side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/phases.py

1. The same PELT search three ways: our vectorised loop (spectra/phases/segmentation.pelt), ruptures.Pelt
   with our prefix-sum cost, ruptures.Pelt with a per-segment lstsq cost: ratios, same breakpoints.
2. detect_phases on run-shaped Datasets of growing size (captures × probes), per probe.
"""

from __future__ import annotations

import math
import time

import numpy as np
import xarray as xr


def three_phase(n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = np.unique(np.r_[0, np.round(np.logspace(0, 5, n))]).astype(np.int64)
    x = np.log1p(steps)
    k1, k2 = math.log1p(40), math.log1p(3000)
    lr = math.log(40) - 0.7 * np.minimum(x, k1) + 0.5 * np.clip(x - k1, 0, k2 - k1) - 0.3 * np.maximum(x - k2, 0)
    al = 1 + 0.5 * np.minimum(x, k1) - 0.3 * np.clip(x - k1, 0, k2 - k1) + 0.2 * np.maximum(x - k2, 0)
    return steps, np.exp(lr + rng.normal(0, 0.03, len(x))), al + rng.normal(0, 0.03, len(x))


def best_of(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    from ruptures import Pelt
    from ruptures.base import BaseCost

    from phasescope.spectra.phases import detect_phases
    from phasescope.spectra.phases.segmentation import default_penalty, normalise, pelt, ruptures_cost

    rng = np.random.default_rng(0)

    class LstsqCost(BaseCost):
        model = "lstsq"
        min_size = 3

        def fit(self, signal):
            self.signal = signal
            return self

        def error(self, start, end):
            x, Y = self.signal[start:end, 0], self.signal[start:end, 1:]
            X = np.column_stack([np.ones_like(x), x])
            _, res, *_ = np.linalg.lstsq(X, Y, rcond=None)
            return float(res.sum()) if res.size else 0.0

    print("1. PELT: vectorised numpy loop vs ruptures.Pelt (prefix-sum cost) vs ruptures.Pelt (lstsq cost)")
    for n in (50, 200, 500):
        steps, r, a = three_phase(n, rng)
        x = np.log1p(steps)
        Z = normalise(x, np.column_stack([np.log(r), a]))
        sig = np.column_stack([x, Z])
        pen = default_penalty(len(x), 2)
        fast = Pelt(custom_cost=ruptures_cost()(min_size=3), min_size=3, jump=1)
        slow = Pelt(custom_cost=LstsqCost(), min_size=3, jump=1)
        bv, bf, bs = pelt(x, Z, pen, 3), fast.fit(sig).predict(pen=pen), slow.fit(sig).predict(pen=pen)
        assert bv == bf == bs, (bv, bf, bs)
        tv = best_of(lambda: pelt(x, Z, pen, 3))
        tf = best_of(lambda: fast.fit(sig).predict(pen=pen), repeat=1)
        ts = best_of(lambda: slow.fit(sig).predict(pen=pen), repeat=1)
        print(
            f"   n={len(x):4d}: numpy {tv * 1e3:7.1f} ms | ruptures+prefix {tf * 1e3:8.1f} ms ({tf / tv:5.1f}x) "
            f"| ruptures+lstsq {ts * 1e3:8.1f} ms ({ts / tv:5.1f}x)"
        )

    print("2. detect_phases (PELT + labels + model level), captures x probes")
    for n, p in ((50, 4), (200, 12), (500, 24)):
        R, A = [], []
        for _ in range(p):
            steps, r, a = three_phase(n, rng)
            R.append(r)
            A.append(a)
        ds = xr.Dataset(
            {"rankme": (("capture_step", "probe"), np.array(R).T), "alpha": (("capture_step", "probe"), np.array(A).T)},
            coords={"capture_step": steps, "probe": [f"p{j}" for j in range(p)]},
        )
        t = best_of(lambda: detect_phases(ds))
        print(
            f"   {len(steps):4d} captures x {p:2d} probes: {t * 1e3:8.1f} ms "
            f"({t / (p + 1) * 1e3:.1f} ms per trajectory)"
        )


if __name__ == "__main__":
    main()
