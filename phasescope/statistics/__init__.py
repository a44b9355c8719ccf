"""phasescope.statistics: the statistic registry (see :mod:`.base`), one module per statistic.

The reducer (:mod:`phasescope.probes.reduce`), the cost presets, the run layout and the dashboard read
this registry; adding a statistic is one new module here plus its test.
"""

# Registration order is the order of the stored metric list: spectral geometry first, as in every run so far.
from . import spectral  # noqa: F401,I001 - each module registers itself
from . import cka, curvature, distance, grad_norm, gradient_noise, matrix_svd, update_ratio, weight_change  # noqa: F401
from . import forgetting  # noqa: F401
from . import weight_spectra  # noqa: F401
from .base import (
    COSTS,
    KINDS,
    REGISTRY,
    SCHEDULES,
    ProbeInputs,
    Statistic,
    Variable,
    get,
    info,
    names,
    panels_for,
    register,
    statistics,
    variable,
    variables,
)

__all__ = [
    "COSTS",
    "KINDS",
    "REGISTRY",
    "SCHEDULES",
    "ProbeInputs",
    "Statistic",
    "Variable",
    "get",
    "info",
    "names",
    "panels_for",
    "register",
    "statistics",
    "variable",
    "variables",
]
