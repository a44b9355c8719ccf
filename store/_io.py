"""Turning a user's path or URL into a zarr store, and small storage helpers.

Plain paths and ``file://`` URLs use zarr's LocalStore, which writes every key to a temporary file
and renames it into place (atomic on POSIX), so a killed writer never leaves a half-written chunk.
Other URLs (``memory://``, ``s3://``, ``gs://`` ...) go through fsspec via zarr's FsspecStore; object
stores replace whole keys atomically too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import zarr_compat
from .errors import NotARunError, StoreError


def is_url(path: Any) -> bool:
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def local_path(path: Any) -> Path | None:
    """The local filesystem path, or None for remote URLs and store objects."""
    if isinstance(path, os.PathLike):
        return Path(path)
    if isinstance(path, str):
        if path.startswith("file://"):
            return Path(path[len("file://") :])
        if "://" not in path:
            return Path(path)
    return None


def display(path: Any) -> str:
    lp = local_path(path)
    return str(lp) if lp is not None else str(path)


def make_store(path: Any, *, read_only: bool):
    """A zarr Store for ``path`` (a path, a URL, or a zarr Store passed through).

    Every zarr use of the store starts here, so this is where an unsupported zarr is refused.
    """
    import zarr.storage
    from zarr.abc.store import Store

    zarr_compat.check_installed()
    if isinstance(path, Store):
        return path
    lp = local_path(path)
    if lp is not None:
        _check_local(lp, read_only)
        return zarr.storage.LocalStore(lp, read_only=read_only)
    if isinstance(path, str):
        try:
            return zarr.storage.FsspecStore.from_url(path, read_only=read_only)
        except (ImportError, ValueError) as e:
            raise StoreError(f"cannot open store URL {path!r}: {e}; install the fsspec backend for it") from None
    raise StoreError(f"cannot use {path!r} as a run location; pass a path, a URL or a zarr Store")


def _check_local(p: Path, read_only: bool) -> None:
    for parent in [p, *p.parents]:
        if parent.exists():
            if not parent.is_dir():
                what = "the run path" if parent == p else f"its parent {parent}"
                raise NotARunError(f"{p} cannot be a run: {what} is a file, not a directory; choose another path")
            break
    if read_only and not p.exists():
        raise NotARunError(f"no run at {p}: the directory does not exist; check the path")


def read_root_json(path: Any) -> dict | None:
    """The root ``zarr.json`` of a run as a dict, cheaply (no zarr import for local paths)."""
    lp = local_path(path)
    if lp is not None:
        try:
            with open(lp / "zarr.json", "rb") as f:
                return json.loads(f.read())
        except (FileNotFoundError, NotADirectoryError):
            return None
    blob = zarr_compat.get_bytes(make_store(path, read_only=True), "zarr.json")
    return None if blob is None else json.loads(blob)


def list_keys(store, prefix: str) -> set[str]:
    """Keys directly under ``prefix`` (a directory-like listing)."""
    from zarr.storage import LocalStore

    if isinstance(store, LocalStore):
        try:
            return set(os.listdir(Path(store.root) / prefix))
        except FileNotFoundError:
            return set()
    return zarr_compat.list_dir(store, prefix)
