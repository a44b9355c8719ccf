"""The statistic registry's shape: a statistic declares what it costs, when it runs, what it stores,
how it is computed and where it is drawn (after Cockpit's one quantity per file, plus store variables).

    register(Statistic(
        name="cka", cost="capture", schedule="capture", needs=("gram",),
        variables=(Variable("cka_previous", "metric", "linear CKA to the previous capture"), ...),
        compute=cka_of, panels=("similarity",)))

- ``cost``: the cheapest preset that runs it — "step" (every step, e.g. gradient norms), "capture" (a
  probe forward), "matrix" (an SVD of every 2-D gradient); presets are ordered by cost, see COSTS.
- ``schedule``: which of a preset's schedules decides its steps ("step", "capture", "matrices",
  "updates", "weights", "diagnostics", "distance"; see :class:`phasescope.probes.schedules.Preset`).
- ``needs``: the capture-result fields ``compute`` reads ("spectrum", "gram", "grads", "matrix_grads",
  "weights", "updates"), or "loss_fn": a loss on a fixed batch the statistic evaluates itself.
- ``variables``: what it writes; a variable's ``kind`` fixes its store dims and dtype (KINDS), so the
  run layout follows the registry (:func:`names`).
- ``compute``: a pure function of arrays (numpy, torch or jax), shared by live, offline and JAX capture.
- ``per_probe`` (per-probe metrics only): how the one reducer calls ``compute`` at a capture,
  ``per_probe(inputs: ProbeInputs, state: dict) -> {variable: value}``; ``state`` is this statistic's
  dict for that probe, kept across the captures of a run (e.g. CKA's first and previous Gram).
- ``panels``: the dashboard panels that draw its variables (``panels_for``).

Adding a statistic is one new module in this package that calls :func:`register`, plus its test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phasescope.errors import PhasescopeError

#: variable kind -> (store dims, dtype); "metric" rows are per capture and probe.
KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "metric": (("capture_step", "probe"), "float64"),
    "scalar": (("step",), "float64"),
    "param": (("step", "param"), "float32"),
    "matrix": (("capture_step", "matrix"), "float32"),
    "matrix_spectrum": (("capture_step", "matrix", "weight_rank"), "float32"),  # a weight's ESD
    "set": (("capture_step", "loss_set"), "float64"),  # per evaluation set (a stage's probe set)
}
COSTS = ("step", "capture", "matrix")
SCHEDULES = ("step", "capture", "matrices", "updates", "weights", "diagnostics", "distance")


@dataclass(frozen=True)
class Variable:
    """One stored variable: its name (a metric, scalar, param stat or matrix stat), kind and meaning;
    ``combine``: how a panel joins its rows into one line per group (projection type, block): "mean",
    "median" or "rss" (root of the sum of squares, for norms and distances)."""

    name: str
    kind: str
    info: str = ""
    combine: str = ""

    @property
    def dims(self) -> tuple[str, ...]:
        return KINDS[self.kind][0]

    @property
    def dtype(self) -> str:
        return KINDS[self.kind][1]


@dataclass(frozen=True)
class ProbeInputs:
    """What a per-probe statistic may read at one capture (host numpy values)."""

    spectrum: Any  # phasescope.spectra.Spectrum (float64 numpy eigenvalues) or None
    gram: Any  # centred Gram of the fixed probe samples (numpy) or None
    fit_range: Any = "auto"  # α-ReQ fit range of the run
    max_rank: int | None = None
    resumed: bool = False  # the run's first capture was reduced by another process
    stage: str | None = None  # this capture's training stage (``obs.stage``); None: none; "": begun unseen


@dataclass(frozen=True)
class Statistic:
    name: str
    cost: str
    schedule: str
    needs: tuple[str, ...]
    variables: tuple[Variable, ...]
    compute: Callable[..., Any]
    panels: tuple[str, ...] = ()
    doc: str = ""
    per_probe: Callable[[ProbeInputs, dict], dict] | None = None
    live: bool = True  # computed by live capture (Observatory/Recorder)
    offline: bool = True  # computed by `phasescope analyze`
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise PhasescopeError(f"statistic {self.name!r}: cost {self.cost!r} is not one of {COSTS}")
        if self.schedule not in SCHEDULES:
            raise PhasescopeError(f"statistic {self.name!r}: schedule {self.schedule!r} is not one of {SCHEDULES}")
        bad = [v.name for v in self.variables if v.kind not in KINDS]
        if bad:
            raise PhasescopeError(f"statistic {self.name!r}: variables {bad} have an unknown kind; use {tuple(KINDS)}")


REGISTRY: dict[str, Statistic] = {}


def register(stat: Statistic) -> Statistic:
    """Add ``stat``; a second statistic writing a variable already claimed is an error."""
    if stat.name in REGISTRY:
        raise PhasescopeError(f"statistic {stat.name!r} is already registered")
    taken = {(v.kind, v.name): s.name for s in REGISTRY.values() for v in s.variables}
    clash = [f"{v.name} (by {taken[(v.kind, v.name)]})" for v in stat.variables if (v.kind, v.name) in taken]
    if clash:
        raise PhasescopeError(f"statistic {stat.name!r} writes variables already registered: {', '.join(clash)}")
    REGISTRY[stat.name] = stat
    return stat


def get(name: str) -> Statistic:
    try:
        return REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; registered: {', '.join(REGISTRY)}"
        raise PhasescopeError(f"unknown statistic {name!r}{hint}") from None


def statistics(*, needs: str | None = None, kind: str | None = None, where: str | None = None) -> list[Statistic]:
    """Registered statistics in registration order, filtered by an input they read, a variable kind
    they write, or where they run (``where`` = "live" or "offline")."""
    out = []
    for s in REGISTRY.values():
        if needs is not None and needs not in s.needs:
            continue
        if kind is not None and not any(v.kind == kind for v in s.variables):
            continue
        if where is not None and not getattr(s, where):
            continue
        out.append(s)
    return out


def variables(kind: str, *, where: str | None = None) -> list[Variable]:
    """Every registered variable of ``kind`` (e.g. all per-probe metrics), in registration order."""
    return [v for s in statistics(kind=kind, where=where) for v in s.variables if v.kind == kind]


def names(kind: str, *, where: str | None = None) -> tuple[str, ...]:
    return tuple(v.name for v in variables(kind, where=where))


def variable(name: str, kind: str | None = None) -> Variable | None:
    """The registered variable ``name`` (of ``kind``, when given), or None when no statistic declares it."""
    for s in REGISTRY.values():
        for v in s.variables:
            if v.name == name and kind in (None, v.kind):
                return v
    return None


def info(name: str) -> str:
    """The one-line meaning of a stored variable (empty when no statistic declares it)."""
    v = variable(name)
    return v.info if v is not None else ""


def panels_for(panel: str) -> list[Variable]:
    """The variables a dashboard panel draws, from the statistics that name it."""
    return [v for s in REGISTRY.values() if panel in s.panels for v in s.variables]
