"""phasescope: a training-dynamics observatory.

``phasescope.Observatory`` and ``phasescope.report`` (figures for papers) are re-exported lazily (module
``__getattr__``) so that ``import phasescope`` stays fast and does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .compat import guard_torchvision_import

__version__ = "0.1.0"
__all__ = ["Observatory", "__version__", "report"]

if TYPE_CHECKING:  # the lazy names, for type checkers and IDEs (never run)
    from .dashboard.report import report
    from .probes.observatory import Observatory

# PyPI's torchvision beside a CPU torch: see phasescope.compat (nothing is imported here).
guard_torchvision_import()


def __getattr__(name: str) -> Any:
    if name == "Observatory":
        from .probes.observatory import Observatory

        return Observatory
    if name == "report":
        from .dashboard.report import report

        return report
    raise AttributeError(f"module 'phasescope' has no attribute {name!r}")
