"""When to look: schedules are plain ``step -> bool`` callables built by small factories.

As in Cockpit (``cockpit/utils/schedules.py``), a schedule is just a predicate on the training step,
so users can pass any function. The factories here also make every schedule *describable*: each
returns a :class:`Schedule` whose :meth:`Schedule.describe` is a JSON-serialisable dict, stored in the
run's metadata, and :func:`from_description` rebuilds the same schedule from it.

Factories
---------
- :func:`every` — every ``k`` steps (``offset``, ``start``, ``stop``), Cockpit's ``linear``.
- :func:`log_spaced` — dense early, sparse late: step 0 and ``round(start · 10^(i/per_decade))`` for
  i = 0, 1, …, like Pythia's checkpoints (0, 1, 2, 4, …, 512, then every 1000 steps; Biderman et al.
  2023) and Cockpit's ``logarithmic``.
- :func:`explicit` — an explicit list of steps.
- :func:`union` — any of several schedules (lists and ints are accepted as explicit steps).
- :func:`preset` — cost presets in the spirit of Cockpit's economy < business < full.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, SupportsIndex, cast

from phasescope.errors import PhasescopeError
from phasescope.statistics import Statistic
from phasescope.statistics import get as get_statistic
from phasescope.statistics import statistics as registered

__all__ = [
    "PRESETS",
    "Preset",
    "Schedule",
    "always",
    "as_schedule",
    "describe",
    "every",
    "explicit",
    "from_description",
    "is_never",
    "log_spaced",
    "never",
    "preset",
    "union",
]


class Schedule:
    """A describable ``step -> bool`` predicate (subclasses implement ``__call__`` and ``describe``)."""

    def __call__(self, step: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def steps(self, end: int) -> list[int]:
        """All steps in ``[0, end)`` at which the schedule fires (for previews and cost estimates)."""
        return [s for s in range(int(end)) if self(s)]

    def __or__(self, other: ScheduleLike) -> Schedule:
        return union(self, other)

    def __repr__(self) -> str:
        return f"Schedule({self.describe()})"


ScheduleLike = Schedule | Callable[[int], bool] | Iterable[int] | int | None


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise PhasescopeError(f"schedule {name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise PhasescopeError(f"schedule {name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True, repr=False)
class _Every(Schedule):
    k: int
    offset: int = 0
    start: int = 0
    stop: int | None = None

    def __call__(self, step: int) -> bool:
        if step < self.start or (self.stop is not None and step >= self.stop):
            return False
        return (step - self.offset) % self.k == 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "every", "k": self.k, "offset": self.offset, "start": self.start, "stop": self.stop}


def every(k: int, offset: int = 0, start: int = 0, stop: int | None = None) -> Schedule:
    """Fire when ``(step - offset) % k == 0`` and ``start <= step < stop``."""
    k = _check_int("interval k", k, 1)
    offset = _check_int("offset", offset, 0)
    start = _check_int("start", start, 0)
    if stop is not None:
        stop = _check_int("stop", stop, 0)
    return _Every(k, offset, start, stop)


@dataclass(frozen=True, repr=False)
class _Explicit(Schedule):
    points: frozenset[int] = field(default_factory=frozenset)

    def __call__(self, step: int) -> bool:
        return step in self.points

    def describe(self) -> dict[str, Any]:
        return {"kind": "explicit", "steps": sorted(self.points)}


def explicit(steps: Iterable[int]) -> Schedule:
    """Fire exactly at the given steps."""
    if isinstance(steps, (str, bytes)):
        raise PhasescopeError(f"explicit schedule needs a list of integer steps, got {steps!r}")
    return _Explicit(frozenset(_check_int("step", s, 0) for s in steps))


@dataclass(frozen=True, repr=False)
class _LogSpaced(Schedule):
    per_decade: float
    start: int
    end: int | None
    include_zero: bool
    points: frozenset[int] = field(default_factory=frozenset, compare=False)

    def __call__(self, step: int) -> bool:
        if step == 0:
            return self.include_zero
        if step < self.start or (self.end is not None and step > self.end):
            return False
        if self.points:
            return step in self.points
        # Unbounded: step fires iff it is the rounding of start·10^(i/per_decade) for some i.
        i = round(self.per_decade * math.log10(step / self.start))
        return any(_log_point(self.start, self.per_decade, j) == step for j in (i - 1, i, i + 1) if j >= 0)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "log_spaced",
            "per_decade": self.per_decade,
            "start": self.start,
            "end": self.end,
            "include_zero": self.include_zero,
        }


def _log_point(start: int, per_decade: float, i: int) -> int:
    return round(start * 10.0 ** (i / per_decade))


def log_spaced(end: int | None = None, per_decade: float = 10.0, start: int = 1, include_zero: bool = True) -> Schedule:
    """Dense early, sparse late: step 0 plus ``round(start · 10^(i/per_decade))`` for i = 0, 1, …, ≤ ``end``.

    ``per_decade=10`` gives 0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 63, 79, 100, 126, …;
    ``per_decade≈3.32`` (``log2(10)``) gives powers of two like Pythia's early checkpoints.
    ``end=None`` is unbounded.
    """
    if isinstance(per_decade, bool) or not isinstance(per_decade, (int, float)) or not per_decade > 0:
        raise PhasescopeError(f"log_spaced per_decade must be a positive number, got {per_decade!r}")
    start = _check_int("start", start, 1)
    if end is not None:
        end = _check_int("end", end, 0)
        points: set[int] = set()
        i = 0
        while (p := _log_point(start, per_decade, i)) <= end:
            points.add(p)
            i += 1
        return _LogSpaced(float(per_decade), start, end, bool(include_zero), frozenset(points))
    return _LogSpaced(float(per_decade), start, None, bool(include_zero))


@dataclass(frozen=True, repr=False)
class _Union(Schedule):
    parts: tuple[Schedule, ...]

    def __call__(self, step: int) -> bool:
        return any(p(step) for p in self.parts)

    def describe(self) -> dict[str, Any]:
        return {"kind": "union", "parts": [describe(p) for p in self.parts]}


def union(*schedules: ScheduleLike) -> Schedule:
    """Fire when any part fires; lists of ints and single ints count as explicit steps."""
    parts = tuple(as_schedule(s) for s in schedules if s is not None)
    return _Union(parts)


@dataclass(frozen=True, repr=False)
class _Const(Schedule):
    value: bool

    def __call__(self, step: int) -> bool:
        return self.value

    def describe(self) -> dict[str, Any]:
        return {"kind": "always" if self.value else "never"}


def never() -> Schedule:
    return _Const(False)


def always() -> Schedule:
    return _Const(True)


def is_never(schedule: Schedule) -> bool:
    """Whether ``schedule`` is :func:`never` (by its description, so a rebuilt one counts too)."""
    return schedule.describe() == never().describe()


@dataclass(frozen=True, repr=False)
class _Callable(Schedule):
    fn: Callable[[int], bool]

    def __call__(self, step: int) -> bool:
        return bool(self.fn(step))

    def describe(self) -> dict[str, Any]:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return {"kind": "callable", "name": f"{getattr(self.fn, '__module__', '?')}.{name}"}


def as_schedule(s: ScheduleLike) -> Schedule:
    """Coerce a schedule, a plain callable, a list of steps or an int step into a :class:`Schedule`."""
    if s is None:
        return never()
    if isinstance(s, Schedule):
        return s
    if isinstance(s, str):
        return preset(s).capture
    if callable(s):
        return _Callable(s)
    if isinstance(s, bool):
        raise PhasescopeError("a schedule cannot be a bool; use phasescope.probes.schedules.always()/never()")
    if isinstance(s, int) or hasattr(s, "__index__"):
        return explicit([int(cast(SupportsIndex, s))])  # an int or has __index__ (numpy integers)
    try:
        return explicit(list(s))
    except TypeError:
        raise PhasescopeError(
            f"not a schedule: {s!r}; pass a callable step -> bool, a list of steps, or a factory "
            "from phasescope.probes.schedules (every, log_spaced, explicit, union)"
        ) from None


def describe(s: ScheduleLike) -> dict[str, Any]:
    """JSON description of any schedule-like value (plain callables are named, not rebuilt)."""
    return as_schedule(s).describe()


def from_description(d: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.describe` output (callables cannot be rebuilt)."""
    kind = d.get("kind")
    if kind == "every":
        return every(d["k"], d.get("offset", 0), d.get("start", 0), d.get("stop"))
    if kind == "explicit":
        return explicit(d["steps"])
    if kind == "log_spaced":
        return log_spaced(d.get("end"), d["per_decade"], d.get("start", 1), d.get("include_zero", True))
    if kind == "union":
        return union(*(from_description(p) for p in d["parts"]))
    if kind in ("always", "never"):
        return _Const(kind == "always")
    raise PhasescopeError(f"cannot rebuild a schedule of kind {kind!r}; only factory-made schedules round-trip")


# ----------------------------------------------------------------------------------------------
# Cost presets (Cockpit: economy < business < full). Per-step gradient L2 norms are always on (cheap);
# the presets choose how often the expensive things run.


@dataclass(frozen=True)
class Preset:
    """What runs when: probe-set capture, gradient SVD statistics, update/weight ratios.

    Each registered statistic (:mod:`phasescope.statistics`) names the schedule that decides its steps
    (``Statistic.schedule``): :meth:`schedule_for` gives it, :meth:`statistics` lists what this preset
    runs, and :meth:`describe` (stored with every run) records both."""

    name: str
    capture: Schedule  # probe forward + covariance spectra (and everything read from them)
    matrices: Schedule  # batched SVD of every 2-D weight gradient
    updates: Schedule  # ‖Δw‖/‖w‖ per parameter (needs one weight snapshot on those steps)
    grad_norms: bool = True  # per-parameter L2 gradient norm every step
    weights: Schedule | None = None  # weight spectra (WeightWatcher's layer metrics); None: never
    diagnostics: Schedule | None = None  # curvature and gradient noise on a fixed batch; None: never
    distance: Schedule | None = None  # distance from initialisation (keeps one copy of the weights); None: never

    def schedule_for(self, stat: Statistic | str) -> Schedule:
        """The schedule of a registered statistic (by object or name) under this preset."""
        stat = get_statistic(stat) if isinstance(stat, str) else stat
        if stat.schedule == "step":
            return always() if self.grad_norms else never()
        return {
            "capture": self.capture,
            "matrices": self.matrices,
            "updates": self.updates,
            "weights": self.weights or never(),
            "diagnostics": self.diagnostics or never(),
            "distance": self.distance or never(),
        }[stat.schedule]

    def statistics(self, where: str = "live") -> list[str]:
        """Names of the registered statistics this preset runs (a schedule that is not ``never``)."""
        return [s.name for s in registered(where=where) if not is_never(self.schedule_for(s))]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "capture": self.capture.describe(),
            "matrices": self.matrices.describe(),
            "updates": self.updates.describe(),
            "grad_norms": self.grad_norms,
            "weights": (self.weights or never()).describe(),
            "diagnostics": (self.diagnostics or never()).describe(),
            "distance": (self.distance or never()).describe(),
            "statistics": self.statistics(),
        }


def _dense_early() -> Schedule:
    return union(log_spaced(per_decade=6), every(1000))


PRESETS: dict[str, Callable[[], Preset]] = {
    # Captures ~6 per decade (0,1,2,3,5,10,15,22,32,46,68,100,…) plus every 1000 steps.
    "economy": lambda: Preset("economy", _dense_early(), _dense_early(), _dense_early()),
    "business": lambda: Preset(
        "business",
        union(log_spaced(per_decade=10), every(500)),
        union(log_spaced(per_decade=10), every(100)),
        every(100),
    ),
    # full: also the weights' spectra (seconds per call on a GPT-2-small: see bench/weights.py), sparsely
    "full": lambda: Preset(
        "full",
        union(log_spaced(per_decade=20), every(100)),
        every(10),
        every(10),
        weights=union(log_spaced(per_decade=2), every(1000)),
        diagnostics=union(log_spaced(per_decade=2), every(1000)),
        distance=union(log_spaced(per_decade=10), every(100)),
    ),
    # Only per-step gradient norms, loss and lr: the cheapest useful setting.
    "norms": lambda: Preset("norms", never(), never(), never()),
}


def preset(name: str) -> Preset:
    """A cost preset by name: ``economy`` (default), ``business``, ``full`` or ``norms``."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise PhasescopeError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
