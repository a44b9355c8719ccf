"""RunWriter: append training steps and spectral captures to a crash-safe Zarr v3 run.

Protocol (see docs/schema.md): arrays are preallocated along ``step`` / ``capture_step``; an append
writes the rows' data first and then rewrites the root attribute ``phasescope_commit``
(``n_steps``, ``n_captures``) last. Readers trim to the committed counts, so a reader polling the run,
or a process killed at any instant, never sees a half-written step. Capacity grows by doubling;
growing only rewrites array metadata to a larger shape, which readers tolerate because they slice
each array to the committed count, never to its shape.

Resume policy: with ``resume=True`` a step (or capture) at or before the last one committed before
the resume is skipped with one warning and the stored values are kept (a training script restarted
from an older checkpoint replays steps the store already has). Any other out-of-order append raises
StepOrderError.
"""

from __future__ import annotations

import datetime as _dt
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phasescope import __version__

from . import _io, zarr_compat
from ._chunks import CODECS, Encoder, RowChunks, codec_names, make_putter
from .errors import (
    LayoutMismatchError,
    NotARunError,
    RunExistsError,
    SchemaVersionError,
    StepOrderError,
    StoreError,
)
from .lifecycle import CLOSE_STATUSES, FINISHED, RUNNING, error_for, status_for
from .rows import CaptureRow, StepRow, capture_blocks, prepare_capture, prepare_step, step_blocks
from .schema import (
    CAPTURE,
    COMMIT_ATTR,
    INITIAL_CAPTURE_CAPACITY,
    INITIAL_STEP_CAPACITY,
    LAYOUT_ATTR,
    LOSS_SET,
    SCHEMA_VERSION,
    STEP,
    STEP_FILL,
    WEIGHT_RANK,
    ArraySpec,
    Layout,
    check_json,
)

_PROTECTED = {"phasescope_schema", "phasescope_version", COMMIT_ATTR, LAYOUT_ATTR, "created", "host"}


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat(timespec="seconds")


class RunWriter:
    """Append-only writer of one run (a Zarr v3 group). Single writer per run.

    Parameters follow docs/CONTRACTS.md. ``sketch`` (off by default) reserves a per-capture array
    ``sketch`` of shape (probe, rows, width) for compact activation sketches (see store.sketch);
    ``eigen_dtype`` is the on-disk dtype of eigenvalues (float32 halves the size of float64 and keeps
    ~7 significant digits per eigenvalue). ``capacity`` is the initial number of preallocated
    (steps, captures) rows; it doubles whenever full.
    """

    def __init__(
        self,
        path: Any,
        *,
        probes: Sequence[str],
        params: Sequence[str],
        metrics: Sequence[str],
        max_rank: int,
        scalars: Sequence[str] = ("loss", "lr", "grad_norm"),
        param_stats: Sequence[str] = ("grad_norm",),
        matrices: Sequence[str] = (),
        matrix_stats: Sequence[str] = (),
        flags: Sequence[str] = ("nonfinite", "skipped", "dropped"),
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        resume: bool = False,
        sketch: Mapping[str, Any] | None = None,
        eigen_dtype: str = "float32",
        capacity: tuple[int, int] = (INITIAL_STEP_CAPACITY, INITIAL_CAPTURE_CAPACITY),
        weight_rank: int = 0,
        loss_sets: Sequence[str] = (),
        set_stats: Sequence[str] = (),
    ) -> None:
        if overwrite and resume:
            raise StoreError("overwrite=True and resume=True contradict each other; pass only one")
        self.layout = Layout(
            probes=list(probes),
            params=list(params),
            metrics=list(metrics),
            max_rank=int(max_rank),
            scalars=list(scalars),
            param_stats=list(param_stats),
            matrices=list(matrices),
            matrix_stats=list(matrix_stats),
            flags=list(flags),
            sketch=dict(sketch) if sketch else None,
            eigen_dtype=str(np.dtype(eigen_dtype)),
            weight_rank=int(weight_rank),
            loss_sets=list(loss_sets),
            set_stats=list(set_stats) if loss_sets else [],
        )
        self.layout.validate()
        user_attrs = check_json(dict(attrs or {}))
        self.path = path
        self._name = _io.display(path)
        self._closed = False
        self._skipped_on_resume = {STEP: 0, CAPTURE: 0}
        self._warned = False
        self._resume_last: dict[str, int | None] = {STEP: None, CAPTURE: None}
        self._pending_dropped = 0
        if min(capacity) < 1:
            raise StoreError(f"capacity must be two positive row counts (steps, captures), got {capacity}")
        self._initial_capacity = {STEP: int(capacity[0]), CAPTURE: int(capacity[1])}
        self.store = _io.make_store(path, read_only=False)
        existing = self._existing_root()
        try:
            if existing is not None and resume:
                self._open_existing(existing, user_attrs)
            else:
                if existing is not None and not overwrite:
                    raise RunExistsError(
                        f"a run already exists at {self._name}; pass overwrite=True to replace it "
                        "or resume=True to continue it"
                    )
                self._create(user_attrs)
        except PermissionError as e:
            raise StoreError(
                f"cannot write a run at {self._name}: {e.strerror or e}; choose a writable location"
            ) from None
        except OSError as e:
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"cannot write a run at {self._name}: {e}; choose a writable location") from None

    # ------------------------------------------------------------------ opening / creating
    def _existing_root(self) -> dict | None:
        lp = _io.local_path(self.path)
        root = _io.read_root_json(self.path) if lp is None or lp.exists() else None
        if root is None:
            if lp is not None and lp.exists() and any(lp.iterdir()):
                raise NotARunError(
                    f"{lp} exists and is not a phasescope run (no zarr.json); refusing to write into it, "
                    "choose an empty or new path"
                )
            return None
        if not root.get("attributes") and root.get("node_type") == "group":
            # A run whose creation was interrupted: nothing was ever committed.
            return None
        if "phasescope_schema" not in root.get("attributes", {}):
            raise NotARunError(
                f"{self._name} holds a Zarr node that is not a phasescope run; refusing to touch it, "
                "choose another path"
            )
        return root

    def _create(self, user_attrs: dict) -> None:
        import zarr

        t = _now()
        attrs = dict(user_attrs)
        attrs.update(
            phasescope_schema=SCHEMA_VERSION,
            phasescope_version=__version__,
            created=_iso(t),
            host=socket.gethostname(),
            finished=False,
        )
        attrs.setdefault("status", RUNNING)
        attrs[LAYOUT_ATTR] = self.layout.to_json()
        attrs[COMMIT_ATTR] = self._commit_dict(0, 0, None, None, t)
        # Write the group (and its attrs) only after every array exists, so a run whose
        # creation was interrupted is a non-run (no phasescope attrs), never a broken run.
        self.group = zarr.open_group(self.store, mode="w", zarr_format=3, attributes={})
        self.arrays: dict[str, Any] = {}
        caps = dict(self._initial_capacity)
        for spec in self.layout.arrays():
            self.arrays[spec.name] = self._create_array(spec, caps)
        L = self.layout
        self.arrays["probe"][:] = np.array(L.probes, dtype=str) if L.probes else np.array([], dtype=str)
        if L.params:
            self.arrays["param"][:] = np.array(L.params, dtype=str)
        if L.matrices:
            self.arrays["matrix"][:] = np.array(L.matrices, dtype=str)
        if L.max_rank:
            self.arrays["rank"][:] = np.arange(1, L.max_rank + 1, dtype=np.int32)
        if L.weight_rank:
            self.arrays[WEIGHT_RANK][:] = np.arange(1, L.weight_rank + 1, dtype=np.int32)
        if L.loss_sets:
            self.arrays[LOSS_SET][:] = np.array(L.loss_sets, dtype=str)
        self.attrs: dict[str, Any] = {}
        self._setup_fast_path()
        self._update_attrs(attrs)
        self.capacity = caps
        self.n = {STEP: 0, CAPTURE: 0}
        self.last: dict[str, int | None] = {STEP: None, CAPTURE: None}

    def _create_array(self, spec: ArraySpec, caps: dict[str, int]):
        from zarr.codecs import Crc32cCodec, ZstdCodec

        shape = tuple(self._dim_size(d, caps) for d in spec.dims)
        kw: dict[str, Any] = {}
        if spec.dtype != "str":
            kw["compressors"] = ([ZstdCodec(level=1)] if spec.compress else []) + [Crc32cCodec()]
        return self.group.create_array(
            spec.name,
            shape=shape,
            chunks=spec.chunks,
            dtype=spec.dtype,
            fill_value=spec.fill,
            dimension_names=list(spec.dims),
            chunk_key_encoding={"name": "default", "separator": "."},
            config={"write_empty_chunks": True},
            **kw,
        )

    def _setup_fast_path(self) -> None:
        self._enc = Encoder()
        self._put = make_putter(self.store)
        self._rows: dict[str, RowChunks] = {}
        for s in self.layout.arrays():
            if s.rows is None:
                continue
            a = self.arrays[s.name]
            if codec_names(a) not in CODECS:
                raise SchemaVersionError(
                    f"array {s.name!r} of {self._name} uses codecs {codec_names(a)}, "
                    f"expected one of {CODECS}; it was not written by this schema"
                )
            self._rows[s.name] = RowChunks(a, s.fill)

    def _dim_size(self, dim: str, caps: dict[str, int]) -> int:
        L = self.layout
        sizes = {
            STEP: caps[STEP],
            CAPTURE: caps[CAPTURE],
            "probe": len(L.probes),
            "param": len(L.params),
            "matrix": len(L.matrices),
            "rank": L.max_rank,
            WEIGHT_RANK: L.weight_rank,
            LOSS_SET: len(L.loss_sets),
        }
        if dim in sizes:
            return sizes[dim]
        if L.sketch is None:
            raise StoreError(f"dim {dim!r} belongs to a sketch, and this run's layout has none")
        return int(L.sketch["rows"] if dim == "sketch_row" else L.sketch["width"])

    def _open_existing(self, root: dict, user_attrs: dict) -> None:
        import zarr

        attrs = root.get("attributes", {})
        ver = attrs.get("phasescope_schema")
        if ver != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"run {self._name} uses store schema {ver}, this phasescope writes schema {SCHEMA_VERSION}; "
                "resume it with the phasescope version that created it, or start a new run"
            )
        stored = Layout.from_json(attrs.get(LAYOUT_ATTR, {}))
        mine = self.layout.to_json()
        diff = [k for k, v in stored.to_json().items() if v != mine.get(k)]
        if diff:
            raise LayoutMismatchError(
                f"cannot resume {self._name}: {', '.join(diff)} differ from the stored run "
                f"(stored {[stored.to_json()[k] for k in diff]}); pass the same names, or start a new run"
            )
        self.group = zarr.open_group(self.store, mode="r+", zarr_format=3)
        self.arrays = {}
        for spec in self.layout.arrays():
            try:
                self.arrays[spec.name] = zarr.open_array(
                    self.store, path=spec.name, mode="r+", zarr_format=3
                ).with_config({"write_empty_chunks": True})
            except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError) as e:
                raise NotARunError(
                    f"run {self._name} lacks its array {spec.name!r} ({e}); it cannot be resumed"
                ) from None
        commit = attrs[COMMIT_ATTR]
        self.n = {STEP: int(commit["n_steps"]), CAPTURE: int(commit["n_captures"])}
        self.last = {STEP: commit.get("last_step"), CAPTURE: commit.get("last_capture_step")}
        self._resume_last = dict(self.last)
        # A crash may have happened mid-grow: make every array as long as the longest one.
        self.capacity = {}
        for dim in (STEP, CAPTURE):
            specs = [s for s in self.layout.arrays() if s.rows == dim]
            cap = max(self.arrays[s.name].shape[0] for s in specs)
            for s in specs:
                a = self.arrays[s.name]
                if a.shape[0] != cap:
                    a.resize((cap, *a.shape[1:]))
            self.capacity[dim] = cap
            # Rows written after the last commit belong to no step: blank their coordinate.
            coord = self.arrays[dim]
            n = self.n[dim]
            if n < cap:
                tail = coord[n:]
                if (tail != STEP_FILL).any():
                    coord[n:] = np.full(cap - n, STEP_FILL, dtype=np.int64)
        lp = _io.local_path(self.path)
        if lp is not None:
            for p in lp.rglob("*.partial"):
                p.unlink(missing_ok=True)
        self.attrs = dict(attrs)
        self._setup_fast_path()
        resumed = list(self.attrs.get("resumed", []))
        resumed.append({"time": _iso(_now()), "n_steps": self.n[STEP], "last_step": self.last[STEP]})
        new = dict(user_attrs)
        new.update(resumed=resumed, finished=False, status=RUNNING)
        if "error" not in new:  # the error of the close before this resume no longer describes the run
            self.attrs.pop("error", None)
            zarr_compat.drop_group_attrs(self.group, ["error"])
        self._update_attrs(new)

    # ------------------------------------------------------------------ validation
    def prepare_step(
        self,
        step: int,
        scalars: Mapping[str, float],
        params: Mapping[str, Any] | None = None,
        flags: Mapping[str, int] | None = None,
    ) -> StepRow:
        """Validate one step's values and return the row (no I/O)."""
        return prepare_step(self.layout, step, scalars, params, flags)

    def prepare_capture(
        self,
        step: int,
        metrics: Mapping[str, Any],
        eigenvalues: Any,
        n_samples: Any,
        matrices: Mapping[str, Any] | None = None,
        sketch: Any = None,
        weight_eigenvalues: Any = None,
        sets: Mapping[str, Any] | None = None,
    ) -> CaptureRow:
        """Validate one capture's values and return the row (no I/O)."""
        return prepare_capture(
            self.layout, step, metrics, eigenvalues, n_samples, matrices, sketch, weight_eigenvalues, sets
        )

    def accept(self, dim: str, step: int, last_seen: int | None) -> bool:
        """True to write ``step``; False to skip it (resume replay); raise if out of order."""
        rl = self._resume_last[dim]
        if rl is not None and step <= rl:
            self._skipped_on_resume[dim] += 1
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"run {self._name} was resumed with {dim}s up to {rl}; {dim} {step} and any other "
                    f"{dim} <= {rl} are skipped and the stored values kept",
                    stacklevel=3,
                )
            return False
        if last_seen is not None and step <= last_seen:
            raise StepOrderError(
                f"{dim} {step} is not after the last appended {dim} {last_seen} in {self._name}; "
                "steps must strictly increase (use resume=True to continue a run after a restart)"
            )
        return True

    # ------------------------------------------------------------------ public appends
    def append_step(
        self,
        step: int,
        scalars: Mapping[str, float],
        params: Mapping[str, Any] | None = None,
        flags: Mapping[str, int] | None = None,
    ) -> None:
        """Write one training step (scalars, per-param stats, flags) and commit it."""
        self._check_open()
        row = self.prepare_step(step, scalars, params, flags)
        if self.accept(STEP, row.step, self.last[STEP]):
            self.write_rows([row], [])

    def append_capture(
        self,
        step: int,
        metrics: Mapping[str, Any],
        eigenvalues: Any,
        n_samples: Any,
        matrices: Mapping[str, Any] | None = None,
        sketch: Any = None,
        weight_eigenvalues: Any = None,
        sets: Mapping[str, Any] | None = None,
    ) -> None:
        """Write one spectral capture (metrics and eigenvalues per probe, the weight matrices'
        statistics and eigenvalues, the evaluation sets' statistics) and commit it."""
        self._check_open()
        row = self.prepare_capture(step, metrics, eigenvalues, n_samples, matrices, sketch, weight_eigenvalues, sets)
        if self.accept(CAPTURE, row.step, self.last[CAPTURE]):
            self.write_rows([], [row])

    def add_dropped(self, n: int) -> None:
        """Count ``n`` dropped captures; added to ``flag_dropped`` of the next step written."""
        self._pending_dropped += int(n)

    # ------------------------------------------------------------------ I/O
    def write_rows(self, steps: Sequence[StepRow], captures: Sequence[CaptureRow]) -> None:
        """Write validated rows (each list in increasing step order) and commit them all at once."""
        if steps:
            self._write_steps(steps)
        if captures:
            self._write_captures(captures)
        if steps or captures:
            self._commit()

    def _ensure_capacity(self, dim: str, needed: int) -> None:
        cap = self.capacity[dim]
        if needed <= cap:
            return
        cap = max(cap, self._initial_capacity[dim])  # a trimmed run (closed, resumed) may hold 0 rows
        while cap < needed:
            cap *= 2
        for s in self.layout.arrays():
            if s.rows == dim:
                a = self.arrays[s.name]
                a.resize((cap, *a.shape[1:]))
        self.capacity[dim] = cap

    def _write_steps(self, rows: Sequence[StepRow]) -> None:
        dropped = self._pending_dropped if "dropped" in self.layout.flags else 0
        self._write_blocks(STEP, step_blocks(self.layout, rows, dropped), rows[-1].step)
        self._pending_dropped -= dropped

    def _write_captures(self, rows: Sequence[CaptureRow]) -> None:
        self._write_blocks(CAPTURE, capture_blocks(self.layout, rows), rows[-1].step)

    def _write_blocks(self, dim: str, blocks: list[tuple[str, np.ndarray]], last_step: int) -> None:
        """Write equal-length row blocks after the committed rows of ``dim`` (no commit)."""
        i0, k = self.n[dim], len(blocks[-1][1])
        self._ensure_capacity(dim, i0 + k)
        out: list[tuple[str, bytes]] = []
        for name, block in blocks:
            out.extend(self._rows[name].write(i0, block, self._enc))
        self._put(out)
        self.n[dim] = i0 + k
        self.last[dim] = last_step

    def _trim(self) -> None:
        """Shrink every row-dimensioned array to exactly its committed rows (on close), so plain
        ``xarray.open_zarr`` shows the run's steps and captures without padding. Chunks wholly past
        the commit are deleted; a resume grows the arrays again."""
        for s in self.layout.arrays():
            if s.rows is not None:
                a = self.arrays[s.name]
                if a.shape[0] != self.n[s.rows]:
                    a.resize((self.n[s.rows], *a.shape[1:]))
        self.capacity = dict(self.n)

    @staticmethod
    def _commit_dict(n_steps: int, n_caps: int, last_step, last_cap, t: float) -> dict:
        return {
            "n_steps": n_steps,
            "n_captures": n_caps,
            "last_step": last_step,
            "last_capture_step": last_cap,
            "updated": t,
        }

    def _commit(self) -> None:
        """Publish the rows written so far: the commit attribute is the last thing written."""
        self._update_attrs(
            {COMMIT_ATTR: self._commit_dict(self.n[STEP], self.n[CAPTURE], self.last[STEP], self.last[CAPTURE], _now())}
        )

    def _update_attrs(self, new: dict) -> None:
        """Rewrite the root zarr.json (one atomic key) with the updated attributes."""
        self.attrs.update(new)
        blob = zarr_compat.group_json(self.group, new)
        self._put([("zarr.json", blob)])

    # ------------------------------------------------------------------ attrs / lifetime
    def set_attrs(self, **kv: Any) -> None:
        """Set run metadata attributes (JSON-serialisable); schema keys are protected."""
        self._check_open()
        bad = sorted(set(kv) & _PROTECTED)
        if bad:
            raise StoreError(f"attributes {bad} are managed by the store; choose other names")
        self._update_attrs(check_json(kv))

    @property
    def n_steps(self) -> int:
        return self.n[STEP]

    @property
    def n_captures(self) -> int:
        return self.n[CAPTURE]

    @property
    def last_step(self) -> int | None:
        return self.last[STEP]

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the writer of {self._name} is closed; open a new RunWriter(resume=True)")

    def close(self, *, status: str = FINISHED, error: str | None = None) -> None:
        """Trim the arrays to the committed rows, then record ``status`` ("finished", "interrupted"
        or "failed", with ``error``) and commit; idempotent. A failed trim still records the status."""
        if self._closed:
            return
        if status not in CLOSE_STATUSES:
            raise StoreError(f"close(status={status!r}): the status must be one of {CLOSE_STATUSES}")
        self._closed = True
        try:
            self._trim()
        except Exception as e:  # noqa: BLE001 - untrimmed, the run still reads right (readers slice to the commit)
            warnings.warn(
                f"closing {self._name}: its arrays could not be trimmed to the committed rows "
                f"({type(e).__name__}: {e}); plain xarray shows padding rows",
                stacklevel=2,
            )
        new: dict[str, Any] = {"finished": status == FINISHED, "status": status}
        if error:
            new["error"] = error[:2000]
        if self._pending_dropped:
            new["n_dropped_unflagged"] = int(self.attrs.get("n_dropped_unflagged", 0)) + self._pending_dropped
        new[COMMIT_ATTR] = self._commit_dict(self.n[STEP], self.n[CAPTURE], self.last[STEP], self.last[CAPTURE], _now())
        self._update_attrs(new)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """KeyboardInterrupt closes the run "interrupted", another exception "failed" (see status_for)."""
        self.close(status=status_for(exc_type), error=error_for(exc))
