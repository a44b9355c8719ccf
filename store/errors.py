"""Errors raised by the run store; all are PhasescopeError (a ValueError) with a one-line fix."""

from __future__ import annotations

from phasescope.errors import PhasescopeError


class StoreError(PhasescopeError):
    """Base class for run-store problems the user can act on."""


class RunExistsError(StoreError):
    """A run is already stored at the path and neither overwrite nor resume was asked for."""


class NotARunError(StoreError):
    """The path exists but is not a phasescope run (or does not exist)."""


class SchemaVersionError(StoreError):
    """The run was written with a schema this version of phasescope cannot read or extend."""


class StepOrderError(StoreError):
    """A step was appended at or before the last committed one."""


class CorruptRunError(StoreError):
    """A chunk of a committed array is missing or damaged; the message names the array and steps."""


class LayoutMismatchError(StoreError):
    """resume=True with probes/params/metrics that differ from those the run was created with."""
