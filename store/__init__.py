"""phasescope.store: the run schema, a crash-safe append-only Zarr v3 writer, xarray readers, a run catalog.

Never imports torch. Names are imported lazily so ``import phasescope.store`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    "run_stages": ".lifecycle",
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

__all__ = [
    "SCHEMA_VERSION",
    "AsyncRunWriter",
    "CaptureRow",
    "CorruptRunError",
    "LayoutMismatchError",
    "NotARunError",
    "RunExistsError",
    "RunInfo",
    "RunWriter",
    "SchemaVersionError",
    "StepOrderError",
    "StepRow",
    "StoreError",
    "error_for",
    "estimate_sketch_bytes",
    "list_groups",
    "list_runs",
    "make_sketch",
    "open_group",
    "open_run",
    "projection_matrix",
    "run_info",
    "run_stages",
    "status_for",
    "write_group",
]
assert sorted(__all__) == sorted(_EXPORTS)  # a literal, so linters and type checkers read it

if TYPE_CHECKING:  # the lazy names, for type checkers and IDEs (never run)
    from .async_writer import AsyncRunWriter
    from .catalog import RunInfo, list_runs, run_info
    from .errors import (
        CorruptRunError,
        LayoutMismatchError,
        NotARunError,
        RunExistsError,
        SchemaVersionError,
        StepOrderError,
        StoreError,
    )
    from .groups import list_groups, open_group, write_group
    from .lifecycle import error_for, run_stages, status_for
    from .reader import open_run
    from .schema import SCHEMA_VERSION
    from .sketch import estimate_sketch_bytes, make_sketch, projection_matrix
    from .writer import CaptureRow, RunWriter, StepRow


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
