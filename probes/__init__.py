"""phasescope.probes: what to look at (probe selectors, architecture presets, token selection), when
(schedules), the live session that attaches to a PyTorch training loop (:class:`Observatory`), the
framework-neutral :class:`Recorder` (numpy/torch/jax arrays in) that it records through, and the
framework callbacks in :mod:`phasescope.probes.integrations` (Hugging Face, Lightning, JAX/Flax).

Names are imported lazily so ``import phasescope.probes`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Observatory": ".observatory",
    "Recorder": ".recorder",
    "resolve_probes": ".registry",
    "Probe": ".registry",
    "find_layout": ".presets",
    "preset_probes": ".presets",
    "TokenSelection": ".tokens",
    "HookSet": ".capture",
    "ProbeSet": ".capture",
    "InFlight": ".capture",
    "ObservatoryOptions": ".options",
    "CaptureResult": ".result",
    "Reducer": ".reduce",
    "Sink": ".sinks",
    "schedules": ".schedules",
    "every": ".schedules",
    "log_spaced": ".schedules",
    "explicit": ".schedules",
    "union": ".schedules",
}

__all__ = [
    "CaptureResult",
    "HookSet",
    "InFlight",
    "Observatory",
    "ObservatoryOptions",
    "Probe",
    "ProbeSet",
    "Recorder",
    "Reducer",
    "Sink",
    "TokenSelection",
    "every",
    "explicit",
    "find_layout",
    "log_spaced",
    "preset_probes",
    "resolve_probes",
    "schedules",
    "union",
]
assert sorted(__all__) == sorted(_EXPORTS)  # a literal, so linters and type checkers read it

if TYPE_CHECKING:  # the lazy names, for type checkers and IDEs (never run)
    from . import schedules
    from .capture import HookSet, InFlight, ProbeSet
    from .observatory import Observatory
    from .options import ObservatoryOptions
    from .presets import find_layout, preset_probes
    from .recorder import Recorder
    from .reduce import Reducer
    from .registry import Probe, resolve_probes
    from .result import CaptureResult
    from .schedules import every, explicit, log_spaced, union
    from .sinks import Sink
    from .tokens import TokenSelection


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        mod = importlib.import_module(_EXPORTS[name], __name__)
        value = mod if name == "schedules" else getattr(mod, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
