"""Dash callbacks: routing only. Each callback reads the selection, asks ``RunSource`` for datasets
and a ``figures`` builder for the figure. Live refresh: ``poll`` ticks every refresh_ms; the
``version`` store changes only when a selected run's token changes, so figures re-render only on new
data, and ``uirevision`` in every figure keeps the user's zoom. Polling stops when no selected run is
live: finished, interrupted, failed, or stale (running but silent past the store catalog's window).

The first page is rendered on the server: ``Views.initial`` computes every panel for the selection the
page's URL asks for (the same functions the callbacks call), and ``app.layout`` serves the page with
them filled in, so the browser draws each graph once, with its data, instead of drawing six empty
graphs and waiting for three rounds of callbacks (URL → runs → version → figures). The figure
callbacks therefore skip their initial call; they fire when the version, a dropdown or the alignment
changes.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import numpy as np
from dash import Input, Output, State, ctx, dcc, html, no_update

from phasescope.gradients import MATRIX_STATS
from phasescope.sweep import SIGNALS, compare_runs

from . import figures as F
from ._common import RUN_DASHES
from .data import PathRefused, RunSource
from .layout import ESD_CONTROLS, GRAPHS, IMAGE_FORMATS, STAT_PANELS, TABLES, graph_config, table
from .panel_figures import NEEDS
from .stage_figures import add_stage_marks, stage_names, stage_rows, zoom_to_stage

MAX_OVERVIEW_RUNS = 4
PLAY, PAUSE = "▶ play", "❚❚ pause"
NO_RUN = "no run selected: tick a run in the run picker"


def _run_label(r) -> html.Span:
    detail = r.detail or r.state
    short = detail if len(detail) <= 80 else detail[:79] + "…"
    return html.Span(
        className="run-label",
        children=[
            html.B(r.name),
            f" · {r.model} · {r.n_steps} steps · updated {r.updated} · ",
            html.Span(short, className=f"badge {r.state}", title=detail),
        ],
    )


def _keep(value, allowed):
    return value if value in allowed else (allowed[0] if allowed else None)


def name_run(fig, run: str, n_selected: int):
    """A panel that draws one run says which in its title (and ``meta.run``): "· run a" alone, "· run a
    (1 of 3 selected runs)" when others are ticked and not drawn here."""
    layout = fig.layout
    which = f"run {run}" + (f" (1 of {n_selected} selected runs)" if n_selected > 1 else "")
    text = (layout.title.text or "") if layout.title else ""
    head, sep, sub = text.partition("<br>")
    layout.title = {"text": f"{head} · {which}{sep}{sub}" if head else which}
    layout.meta = {**(layout.meta or {}), "run": run}
    return fig


class Views:
    """What each panel shows for a selection: the bodies of the callbacks, also used to render the
    first page on the server (``initial``)."""

    def __init__(self, src: RunSource, refresh_ms: int):
        self.src, self.refresh_ms = src, refresh_ms

    def datasets(self, version, limit=None) -> dict:
        """The selected runs' Datasets, keyed by the name the figures show (``RunSource.label``)."""
        keys = (version or {}).get("runs", [])[:limit]
        return {self.src.label(k): self.src.dataset(k) for k in keys}

    def first(self, version):
        return next(iter(self.datasets(version, 1).values()), None)

    def catalog(self) -> list[dict]:
        return [{"label": _run_label(r), "value": r.key} for r in self.src.catalog()]

    def from_url(self, search: str | None):
        runs = self.src.catalog()
        asked = parse_qs((search or "").lstrip("?")).get("run", [])
        chosen, notes = [], []
        for k in asked:
            try:
                self.src.resolve(k)
                chosen.append(k)
            except PathRefused as e:
                notes.append(html.Div(str(e), className="refused"))
        if not asked and runs:
            chosen = [max(runs, key=lambda r: r.mtime_ns).key]
        elif not runs:
            notes.append(html.Div(f"no runs under {self.src.root} yet; this page refreshes when one appears"))
        return chosen, notes or None

    def version(self, selected):
        """(version data, polling done, status text) of the selected runs; polling is done when none
        of them is live. The text is a red span (class ``bad``) when one is interrupted, failed or stale."""
        tokens, rows = [], []
        for k in selected or []:
            try:
                t, r = self.src.token(k)
            except (PathRefused, OSError):
                continue
            tokens.append([k, ":".join(map(str, t))])  # a string: ns mtimes exceed JS's 2^53 integers
            rows.append(r)
        new = {"runs": [k for k, _ in tokens], "tokens": tokens}
        done = bool(rows) and not any(r.live for r in rows)
        if not rows:
            status = "no run selected"
        elif done:
            text = " · ".join(dict.fromkeys(r.detail or r.state for r in rows)) + " · live refresh off"
            bad = any(r.state in F.RED_STATES for r in rows)  # interrupted, failed, stale: red, not green
            status = html.Span(text, className="bad") if bad else text
        else:
            status = f"live · refreshing every {self.refresh_ms / 1000:g} s"
        return new, done, status

    def overview(self, version, align):
        runs = self.datasets(version, MAX_OVERVIEW_RUNS)
        return add_stage_marks(F.figure_overview(runs, align=align), runs, align)

    def heatmap(self, version, metric, align):
        """(figure, dropdown options, dropdown value)."""
        ds = self.first(version)
        if ds is None:
            return F.empty_figure(NO_RUN), [], no_update
        allowed = F.heatmap_metrics(ds)
        metric = metric if metric in allowed else F.default_heatmap_metric(allowed) or "rankme"

        def one(name, run):
            return add_stage_marks(F.figure_heatmap(run, metric, align=align), {name: run}, align)

        fig = self._per_run(version, one, f"{F.label(metric)} per layer")
        return fig, [{"label": F.label(m), "value": m} for m in allowed], metric

    def _per_run(self, version, build, heading: str):
        """``build(name, ds)`` of the selected run, or of each of the first MAX_OVERVIEW_RUNS as small
        multiples (a row per run, named; the figure says when more are ticked than drawn)."""
        keys = (version or {}).get("runs", [])
        if len(keys) == 1:
            return self._named(build(self.src.label(keys[0]), self.src.dataset(keys[0])), version)
        shown = keys[:MAX_OVERVIEW_RUNS]
        figs = {self.src.label(k): build(self.src.label(k), self.src.dataset(k)) for k in shown}
        more = f" (the first {len(shown)} of {len(keys)} selected runs)" if len(keys) > len(shown) else ""
        return F.small_multiples(figs, f"{heading} · {len(shown)} runs{more}")

    def _named(self, fig, version, key: str | None = None):
        """``fig`` drawn from one selected run (``key``, default the first) names it (`name_run`)."""
        keys = (version or {}).get("runs", [])
        return name_run(fig, self.src.label(key or keys[0]), len(keys)) if keys else fig

    def trajectories(self, version, metric, probes, align):
        """(figure, metric options, metric value, probe options)."""
        runs = self.datasets(version)
        first = next(iter(runs.values()), None)
        allowed = F.capture_metrics(first) if first is not None else []
        metric = _keep(metric, allowed) or "rankme"
        phases = {self.src.label(k): self.src.phases(k) for k in (version or {}).get("runs", [])}
        # a sweep: each run's deepest probe (its layers are a click away in the dropdown), not a spread of
        # layers per run (20 runs × 9 lines drew 180 traces, 300 kB, most of the page's time)
        deepest = not probes and len(runs) > MAX_OVERVIEW_RUNS
        fig = F.figure_trajectories(
            runs, metric=metric, probes=probes or None, align=align, phases=phases, deepest=deepest
        )
        fig = add_stage_marks(fig, runs, align)
        names = [str(p) for p in first["probe"].values] if first is not None and "probe" in first.coords else []
        return fig, [{"label": F.label(m), "value": m} for m in allowed], metric, names

    def stat_panel(self, version, name, align):
        """A panel the statistic registry declares (see panel_figures)."""
        runs = self.datasets(version)
        return add_stage_marks(F.figure_panel(runs, name, align=align), runs, align) if runs else F.empty_figure(NO_RUN)

    def esd(self, version, run=None, matrix=None, step=None):
        """(figure, then options and value of the run, matrix and step dropdowns): the weight ESD one
        selected run stored for one matrix at one capture; the title names the run."""
        esd = {k: (ds, F.esd_steps(ds)) for k, ds in self.datasets(version).items()}
        runs = {k: ds for k, (ds, steps) in esd.items() if steps}
        if not runs:
            if not (version or {}).get("runs"):
                return (F.empty_figure(NO_RUN), *([[], None] * 3))
            msg = f"no selected run stores weight ESDs ({NEEDS['weights']})"
            return (F.empty_figure(msg, title="Weight ESD"), *([[], None] * 3))
        run = _keep(run, list(runs))
        ds = runs[run]
        names = [str(m) for m in ds["matrix"].values]
        steps = esd[run][1]
        matrix, step = _keep(matrix, names), step if step in steps else steps[-1]
        fig = F.figure_stored_esd(ds, matrix, step, run=run)
        return fig, list(runs), run, names, matrix, [{"label": str(s), "value": s} for s in steps], step

    def gradient_profile(self, version, stat="grad_nuclear", step="last", per_loss=False):
        """(figure, statistic options, step options): the gradient layer profile of the selected runs at
        the last capture, a chosen one, or averaged over all captures ("all")."""
        runs = self.datasets(version)
        first = next(iter(runs.values()), None)
        steps = (
            [int(c) for c in first["capture_step"].values]
            if first is not None and "capture_step" in first.coords
            else []
        )
        opts = [{"label": "last capture", "value": "last"}, {"label": "mean over all captures", "value": "all"}]
        opts += [{"label": f"step {c}", "value": str(c)} for c in steps]
        at = None if step in (None, "last") else ("all" if step == "all" else int(step))
        fig = F.figure_gradient_profile(runs, stat=stat or "grad_nuclear", step=at, per_loss=bool(per_loss))
        return fig, [{"label": F.LAYER_GRADIENT_NAMES.get(m, m) + f" ({m})", "value": m} for m in MATRIX_STATS], opts

    def phases(self, version, align):
        keys = (version or {}).get("runs", [])
        if not keys:
            return F.empty_figure(NO_RUN)
        phases = {self.src.label(k): k for k in keys}

        def one(name, run):
            fig = F.figure_phase_strip(run, self.src.phases(phases[name]), align=align)
            return add_stage_marks(fig, {name: run}, align)

        return self._per_run(version, one, "Phases per layer")

    def gradients(self, version, align, stat=None):
        """One run's gradient panel (named), or the first MAX_OVERVIEW_RUNS selected runs' overlaid (lines)
        and stacked (the heatmaps, a row per run and projection type)."""
        runs = self.datasets(version, MAX_OVERVIEW_RUNS)
        if not runs:
            return F.empty_figure(NO_RUN)
        fig = add_stage_marks(F.figure_gradients(runs, stat=stat, align=align), runs, align)
        if len(runs) == 1:
            return self._named(fig, version)
        n = len((version or {}).get("runs", []))
        more = f" (the first {len(runs)} of {n} selected runs)" if n > len(runs) else ""
        meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
        heat = meta.get("heatmap_runs") or []
        heat_text = f"; heatmaps of {', '.join(heat)}" if heat and len(heat) < len(runs) else ""
        fig.layout.title = {"text": f"Gradients · runs {', '.join(runs)}{more}{heat_text}"}
        return fig

    def grad_stat_options(self, version) -> list[dict]:
        """The gradients panel's statistic choices: the first selected run's matrix gradient statistics."""
        runs = self.datasets(version, MAX_OVERVIEW_RUNS)  # the runs the panel draws
        stats = dict.fromkeys(s for ds in runs.values() for s in F.matrix_stats_of(ds))
        return [{"label": s, "value": s} for s in stats]

    def sweep_rows(self, version, rank_by: str | None = None) -> list[dict]:
        """The sweep table of the selected runs (two or more), ranked by ``rank_by`` (default the early
        gradient norm), then one row of Spearman correlations with the final loss over the finished runs."""
        runs = self.datasets(version)
        if len(runs) < 2:
            return []
        t = compare_runs(runs, rank_by=rank_by if rank_by in SIGNALS else "grad_norm")

        def f(v):
            return f"{v:.4g}" if isinstance(v, float) and np.isfinite(v) else "nan"

        rows = [
            {
                "rank": i,
                "run": r["run"],
                "early steps": f"≤ {r['early_steps']}",
                **{s: f(r[s]) for s in SIGNALS},
                "final loss": f(r["final"]) if r["finished"] else "running",
            }
            for i, r in enumerate(t.rows, 1)
        ]
        rho = {s: f"ρ {f(t.spearman[s])}" for s in SIGNALS}
        return [*rows, {"rank": "", "run": "Spearman ρ with the final loss", "early steps": "", **rho}]

    def table(self, tid: str, version, rank_by: str | None = None) -> list[dict]:
        """The rows of table ``tid``, each table on its own: one that cannot be computed (e.g. a sweep of
        runs with no steps yet) says why in a row and the others are still filled."""
        try:
            if tid in ("meta-table", "quality-table"):
                return self.table_rows(version)[tid == "quality-table"]
            return self.stage_rows(version) if tid == "stage-table" else self.sweep_rows(version, rank_by)
        except Exception as exc:  # noqa: BLE001 - one table's failure must not blank the others
            first = TABLES[tid][0] if tid != "sweep-table" else "run"
            return [{first: f"could not fill this table: {type(exc).__name__}: {exc}"}]

    def stage_options(self, version) -> list[dict]:
        """The stage selector's choices: the selected runs' stages (none: the selector offers nothing; a
        run that cannot be read offers none, and its panels say why)."""
        names: list[str] = []
        for key in (version or {}).get("runs", []):
            try:
                names += stage_names({key: self.src.dataset(key)})
            except Exception:  # noqa: BLE001 - a damaged run: its own panels show the error
                continue
        return [{"label": n, "value": n} for n in dict.fromkeys(names)]

    def stage_rows(self, version) -> list[dict]:
        """The per-stage table of the first selected run with stages (its stored phases), each row
        naming the run when several are selected."""
        for key in (version or {}).get("runs", []):
            rows = stage_rows(self.src.dataset(key), self.src.phases(key))
            if rows:
                n = len(version["runs"])
                return [{**r, "stage": f"{self.src.label(key)}: {r['stage']}"} for r in rows] if n > 1 else rows
        return []

    def table_rows(self, version):
        """(metadata rows, data-quality rows) of the first selected run; the metadata starts with
        the run's name (and how many are selected), then its state ("interrupted", "failed: <error>",
        "stale: no commit for 12 min", …)."""
        ds = self.first(version)
        if ds is None:
            return [], []
        keys = (version or {}).get("runs", [])
        which = self.src.label(keys[0]) + (f" (1 of {len(keys)} selected runs)" if len(keys) > 1 else "")
        first = {"key": "run", "value": which}
        try:
            run = self.src.run(keys[0])
        except (PathRefused, OSError):
            return [first, *F.metadata_rows(ds)], F.quality_rows(ds)
        return (
            [first, {"key": "state", "value": run.detail}, *F.metadata_rows(ds)],
            F.quality_rows(ds, state=run.state, detail=run.detail),
        )

    def spectrum(self, version, sel, *, trig=None, click_o=None, click_h=None, slider=None, hm_metric=None):
        """(figure, slider value, slider max, slider marks, selection, anim disabled, play label)."""
        runs = (version or {}).get("runs", [])
        if not runs:
            return F.empty_figure("no run selected"), 0, 0, None, None, no_update, no_update
        src = self.src
        sel = dict(sel or {})
        if sel.get("run") not in runs:
            sel = {"run": runs[0]}
        if trig == "overview" and click_o and click_o.get("points"):
            curve = int(click_o["points"][0].get("curveNumber", 0))
            run = runs[min(curve // len(F.OVERVIEW_METRICS), len(runs) - 1)]
            if hit := F.decode_click(click_o, src.dataset(run)["capture_step"].values):
                sel = {"run": run, "probe": hit["row"], "step": hit["step"]}
        elif trig == "heatmap" and click_h and click_h.get("points"):
            # small multiples: the clicked trace's run (a run with no heatmap of the metric has no trace)
            drawn = [k for k in runs[:MAX_OVERVIEW_RUNS] if F.heatmap_rows(src.dataset(k), hm_metric)]
            run = drawn[min(int(click_h["points"][0].get("curveNumber", 0)), len(drawn) - 1)] if drawn else runs[0]
            ds0 = src.dataset(run)
            if hm_metric in F.capture_metrics(ds0) and (hit := F.decode_click(click_h, ds0["capture_step"].values)):
                sel = {"run": run, "probe": hit["row"], "step": hit["step"]}
        ds = src.dataset(sel["run"])
        if "capture_step" not in ds.coords or ds.sizes.get("capture_step", 0) == 0:
            return F.empty_figure("no captures in this run yet"), 0, 0, None, sel, no_update, no_update
        steps = ds["capture_step"].values
        probes = [str(p) for p in ds["probe"].values]
        if sel.get("probe") not in probes:
            sel["probe"] = probes[-1]
        stop = no_update
        if trig == "spec-slider" and slider is not None:
            sel["step"] = int(steps[int(np.clip(slider, 0, len(steps) - 1))])
        elif trig == "anim":  # play: one capture forward per tick, stopping on the last one
            i = min(int(np.searchsorted(steps, sel.get("step", steps[-1]))) + 1, len(steps) - 1)
            sel["step"] = int(steps[i])
            if i == len(steps) - 1:
                stop = True
        if sel.get("step") is None or sel["step"] not in set(steps.tolist()):
            sel["step"] = int(steps[-1])
        idx = int(np.searchsorted(steps, sel["step"]))
        fig = F.figure_spectrum(ds, sel["probe"], sel["step"])
        fig = self._overlay_spectra(fig, runs, sel) if len(runs) > 1 else self._named(fig, version, sel["run"])
        marks_at = np.unique(np.linspace(0, len(steps) - 1, min(6, len(steps))).round().astype(int))
        marks = {int(i): str(int(steps[i])) for i in marks_at}
        return fig, idx, len(steps) - 1, marks, sel, stop, (PLAY if stop is True else no_update)

    def _overlay_spectra(self, fig, runs: list[str], sel: dict):
        """The other selected runs' spectra of the same probe, each at its last capture at or before the
        chosen step, drawn over the chosen run's (whose α fit the figure shows); the title names them."""
        if not fig.data:
            return self._named(fig, {"runs": runs}, sel["run"])
        main = self.src.label(sel["run"])
        fig.data[0].name = f"{main} · step {sel['step']}"
        drawn = [main]
        for i, key in enumerate([k for k in runs if k != sel["run"]][: MAX_OVERVIEW_RUNS - 1], 1):
            other = self.src.dataset(key)
            caps = other["capture_step"].values if "capture_step" in other.coords else []
            probes = [str(p) for p in other["probe"].values]
            if sel["probe"] not in probes or not len(caps) or "eigenvalues" not in other.data_vars:
                continue
            c = int(np.searchsorted(caps, sel["step"], side="right")) - 1 if caps[0] <= sel["step"] else 0
            step = int(caps[c])  # its last capture at or before the chosen step (else its first)
            eigs = np.asarray(other["eigenvalues"].variable[c, probes.index(sel["probe"])].values, float)
            trace = F.eigen_trace(eigs, f"{self.src.label(key)} · step {step}")
            if trace is None:
                continue
            trace.update(mode="lines", line={"dash": RUN_DASHES[i % len(RUN_DASHES)]})
            fig.add_trace(trace)
            drawn.append(self.src.label(key))
        head, sep, sub_title = (fig.layout.title.text or "").partition("<br>")
        runs_text = f" · runs {', '.join(drawn)} (α fit: {main})"
        fig.layout.title = {"text": f"{head}{runs_text}{sep}{sub_title}"}
        fig.layout.meta = {**(fig.layout.meta or {}), "run": main, "runs": drawn}
        return fig

    def initial(self, search: str | None = None) -> dict[tuple[str, str], object]:
        """Every (component id, property) → value of the first page for a URL query ``search``. A panel
        that fails (e.g. a damaged run) shows its error and the others are still drawn."""
        chosen, notes = self.from_url(search)
        version, done, status = self.version(chosen)
        out = {
            ("stage", "options"): self.stage_options(version),
            ("runs", "options"): self.catalog(),
            ("runs", "value"): chosen,
            ("notice", "children"): notes,
            ("version", "data"): version,
            ("poll", "disabled"): done,
            ("catalog-poll", "disabled"): done,
            ("status", "children"): status,
        }

        def panel(gid, build):
            try:
                return build()
            except Exception as exc:  # noqa: BLE001 - one panel's failure must not take the page down
                return F.empty_figure(f"could not draw this panel: {type(exc).__name__}: {exc}")

        out[("overview", "figure")] = panel("overview", lambda: self.overview(version, "step"))
        out[("phases", "figure")] = panel("phases", lambda: self.phases(version, "step"))
        out[("gradients", "figure")] = panel("gradients", lambda: self.gradients(version, "step"))
        try:
            out[("grad-stat", "options")] = self.grad_stat_options(version)
        except Exception:  # noqa: BLE001 - the gradients panel says what went wrong
            out[("grad-stat", "options")] = []
        hm = panel("heatmap", lambda: self.heatmap(version, None, "step"))
        if isinstance(hm, tuple):
            hm, hm_opts, hm_val = hm
            out[("heatmap-metric", "options")] = hm_opts
            if hm_val is not no_update:
                out[("heatmap-metric", "value")] = hm_val
        out[("heatmap", "figure")] = hm
        tr = panel("trajectories", lambda: self.trajectories(version, "rankme", None, "step"))
        if isinstance(tr, tuple):
            tr, tm_opts, tm_val, names = tr
            out.update(
                {
                    ("traj-metric", "options"): tm_opts,
                    ("traj-metric", "value"): tm_val,
                    ("traj-probes", "options"): names,
                }
            )
        out[("trajectories", "figure")] = tr
        for p in STAT_PANELS:
            out[(f"stat-{p}", "figure")] = panel(f"stat-{p}", lambda p=p: self.stat_panel(version, p, "step"))
        gp = panel("gradient-profile", lambda: self.gradient_profile(version))
        if isinstance(gp, tuple):
            gp, out[("gp-stat", "options")], out[("gp-step", "options")] = gp
        out[("gradient-profile", "figure")] = gp
        esd = panel("esd", lambda: self.esd(version))
        if isinstance(esd, tuple):
            esd, *choices = esd
            for i, cid in enumerate(ESD_CONTROLS):
                out[(cid, "options")], out[(cid, "value")] = choices[2 * i], choices[2 * i + 1]
        out[("esd", "figure")] = esd
        try:
            meta, quality = self.table_rows(version)
        except Exception as exc:  # noqa: BLE001
            meta, quality = (
                [],
                [{"check": "run could not be read", "value": f"{type(exc).__name__}: {exc}", "status": F.ERROR}],
            )
        out[("meta-table", "children")] = table(TABLES["meta-table"], meta)
        out[("quality-table", "children")] = table(TABLES["quality-table"], quality)
        for tid in ("stage-table", "sweep-table"):
            out[(tid, "children")] = table(TABLES[tid], self.table(tid, version))
        spec = panel("spectrum", lambda: self.spectrum(version, None))
        if isinstance(spec, tuple):
            fig, idx, top, marks, sel, _, _ = spec
            out.update(
                {
                    ("spec-slider", "value"): idx,
                    ("spec-slider", "max"): top,
                    ("spec-slider", "marks"): marks,
                    ("sel", "data"): sel,
                }
            )
        else:
            fig = spec
        out[("spectrum", "figure")] = fig
        return out


def register(app, src: RunSource) -> Views:
    """Register every callback on ``app``; returns the ``Views`` they route to."""
    V = Views(src, app._phasescope_refresh_ms)
    later = {"prevent_initial_call": True}  # the first page comes rendered from the server

    @app.callback(Output("runs", "options"), Input("catalog-poll", "n_intervals"), **later)
    def catalog(_n):
        return V.catalog()

    @app.callback(Output("runs", "value"), Output("notice", "children"), Input("url", "search"))
    def from_url(search):
        return V.from_url(search)

    @app.callback(
        Output("version", "data"),
        Output("poll", "disabled"),
        Output("catalog-poll", "disabled"),
        Output("status", "children"),
        Input("runs", "value"),
        Input("poll", "n_intervals"),
        State("version", "data"),
    )
    def version(selected, _n, old):
        new, done, status = V.version(selected)
        return (no_update if new == old else new), done, done, status

    def view(fig, relayout, version=None, stage=None, align="step"):
        """Over the chosen stage's steps (the stage selector); on a live refresh (only the version
        changed) the user's zoom is kept."""
        if stage:
            fig = zoom_to_stage(fig, V.datasets(version), stage, align)
        return F.keep_view(fig, relayout) if ctx.triggered_id == "version" else fig

    @app.callback(Output("stage", "options"), Input("version", "data"), **later)
    def stages(version):
        return V.stage_options(version)

    @app.callback(
        Output("overview", "figure"),
        Input("version", "data"),
        Input("align", "value"),
        Input("stage", "value"),
        State("overview", "relayoutData"),
        **later,
    )
    def overview(version, align, stage, relayout):
        return view(V.overview(version, align), relayout, version, stage, align)

    # Each dropdown is filled by the callback that draws its figure (its value is both an input and an
    # output there): with a separate "options" callback Dash held the heatmap and trajectories back until
    # the options had arrived and the browser had finished drawing the other figures (~1.5 s late).
    @app.callback(
        Output("heatmap", "figure"),
        Output("heatmap-metric", "options"),
        Output("heatmap-metric", "value"),
        Input("version", "data"),
        Input("heatmap-metric", "value"),
        Input("align", "value"),
        Input("stage", "value"),
        State("heatmap", "relayoutData"),
        **later,
    )
    def heatmap(version, metric, align, stage, relayout):
        fig, opts, value = V.heatmap(version, metric, align)
        return view(fig, relayout, version, stage, align), opts, value

    @app.callback(
        Output("trajectories", "figure"),
        Output("traj-metric", "options"),
        Output("traj-metric", "value"),
        Output("traj-probes", "options"),
        Input("version", "data"),
        Input("traj-metric", "value"),
        Input("traj-probes", "value"),
        Input("align", "value"),
        Input("stage", "value"),
        State("trajectories", "relayoutData"),
        **later,
    )
    def trajectories(version, metric, probes, align, stage, relayout):
        fig, opts, value, names = V.trajectories(version, metric, probes, align)
        return view(fig, relayout, version, stage, align), opts, value, names

    for p in STAT_PANELS:
        _register_stat_panel(app, V, p, view, later)

    @app.callback(
        Output("gradient-profile", "figure"),
        Output("gp-stat", "options"),
        Output("gp-step", "options"),
        Input("version", "data"),
        Input("gp-stat", "value"),
        Input("gp-step", "value"),
        Input("gp-per-loss", "value"),
        **later,
    )
    def gradient_profile(version, stat, step, per_loss):
        return V.gradient_profile(version, stat, step, bool(per_loss))

    @app.callback(
        Output("esd", "figure"),
        *(Output(cid, prop) for cid in ESD_CONTROLS for prop in ("options", "value")),
        Input("version", "data"),
        *(Input(cid, "value") for cid in ESD_CONTROLS),
        **later,
    )
    def esd(version, run, matrix, step):
        return V.esd(version, run, matrix, step)

    @app.callback(
        Output("phases", "figure"),
        Input("version", "data"),
        Input("align", "value"),
        Input("stage", "value"),
        State("phases", "relayoutData"),
        **later,
    )
    def phases(version, align, stage, relayout):
        return view(V.phases(version, align), relayout, version, stage, align)

    @app.callback(
        Output("gradients", "figure"),
        Output("grad-stat", "options"),
        Input("version", "data"),
        Input("align", "value"),
        Input("stage", "value"),
        Input("grad-stat", "value"),
        State("gradients", "relayoutData"),
        **later,
    )
    def gradients(version, align, stage, stat, relayout):
        fig = view(V.gradients(version, align, stat), relayout, version, stage, align)
        return fig, V.grad_stat_options(version)

    @app.callback(
        Output("meta-table", "children"),
        Output("quality-table", "children"),
        Output("stage-table", "children"),
        Output("sweep-table", "children"),
        Input("version", "data"),
        Input("sweep-rank", "value"),
        **later,
    )
    def tables(version, rank_by):
        return tuple(table(TABLES[tid], V.table(tid, version, rank_by)) for tid in TABLES)

    for tid in TABLES:
        _register_table_csv(app, tid, V.table)

    @app.callback(
        Output("spectrum", "figure"),
        Output("spec-slider", "value"),
        Output("spec-slider", "max"),
        Output("spec-slider", "marks"),
        Output("sel", "data"),
        Output("anim", "disabled", allow_duplicate=True),
        Output("spec-play", "children", allow_duplicate=True),
        Input("overview", "clickData"),
        Input("heatmap", "clickData"),
        Input("spec-slider", "value"),
        Input("anim", "n_intervals"),
        Input("version", "data"),
        State("sel", "data"),
        State("heatmap-metric", "value"),
        **later,
    )
    def spectrum(click_o, click_h, slider, _tick, version, sel, hm_metric):
        return V.spectrum(
            version, sel, trig=ctx.triggered_id, click_o=click_o, click_h=click_h, slider=slider, hm_metric=hm_metric
        )

    @app.callback(
        Output("anim", "disabled"),
        Output("spec-play", "children"),
        Output("spec-slider", "value", allow_duplicate=True),
        Input("spec-play", "n_clicks"),
        State("anim", "disabled"),
        State("spec-slider", "value"),
        State("spec-slider", "max"),
        prevent_initial_call=True,
    )
    def play(_n, disabled, value, last):
        """Play from the current capture (from the first when at the last one); pause when playing."""
        if not disabled:
            return True, PLAY, no_update
        restart = value is not None and last is not None and value >= last
        return False, PAUSE, (0 if restart else no_update)

    _register_image_format(app)

    for gid in GRAPHS:
        _register_export(app, gid)

    @app.callback(Output("catalog-dl", "data"), Input("catalog-csv", "n_clicks"), prevent_initial_call=True)
    def catalog_csv(_n):
        import pandas as pd

        rows = [
            {
                "key": r.key,
                "name": r.name,
                "model": r.model,
                "steps": r.n_steps,
                "last_step": r.last_step,
                "updated": r.updated,
                "state": r.state,
                "detail": r.detail,
            }
            for r in src.catalog()
        ]
        return dcc.send_data_frame(pd.DataFrame(rows).to_csv, "runs.csv", index=False)

    return V


# dcc.Graph hands its ``config`` to plotly.js only when it re-plots, and it re-plots only when its
# ``figure`` changes (dash's fragments/Graph.react.js; plotly/dash#2865): a new config alone is kept as a
# prop while the camera button goes on saving the old format until some other redraw. So the image-format
# switch returns each graph's figure too, as a new object with the same content (in the browser: nothing
# travels), and the graph re-plots at once with the new config; the view is kept (the figure prop holds
# the user's zoom, which dcc.Graph writes back to it).
_IMAGE_FORMAT_JS = """function(fmt, ...figures) {
    const configs = %s;
    const chosen = configs[fmt] || configs.png;
    const none = window.dash_clientside.no_update;
    return chosen.concat(figures.map(f => f ? Object.assign({}, f) : none));
}"""


def _register_image_format(app) -> None:
    configs = {fmt: [graph_config(fmt, name=g) for g in GRAPHS] for fmt in IMAGE_FORMATS}
    app.clientside_callback(
        _IMAGE_FORMAT_JS % json.dumps(configs),
        [Output(g, "config") for g in GRAPHS] + [Output(g, "figure", allow_duplicate=True) for g in GRAPHS],
        Input("img-format", "value"),
        [State(g, "figure") for g in GRAPHS],
        prevent_initial_call=True,
    )


def _register_stat_panel(app, V: Views, name: str, view, later: dict) -> None:
    @app.callback(
        Output(f"stat-{name}", "figure"),
        Input("version", "data"),
        Input("align", "value"),
        Input("stage", "value"),
        State(f"stat-{name}", "relayoutData"),
        **later,
    )
    def stat_panel(version, align, stage, relayout):
        return view(V.stat_panel(version, name, align), relayout, version, stage, align)


def _register_table_csv(app, tid: str, rows_of) -> None:
    @app.callback(
        Output(f"{tid}-dl", "data"),
        Input(f"{tid}-csv", "n_clicks"),
        State("version", "data"),
        State("sweep-rank", "value"),
        prevent_initial_call=True,
    )
    def table_csv(_n, version, rank_by):
        import pandas as pd

        rows = rows_of(tid, version, rank_by)
        return dcc.send_data_frame(pd.DataFrame(rows, columns=list(TABLES[tid])).to_csv, f"{tid}.csv", index=False)


def _register_export(app, gid: str) -> None:
    @app.callback(
        Output(f"{gid}-dl", "data"),
        Input(f"{gid}-html", "n_clicks"),
        Input(f"{gid}-csv", "n_clicks"),
        State(gid, "figure"),
        prevent_initial_call=True,
    )
    def export(_h, _c, fig):
        if not fig:
            return no_update
        if ctx.triggered_id == f"{gid}-html":
            import plotly.io as pio

            return dcc.send_string(pio.to_html(fig, include_plotlyjs=True, full_html=True), f"{gid}.html")
        return dcc.send_data_frame(F.figure_to_frame(fig).to_csv, f"{gid}.csv", index=False)
