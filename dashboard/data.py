"""Where the dashboard's data comes from: the served root, its run catalog, and an open-run cache.

The root is a runs directory (every run store below it is served) or a single run store. A run is
named in requests by its key: its path relative to the root, in POSIX form ("." for a root that is
itself a run). ``RunSource.resolve`` is the only way from a key to a path; it refuses absolute paths,
``..`` and anything that resolves (symlinks included) outside the root, or that is not a run of the
catalog, with a ``PathRefused`` error whose message the page shows.

A run's version token is the (mtime, size) of its root ``zarr.json``: the store rewrites that file when
it commits rows (``phasescope_commit``) or attributes (``status``), so a token change means new data.
A run's state (live, stale, finished, interrupted, failed) is ``phasescope.store.catalog``'s, the one
place that derives it; pages live-poll only while a selected run is live.
Open datasets are cached per key and reopened only when the token changes, one opening at a time per
run (a page load fires ~7 callbacks at once: without the lock each opened the run itself). On opening,
every variable smaller than ``EAGER_BYTES`` is read into memory once, so callbacks index numpy arrays
instead of re-reading chunks; ``eigenvalues`` (capture × probe × rank, hundreds of MB on big runs) stay
lazy and a spectrum reads one chunk. Spectra are never computed here — eigenvalues are read from the
store. The ``phases`` group (written by ``phasescope phases RUN``) is cached by the stat of its own
``zarr.json``, which ``write_group`` replaces on every write.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from phasescope.errors import PhasescopeError
from phasescope.store.catalog import LIVE_WINDOW_S, run_info
from phasescope.store.groups import open_group
from phasescope.store.reader import open_run

EAGER_BYTES = 64 * 2**20  # variables up to this size are read into memory when a run is opened


class PathRefused(PhasescopeError):
    """A request named a run outside the served root or not in its catalog."""


@dataclass(frozen=True)
class Run:
    key: str
    path: Path
    name: str
    model: str
    n_steps: int
    last_step: int | None
    updated: str
    state: str  # live / stale / finished / interrupted / failed (phasescope.store.catalog)
    detail: str = ""  # the state in words: "failed: <error>", "stale: no commit for 12 min", …
    mtime_ns: int = 0  # of the root zarr.json: orders runs by their last commit (``updated`` is to the second)

    @property
    def live(self) -> bool:
        """True while the run's writer is committing (only live runs are polled)."""
        return self.state == "live"


def _root_json(path: Path) -> dict | None:
    try:
        with open(path / "zarr.json", "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def is_run(path: Path) -> bool:
    """A phasescope run store: a zarr v3 group whose attributes carry ``phasescope_schema``."""
    meta = _root_json(path)
    return bool(meta) and "phasescope_schema" in (meta.get("attributes") or {})


def run_token(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) of the run's root zarr.json; changes whenever the writer commits."""
    st = os.stat(path / "zarr.json")
    return (st.st_mtime_ns, st.st_size)


def run_attrs(path: Path) -> dict:
    return dict((_root_json(path) or {}).get("attributes") or {})


class RunSource:
    """The runs under one root, with a cache of opened datasets (thread-safe: Dash serves callbacks
    from several threads)."""

    def __init__(self, root: str | os.PathLike, *, live_window: float = LIVE_WINDOW_S):
        """``live_window``: seconds without a commit after which a running run is "stale"."""
        root = Path(root).expanduser()
        if not root.exists():
            raise PhasescopeError(
                f"no runs directory at {root}: the path does not exist; pass a runs directory or a run store"
            )
        if not root.is_dir():
            raise PhasescopeError(f"{root} is a file; pass a runs directory or a run store")
        self.root = root.resolve()
        self.live_window = float(live_window)
        self.single = is_run(self.root)
        self._lock = threading.Lock()
        self._opening: dict[str, threading.Lock] = {}
        self._cache: dict[str, tuple[tuple[int, int], object]] = {}
        self._phases: dict[str, tuple[tuple[int, int, int], object]] = {}

    # -- catalog ----------------------------------------------------------------------------------
    def run_paths(self) -> list[Path]:
        """Run stores under the root (the root itself when it is a run), sorted by key."""
        if self.single:
            return [self.root]
        found = []
        for dirpath, dirnames, _ in os.walk(self.root, followlinks=False):
            p = Path(dirpath)
            if p != self.root and is_run(p):
                found.append(p)
                dirnames[:] = []  # a run's arrays are not runs
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        return sorted(found)

    def key_of(self, path: Path) -> str:
        rel = path.relative_to(self.root).as_posix()
        return rel if rel else "."

    def label(self, key: str) -> str:
        """The name figures give run ``key``: its key, or for a run served as the root (key ".") its
        folder's name without .zarr, as the run picker shows it."""
        return self.root.name.removesuffix(".zarr") if key == "." else key

    def catalog(self) -> list[Run]:
        """One row per run: name, model, steps, last update, state."""
        return [self._run(p) for p in self.run_paths()]

    def run(self, key: str) -> Run:
        """The catalog row of run ``key`` (PathRefused as ``resolve``)."""
        return self._run(self.resolve(key))

    def _run(self, p: Path) -> Run:
        attrs = run_attrs(p)
        info = run_info(p.name, str(p), attrs, live_window=self.live_window)  # the store's commit record
        try:
            mtime_ns = os.stat(p / "zarr.json").st_mtime_ns
            updated = _dt.datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
        except OSError:
            mtime_ns, updated = 0, "?"
        name = p.name if p != self.root or self.single else "."
        return Run(
            self.key_of(p),
            p,
            name.removesuffix(".zarr"),
            str(attrs.get("model", "?")),
            info.n_steps,
            info.last_step,
            updated,
            info.state,
            info.describe(),
            mtime_ns,
        )

    # -- requests ---------------------------------------------------------------------------------
    def resolve(self, key: str) -> Path:
        """The path of run ``key``; PathRefused when it leaves the root or is not a run."""
        if not isinstance(key, str) or not key:
            raise PathRefused(f"refused: empty run name; pick a run under {self.root}")
        pure = PurePosixPath(key)
        if pure.is_absolute() or Path(key).is_absolute() or ".." in pure.parts or "\\" in key:
            raise PathRefused(
                f"refused: {key!r} is outside the served root {self.root}; name a run by its path relative to the root"
            )
        path = (self.root / pure).resolve()
        if path != self.root and self.root not in path.parents:
            raise PathRefused(f"refused: {key!r} resolves outside the served root {self.root}")
        if not is_run(path):
            raise PathRefused(f"refused: {key!r} is not a run under {self.root}; pick one from the run picker")
        return path

    def dataset(self, key: str):
        """The run's committed rows as an xarray Dataset (``phasescope.store.open_run``; variables under
        ``EAGER_BYTES`` in memory, larger ones lazy), cached until its version token changes."""
        path = self.resolve(key)
        token = run_token(path)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == token:
                return hit[1]
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:  # concurrent callbacks wait for one opening instead of each opening the run
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None and hit[0] == token:
                    return hit[1]
            ds = open_run(path)
            small = [k for k, v in ds.data_vars.items() if v.nbytes <= EAGER_BYTES]
            ds = ds.assign({k: ds[k].load() for k in small}) if small else ds
            with self._lock:
                self._cache[key] = (token, ds)
        return ds

    def token(self, key: str) -> tuple[tuple[int, ...], Run]:
        """(version token, catalog row) of run ``key``, cheaply (no zarr import): the token is the run's
        token and the mtime of its phases group (0 when absent), so computing phases also refreshes a
        live page; the row's ``state`` says whether to keep polling (only while "live")."""
        path = self.resolve(key)
        try:
            ph = os.stat(path / "phases" / "zarr.json").st_mtime_ns
        except OSError:
            ph = 0
        return (*run_token(path), ph), self._run(path)

    def phases(self, key: str):
        """The run's ``phases`` group as an in-memory Dataset, or None when phases are not computed
        (or the group cannot be read)."""
        path = self.resolve(key)
        try:
            st = os.stat(path / "phases" / "zarr.json")
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            hit = self._phases.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        try:
            ph = open_group(path, "phases").load()
        except Exception:  # noqa: BLE001 - a damaged or foreign group: the panel says "not computed"
            ph = None
        with self._lock:
            self._phases[key] = (stamp, ph)
        return ph
