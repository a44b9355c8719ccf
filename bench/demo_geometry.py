"""The demo's geometry by probe set and learning-rate schedule (issue 21), as one table.

Runs ``phasescope demo`` once per combination of probe set (``--probes-from``: midtext, verses) and
schedule (``--schedule``: cosine, constant) at each width asked, one after another (one torch thread),
and prints, for the probe that Li et al. 2025 read (the final norm, last token), RankMe / α-ReQ at
initialisation, at the collapse minimum (the lowest RankMe of the first quarter of the run), at the peak
after it, and at the end, with the wall time of each run. Stores are kept under ``--dir``; a store that
is already there is read instead of retrained (pass ``--overwrite`` to retrain).

    OMP_NUM_THREADS=1 .venv/bin/python bench/demo_geometry.py --dir runs/geometry --widths 64,128
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np


def landmarks(rankme: np.ndarray, alpha: np.ndarray, steps: np.ndarray) -> dict[str, tuple[int, float, float]]:
    """(step, RankMe, α) at init, at the early collapse minimum, at the peak after it, and at the end."""
    finite = np.isfinite(rankme)
    idx = np.flatnonzero(finite)
    early = idx[steps[idx] <= steps[idx[-1]] // 4]
    i_min = early[np.argmin(rankme[early])] if early.size else idx[0]
    after = idx[idx >= i_min]
    i_peak = after[np.argmax(rankme[after])]
    picks = {"init": idx[0], "collapse": i_min, "peak": i_peak, "end": idx[-1]}
    return {k: (int(steps[i]), float(rankme[i]), float(alpha[i])) for k, i in picks.items()}


def main(argv: list[str] | None = None) -> int:
    from phasescope.demo import DemoConfig, run_demo
    from phasescope.store import open_run

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("runs/geometry"))
    ap.add_argument("--widths", default="64,128", help="n_embd values, comma-separated")
    ap.add_argument("--steps", type=int, default=DemoConfig.steps)
    ap.add_argument("--probes-from", default="midtext,verses")
    ap.add_argument("--schedules", default="cosine,constant")
    ap.add_argument("--probe", default="final_norm")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    rows = []
    for width, probes_from, schedule in itertools.product(
        [int(w) for w in args.widths.split(",")], args.probes_from.split(","), args.schedules.split(",")
    ):
        out = args.dir / f"d{width}-{probes_from}-{schedule}-{args.steps}.zarr"
        seconds = float("nan")
        if args.overwrite or not out.exists():
            cfg = DemoConfig(steps=args.steps, n_embd=width, probes_from=probes_from, schedule=schedule)
            t0 = time.perf_counter()
            run_demo(cfg, out, overwrite=True, progress=False)
            seconds = time.perf_counter() - t0
        ds = open_run(out, lazy=False)
        marks = landmarks(
            ds["rankme"].sel(probe=args.probe).values,
            ds["alpha"].sel(probe=args.probe).values,
            ds["capture_step"].values,
        )
        rows.append((width, probes_from, schedule, marks, seconds))
        print(f"done: {out} ({seconds:.0f} s)", flush=True)

    print(f"\n{args.probe}, RankMe / α-ReQ (step) — {args.steps} steps")
    head = f"{'d':>4} {'probes':<8} {'schedule':<9}" + "".join(f"{k:>24}" for k in ("init", "collapse", "peak", "end"))
    print(head + f"{'seconds':>9}")
    for width, probes_from, schedule, marks, seconds in rows:
        cells = "".join(f"{f'{r:.1f} / {a:.2f} ({s})':>24}" for s, r, a in marks.values())
        print(f"{width:>4} {probes_from:<8} {schedule:<9}{cells}{seconds:>9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
