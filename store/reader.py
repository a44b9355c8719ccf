"""open_run: a run's committed rows as an xarray Dataset (lazy, dask-backed by default).

The reader reads the root commit attribute first, then slices every array to the committed number
of rows (never to its shape: the writer may have grown capacity meanwhile). Every committed chunk is
checked to exist, and any chunk that fails to decode (bad checksum, truncation) raises
CorruptRunError naming the array and the steps it holds, instead of returning fill values.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from typing import Any

import numpy as np

from . import _io, zarr_compat
from ._chunks import LocalArray
from .errors import CorruptRunError, NotARunError, SchemaVersionError
from .schema import CAPTURE, COMMIT_ATTR, LAYOUT_ATTR, LOSS_SET, SCHEMA_VERSION, STEP, WEIGHT_RANK, ArraySpec, Layout


def read_meta(path: Any) -> dict:
    """The root attributes of a run, validated (NotARunError / SchemaVersionError otherwise)."""
    name = _io.display(path)
    lp = _io.local_path(path)
    if lp is not None:
        if lp.exists() and not lp.is_dir():
            raise NotARunError(f"{lp} is a file, not a run directory; pass the run's .zarr directory")
        if not lp.exists():
            raise NotARunError(f"no run at {lp}: the path does not exist; check it (list_runs(root) shows runs)")
    root = _io.read_root_json(path)
    if root is None:
        raise NotARunError(f"{name} is not a phasescope run (no zarr.json); pass a run directory")
    attrs = root.get("attributes", {})
    if "phasescope_schema" not in attrs:
        raise NotARunError(f"{name} is a Zarr node but not a phasescope run (no phasescope_schema attribute)")
    if attrs["phasescope_schema"] != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"run {name} uses store schema {attrs['phasescope_schema']}, this phasescope reads schema "
            f"{SCHEMA_VERSION}; open it with a matching phasescope version"
        )
    return attrs


class _Checked:
    """Array-like over the first ``rows`` rows of a stored array; decode failures become
    CorruptRunError naming the array and the steps of the damaged chunk."""

    def __init__(self, arr, name: str, run: str, row_steps: np.ndarray | None, rows: int | None = None):
        self.arr, self.name, self.run, self.row_steps = arr, name, run, row_steps
        rows = arr.shape[0] if rows is None else rows
        self.shape, self.dtype, self.ndim = (rows, *arr.shape[1:]), np.dtype(arr.dtype), arr.ndim

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        k0 = key[0]
        if isinstance(k0, slice):  # never past the committed rows
            k0 = slice(*k0.indices(self.shape[0]))
        try:
            return self.arr[(k0, *key[1:])]
        except Exception as e:
            raise self._locate(k0, e) from e

    def _locate(self, k0, err: Exception) -> CorruptRunError:
        """Re-read chunk by chunk to name the first damaged chunk's steps."""
        bad, cause = k0, err
        if isinstance(k0, slice):
            cr = self.arr.chunks[0]
            a, b, _ = k0.indices(self.shape[0])
            for r0 in range((a // cr) * cr, b, cr):
                sl = slice(max(a, r0), min(b, r0 + cr))
                try:
                    self.arr[sl]
                except Exception as e:  # noqa: BLE001
                    bad, cause = sl, e
                    break
        return CorruptRunError(
            f"array {self.name!r} of run {self.run} is damaged at {_rows_text(self.row_steps, bad)}: "
            f"{type(cause).__name__}: {cause}; restore the chunk or re-run those steps"
        )


def _rows_text(row_steps: np.ndarray | None, k0) -> str:
    if isinstance(k0, slice) and row_steps is not None and len(row_steps):
        a, b, _ = k0.indices(len(row_steps))
        if b > a:
            return f"steps {int(row_steps[a])}..{int(row_steps[b - 1])} (rows {a}..{b - 1})"
    return f"rows {k0}"


def open_run(path: Any, *, lazy: bool = True, verify: bool = True):
    """Open a run's committed rows as an ``xarray.Dataset``.

    ``lazy=True`` returns dask-backed variables (only coordinates are read until computed);
    ``lazy=False`` reads everything into numpy. ``verify=True`` checks every committed chunk exists
    (a deleted chunk would otherwise read back as fill values). Local runs are read straight from
    their chunk files (see ``_chunks.LocalArray``); remote ones through zarr.
    """
    import xarray as xr

    name = _io.display(path)
    attrs = read_meta(path)  # commit first: everything it counts was written before it
    commit = attrs[COMMIT_ATTR]
    n = {STEP: int(commit["n_steps"]), CAPTURE: int(commit["n_captures"])}
    layout = Layout.from_json(attrs[LAYOUT_ATTR])
    specs = [s for s in layout.arrays() if s.rows is not None]
    lp = _io.local_path(path)
    if lp is not None:
        arrays, keys = _open_local(lp, specs, name), None
    else:
        arrays, keys = _open_zarr(path, specs, name)
    if verify:
        _verify_chunks(lp, keys, arrays, specs, n, name)

    data_specs = [s for s in specs if s.name not in (STEP, CAPTURE)]
    if lp is None and not lazy:
        got = zarr_compat.sync(
            _read_all(
                {k: zarr_compat.async_array(a.arr) for k, a in arrays.items()},
                {s.name: n[s.row_dim] for s in specs},
                name,
            )
        )
    else:
        got = {d: _Checked(arrays[d], d, name, None, n[d])[: n[d]] for d in (STEP, CAPTURE)}
    row_steps = {STEP: np.asarray(got[STEP]), CAPTURE: np.asarray(got[CAPTURE])}
    coords: dict[str, Any] = {STEP: (STEP, row_steps[STEP]), CAPTURE: (CAPTURE, row_steps[CAPTURE])}
    coords["probe"] = ("probe", np.array(layout.probes, dtype=str))
    coords["param"] = ("param", np.array(layout.params, dtype=str))
    coords["matrix"] = ("matrix", np.array(layout.matrices, dtype=str))
    coords["rank"] = ("rank", np.arange(1, layout.max_rank + 1, dtype=np.int32))
    if layout.loss_sets:
        coords[LOSS_SET] = (LOSS_SET, np.array(layout.loss_sets, dtype=str))
    if layout.weight_rank:
        coords[WEIGHT_RANK] = (WEIGHT_RANK, np.arange(1, layout.weight_rank + 1, dtype=np.int32))

    data_vars = {}
    for s in data_specs:
        arr = arrays[s.name]
        rows = n[s.row_dim]
        checked = _Checked(arr, s.name, name, row_steps[s.row_dim], rows)
        if rows == 0:
            data = np.empty(checked.shape, dtype=checked.dtype)
        elif lazy:
            import dask.array as da

            d = da.from_array(
                checked,
                chunks=arr.chunks,
                lock=False,
                asarray=True,
                fancy=False,
                name=f"phasescope-{s.name}-{uuid.uuid4().hex}",
                meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
            )
            data = d
        elif s.name in got:
            data = got[s.name]
        else:
            data = checked[:]
        data_vars[s.name] = (s.dims, data)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _open_local(root, specs: list[ArraySpec], run: str) -> dict:
    out = {}
    for s in specs:
        try:
            with open(root / s.name / "zarr.json", "rb") as f:
                out[s.name] = LocalArray(root, s.name, json.loads(f.read()))
        except (OSError, ValueError, KeyError) as e:
            raise CorruptRunError(
                f"array {s.name!r} of run {run} cannot be opened ({type(e).__name__}: {e}); "
                "its metadata is missing or damaged"
            ) from None
    return out


class _ZarrRows:
    """The sync zarr array behind a remote run's variable, with its chunk-key naming."""

    def __init__(self, async_array) -> None:
        self.arr = zarr_compat.sync_array(async_array)
        self.shape, self.chunks, self.ndim = self.arr.shape, self.arr.chunks, self.arr.ndim
        self.dtype = np.dtype(self.arr.dtype)
        self.name = self.arr.path

    def key(self, c: int) -> str:
        return zarr_compat.chunk_key(self.arr, (c,) + (0,) * (self.ndim - 1))

    def __getitem__(self, key):
        return self.arr[key]


def _open_zarr(path: Any, specs: list[ArraySpec], run: str):
    store = _io.make_store(path, read_only=True)
    raw = zarr_compat.sync(_open_arrays(store, [s.name for s in specs], run))
    return {k: _ZarrRows(v) for k, v in raw.items()}, store


async def _open_arrays(store, names: list[str], run: str) -> dict:
    import asyncio

    import zarr.api.asynchronous as za

    async def one(nm: str):
        try:
            return await za.open_array(store=store, path=nm, mode="r", zarr_format=3)
        except Exception as e:  # noqa: BLE001
            raise CorruptRunError(
                f"array {nm!r} of run {run} cannot be opened ({type(e).__name__}: {e}); "
                "its metadata is missing or damaged"
            ) from None

    return dict(zip(names, await asyncio.gather(*(one(nm) for nm in names))))


async def _read_all(arrays: dict, want: dict[str, int | None], run: str) -> dict[str, np.ndarray]:
    import asyncio

    async def one(nm: str, rows: int | None):
        a = arrays[nm]
        sel = slice(0, rows) if rows is not None else slice(None)
        if rows == 0 or 0 in a.shape:
            return np.empty((rows or 0, *a.shape[1:]), dtype=a.dtype) if rows is not None else np.array([])
        try:
            return np.asarray(await a.getitem((sel,) + (slice(None),) * (a.ndim - 1)))
        except Exception as e:
            dim = "capture_step" if (zarr_compat.dimension_names(a) or (None,))[0] == CAPTURE else STEP
            raise CorruptRunError(
                f"array {nm!r} of run {run} is damaged within its first {rows} rows of {dim}: {type(e).__name__}: {e}"
            ) from e

    names = list(want)
    vals = await asyncio.gather(*(one(nm, want[nm]) for nm in names), return_exceptions=True)
    out = dict(zip(names, vals))
    errors = [v for v in vals if isinstance(v, BaseException)]
    if errors:
        # Say which steps: re-read the damaged array chunk by chunk through the checking wrapper.
        for nm, v in out.items():
            if isinstance(v, CorruptRunError) and nm not in (STEP, CAPTURE) and isinstance(out.get(STEP), np.ndarray):
                spec_dim = (zarr_compat.dimension_names(arrays[nm]) or (None,))[0]
                rs = out[STEP] if spec_dim == STEP else out.get(CAPTURE)
                if isinstance(rs, np.ndarray):
                    _locate(zarr_compat.sync_array(arrays[nm]), nm, run, rs)
        raise errors[0]
    return {k: v for k, v in out.items() if isinstance(v, np.ndarray)}  # all of them, errors raised above


def _locate(arr, nm: str, run: str, row_steps: np.ndarray) -> None:
    """Read ``arr`` chunk by chunk so the CorruptRunError names the damaged steps."""
    checked = _Checked(arr, nm, run, row_steps)
    cr = arr.chunks[0]
    for r0 in range(0, len(row_steps), cr):
        checked[slice(r0, min(r0 + cr, len(row_steps)))]


def _verify_chunks(root, store, arrays: dict, specs: list[ArraySpec], n: dict[str, int], name: str) -> None:
    for s in specs:
        rows = n[s.row_dim]
        arr = arrays[s.name]
        if rows == 0 or 0 in arr.shape:
            continue
        if root is not None:
            try:
                present = set(os.listdir(root / s.name))
            except OSError:
                present = set()
        else:
            present = _io.list_keys(store, s.name)
        for c in range(math.ceil(rows / arr.chunks[0])):
            key = arr.key(c)
            if key not in present:
                r0 = c * arr.chunks[0]
                r1 = min(rows, r0 + arr.chunks[0]) - 1
                raise CorruptRunError(
                    f"array {s.name!r} of run {name} is missing chunk {key!r} holding "
                    f"{_step_range(arrays, s.row_dim, r0, r1)}; the file was deleted: restore it or re-run those steps"
                )


def _step_range(arrays: dict, dim: str, r0: int, r1: int) -> str:
    try:
        v = arrays[dim][r0 : r1 + 1]
        return f"{dim}s {int(v[0])}..{int(v[-1])} (rows {r0}..{r1})"
    except Exception:  # noqa: BLE001 - the coordinate itself may be the damaged array
        return f"rows {r0}..{r1}"
