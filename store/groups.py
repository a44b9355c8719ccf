"""Derived results stored beside a run: ``write_group`` / ``open_group`` / ``list_groups``.

Phase detection (``phases``) and other later analyses write a Zarr subgroup of the run. They never
touch the run's committed arrays or its root ``zarr.json`` (the writer may still be appending). On a
local disk the group is written under a temporary name and renamed into place, so a reader sees the
old or the new group, never half of one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _io
from .errors import StoreError
from .reader import read_meta
from .schema import COORDS, LAYOUT_ATTR, Layout


def _as_dataset(data: Any):
    import xarray as xr

    if isinstance(data, xr.Dataset):
        ds = data
    elif isinstance(data, Mapping):
        vars_ = {}
        for k, v in data.items():
            if isinstance(v, tuple):
                vars_[k] = v
            else:
                a = np.asarray(v)
                vars_[k] = (tuple(f"{k}_dim_{i}" for i in range(a.ndim)), a)
        ds = xr.Dataset(vars_)
    else:
        raise StoreError(f"write_group needs an xarray.Dataset or a dict of arrays, got {type(data).__name__}")
    # Fixed-width unicode has no stable Zarr v3 dtype: store text as variable-length strings.
    ds = ds.copy()
    for name, var in list(ds.variables.items()):
        if var.dtype.kind == "U":
            ds[name] = var.astype(object)
            ds[name].encoding.pop("dtype", None)
    return ds


def _check_name(path: Any, name: str) -> dict:
    attrs = read_meta(path)
    taken = set(COORDS) | set(Layout.from_json(attrs[LAYOUT_ATTR]).variable_names())
    taken |= {"eigenvalues", "n_samples", "sketch"}
    if not name or "/" in name or name.startswith(("_", ".")) or name in taken:
        raise StoreError(
            f"cannot use {name!r} as a group name in a run (it is empty, nested, private or the name "
            f"of one of the run's arrays); choose e.g. 'phases'"
        )
    return attrs


def write_group(path: Any, name: str, data: Any, *, attrs: Mapping[str, Any] | None = None) -> None:
    """Write (or replace) subgroup ``name`` of the run at ``path`` from a Dataset or dict of arrays."""
    _check_name(path, name)
    ds = _as_dataset(data)
    if attrs:
        ds.attrs.update(attrs)
    store = _io.make_store(path, read_only=False)
    lp = _io.local_path(path)
    if lp is None:
        ds.to_zarr(store, group=name, mode="w", consolidated=False, zarr_format=3)
        return
    tmp = f"_tmp_{name}_{uuid.uuid4().hex[:8]}"
    try:
        ds.to_zarr(store, group=tmp, mode="w", consolidated=False, zarr_format=3)
        final, trash = lp / name, lp / f"_trash_{name}_{uuid.uuid4().hex[:8]}"
        if final.exists():
            os.rename(final, trash)
        os.rename(lp / tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    finally:
        shutil.rmtree(lp / tmp, ignore_errors=True)


def open_group(path: Any, name: str):
    """Subgroup ``name`` of a run as an xarray Dataset (lazy)."""
    import xarray as xr

    read_meta(path)
    if name not in list_groups(path):
        raise StoreError(
            f"run {_io.display(path)} has no group {name!r} (it has {list_groups(path)}); "
            "write it first, e.g. with write_group"
        )
    store = _io.make_store(path, read_only=True)
    return xr.open_zarr(store, group=name, consolidated=False)


def list_groups(path: Any) -> list[str]:
    """Names of the derived-result subgroups of a run."""
    import zarr

    read_meta(path)
    g = zarr.open_group(_io.make_store(path, read_only=True), mode="r", zarr_format=3)
    return sorted(k for k in g.group_keys() if not k.startswith("_"))
