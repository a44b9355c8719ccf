"""phasescope.store: the run schema, a crash-safe append-only Zarr v3 writer, xarray readers, a run catalog.

Never imports torch. Names are imported lazily so ``import phasescope.store`` stays cheap.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "RunWriter": ".writer",
    "StepRow": ".writer",
    "CaptureRow": ".writer",
    "AsyncRunWriter": ".async_writer",
    "open_run": ".reader",
    "list_runs": ".catalog",
    "run_info": ".catalog",
    "RunInfo": ".catalog",
    "status_for": ".lifecycle",
    "error_for": ".lifecycle",
    "write_group": ".groups",
    "open_group": ".groups",
    "list_groups": ".groups",
    "projection_matrix": ".sketch",
    "estimate_sketch_bytes": ".sketch",
    "make_sketch": ".sketch",
    "SCHEMA_VERSION": ".schema",
    "StoreError": ".errors",
    "RunExistsError": ".errors",
    "NotARunError": ".errors",
    "SchemaVersionError": ".errors",
    "StepOrderError": ".errors",
    "CorruptRunError": ".errors",
    "LayoutMismatchError": ".errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'phasescope.store' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
