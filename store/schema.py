"""The run schema: which arrays a run holds, their dims, dtypes, chunking and fill values.

One Zarr v3 group per run (see docs/schema.md). Rows along ``step`` and ``capture_step`` are
preallocated (capacity grows by doubling) and a run's root attribute ``phasescope_commit`` says how
many rows are committed; readers trim to it. Every array carries ``dimension_names`` so
``xarray.open_zarr(path, consolidated=False)`` opens a run without phasescope.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import StoreError

SCHEMA_VERSION = 1
COMMIT_ATTR = "phasescope_commit"
LAYOUT_ATTR = "phasescope_layout"

STEP, CAPTURE, PROBE, PARAM, RANK, MATRIX = "step", "capture_step", "probe", "param", "rank", "matrix"
WEIGHT_RANK = "weight_rank"
LOSS_SET = "loss_set"  # the evaluation sets (one per training stage) a run measures its loss on
SKETCH_ROW, SKETCH_COL = "sketch_row", "sketch_col"
COORDS = (STEP, CAPTURE, PROBE, PARAM, RANK, MATRIX)
RESERVED = set(COORDS) | {
    "eigenvalues",
    "n_samples",
    "sketch",
    SKETCH_ROW,
    SKETCH_COL,
    "phases",
    WEIGHT_RANK,
    "weight_eigenvalues",
    LOSS_SET,
}

STEP_FILL = -1  # unwritten rows of the step / capture_step coordinates
INITIAL_STEP_CAPACITY = 1024
INITIAL_CAPTURE_CAPACITY = 64
CHUNK_ELEMENTS = 1 << 16  # target elements per chunk for row-appended 2-D arrays
# Eigenvalue chunks are rewritten whole on every capture: smaller, and one capture per chunk once
# probes x max_rank reaches 16k values (e.g. 48 probes x 1024 ranks).
EIGEN_CHUNK_ELEMENTS = 1 << 14

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ArraySpec:
    """How one array of a run is laid out. ``rows`` names the appended dim (or None for coords)."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    fill: Any
    chunks: tuple[int, ...]
    rows: str | None
    compress: bool = True  # zstd; off for eigenvalues/sketches (noisy floats: measured 7% saving)

    @property
    def row_dim(self) -> str:
        """``rows`` of an appended array (every array but the coordinates' own)."""
        if self.rows is None:
            raise ValueError(f"array {self.name!r} is not appended along a dim")
        return self.rows


@dataclass
class Layout:
    """The names a run was created with; stored in the ``phasescope_layout`` root attribute."""

    probes: list[str]
    params: list[str]
    metrics: list[str]
    max_rank: int
    scalars: list[str]
    param_stats: list[str]
    matrices: list[str] = field(default_factory=list)
    matrix_stats: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    sketch: dict | None = None  # {"rows": r, "width": w, "dtype": "float16", ...} or None
    eigen_dtype: str = "float32"
    # eigenvalues of WᵀW stored per weight matrix (weight spectra's ESD, for the per-layer ESD plot);
    # 0: none. Layouts from before it read as 0.
    weight_rank: int = 0
    # evaluation sets (e.g. each stage's probe set) and the statistics stored per set as set_<stat> over
    # (capture_step, loss_set): forgetting is the loss on earlier stages' sets
    loss_sets: list[str] = field(default_factory=list)
    set_stats: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict) -> Layout:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def validate(self) -> None:
        """Raise StoreError on names that would clash or would not round-trip as variables."""
        for kind in ("probes", "params", "matrices", "loss_sets"):
            names = getattr(self, kind)
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                raise StoreError(f"duplicate {kind} names {dup}; give each a unique name")
            for n in names:
                if not isinstance(n, str) or not n:
                    raise StoreError(f"{kind} names must be non-empty strings, got {n!r}")
        variables = self.variable_names()
        seen: set[str] = set()
        for v in variables:
            if not _NAME.match(v):
                raise StoreError(f"variable name {v!r} is not a valid identifier; use letters, digits, _ . -")
            if v in seen:
                raise StoreError(f"variable {v!r} is defined twice (scalars, metrics, flags and stats must not clash)")
            seen.add(v)
        clash = [v for v in self.scalars + self.metrics if v in RESERVED]
        if clash:
            raise StoreError(f"names {clash} are reserved by the run schema; rename them")
        if self.max_rank < 0:
            raise StoreError(f"max_rank must be >= 0, got {self.max_rank}")
        if self.weight_rank < 0:
            raise StoreError(f"weight_rank must be >= 0, got {self.weight_rank}")
        if self.weight_rank and not self.matrices:
            raise StoreError("weight_rank was given but matrices is empty; pass the weight matrices' names")
        if self.metrics and not self.probes:
            raise StoreError("metrics were given but probes is empty; pass the probe names")

    def variable_names(self) -> list[str]:
        return (
            list(self.scalars)
            + [f"param_{s}" for s in self.param_stats]
            + [f"flag_{f}" for f in self.flags]
            + list(self.metrics)
            + [f"matrix_{s}" for s in self.matrix_stats]
            + [f"set_{s}" for s in self.set_stats]
        )

    def arrays(self) -> list[ArraySpec]:
        """Every array of the run, coordinates first."""
        P, Q, M, R = len(self.probes), len(self.params), len(self.matrices), self.max_rank
        sr = _row_chunk(1)
        out = [
            ArraySpec(STEP, (STEP,), "int64", STEP_FILL, (sr,), STEP),
            ArraySpec(CAPTURE, (CAPTURE,), "int64", STEP_FILL, (_row_chunk(1, 256),), CAPTURE),
            ArraySpec(PROBE, (PROBE,), "str", "", (max(P, 1),), None),
            ArraySpec(PARAM, (PARAM,), "str", "", (max(Q, 1),), None),
            ArraySpec(MATRIX, (MATRIX,), "str", "", (max(M, 1),), None),
            ArraySpec(RANK, (RANK,), "int32", 0, (max(R, 1),), None),
        ]
        out += [ArraySpec(s, (STEP,), "float64", math.nan, (sr,), STEP) for s in self.scalars]
        out += [ArraySpec(f"flag_{f}", (STEP,), "uint8", 0, (sr,), STEP) for f in self.flags]
        if Q:
            out += [
                ArraySpec(f"param_{s}", (STEP, PARAM), "float32", math.nan, (_row_chunk(Q), Q), STEP)
                for s in self.param_stats
            ]
        if P:
            cr = _row_chunk(P, 256)
            out += [ArraySpec(m, (CAPTURE, PROBE), "float64", math.nan, (cr, P), CAPTURE) for m in self.metrics]
            out.append(ArraySpec("n_samples", (CAPTURE, PROBE), "int64", 0, (cr, P), CAPTURE))
            if R:
                er = _row_chunk(P * R, 256, lo=0, elements=EIGEN_CHUNK_ELEMENTS)
                out.append(
                    ArraySpec(
                        "eigenvalues", (CAPTURE, PROBE, RANK), self.eigen_dtype, math.nan, (er, P, R), CAPTURE, False
                    )
                )
            if self.sketch:
                r, w = int(self.sketch["rows"]), int(self.sketch["width"])
                out.append(
                    ArraySpec(
                        "sketch",
                        (CAPTURE, PROBE, SKETCH_ROW, SKETCH_COL),
                        self.sketch.get("dtype", "float16"),
                        math.nan,
                        (1, P, r, w),
                        CAPTURE,
                        False,
                    )
                )
        if M:
            cr = _row_chunk(M, 256)
            out += [
                ArraySpec(f"matrix_{s}", (CAPTURE, MATRIX), "float32", math.nan, (cr, M), CAPTURE)
                for s in self.matrix_stats
            ]
            if W := self.weight_rank:
                out.insert(6, ArraySpec(WEIGHT_RANK, (WEIGHT_RANK,), "int32", 0, (W,), None))
                # one capture per chunk: weight spectra run on a sparse schedule, most rows stay NaN
                out.append(
                    ArraySpec(
                        "weight_eigenvalues", (CAPTURE, MATRIX, WEIGHT_RANK), "float32", math.nan, (1, M, W), CAPTURE
                    )
                )
        if S := len(self.loss_sets):
            out.insert(6, ArraySpec(LOSS_SET, (LOSS_SET,), "str", "", (S,), None))
            cr = _row_chunk(S, 256)
            out += [
                ArraySpec(f"set_{s}", (CAPTURE, LOSS_SET), "float64", math.nan, (cr, S), CAPTURE)
                for s in self.set_stats
            ]
        return out


def _row_chunk(width: int, cap: int = 4096, lo: int = 4, elements: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk: a power of two with about ``elements`` elements, between 2**lo and ``cap``."""
    rows = elements // max(width, 1)
    rows = 1 << max(lo, int(math.log2(max(rows, 1))))
    return int(min(rows, cap))


def check_json(attrs: dict, what: str = "attrs") -> dict:
    """Return ``attrs`` after checking it survives JSON; numpy scalars/arrays are converted."""

    def conv(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (set, tuple)):
            return list(o)
        raise TypeError(type(o).__name__)

    try:
        return json.loads(json.dumps(attrs, default=conv, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} must be JSON-serialisable ({e}); pass strings, numbers, lists or dicts") from None
