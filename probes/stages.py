"""Stages of training (pretraining → SFT → DPO → RLVR) as parts of one run.

``obs.stage(name, **meta)`` (or ``Recorder.stage``) marks a boundary: the stage starts at the next
recorded step. The run's ``stages`` attribute lists each stage once, in order::

    [{"name": "sft", "first_step": 1000, "last_step": 1499, "trainer": "SFTTrainer", "meta": {...}}, ...]

``last_step`` is the last step recorded before the next stage started, or before the run closed; None
while the stage is still running (``phasescope.store.run_stages`` fills it with the run's last step).
Steps before the first ``stage`` call belong to no stage. Names are used once each: a stage cannot be
re-entered after another one, and two stages cannot start at the same step.
"""

from __future__ import annotations

from phasescope.errors import PhasescopeError
from phasescope.store.schema import check_json


class StageLog:
    """The stages one front-end has started, as the run's ``stages`` attribute (see module doc)."""

    def __init__(self, earlier: list[dict] | None = None, last_step: int | None = None) -> None:
        """``earlier``: the stages of the run this process continues (its ``stages`` attribute), whose last
        one ended at ``last_step``, the run's last step so far."""
        self.stages: list[dict] = [dict(s) for s in earlier or []]
        self._earlier = len(self.stages)  # stages begun by the process this one continues
        self._pending: dict | None = None
        self._last_step: int | None = last_step
        if self.stages and self.stages[-1].get("last_step") is None:
            self.stages[-1]["last_step"] = last_step

    @property
    def current(self) -> str | None:
        """The stage the next step belongs to (a stage started but not yet stepped counts)."""
        if self._pending is not None:
            return self._pending["name"]
        return self.stages[-1]["name"] if self.stages else None

    @property
    def seen(self) -> str | None:
        """The current stage's name if it began in this process; "" if it began in the process this one
        continues (its first capture is not this process's); None before any stage."""
        if self._pending is None and len(self.stages) <= self._earlier:
            return "" if self.stages else None
        return self.current

    def start(self, name: str, *, trainer: str | None = None, meta: dict | None = None) -> None:
        """Start stage ``name`` at the next recorded step; raises PhasescopeError on a name used before
        or a second stage with no step recorded since the first."""
        if not isinstance(name, str) or not name.strip():
            raise PhasescopeError(f"a stage name must be a non-empty string, got {name!r}")
        if self._pending is not None:
            raise PhasescopeError(
                f"stage {name!r} would start at the same step as stage {self._pending['name']!r} (no step "
                "was recorded since it was started); record its steps first, or start only one"
            )
        used = next((s for s in self.stages if s["name"] == name), None)
        if used is not None:
            raise PhasescopeError(
                f"stage {name!r} was already run (steps {used['first_step']}–{used['last_step'] or 'now'}); "
                f"stages run once each, in order: name this one differently (e.g. {name + '-2'!r})"
            )
        self._pending = {
            "name": name,
            "first_step": None,
            "last_step": None,
            "trainer": None if trainer is None else str(trainer),
            "meta": check_json(dict(meta or {}), f"stage {name!r} metadata"),
        }

    def on_step(self, step: int) -> bool:
        """Note a recorded step; True when the ``stages`` attribute changed (a pending stage began)."""
        changed = False
        if self._pending is not None:
            if self.stages:
                self.stages[-1]["last_step"] = self._last_step
            self.stages.append({**self._pending, "first_step": int(step)})
            self._pending = None
            changed = True
        self._last_step = int(step)
        return changed

    def close(self) -> bool:
        """The run ends: the last stage's ``last_step`` is the last recorded step, also when this process
        continued a stage an earlier one began (True if it changed)."""
        self._pending = None  # a stage started after the last step has no steps: it is not a stage
        if self.stages and self._last_step is not None and self.stages[-1]["last_step"] != self._last_step:
            self.stages[-1]["last_step"] = self._last_step
            return True
        return False

    def to_json(self) -> list[dict]:
        return [dict(s) for s in self.stages]
