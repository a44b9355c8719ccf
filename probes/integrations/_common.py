"""Shared pieces of the torch callbacks: Observatory options and the "no optimizer step" check."""

from __future__ import annotations

from phasescope.errors import PhasescopeError


class NoOptimizerStepError(PhasescopeError):
    """Training batches ended but the framework never reached an optimizer step the callback saw."""


def current_lr(optimizer) -> float | None:
    """The learning rate of the optimizer's first parameter group (what the next step will use)."""
    try:
        return float(optimizer.param_groups[0]["lr"])
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def no_step_error(framework: str, n: int, hint: str) -> NoOptimizerStepError:
    return NoOptimizerStepError(
        f"phasescope {framework} callback: {n} training batches ended without an optimizer step it could record; "
        f"{hint}; steps committed so far are kept in the store"
    )
