"""Rows: validating one step's or one capture's values against a run's Layout, and stacking
validated rows into the per-array blocks the writer appends. Pure numpy, no I/O.

``RunWriter.prepare_step`` / ``prepare_capture`` (and so ``AsyncRunWriter`` on the training thread)
validate with these functions; the writer turns a batch of rows into blocks with ``step_blocks`` /
``capture_blocks`` and writes each block into its array's chunks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import StoreError
from .schema import CAPTURE, STEP, Layout


@dataclass
class StepRow:
    """One validated training-step row, ready to be written."""

    step: int
    scalars: np.ndarray  # (n_scalars,) float64
    params: dict[str, np.ndarray]  # stat -> (n_params,) float32
    flags: np.ndarray  # (n_flags,) uint8


@dataclass
class CaptureRow:
    """One validated capture row, ready to be written."""

    step: int
    metrics: np.ndarray  # (n_metrics, n_probes) float64
    eigenvalues: np.ndarray | None  # (n_probes, max_rank)
    n_samples: np.ndarray  # (n_probes,) int64
    matrices: dict[str, np.ndarray]  # stat -> (n_matrices,)
    sketch: np.ndarray | None  # (n_probes, rows, width)
    weight_eigenvalues: np.ndarray | None = None  # (n_matrices, weight_rank) float32, NaN-padded
    sets: dict[str, np.ndarray] | None = None  # set stat -> (n_loss_sets,) float64


def prepare_step(
    L: Layout,
    step: int,
    scalars: Mapping[str, float],
    params: Mapping[str, Any] | None = None,
    flags: Mapping[str, int] | None = None,
) -> StepRow:
    """Validate one step's values against layout ``L`` and return the row (sets ``nonfinite``)."""
    step = _as_step(step)
    unknown = set(scalars) - set(L.scalars)
    if unknown:
        raise StoreError(f"unknown scalars {sorted(unknown)}; this run logs {L.scalars} (declare them in scalars=)")
    sv = np.array([_as_float(scalars.get(k, math.nan), k) for k in L.scalars], dtype=np.float64)
    pv: dict[str, np.ndarray] = {}
    nonfinite = not np.isfinite(sv[[i for i, k in enumerate(L.scalars) if k in scalars]]).all()
    for stat, arr in (params or {}).items():
        if stat not in L.param_stats:
            raise StoreError(f"unknown param stat {stat!r}; this run logs {L.param_stats} (declare it in param_stats=)")
        a = np.asarray(arr, dtype=np.float32).reshape(-1)
        if a.shape != (len(L.params),):
            raise StoreError(f"params[{stat!r}] has {a.size} values, expected one per param ({len(L.params)})")
        nonfinite = nonfinite or not np.isfinite(a).all()
        pv[stat] = a
    fv = np.zeros(len(L.flags), dtype=np.uint8)
    for k, v in (flags or {}).items():
        if k not in L.flags:
            raise StoreError(f"unknown flag {k!r}; this run has flags {L.flags} (declare it in flags=)")
        fv[L.flags.index(k)] = min(max(int(v), 0), 255)
    if nonfinite and "nonfinite" in L.flags and "nonfinite" not in (flags or {}):
        fv[L.flags.index("nonfinite")] = 1
    return StepRow(step, sv, pv, fv)


def prepare_capture(
    L: Layout,
    step: int,
    metrics: Mapping[str, Any],
    eigenvalues: Any,
    n_samples: Any,
    matrices: Mapping[str, Any] | None = None,
    sketch: Any = None,
    weight_eigenvalues: Any = None,
    sets: Mapping[str, Any] | None = None,
) -> CaptureRow:
    """Validate one capture's values against layout ``L`` and return the row. ``weight_eigenvalues``:
    (matrices, ≤ weight_rank) eigenvalues of each weight's WᵀW, NaN-padded, or None (not computed)."""
    step = _as_step(step)
    P = len(L.probes)
    if not P:
        raise StoreError("this run has no probes; pass probes=[...] to RunWriter to store captures")
    unknown = set(metrics) - set(L.metrics)
    if unknown:
        raise StoreError(f"unknown metrics {sorted(unknown)}; this run stores {L.metrics} (declare them in metrics=)")
    mv = np.full((len(L.metrics), P), np.nan)
    for i, k in enumerate(L.metrics):
        if k in metrics:
            mv[i] = _vector(metrics[k], P, f"metrics[{k!r}]", np.float64)
    eig = None
    if L.max_rank:
        e = np.asarray(eigenvalues, dtype=np.float64)
        if e.ndim != 2 or e.shape[0] != P or e.shape[1] > L.max_rank:
            raise StoreError(
                f"eigenvalues has shape {e.shape}, expected ({P}, <= {L.max_rank}) (probes x max_rank, NaN-padded)"
            )
        eig = np.full((P, L.max_rank), np.nan, dtype=L.eigen_dtype)
        eig[:, : e.shape[1]] = e
    ns = _vector(n_samples, P, "n_samples", np.int64)
    mats: dict[str, np.ndarray] = {}
    for stat, v in (matrices or {}).items():
        if stat not in L.matrix_stats:
            raise StoreError(
                f"unknown matrix stat {stat!r}; this run stores {L.matrix_stats} (declare it in matrix_stats=)"
            )
        mats[stat] = _vector(v, len(L.matrices), f"matrices[{stat!r}]", np.float32)
    sk = None
    if sketch is not None:
        if not L.sketch:
            raise StoreError(
                "a sketch was given but the run has none; pass sketch={'rows': r, 'width': w} to RunWriter"
            )
        shape = (P, int(L.sketch["rows"]), int(L.sketch["width"]))
        s = np.asarray(sketch)
        if s.shape != shape:
            raise StoreError(f"sketch has shape {s.shape}, expected {shape} (probe, rows, width)")
        sk = s.astype(L.sketch.get("dtype", "float16"))
    wev = None
    if weight_eigenvalues is not None:
        if not L.weight_rank:
            raise StoreError("weight eigenvalues were given but the run stores none; pass weight_rank= to RunWriter")
        e = np.asarray(weight_eigenvalues, dtype=np.float32)
        M = len(L.matrices)
        if e.ndim != 2 or e.shape[0] != M or e.shape[1] > L.weight_rank:
            raise StoreError(
                f"weight_eigenvalues has shape {e.shape}, expected ({M}, <= {L.weight_rank}) "
                "(matrices x weight_rank, NaN-padded)"
            )
        wev = np.full((M, L.weight_rank), np.nan, dtype=np.float32)
        wev[:, : e.shape[1]] = e
    sv: dict[str, np.ndarray] = {}
    for stat, v in (sets or {}).items():
        if stat not in L.set_stats:
            raise StoreError(f"unknown set stat {stat!r}; this run stores {L.set_stats} (declare it in set_stats=)")
        sv[stat] = _vector(v, len(L.loss_sets), f"sets[{stat!r}]", np.float64)
    return CaptureRow(step, mv, eig, ns, mats, sk, wev, sv)


def step_blocks(L: Layout, rows: Sequence[StepRow], dropped: int = 0) -> list[tuple[str, np.ndarray]]:
    """(array name, block of ``len(rows)`` rows) for every step-dimensioned array, the ``step``
    coordinate last. ``dropped`` captures are added to ``flag_dropped`` of the last row."""
    out: list[tuple[str, np.ndarray]] = []
    if L.scalars:
        sc = np.stack([r.scalars for r in rows])
        out += [(name, sc[:, j]) for j, name in enumerate(L.scalars)]
    if L.flags:
        fl = np.stack([r.flags for r in rows])
        if dropped and "dropped" in L.flags:
            j = L.flags.index("dropped")
            fl[-1, j] = min(255, int(fl[-1, j]) + dropped)
        out += [(f"flag_{name}", fl[:, j]) for j, name in enumerate(L.flags)]
    if L.params:
        out += [(f"param_{stat}", _stat_block([r.params for r in rows], stat, len(L.params))) for stat in L.param_stats]
    out.append((STEP, np.array([r.step for r in rows], dtype=np.int64)))
    return out


def capture_blocks(L: Layout, rows: Sequence[CaptureRow]) -> list[tuple[str, np.ndarray]]:
    """(array name, block of ``len(rows)`` rows) for every capture-dimensioned array, the
    ``capture_step`` coordinate last."""
    mv = np.stack([r.metrics for r in rows])  # (k, n_metrics, P)
    out = [(name, mv[:, j]) for j, name in enumerate(L.metrics)]
    out.append(("n_samples", np.stack([r.n_samples for r in rows])))
    if L.max_rank:
        out.append(("eigenvalues", np.stack([r.eigenvalues for r in rows])))
    if L.sketch:
        shape = (len(L.probes), int(L.sketch["rows"]), int(L.sketch["width"]))
        blank = np.full(shape, np.nan, dtype=L.sketch.get("dtype", "float16"))
        out.append(("sketch", np.stack([r.sketch if r.sketch is not None else blank for r in rows])))
    if L.matrices:
        out += [
            (f"matrix_{stat}", _stat_block([r.matrices for r in rows], stat, len(L.matrices)))
            for stat in L.matrix_stats
        ]
    if L.weight_rank:
        blank_w = np.full((len(L.matrices), L.weight_rank), np.nan, dtype=np.float32)
        out.append(
            (
                "weight_eigenvalues",
                np.stack([r.weight_eigenvalues if r.weight_eigenvalues is not None else blank_w for r in rows]),
            )
        )
    if L.loss_sets:
        for stat in L.set_stats:
            block = np.full((len(rows), len(L.loss_sets)), np.nan)
            for i, r in enumerate(rows):
                if r.sets and stat in r.sets:
                    block[i] = r.sets[stat]
            out.append((f"set_{stat}", block))
    out.append((CAPTURE, np.array([r.step for r in rows], dtype=np.int64)))
    return out


def _as_step(step: Any) -> int:
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise StoreError(f"step must be an integer, got {step!r}")
    if step < 0:
        raise StoreError(f"step must be >= 0, got {step}")
    return int(step)


def _as_float(v: Any, name: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise StoreError(f"scalar {name!r} must be a number, got {v!r}") from None


def _vector(v: Any, n: int, what: str, dtype) -> np.ndarray:
    a = np.asarray(v, dtype=dtype).reshape(-1)
    if a.shape != (n,):
        raise StoreError(f"{what} has {a.size} values, expected {n}")
    return a


def _stat_block(per_row: Sequence[Mapping[str, np.ndarray]], stat: str, width: int) -> np.ndarray:
    """(rows, width) float32 block of one statistic; NaN in rows that did not record it."""
    block = np.full((len(per_row), width), np.nan, dtype=np.float32)
    for i, values in enumerate(per_row):
        if stat in values:
            block[i] = values[stat]
    return block
