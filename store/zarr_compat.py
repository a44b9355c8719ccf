"""The only module of phasescope that touches zarr internals; it supports zarr >=3.1.6,<3.2 (3.1.6 and later 3.1.x).

zarr-python 3 has no public API for a few things the store needs: running a coroutine on zarr's
event loop (``zarr.core.sync.sync``), buffers for raw ``Store.get``/``Store.set`` calls
(``zarr.core.buffer``), the async array behind a sync one (``Array._async_array``), an array's
chunk-key encoding and codec list (``metadata.encode_chunk_key`` / ``metadata.to_dict``) and the
encoded root ``zarr.json`` of a group (``GroupMetadata.to_buffer_dict``). Every such use sits here,
so a zarr release that moves them breaks one file, and :func:`check_installed` turns an untested
zarr into one clear error instead of an ``AttributeError`` deep in a write.

The supported range is declared once, below (``ZARR_MIN`` … ``ZARR_BELOW``); pyproject's
``zarr>=…,<…`` requirement must say the same (``tests/test_store_zarr_compat.py`` checks it).
Why 3.1.6 at the bottom (store tests run against 3.0.8 and 3.1.0-3.1.5): LocalStore writes keys
atomically (temporary file, then rename) only from 3.1.3 — before, a live reader caught array
metadata half-written while the writer grew an array; ``zarr.errors.NodeNotFoundError`` exists from
3.1.2; ``Array.with_config``, which resume uses, from 3.1.6. To support a new zarr minor release:
run the store tests against it, then raise ``ZARR_BELOW`` here and in pyproject together.

zarr itself is imported inside the functions: reading a local run never imports zarr.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .errors import StoreError

ZARR_MIN = "3.1.6"
"""Oldest supported zarr (inclusive)."""
ZARR_BELOW = "3.2"
"""First unsupported zarr (exclusive): 3.1.x is the newest series the store is tested with."""
ZARR_SPECIFIER = f">={ZARR_MIN},<{ZARR_BELOW}"
ZARR_REQUIREMENT = f"zarr{ZARR_SPECIFIER}"


class ZarrVersionError(StoreError):
    """The installed zarr is outside the range phasescope's store supports."""


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"3.1.6"`` -> (3, 1, 6), ``"3.2.0rc1"`` -> (3, 2, 0).

    Pre-release, dev and local suffixes are ignored, so a 3.2 pre-release counts as 3.2 (unsupported).
    """
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(version))
    if m is None:
        raise ValueError(f"not a version number: {version!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (a > b) - (a < b)


def version_problem(version: str) -> str | None:
    """None if zarr ``version`` is supported, else the one-line message saying what to do (pure)."""
    try:
        rel = _release(version)
        ok = _cmp(rel, _release(ZARR_MIN)) >= 0 and _cmp(rel, _release(ZARR_BELOW)) < 0
    except ValueError:
        ok = False
    if ok:
        return None
    return (
        f"zarr {version} is installed but phasescope's store supports zarr {ZARR_SPECIFIER}; "
        f'fix: pip install "{ZARR_REQUIREMENT}"'
    )


def check_version(version: str) -> None:
    """Raise ZarrVersionError (one line: installed version, supported range, fix) if unsupported."""
    problem = version_problem(version)
    if problem is not None:
        raise ZarrVersionError(problem)


_CHECKED = False


def check_installed() -> None:
    """Check the installed zarr once per process (called before the store first uses zarr)."""
    global _CHECKED
    if _CHECKED:
        return
    import zarr

    check_version(zarr.__version__)
    _CHECKED = True


# ---------------------------------------------------------------------------- event loop, raw keys
def sync(coro):
    """Run ``coro`` to completion on zarr's own event loop thread and return its result."""
    check_installed()
    from zarr.core.sync import sync as _sync

    return _sync(coro)


def get_bytes(store, key: str) -> bytes | None:
    """The bytes stored under ``key`` in a zarr Store, or None if absent."""
    check_installed()
    from zarr.core.buffer import default_buffer_prototype

    buf = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def set_many(store, items: Iterable[tuple[str, bytes]]) -> None:
    """Put every ``(key, bytes)`` into a zarr Store, concurrently; each key is put whole."""
    import asyncio

    check_installed()
    from zarr.core.buffer import cpu

    async def go():
        await asyncio.gather(*(store.set(k, cpu.Buffer.from_bytes(d)) for k, d in items))

    sync(go())


def list_dir(store, prefix: str) -> set[str]:
    """Names directly under ``prefix`` in a zarr Store (a directory-like listing)."""

    async def collect():
        return {k async for k in store.list_dir(prefix)}

    return sync(collect())


# ---------------------------------------------------------------------------- arrays and groups
def sync_array(async_array):
    """The ``zarr.Array`` over an ``AsyncArray`` (as returned by ``zarr.api.asynchronous``)."""
    check_installed()
    import zarr

    return zarr.Array(async_array)


def async_array(array):
    """The ``AsyncArray`` behind a ``zarr.Array`` (its coroutines run through :func:`sync`)."""
    check_installed()
    return array._async_array


def chunk_key(array, coords: tuple[int, ...]) -> str:
    """The key of chunk ``coords`` relative to the array, e.g. ``c.3.0`` (``Array`` or ``AsyncArray``)."""
    return array.metadata.encode_chunk_key(tuple(coords))


def codec_names(array) -> tuple[str, ...]:
    """The names of an array's codecs in order, e.g. ``("bytes", "zstd", "crc32c")``."""
    return tuple(c["name"] for c in array.metadata.to_dict()["codecs"])


def dimension_names(array) -> tuple[str | None, ...] | None:
    """The Zarr v3 ``dimension_names`` of an array (``Array`` or ``AsyncArray``)."""
    names = array.metadata.dimension_names
    return None if names is None else tuple(names)


_GROUP_TEMPLATES: dict[int, tuple[Any, dict[str, Any], Any]] = {}


def group_json(group, new_attrs: dict[str, Any]) -> bytes:
    """Merge ``new_attrs`` into the group's in-memory attributes; return its encoded ``zarr.json``.

    The caller writes the bytes itself, as one atomic key. The bytes are zarr's own
    (``GroupMetadata.to_buffer_dict``: ``json.dumps(to_dict(), indent=json_indent, allow_nan=True)``),
    encoded without ``to_dict``'s deep copy of every attribute: the group's other fields are taken
    once and the live attributes dict is dumped in place (a commit rewrites this file; the copy was
    ~half of a writer batch's CPU). ``tests/test_store_zarr_compat.py`` holds the two byte-equal.
    """
    check_installed()
    import json

    from zarr import config

    meta = group.metadata
    meta.attributes.update(new_attrs)
    cached = _GROUP_TEMPLATES.get(id(meta))
    if cached is None or cached[0] is not meta:
        if len(_GROUP_TEMPLATES) >= 64:  # one entry per open run writer; never an unbounded cache
            _GROUP_TEMPLATES.clear()
        fields = meta.to_dict()
        fields["attributes"] = None  # a placeholder keeping zarr's key order
        cached = (meta, fields, config.get("json_indent"))
        _GROUP_TEMPLATES[id(meta)] = cached
    _, fields, indent = cached
    return json.dumps({**fields, "attributes": meta.attributes}, indent=indent, allow_nan=True).encode()


def group_json_reference(group) -> bytes:
    """zarr's own encoding of the group's ``zarr.json`` (what :func:`group_json` must equal)."""
    from zarr.core.buffer import default_buffer_prototype

    return group.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()


def drop_group_attrs(group, keys: Iterable[str]) -> None:
    """Remove ``keys`` from the group's in-memory attributes (the next :func:`group_json` omits them)."""
    for k in keys:
        group.metadata.attributes.pop(k, None)
