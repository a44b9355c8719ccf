"""Sweeps: N runs side by side, ranked by what their first steps say (issue 16; "Unveiling the Secret
Recipe": lower gradient norms and higher loss early in SFT predict a better final model, so poor runs can
be stopped early).

For each run, over its first ``early`` fraction of steps (steps ≤ early × its last step): the mean global
gradient norm, the mean loss, and the mean over captures of RankMe and α-ReQ (the median over probes at each
capture); and for a run that finished, its final ``target`` (the mean of the last 5 % of the steps that
logged it: the loss, or an evaluation scalar the user logged). Across the finished runs, each early signal's
Spearman correlation with the final target. Runs of other models or probe layouts are compared on what they
share and named in ``notes``; nothing raises for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PhasescopeError

SIGNALS = ("grad_norm", "loss", "rankme", "alpha")
FINAL_FRACTION = 0.05


@dataclass
class SweepTable:
    rows: list[dict]  # one per run: "run", the SIGNALS' early means, "final", "finished", "early_steps"
    spearman: dict[str, float]  # signal → ρ with the final target over finished runs (NaN under 3 runs)
    target: str
    early: float
    rank_by: str
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        """A fixed-width table, ranked by ``rank_by`` (ascending), then the Spearman line."""
        head = (
            f"{'rank':>4} {'run':<28}{'steps':>12}"
            + "".join(f"{s:>12}" for s in SIGNALS)
            + f"{'final ' + self.target:>16}"
        )
        out = [f"early signals over the first {self.early:g} of each run's steps, ranked by {self.rank_by}", head]
        for i, r in enumerate(self.rows, 1):
            cells = "".join(f"{_f(r[s]):>12}" for s in SIGNALS)
            final = _f(r["final"]) if r["finished"] else "running"
            out.append(f"{i:>4} {r['run'][:28]:<28}{'≤ ' + str(r['early_steps']):>12}{cells}{final:>16}")
        rho = ", ".join(f"{s} {_f(v, '+.2f')}" for s, v in self.spearman.items())
        n = sum(r["finished"] for r in self.rows)
        out.append(f"Spearman ρ with the final {self.target} over {n} finished runs: {rho}")
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)


def _f(v: float, fmt: str = ".4g") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "nan"


def _mean(a) -> float:
    a = np.asarray(a, float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def early_signals(ds: Any, early: float = 0.1, target: str = "loss") -> dict:
    """The early signals and final target of one opened run (see the module doc)."""
    steps = np.asarray(ds["step"].values) if "step" in ds.coords else np.array([], int)
    if not steps.size:
        raise PhasescopeError("run has no finished steps")
    cut = early * float(steps.max())
    row: dict[str, Any] = {"early_steps": int(steps[steps <= cut].max()) if (steps <= cut).any() else int(steps.min())}
    for s in ("grad_norm", "loss"):
        row[s] = _mean(ds[s].values[steps <= cut]) if s in ds.data_vars else math.nan
    caps = np.asarray(ds["capture_step"].values) if "capture_step" in ds.coords else np.array([])
    for m in ("rankme", "alpha"):
        if m in ds.data_vars and caps.size:
            with np.errstate(all="ignore"):
                v = np.asarray(ds[m].transpose("capture_step", "probe").values, float)[caps <= cut]
                row[m] = _mean(np.nanmedian(v, axis=1)) if v.size and np.isfinite(v).any() else math.nan
        else:
            row[m] = math.nan
    if target in ds.data_vars and "step" in ds[target].dims:
        v = np.asarray(ds[target].values, float)
        ok = np.flatnonzero(np.isfinite(v))
        row["final"] = _mean(v[ok[-max(1, math.ceil(FINAL_FRACTION * ok.size)) :]]) if ok.size else math.nan
    else:
        row["final"] = math.nan
    row["finished"] = bool(ds.attrs.get("status") == "finished" or ds.attrs.get("finished") is True)
    return row


def spearman(a, b) -> float:
    """Spearman's ρ of two equal-length sequences (average ranks for ties), NaN for fewer than 3 pairs."""
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(stats.spearmanr(x[ok], y[ok]).statistic)


def compare_runs(
    runs: dict[str, Any], *, early: float = 0.1, target: str = "loss", rank_by: str = "grad_norm"
) -> SweepTable:
    """The sweep table of ``runs`` ({name: opened run}); ``early`` in (0, 1]; ``rank_by`` one of SIGNALS."""
    if not (isinstance(early, (int, float)) and 0 < early <= 1):
        raise PhasescopeError(f"--early must be a fraction in (0, 1], got {early!r}")
    if rank_by not in SIGNALS:
        raise PhasescopeError(f"--rank-by must be one of {', '.join(SIGNALS)}, got {rank_by!r}")
    rows, notes = [], []
    models = {}
    for name, ds in runs.items():
        try:
            row = early_signals(ds, early, target)
        except PhasescopeError as e:
            notes.append(f"{name}: {e}; left out")
            continue
        models[name] = (
            str(ds.attrs.get("model", "?")),
            tuple(str(p) for p in ds["probe"].values) if "probe" in ds.coords else (),
        )
        rows.append({"run": name, **row})
    if not rows:
        raise PhasescopeError("none of the runs has finished steps; compare runs that have recorded some")
    if len(set(models.values())) > 1:
        notes.append(
            "runs of different models or probe layouts: RankMe and α are medians over each run's own probes "
            + "; ".join(f"{n}: {m} ({len(p)} probes)" for n, (m, p) in models.items())
        )
    if not any(np.isfinite(r["final"]) for r in rows):
        notes.append(f"no run logged {target!r}: the final target and the correlations are NaN")
    rows.sort(key=lambda r: (not math.isfinite(r[rank_by]), r[rank_by] if math.isfinite(r[rank_by]) else 0.0))
    done = [r for r in rows if r["finished"]]
    rho = {s: spearman([r[s] for r in done], [r["final"] for r in done]) for s in SIGNALS}
    return SweepTable(rows, rho, target, float(early), rank_by, notes)


def compare_paths(paths: list[str | Path], **kw: Any) -> SweepTable:
    """`compare_runs` of run stores on disk, named by their folder."""
    from .store import open_run

    runs = {}
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise PhasescopeError(f"{path} does not exist; pass run stores (e.g. runs/*.zarr)")
        name = path.name.removesuffix(".zarr")
        runs[name if name not in runs else str(path)] = open_run(path)  # same folder names: the paths
    return compare_runs(runs, **kw)


def to_json(table: SweepTable) -> dict:
    """The table as JSON-ready data: every NaN a null (and no text touched)."""

    def clean(v):
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(dict(table.__dict__))
