"""Figures for papers: the dashboard's figures of one or more runs, restyled for print and written as PDF
(one page per figure), SVG, PNG or one self-contained HTML file.

    phasescope report runs/a.zarr runs/b.zarr --out fig.pdf          # every figure, one page each
    phasescope.report("runs/a.zarr", "traj.svg", figure="trajectories", width=600, font_size=12)

Figures (``FIGURES``) are the dashboard's own builders, not copies: trajectories (``figure_trajectories``,
the metric per layer over steps with the loss and the detected phases), the layer × step heatmap
(``figure_heatmap``), the eigenspectrum with its α-ReQ fit (``figure_spectrum``) and the layer profile
(``figure_profile``). Trajectories and profiles overlay the runs, each named in the legend; heatmaps
and spectra get one page per run, titled with the run's name. Phases come from the run's stored
``phases`` group when it covers every capture, else they are detected in memory (a report never writes
into a run); with several runs each run's phases get a strip of their own. A run's training stages
(``obs.stage``) are marked on the trajectories and heatmaps as on the dashboard: a dotted line where each
begins, named along the top.

Static formats go through kaleido, which drives a Chromium (the system's); every figure of a report is
written in one kaleido session (a Chromium start costs 2-4 s). A PDF of several figures is merged page
by page with pypdf. Files are written beside their target and moved into place when complete, so a
failed export never leaves half a file. The figure builders and plotly are imported when a report is
drawn, so the CLI's ``--help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phasescope.errors import PhasescopeError

FIGURES = ("trajectories", "heatmap", "spectrum", "profile")
FORMATS = (".pdf", ".svg", ".png", ".html")
PER_RUN = ("heatmap", "spectrum")  # one page per run; the others overlay the runs
INSTALL = "pip install 'phasescope[report]'"
BASE_FONT = 12  # the dashboard's font size, which its explicit sizes assume


@dataclasses.dataclass(frozen=True)
class Style:
    """Print style: size in layout pixels (PDF and SVG are vector; PNG is width·scale × height·scale
    pixels), the base font size and family."""

    width: int = 720
    height: int = 480
    font_size: int = 14
    font_family: str = "Arial, Helvetica, Liberation Sans, sans-serif"
    scale: float = 2.0


@dataclasses.dataclass(frozen=True)
class Page:
    """One figure of a report: its kind (``FIGURES``), the run a per-run figure shows (None for an
    overlay of every run) and the plotly figure."""

    kind: str
    run: str | None
    figure: Any  # a plotly Figure (plotly ships no type hints)


# -- runs -----------------------------------------------------------------------------------------
def _name(path: Path) -> str:
    return path.name.removesuffix(".zarr") or str(path)


def load_runs(runs) -> tuple[dict, dict]:
    """(name → Dataset, name → path or None) of ``runs``: a run store path, a list of them, a Dataset
    or a mapping name → Dataset. Names are the stores' folder names (without .zarr), with their parent
    folder when two would be equal; a run given twice is an error."""
    from phasescope.store import open_run

    if hasattr(runs, "data_vars"):
        runs = {str(runs.attrs.get("name", "run")): runs}
    if isinstance(runs, Mapping):
        return dict(runs), dict.fromkeys(runs)
    paths = [Path(runs)] if isinstance(runs, (str, os.PathLike)) else [Path(r) for r in runs]
    if not paths:
        raise PhasescopeError("no run given; pass one or more run stores, e.g. runs/demo.zarr")
    seen: dict[Path, Path] = {}
    for p in paths:
        if not p.exists():
            raise PhasescopeError(f"{p} does not exist; pass a run store such as runs/demo.zarr")
        real = p.resolve()
        if real in seen:
            raise PhasescopeError(f"{p} is given twice (as {seen[real]} too); pass each run once")
        seen[real] = p
    names = [_name(p) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.resolve().parent.name}/{_name(p)}" for p in paths]
    if len(set(names)) < len(names):
        raise PhasescopeError(
            "two runs have the same folder and parent names; rename one so the figures can tell them apart"
        )
    return {n: open_run(p) for n, p in zip(names, paths)}, dict(zip(names, paths))


def run_phases(ds, path: Path | None):
    """The run's ``phases`` group when it was computed on all of the run's captures, else phases
    detected now in memory (not saved); None when they cannot be detected (too few captures, …)."""
    n = int(ds.sizes.get("capture_step", 0))
    if path is not None:
        from phasescope.store import open_group

        try:
            g = open_group(path, "phases")
            if g is not None and int(g.attrs.get("n_captures", -1)) == n:
                return g.load()
        except Exception:  # noqa: BLE001 - absent or unreadable group: detect below
            pass
    from phasescope.spectra.phases import detect_phases

    try:
        return detect_phases(ds).to_dataset()
    except (PhasescopeError, ValueError, KeyError):
        return None


# -- checks: one line naming the problem and the fix ----------------------------------------------
def _closest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.4)
    return f"closest: {', '.join(close)}" if close else f"available: {', '.join(choices[:12])}"


def check_metric(runs: dict, metric: str, kinds: Sequence[str]) -> None:
    """``metric`` must be drawable by every requested figure in every run."""
    from .heatmap_figures import capture_metrics, heatmap_metrics

    if set(kinds) <= {"spectrum"}:
        return
    for name, ds in runs.items():
        per_layer = capture_metrics(ds)
        allowed = heatmap_metrics(ds) if set(kinds) <= {"heatmap"} else per_layer
        if metric not in allowed:
            raise PhasescopeError(
                f"metric {metric!r} is not recorded per layer in run {name}; "
                f"{_closest(metric, allowed or per_layer)} (pass --metric NAME)"
            )


def check_probes(runs: dict, probes: Sequence[str]) -> None:
    for name, ds in runs.items():
        have = [str(p) for p in ds["probe"].values] if "probe" in ds.coords else []
        for p in probes:
            if p not in have:
                raise PhasescopeError(f"probe {p!r} is not in run {name}; {_closest(p, have)} (pass --probe NAME)")


def check_step(runs: dict, step: int) -> None:
    for name, ds in runs.items():
        caps = np.asarray(ds["capture_step"].values, dtype=np.int64)
        if not caps.size:
            raise PhasescopeError(f"run {name} has no capture yet; wait for its first capture")
        if step not in caps:
            near = int(caps[np.argmin(np.abs(caps - step))])
            raise PhasescopeError(
                f"step {step} is not a capture of run {name}; the nearest captured step is "
                f"{near} (captures run {int(caps[0])}…{int(caps[-1])}; pass --step {near})"
            )


# -- figures --------------------------------------------------------------------------------------
def _kinds(figure: str | Sequence[str]) -> list[str]:
    kinds = list(FIGURES) if figure in ("all", None) else [figure] if isinstance(figure, str) else list(figure)
    for k in kinds:
        if k not in FIGURES:
            raise PhasescopeError(f"unknown figure {k!r}; choose from all, {', '.join(FIGURES)}")
    return kinds


def report_figures(
    runs,
    *,
    figure: str | Sequence[str] = "all",
    metric: str = "rankme",
    probes: Sequence[str] | None = None,
    step: int | None = None,
    phases: bool = True,
    style: Style = Style(),
) -> tuple[list[Page], list[str]]:
    """(pages, notes): the report's figures restyled for print, and one note per figure left out
    because a run lacks its data (e.g. no stored eigenvalues). ``runs`` as ``load_runs`` takes them;
    ``probes``: the layers the trajectories draw (default: up to 8 spread over depth), the first is the
    spectrum's (default: the last probe); ``step``: the capture of spectra and profiles (default: each
    run's last). Bad names and steps raise PhasescopeError with the closest names or nearest step."""
    from .heatmap_figures import figure_heatmap
    from .profile_figures import figure_profile, last_capture
    from .spectrum_figures import figure_spectrum
    from .stage_figures import add_stage_marks
    from .trajectory_figures import figure_trajectories

    kinds = _kinds(figure)
    data, paths = load_runs(runs)
    check_metric(data, metric, kinds)
    if probes:
        check_probes(data, probes)
    if step is not None and {"spectrum", "profile"} & set(kinds):
        check_step(data, int(step))
    names = list(data)
    pages: list[Page] = []
    for kind in kinds:
        if kind == "trajectories":
            ph = {n: run_phases(ds, paths[n]) for n, ds in data.items()} if phases else {}
            fig = add_stage_marks(figure_trajectories(data, metric=metric, probes=probes or None, phases=ph), data)
            if not phases:
                _drop_note(fig, "phases not computed")  # not asked for is not "not computed"
            pages.append(Page(kind, None, fig))
        elif kind == "profile":
            pages.append(Page(kind, None, figure_profile(data, metric=metric, step=step)))
        for name in names if kind in PER_RUN else ():
            ds = data[name]
            if kind == "heatmap":
                fig = add_stage_marks(figure_heatmap(ds, metric), {name: ds})
            else:
                probe = probes[0] if probes else str(ds["probe"].values[-1])
                fig = figure_spectrum(ds, probe, int(step) if step is not None else last_capture(ds))
            pages.append(Page(kind, name, fig))
    kept, notes = [], []
    for page in pages:
        empty = (page.figure.layout.meta or {}).get("empty")
        if empty:
            notes.append(f"{page.kind}{f' of run {page.run}' if page.run else ''} left out: {empty}")
            if len(kinds) == 1:
                raise PhasescopeError(notes[-1])
            continue
        kept.append(Page(page.kind, page.run, print_style(page, names, style)))
    return kept, notes


def _drop_note(fig, ending: str) -> None:
    """Remove the builder's notes ending in ``ending`` from the figure's note line (``meta["notes"]``)."""
    meta = dict(fig.layout.meta or {})
    notes = list(meta.get("notes") or [])
    keep = [n for n in notes if not n.endswith(ending)]
    if keep == notes:
        return
    line, kept = "; ".join(notes), []
    for a in fig.layout.annotations:
        if a.text != line:
            kept.append(a)
        elif keep:
            kept.append(a.update(text="; ".join(keep)))
    fig.layout.annotations = kept
    fig.layout.meta = {**meta, "notes": keep}


def _titled(page: Page, names: list[str]) -> str:
    text = page.figure.layout.title.text or ""
    if page.run is not None:
        return f"{page.run} · {text}"
    if len(names) == 1:  # an overlay of one run still names it; several are named in the legend
        head, _, sub = text.partition("<br>")
        return f"{head} · {names[0]}" + (f"<br>{sub}" if sub else "")
    return text


def print_style(page: Page, names: list[str], style: Style):
    """A copy of the page's figure for print: white background, the chosen size and fonts (explicit
    annotation sizes scaled with the base font), the run named in the title, no UI state."""
    import plotly.graph_objects as go

    d = page.figure.to_plotly_json()
    lay = d["layout"]
    k = style.font_size / BASE_FONT
    for note in lay.get("annotations", []) or []:
        font = note.setdefault("font", {})
        font["size"] = round(font.get("size", BASE_FONT) * k, 1)
    lay.pop("uirevision", None)
    lay.update(
        width=style.width,
        height=style.height,
        paper_bgcolor="white",
        plot_bgcolor="white",
        font={"family": style.font_family, "size": style.font_size, "color": "#111"},
    )
    small = f'<span style="font-size:{max(6, style.font_size - 2)}px">'  # a subtitle readable in print
    text = _titled(page, names).replace("<sup>", small).replace("</sup>", "</span>")
    lay["title"] = {"text": text, "font": {"size": round(style.font_size * 1.15, 1)}, "x": 0.01, "xanchor": "left"}
    legend = {**(lay.get("legend") or {}), "font": {"size": max(6, style.font_size - 2)}}
    if page.kind == "trajectories":  # many entries and a loss axis on the right: the legend goes below
        legend.update(orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top", traceorder="normal")
        # round loss ticks of its own (an overlaying axis syncs its ticks to the left axis's grid by default)
        lay.get("yaxis2", {}).update(automargin=True, tickmode="auto")
    lay["legend"] = legend
    lines = 1 + lay["title"]["text"].count("<br>")
    above = any(float(a.get("y", 0)) > 1 for a in lay.get("annotations", []) or [] if a.get("yref") == "paper")
    lay["margin"] = {**(lay.get("margin") or {}), "t": round(style.font_size * (1.6 * lines + 1.4 * above) + 24)}
    for key, ax in lay.items():  # a long axis title in two lines: "RankMe<br>(Li et al. 2025, covariance)"
        text = ((ax.get("title") or {}).get("text") or "") if re.fullmatch(r"[xy]axis\d*", key) else ""
        if len(text) > 24 and " (" in text and "<br>" not in text:
            ax["title"]["text"] = text.replace(" (", "<br>(", 1)
    _decade_ticks(d)
    return go.Figure(d, _validate=False)


def _decade_ticks(d: dict) -> None:
    """Log axes without explicit ticks: labelled 1-2-5 under two decades, each decade up to eight, every
    k-th decade beyond (about six labels) instead of plotly's digit under every minor tick, which crowds a
    printed axis."""
    from ._plotly import decode_array

    lay = d["layout"]
    for key, ax in list(lay.items()):
        if not re.fullmatch(r"[xy]axis\d*", key) or ax.get("type") != "log" or "tickvals" in ax:
            continue
        ref = key[0] + key[5:]
        vals = [
            np.asarray(decode_array(t.get(key[0])), float).ravel()
            for t in d["data"]
            if t.get(key[0] + "axis", key[0]) == ref and t.get(key[0]) is not None
        ]
        v = np.concatenate(vals) if vals else np.array([])
        v = v[np.isfinite(v) & (v > 0)]
        if not v.size:
            continue
        lo, hi = np.log10(v.min()), np.log10(v.max())
        if hi - lo > 8:
            ax["dtick"] = int(np.ceil((hi - lo) / 6))
        elif hi - lo >= 2:
            ax["dtick"] = 1
        else:
            ticks = [m * 10.0**e for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1) for m in (1, 2, 5)]
            ticks = [t for t in ticks if 10**lo / 1.001 <= t <= 10**hi * 1.001]
            if len(ticks) >= 2:
                ax.update(tickmode="array", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])


# -- writing ---------------------------------------------------------------------------------------
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def output_paths(out: Path, pages: list[Page]) -> list[Path]:
    """Where each page of an SVG or PNG report goes: ``out`` for one page, else
    ``<stem>-<figure>[-<run>]<ext>`` beside it."""
    if len(pages) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{p.kind}" + (f"-{_safe(p.run)}" if p.run else "") + out.suffix) for p in pages]


def check_out(out) -> Path:
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise PhasescopeError(f"cannot write {out.name!r}: --out must end in {', '.join(FORMATS)}")
    if out.is_dir():
        raise PhasescopeError(f"{out} is a folder; pass a file name such as {out / ('figures' + out.suffix)}")
    folder = next((p for p in out.absolute().parents if p.exists()), None)  # the nearest existing folder
    if folder is None or not folder.is_dir():
        raise PhasescopeError(f"cannot write {out}: {folder} is not a folder; pass --out in a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PhasescopeError(f"cannot write {out}: {folder} is not writable; pass --out in a folder you can write")
    return out


def _html(pages: list[Page]) -> str:
    """One self-contained page: plotly.js inlined once (works offline), every figure after it."""
    import plotly.io as pio

    parts = [
        pio.to_html(p.figure, include_plotlyjs=(i == 0), full_html=False, config={"displaylogo": False})
        for i, p in enumerate(pages)
    ]
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>phasescope report</title></head>\n'
        '<body style="background:white">\n' + "\n".join(parts) + "\n</body></html>\n"
    )


EXPORT_TRIES = 3


def _static(pages: list[Page], files: list[Path], style: Style) -> None:
    """Write every page with one kaleido session (``style.scale`` for PNG only: PDF and SVG are vector);
    a missing kaleido or Chromium is one line naming the fix. Under heavy load kaleido has returned
    without writing a file (seen in CI, and with four processes on two cores here): the missing pages are
    exported up to EXPORT_TRIES times in all, a little later each time, then a clear error names them."""
    _export(pages, files, style)
    for attempt in range(1, EXPORT_TRIES):
        missing = [i for i, f in enumerate(files) if not f.exists()]
        if not missing:
            break
        time.sleep(0.5 * attempt)
        _export([pages[i] for i in missing], [files[i] for i in missing], style)
    missing = [i for i, f in enumerate(files) if not f.exists()]
    if missing:
        raise PhasescopeError(
            f"the static export wrote no file for {len(missing)} of {len(files)} figure(s) (kaleido returned "
            "without output; a busy machine can cause it): run the command again, or write --out FILE.html"
        )


def _export(pages: list[Page], files: list[Path], style: Style) -> None:
    try:
        import kaleido  # noqa: F401
        import plotly.io as pio
        from kaleido.errors import ChromeNotFoundError
    except ImportError:
        raise PhasescopeError(f"PDF, SVG and PNG need kaleido: {INSTALL} (or write --out FILE.html)") from None
    try:
        pio.write_images(
            [p.figure for p in pages],
            [str(f) for f in files],
            width=style.width,
            height=style.height,
            scale=[style.scale if f.suffix == ".png" else 1 for f in files],
            validate=False,
        )
    except (ChromeNotFoundError, RuntimeError, FileNotFoundError, OSError) as exc:
        text = str(exc)
        if isinstance(exc, ChromeNotFoundError) or "chrome" in text.lower() or "browser" in text.lower():
            raise PhasescopeError(
                "PDF, SVG and PNG need Chromium, which kaleido drives: apt-get install chromium "
                "(or set BROWSER_PATH to a Chrome), or write --out FILE.html"
            ) from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
        raise PhasescopeError(f"the static export failed: {first}") from None


def write_report(pages: list[Page], out, style: Style = Style()) -> list[Path]:
    """Write ``pages`` to ``out`` by its extension (``FORMATS``); returns the files written. Each file
    is written to a temporary name beside its target and renamed when complete."""
    out = check_out(out)
    if not pages:
        raise PhasescopeError("nothing to draw: every requested figure lacks its data in these runs")
    try:
        return _write(pages, out, style)
    except OSError as exc:  # a full disk, a folder that vanished, …: one line, and nothing half-written
        raise PhasescopeError(f"cannot write {out}: {exc.strerror or exc}") from None


def _write(pages: list[Page], out: Path, style: Style) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = out.suffix.lower()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".phasescope-report-") as tmp_name:
        tmp = Path(tmp_name)
        if fmt == ".html":
            (tmp / "out").write_text(_html(pages), encoding="utf-8")
            os.replace(tmp / "out", out)
            return [out]
        if fmt == ".pdf":
            parts = [tmp / f"page{i}.pdf" for i in range(len(pages))]
            _static(pages, parts, style)
            if len(parts) > 1:
                _merge_pdf(parts, tmp / "out.pdf")
                parts = [tmp / "out.pdf"]
            os.replace(parts[0], out)
            return [out]
        files = output_paths(out, pages)
        tmp_files = [tmp / f"{i}{fmt}" for i in range(len(files))]
        _static(pages, tmp_files, style)
        for t, f in zip(tmp_files, files):
            os.replace(t, f)
        return files


def _merge_pdf(parts: list[Path], out: Path) -> None:
    try:
        from pypdf import PdfWriter
    except ImportError:
        raise PhasescopeError(
            f"a PDF of several figures needs pypdf to join its pages: {INSTALL} (or pass --figure to write one figure)"
        ) from None
    writer = PdfWriter()
    for p in parts:
        writer.append(str(p))
    with open(out, "wb") as f:
        writer.write(f)


def report(
    runs,
    out,
    *,
    figure: str | Sequence[str] = "all",
    metric: str = "rankme",
    probe: str | Sequence[str] | None = None,
    step: int | None = None,
    width: int = Style.width,
    height: int = Style.height,
    font_size: int = Style.font_size,
    font_family: str = Style.font_family,
    scale: float = Style.scale,
    phases: bool = True,
) -> list[Path]:
    """Write publication figures of ``runs`` (run store paths, or Datasets) to ``out``: .pdf (one page
    per figure), .svg or .png (one file per figure: ``out`` itself for one figure, else
    ``<stem>-<figure>[-<run>]<ext>`` beside it) or .html (every figure in one file, plotly.js inlined).

    ``figure``: "all" or one of ``FIGURES``; ``metric``: a per-layer metric (rankme, alpha, …);
    ``probe``: layer name(s) for trajectories, the first also the spectrum's; ``step``: the capture step
    of spectra and profiles (default: the last); ``width``/``height`` in layout pixels, ``scale``
    multiplies PNG pixels; ``phases``: shade detected phases on trajectories. Returns the files
    written. Figures a run has no data for are left out with a warning; bad names, steps or
    extensions raise PhasescopeError naming the fix."""
    import warnings

    style = Style(
        width=int(width), height=int(height), font_size=int(font_size), font_family=font_family, scale=float(scale)
    )
    check_out(out)
    probes = [probe] if isinstance(probe, str) else list(probe) if probe else None
    pages, notes = report_figures(
        runs, figure=figure, metric=metric, probes=probes, step=step, phases=phases, style=style
    )
    for n in notes:
        warnings.warn(n, stacklevel=2)
    return write_report(pages, out, style)


__all__ = [
    "FIGURES",
    "FORMATS",
    "Page",
    "Style",
    "load_runs",
    "print_style",
    "report",
    "report_figures",
    "write_report",
]
