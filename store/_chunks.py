"""Fast appends: encode whole chunks in the writer and put them as single keys.

zarr's ``array[i] = v`` reads, decodes, re-encodes and writes the chunk through its async machinery
(~2 ms a call here). The writer is the only writer of a run, so it keeps the chunk it is filling in
memory and writes it whole, encoded exactly as the array's metadata declares:
``bytes(little endian) -> zstd -> crc32c`` (Zarr v3 spec; zarr reads these chunks back, and the
tests compare values through zarr and xarray). Each key is written to a temporary file and renamed
into place (LocalStore), or put whole (fsspec / object stores), so readers see old or new chunks.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import zarr_compat
from .zarr_compat import codec_names

ZSTD = ("bytes", "zstd", "crc32c")
RAW = ("bytes", "crc32c")
CODECS = (ZSTD, RAW)


class Encoder:
    """bytes -> [zstd(level 1)] -> crc32c, as declared by the writer's arrays."""

    def __init__(self, level: int = 1) -> None:
        from numcodecs import Zstd

        self._zstd = Zstd(level=level)

    def encode(self, a: np.ndarray, compress: bool = True) -> bytes:
        import google_crc32c

        raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        z = bytes(self._zstd.encode(raw)) if compress else raw
        return z + np.array([google_crc32c.value(z)], dtype="<u4").tobytes()


class RowChunks:
    """The chunk of one row-appended array that is being filled, kept in memory."""

    def __init__(self, arr, fill: Any) -> None:
        self.arr = arr
        self.chunks = tuple(arr.chunks)
        if tuple(arr.shape[1:]) != self.chunks[1:]:
            raise ValueError(f"{arr.path}: non-row dims must be one chunk")
        self.dtype = np.dtype(arr.dtype)
        self.fill = fill
        self.compress = codec_names(arr) == ZSTD
        self.prefix = f"{arr.path}/" if arr.path else ""
        self.idx: int | None = None
        self.buf: np.ndarray | None = None

    def write(self, i0: int, block: np.ndarray, encoder: Encoder) -> list[tuple[str, bytes]]:
        """Put rows ``i0 .. i0+len(block)``; return the encoded chunks to store."""
        cr = self.chunks[0]
        out = []
        i, k = 0, len(block)
        while i < k:
            row = i0 + i
            c = row // cr
            if c != self.idx:
                self._load(c, row)
            lo = row - c * cr
            n = min(cr - lo, k - i)
            self.buf[lo : lo + n] = block[i : i + n]
            i += n
            key = self.prefix + zarr_compat.chunk_key(self.arr, (c,) + (0,) * (len(self.chunks) - 1))
            out.append((key, encoder.encode(self.buf, self.compress)))
        return out

    def _load(self, c: int, first_row: int) -> None:
        cr = self.chunks[0]
        buf = np.full(self.chunks, self.fill, dtype=self.dtype)
        start = c * cr
        if first_row > start:  # the chunk already holds rows (a resumed run): read them once
            stop = min(first_row, self.arr.shape[0])
            buf[: stop - start] = self.arr[start:stop]
        self.idx, self.buf = c, buf


_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="phasescope-store-io")
    return _POOL


def make_putter(store) -> Callable[[list[tuple[str, bytes]]], None]:
    """A function writing ``[(key, bytes), ...]`` atomically per key to ``store``."""
    from zarr.storage import LocalStore

    if isinstance(store, LocalStore):
        root = Path(store.root)

        def put_one(item: tuple[str, bytes]) -> None:
            key, data = item
            path = root / key
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

        def put_local(items: list[tuple[str, bytes]]) -> None:
            # Small-file writes here are latency-bound (journal, rename), not CPU-bound:
            # issuing them from a few threads cut a 9-key step from ~9-18 ms to ~3.5-4 ms.
            if len(items) == 1:
                put_one(items[0])
            else:
                list(_pool().map(put_one, items))

        return put_local

    def put_remote(items: list[tuple[str, bytes]]) -> None:
        zarr_compat.set_many(store, items)

    return put_remote


class ChunkDecodeError(ValueError):
    """A stored chunk failed its checksum or could not be decompressed."""


def decode(data: bytes, dtype: np.dtype, chunks: tuple[int, ...], compressed: bool = True) -> np.ndarray:
    """Inverse of Encoder.encode: check crc32c, zstd-decompress, reinterpret as little-endian."""
    import google_crc32c
    from numcodecs import Zstd

    if len(data) < 5:
        raise ChunkDecodeError(f"chunk is {len(data)} bytes, too short to hold data and its checksum")
    body, crc = data[:-4], data[-4:]
    if np.frombuffer(crc, dtype="<u4")[0] != google_crc32c.value(body):
        raise ChunkDecodeError("stored and computed crc32c checksums differ (truncated or altered file)")
    raw = Zstd().decode(body) if compressed else body
    want = int(np.prod(chunks)) * dtype.itemsize
    if len(raw) != want:
        raise ChunkDecodeError(f"chunk decodes to {len(raw)} bytes, expected {want}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(chunks).astype(dtype, copy=False)


class LocalArray:
    """Read rows of one of the writer's arrays straight from a local directory (no zarr, no event loop).

    Used by open_run for local runs; only for arrays whose metadata declares the writer's codecs.
    """

    def __init__(self, root: Path, name: str, meta: dict) -> None:
        self.root, self.name = Path(root), name
        self.shape = tuple(meta["shape"])
        self.chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.dtype = np.dtype(meta["data_type"])
        self.ndim = len(self.shape)
        fill = meta.get("fill_value")
        self.fill = np.nan if fill in ("NaN", None) else fill
        enc = meta.get("chunk_key_encoding", {})
        self.sep = enc.get("configuration", {}).get("separator", "/")
        codecs = tuple(c["name"] for c in meta["codecs"])
        if codecs not in CODECS:
            raise ValueError(f"{name}: codecs {codecs} are not one of {CODECS}")
        self.compressed = codecs == ZSTD
        if self.shape[1:] != self.chunks[1:]:
            raise ValueError(f"{name}: non-row dims must be one chunk")

    def key(self, c: int) -> str:
        return "c" + self.sep + self.sep.join(str(i) for i in (c,) + (0,) * (self.ndim - 1))

    def chunk(self, c: int) -> np.ndarray:
        path = self.root / self.name / self.key(c)
        with open(path, "rb") as f:  # FileNotFoundError: a deleted chunk
            return decode(f.read(), self.dtype, self.chunks, self.compressed)

    def rows(self, r0: int, r1: int) -> np.ndarray:
        cr = self.chunks[0]
        if r1 <= r0:
            return np.empty((0, *self.chunks[1:]), dtype=self.dtype)
        idx = range(r0 // cr, (r1 - 1) // cr + 1)

        def part(c: int) -> np.ndarray:
            lo, hi = max(r0, c * cr) - c * cr, min(r1, (c + 1) * cr) - c * cr
            return self.chunk(c)[lo:hi]

        # Many chunks (e.g. one eigenvalue chunk per capture): read them from a few threads.
        parts = list(_pool().map(part, idx)) if len(idx) > 4 else [part(c) for c in idx]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        k0 = key[0]
        if not isinstance(k0, slice) or k0.step not in (None, 1):
            raise IndexError(f"{self.name}: only row slices are supported, got {key!r}")
        r0, r1, _ = k0.indices(self.shape[0])
        return self.rows(r0, r1)[(slice(None), *tuple(key[1:]))]
