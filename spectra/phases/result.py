"""PhaseResult: the segments of every probe, the events between them, layer lags, and conversions.

Conversions: ``to_records()`` (list of dicts, one per segment), ``events()``, ``lags()``,
``to_dataset()`` / ``PhaseResult.from_dataset()`` (an xarray Dataset with dims ``segment`` and
``event`` — what the run store keeps in its ``phases`` group), ``to_json()``, ``table()`` and
``summary()`` (one human sentence per trajectory).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .label import COLLAPSE, INSUFFICIENT, MIXED, STABLE, Segment
from .rules import LABEL_TEXT

MODEL = "model"
SCHEMA = 1


@dataclass
class Event:
    """A label change in one probe's trajectory at ``step`` (the first capture of the new phase)."""

    probe: str
    step: int
    before: str
    after: str
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman ρ with average ranks for ties (NaN if either side is constant)."""

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for u in np.unique(v):  # average ranks over ties
            m = v == u
            r[m] = r[m].mean()
        return r

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _strings(values: list[str]) -> np.ndarray:
    """Object-dtype strings: zarr v3 stores them as variable-length UTF-8 (a specified data type)."""
    out = np.empty(len(values), dtype=object)
    out[:] = [str(v) for v in values]
    return out


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating,)):
        return _clean(float(v))
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


@dataclass
class PhaseResult:
    """Phases of one run: ``segments`` for every probe (in depth order) and for ``"model"``.

    ``n_captures`` / ``last_capture_step`` record what the result was computed on, so a stored result
    can be recognised as stale when the run grows. ``hmm`` holds the optional HMM cross-check.
    """

    segments: list[Segment]
    probes: list[str]
    params: dict
    n_captures: int
    last_capture_step: int
    hmm: dict | None = field(default=None)

    # ---- queries -------------------------------------------------------------------------------
    def segments_for(self, probe: str = MODEL) -> list[Segment]:
        return [s for s in self.segments if s.probe == probe]

    def labels(self, probe: str = MODEL) -> list[str]:
        return [s.label for s in self.segments_for(probe)]

    def events(self, probe: str | None = None) -> list[Event]:
        """Label changes, per probe (all probes and the model when ``probe`` is None)."""
        out = []
        names = [probe] if probe is not None else [*self.probes, MODEL]
        for p in names:
            segs = self.segments_for(p)
            for a, b in itertools.pairwise(segs):
                out.append(Event(p, b.start_step, a.label, b.label, min(a.confidence, b.confidence)))
        return out

    def onsets(self, label: str, entered: bool = True) -> dict[str, int]:
        """probe → start step of its first segment labelled ``label`` (model included); with ``entered``,
        only phases entered after the start (a trajectory's first segment has no onset event)."""
        out = {}
        for p in [*self.probes, MODEL]:
            for i, s in enumerate(self.segments_for(p)):
                if s.label == label and not (entered and i == 0):
                    out[p] = s.start_step
                    break
        return out

    def lags(self) -> list[dict]:
        """For each phase entered after the start: onset step per probe, its lag behind the model-level
        onset (or behind the earliest probe), and the depth order — Spearman ρ between the probe's depth
        (its index in the run's probe order) and its onset step: ρ < 0 means deeper layers enter first."""
        out = []
        for label in LABEL_TEXT:
            if label in (INSUFFICIENT, MIXED):
                continue
            on = self.onsets(label)
            per_probe = {p: on[p] for p in self.probes if p in on}
            if not per_probe:
                continue
            ref = on.get(MODEL, min(per_probe.values()))
            depth = [self.probes.index(p) for p in per_probe]
            rho = _spearman(np.array(depth), np.array(list(per_probe.values()))) if len(per_probe) >= 3 else math.nan
            first = min(per_probe, key=lambda p: (per_probe[p], self.probes.index(p)))
            last = max(per_probe, key=lambda p: (per_probe[p], self.probes.index(p)))
            out.append(
                {
                    "label": label,
                    "model_onset": on.get(MODEL),
                    "first_probe": first,
                    "last_probe": last,
                    "spread_steps": per_probe[last] - per_probe[first],
                    "spearman_rho": rho,
                    "onsets": {p: {"step": s, "lag": s - ref} for p, s in per_probe.items()},
                }
            )
        return out

    # ---- conversions ---------------------------------------------------------------------------
    def to_records(self) -> list[dict]:
        return [s.to_dict() for s in self.segments]

    def to_json(self) -> dict:
        return _clean(
            {
                "n_captures": self.n_captures,
                "last_capture_step": self.last_capture_step,
                "params": self.params,
                "probes": self.probes,
                "summary": self.summary(),
                "segments": self.to_records(),
                "events": [e.to_dict() for e in self.events()],
                "lags": self.lags(),
                "hmm": self.hmm,
            }
        )

    def to_dataset(self):
        """xarray Dataset: Segment fields over dim ``segment``, ``event_*`` over dim ``event``."""
        import json

        import xarray as xr

        cols = {}
        for f in fields(Segment):
            vals = [getattr(s, f.name) for s in self.segments]
            if f.type in ("str",):
                cols[f.name] = ("segment", _strings(vals))
            elif f.type in ("int",):
                cols[f.name] = ("segment", np.array(vals, dtype=np.int64))
            elif f.type in ("bool",):
                cols[f.name] = ("segment", np.array(vals, dtype=bool))
            else:
                cols[f.name] = ("segment", np.array(vals, dtype=np.float64))
        ev = self.events()
        cols["event_probe"] = ("event", _strings([e.probe for e in ev]))
        cols["event_step"] = ("event", np.array([e.step for e in ev], dtype=np.int64))
        cols["event_before"] = ("event", _strings([e.before for e in ev]))
        cols["event_after"] = ("event", _strings([e.after for e in ev]))
        cols["event_confidence"] = ("event", np.array([e.confidence for e in ev], dtype=np.float64))
        attrs = {
            "phasescope_phases_schema": SCHEMA,
            "n_captures": self.n_captures,
            "last_capture_step": self.last_capture_step,
            "probes": list(self.probes),
            "params": json.dumps(_clean(self.params)),
            "summary": self.summary(),
        }
        if self.hmm is not None:
            attrs["hmm"] = json.dumps(_clean(self.hmm))
        return xr.Dataset(cols, attrs=attrs)

    @classmethod
    def from_dataset(cls, ds) -> PhaseResult:
        """Rebuild a result from :meth:`to_dataset` output (e.g. read back from a run's phases group)."""
        import json

        n = ds.sizes.get("segment", 0)
        segs = []
        for i in range(n):
            kw: dict[str, Any] = {}
            for f in fields(Segment):
                if f.name not in ds.variables:  # written before the field existed: its default
                    continue
                v = ds[f.name].values[i]
                kw[f.name] = (
                    str(v)
                    if f.type == "str"
                    else int(v)
                    if f.type == "int"
                    else bool(v)
                    if f.type == "bool"
                    else float(v)
                )
            segs.append(Segment(**kw))
        hmm = json.loads(ds.attrs["hmm"]) if "hmm" in ds.attrs else None
        return cls(
            segments=segs,
            probes=[str(p) for p in ds.attrs.get("probes", [])],
            params=json.loads(ds.attrs.get("params", "{}")),
            n_captures=int(ds.attrs["n_captures"]),
            last_capture_step=int(ds.attrs["last_capture_step"]),
            hmm=hmm,
        )

    # ---- text ----------------------------------------------------------------------------------
    def sentence(self, probe: str = MODEL) -> str:
        """e.g. "warmup collapse from step 0 to 40, entropy-seeking from 40 to 900, compression-seeking from 900 on"."""
        segs = self.segments_for(probe)
        if not segs:
            return "no captures"
        parts = []
        for i, s in enumerate(segs):
            frm = f"from step {s.start_step}" if i == 0 else f"from {s.start_step}"
            name = LABEL_TEXT.get(s.label, s.label)
            if s.label == MIXED:  # no label fits: show both slopes
                f = lambda v: format(v, "+.2f") if math.isfinite(v) else "n/a"  # noqa: E731
                name += f" (dlnR/dlnt {f(s.slope_rankme)}, dA/dlnt {f(s.slope_alpha)})"
            elif s.label == INSUFFICIENT and math.isfinite(s.rankme_start) and math.isfinite(s.rankme_end):
                name += f" (RankMe {s.rankme_start:.3g} → {s.rankme_end:.3g})"  # what there is to see
            parts.append(f"{name} {frm} " + ("on" if s.open_end else f"to {s.end_step}"))
        return ", ".join(parts)

    def summary(self, per_probe: bool = False) -> str:
        """The model-level sentence, layer-lag remarks, and (``per_probe``) one sentence per probe."""
        lines = [f"{MODEL}: {self.sentence(MODEL)}."]
        for lag in self.lags():
            if lag["label"] in (STABLE, COLLAPSE) or len(lag["onsets"]) < 2:
                continue
            text = LABEL_TEXT.get(lag["label"], lag["label"])
            first, last = lag["first_probe"], lag["last_probe"]
            if lag["spread_steps"] == 0:
                lines.append(
                    f"{text} begins at step {lag['onsets'][first]['step']} in all "
                    f"{len(lag['onsets'])} probes that reach it."
                )
                continue
            rho = lag["spearman_rho"]
            order = (
                ""
                if not math.isfinite(rho)
                else f"; deeper layers first (Spearman rho {rho:+.2f})"
                if rho <= -0.5
                else f"; shallower layers first (Spearman rho {rho:+.2f})"
                if rho >= 0.5
                else f"; no depth order (Spearman rho {rho:+.2f})"
            )
            lines.append(
                f"{text} begins first in {first} (step {lag['onsets'][first]['step']}) and last in "
                f"{last} (step {lag['onsets'][last]['step']}){order}."
            )
        if per_probe:
            lines += [f"{p}: {self.sentence(p)}." for p in self.probes]
        return "\n".join(lines)

    def table(self) -> str:
        """A fixed-width text table of the segments (what ``phasescope phases RUN`` prints); ``n`` is the
        captures the phase's slopes are fitted over (``n_fit``: its own and the boundary capture it shares
        with the next phase), the count the minimum of captures applies to."""
        head = (
            f"{'probe':<20} {'phase':<20} {'start':>8} {'end':>8} {'n':>4} {'dlnR/dlnt':>10} "
            f"{'dA/dlnt':>9} {'RankMe':>15} {'alpha':>11} {'conf':>5}"
        )
        staged = any(s.stage for s in self.segments)
        if staged:  # the stage each phase lies in (a phase never spans two)
            head = f"{'stage':<12} {head}"
        rows = [head, "-" * len(head)]

        def f(v, fmt):
            return format(v, fmt) if math.isfinite(v) else "nan"

        for s in self.segments:
            end = "on" if s.open_end else str(s.end_step)
            rows.append(
                (f"{s.stage[:12]:<12} " if staged else "")
                + f"{s.probe[:20]:<20} {s.label:<20} {s.start_step:>8} {end:>8} {(s.n_fit or s.n_points):>4} "
                f"{f(s.slope_rankme, '+.3f'):>10} {f(s.slope_alpha, '+.3f'):>9} "
                f"{f(s.rankme_start, '.1f') + '→' + f(s.rankme_end, '.1f'):>15} "
                f"{f(s.alpha_start, '.2f') + '→' + f(s.alpha_end, '.2f'):>11} {s.confidence:>5.2f}"
            )
        return "\n".join(rows)
