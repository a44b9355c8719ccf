"""list_runs: a cheap catalog of the runs under a directory (the dashboard polls it).

Only each run's root ``zarr.json`` is read (one small JSON file per run, no zarr or xarray import
for local roots). Each run has one ``state`` (see ``store.lifecycle``): ``"finished"``,
``"interrupted"`` or ``"failed"`` as its writer recorded on close; a run still ``"running"`` is
``"live"`` while its last commit (``phasescope_commit.updated``) is at most ``live_window`` seconds
old and ``"stale"`` after that (its writer was killed without closing).

This is the one place that derives a run's state: the dashboard's catalog calls ``run_info``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from . import _io
from .errors import NotARunError
from .lifecycle import CLOSE_STATUSES, FAILED, FINISHED, LIVE, RUNNING, STALE
from .schema import COMMIT_ATTR

LIVE_WINDOW_S = 300.0


@dataclass(frozen=True)
class RunInfo:
    """One catalog row. ``state`` is "live", "stale", "finished", "interrupted" or "failed";
    ``error`` is the stored error of a failed run; ``silent_s`` the seconds since the last commit."""

    name: str
    path: str
    n_steps: int
    n_captures: int
    last_step: int | None
    updated: _dt.datetime | None
    model: str | None
    state: str
    error: str | None = None
    silent_s: float | None = None
    created: str | None = None
    schema: int | None = None

    @property
    def live(self) -> bool:
        """True while a writer is committing to the run (state "live")."""
        return self.state == LIVE

    @property
    def finished(self) -> bool:
        """True when the run was closed normally (state "finished")."""
        return self.state == FINISHED

    @property
    def status(self) -> str:
        """The former name of ``state``."""
        return self.state

    def describe(self) -> str:
        """The state in words: "live", "finished", "interrupted", "failed: <error>",
        "stale: no commit for 12 min"."""
        if self.state == FAILED and self.error:
            return f"{FAILED}: {self.error}"
        if self.state == STALE:
            return f"{STALE}: no commit " + ("yet" if self.silent_s is None else f"for {_duration(self.silent_s)}")
        return self.state


def run_state(attrs: dict, *, now: float | None = None, live_window: float = LIVE_WINDOW_S) -> str:
    """A run's state from its root attributes (see the module docstring)."""
    status = attrs.get("status")
    if status is None:  # written before the status attribute: only ``finished`` tells
        status = FINISHED if attrs.get("finished") else RUNNING
    if status in CLOSE_STATUSES:
        return status
    if status != RUNNING:
        return FAILED  # a status this phasescope does not know: not live, not a clean end
    t = (attrs.get(COMMIT_ATTR) or {}).get("updated")
    now = time.time() if now is None else now
    return LIVE if t is not None and now - float(t) <= live_window else STALE


def run_info(
    name: str, path: str, attrs: dict, *, now: float | None = None, live_window: float = LIVE_WINDOW_S
) -> RunInfo:
    """The catalog row of one run from its root attributes."""
    commit = attrs.get(COMMIT_ATTR) or {}
    t = commit.get("updated")
    now = time.time() if now is None else now
    state = run_state(attrs, now=now, live_window=live_window)
    model = attrs.get("model")
    if model is not None and not isinstance(model, str):
        model = json.dumps(model)[:200]
    error = attrs.get("error")
    if state == FAILED and not error and attrs.get("status") not in (None, FAILED):
        error = f"unknown status {attrs.get('status')!r}"
    return RunInfo(
        name=name,
        path=path,
        n_steps=int(commit.get("n_steps", 0)),
        n_captures=int(commit.get("n_captures", 0)),
        last_step=commit.get("last_step"),
        updated=None if t is None else _dt.datetime.fromtimestamp(float(t), _dt.UTC),
        model=model,
        state=state,
        error=str(error) if error and state == FAILED else None,
        silent_s=None if t is None else max(0.0, now - float(t)),
        created=attrs.get("created"),
        schema=attrs.get("phasescope_schema"),
    )


def list_runs(root: Any, *, live_window: float = LIVE_WINDOW_S) -> list[RunInfo]:
    """Runs directly under ``root`` (and ``root`` itself if it is a run), newest update first.
    A run still "running" whose last commit is older than ``live_window`` seconds is "stale"."""
    out: list[RunInfo] = []
    lp = _io.local_path(root)
    now = time.time()
    if lp is not None:
        if not lp.exists():
            raise NotARunError(f"run root {lp} does not exist; create it or pass the directory holding the runs")
        if not lp.is_dir():
            raise NotARunError(f"run root {lp} is a file, not a directory; pass the directory holding the runs")
        candidates = [
            (lp.name, str(lp), lp),
            *sorted((e.name, e.path, e.path) for e in os.scandir(lp) if e.is_dir(follow_symlinks=True)),
        ]
        for name, p, loc in candidates:
            attrs = _attrs_of(loc)
            if attrs is not None:
                out.append(run_info(name, p, attrs, now=now, live_window=live_window))
    else:
        import fsspec

        fs, base = fsspec.core.url_to_fs(root)
        proto = root.split("://", 1)[0]
        entries = [base] + [e["name"] for e in fs.ls(base, detail=True) if e["type"] == "directory"]
        for p in entries:
            try:
                attrs = json.loads(fs.cat_file(p.rstrip("/") + "/zarr.json")).get("attributes", {})
            except (FileNotFoundError, ValueError):
                continue
            if "phasescope_schema" in attrs:
                url = f"{proto}://{p.lstrip('/')}" if proto == "memory" else f"{proto}://{p}"
                out.append(run_info(p.rstrip("/").rsplit("/", 1)[-1], url, attrs, now=now, live_window=live_window))
    out.sort(key=lambda r: (r.updated is None, -(r.updated.timestamp() if r.updated else 0), r.name))
    return out


def _attrs_of(loc: Any) -> dict | None:
    try:
        with open(os.path.join(loc, "zarr.json"), "rb") as f:
            attrs = json.loads(f.read()).get("attributes", {})
    except (OSError, ValueError):
        return None
    return attrs if "phasescope_schema" in attrs else None


def _duration(s: float) -> str:
    """12 s, 12 min, 3.5 h, 2.0 days."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"
