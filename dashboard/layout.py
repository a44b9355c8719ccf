"""The observatory page: run picker, overview (RankMe and α-ReQ per layer over log-steps), layer × step
heatmaps, eigenspectrum explorer, trajectories, gradients, metadata and data quality.

Every graph has the plotly toolbar (PNG or SVG, chosen with "image format") and HTML / CSV download
buttons; tables are plain HTML tables (``table``) with a CSV download. Component ids are listed in
GRAPHS and TABLES and used by ``callbacks``.
"""

from __future__ import annotations

from dash import dcc, html

from .panel_figures import PANEL_TITLES, registry_panels
from .stage_figures import TABLE_COLUMNS as STAGE_COLUMNS

# Panels the statistic registry declares (e.g. "similarity" for linear CKA) get graphs "stat-<panel>".
STAT_PANELS = registry_panels()
GRAPHS = (
    "overview",
    "heatmap",
    "spectrum",
    "trajectories",
    *(f"stat-{p}" for p in STAT_PANELS),
    "esd",
    "phases",
    "gradients",
    "gradient-profile",
)
ESD_CONTROLS = ("esd-run", "esd-matrix", "esd-step")  # run, weight matrix and capture step of the ESD panel
TABLES = {
    "meta-table": ("key", "value"),
    "quality-table": ("check", "value", "status"),
    "stage-table": STAGE_COLUMNS,
    "sweep-table": ("rank", "run", "early steps", "grad_norm", "loss", "rankme", "alpha", "final loss"),
}
IMAGE_FORMATS = ("png", "svg")
ROW_CLASSES = ("warn", "error")  # table rows styled by their status


def graph_config(fmt: str = "png", name: str = "phasescope") -> dict:
    """plotly config: toolbar always shown, the camera button saves ``fmt`` at 2× scale."""
    return {
        "displaylogo": False,
        "displayModeBar": True,
        "toImageButtonOptions": {"format": fmt, "filename": name, "scale": 2 if fmt == "png" else 1},
    }


def _exports(gid: str) -> html.Div:
    return html.Div(
        className="exports",
        children=[
            html.Button("HTML", id=f"{gid}-html", className="export", title="download this figure as HTML"),
            html.Button("CSV", id=f"{gid}-csv", className="export", title="download this figure's data as CSV"),
            dcc.Download(id=f"{gid}-dl"),
        ],
    )


def panel(title: str, gid: str, controls: list | None = None, *, extra: list | None = None) -> html.Section:
    return html.Section(
        className="panel",
        id=f"panel-{gid}",
        children=[
            html.Div(className="panel-head", children=[html.H3(title), *(controls or []), _exports(gid)]),
            # no dcc.Loading wrapper: it remounts the graph on refresh, which loses the user's zoom
            dcc.Graph(id=gid, config=graph_config(name=gid)),
            *(extra or []),
        ],
    )


def table(columns, rows: list[dict]) -> html.Table:
    """A plain HTML table of ``rows`` (dicts keyed by ``columns``); rows whose ``status`` is "warn" or
    "error" get that class (amber and red in the stylesheet, see ``figures.quality_rows``)."""
    head = html.Thead(html.Tr([html.Th(c) for c in columns]))
    body = html.Tbody(
        [
            html.Tr(
                [html.Td(str(r.get(c, ""))) for c in columns],
                className=r.get("status") if r.get("status") in ROW_CLASSES else None,
            )
            for r in rows
        ]
    )
    return html.Table([head, body], className="data-table")


def _table_panel(heading: str, tid: str, controls: list | None = None) -> html.Section:
    return html.Section(
        className="panel",
        children=[
            html.Div(
                className="panel-head",
                children=[
                    html.H3(heading),
                    *(controls or []),
                    html.Div(
                        className="exports",
                        children=[
                            html.Button("CSV", id=f"{tid}-csv", className="export", title="download this table as CSV"),
                            dcc.Download(id=f"{tid}-dl"),
                        ],
                    ),
                ],
            ),
            html.Div(id=tid, className="table-wrap", children=table(TABLES[tid], [])),
        ],
    )


def build_layout(root: str, refresh_ms: int) -> html.Div:
    return html.Div(
        className="page",
        children=[
            dcc.Location(id="url", refresh=False),
            dcc.Interval(id="poll", interval=refresh_ms, n_intervals=0),  # drives only the cheap version check
            dcc.Interval(id="catalog-poll", interval=max(refresh_ms, 2000), n_intervals=0),
            dcc.Interval(id="anim", interval=400, disabled=True),
            dcc.Store(id="version"),
            dcc.Store(id="sel"),
            html.Header(
                children=[
                    html.H1("phasescope observatory"),
                    html.Span(id="status", className="status"),
                    html.Span(f"root: {root}", className="root"),
                ]
            ),
            html.Div(id="notice", className="notice", role="alert"),
            html.Section(
                className="panel runs",
                children=[
                    html.Div(
                        className="panel-head",
                        children=[
                            html.H3("Runs"),
                            html.Button("catalog CSV", id="catalog-csv", className="export"),
                            dcc.Download(id="catalog-dl"),
                        ],
                    ),
                    dcc.Checklist(id="runs", options=[], value=[], className="run-picker", labelClassName="run-option"),
                    html.Div(
                        className="controls",
                        children=[
                            html.Label("align by "),
                            dcc.RadioItems(
                                id="align",
                                options=[
                                    {"label": "step", "value": "step"},
                                    {"label": "tokens seen", "value": "tokens"},
                                ],
                                value="step",
                                inline=True,
                            ),
                            html.Label(" stage "),
                            dcc.Dropdown(
                                id="stage",
                                options=[],
                                value=None,
                                placeholder="all stages",
                                className="dropdown stage-picker",
                            ),
                            html.Label(" image format "),
                            dcc.RadioItems(id="img-format", options=list(IMAGE_FORMATS), value="png", inline=True),
                        ],
                    ),
                ],
            ),
            panel("RankMe and α-ReQ per layer", "overview"),
            html.Div(
                className="row",
                children=[
                    panel(
                        "Layer × step heatmap",
                        "heatmap",
                        [
                            dcc.Dropdown(
                                id="heatmap-metric", options=[], value=None, clearable=False, className="dropdown"
                            ),
                        ],
                    ),
                    panel(
                        "Eigenspectrum",
                        "spectrum",
                        [
                            html.Button("▶ play", id="spec-play", className="export", n_clicks=0),
                        ],
                        extra=[
                            dcc.Slider(
                                id="spec-slider",
                                min=0,
                                max=0,
                                step=1,
                                value=0,
                                marks=None,
                                updatemode="drag",
                                tooltip=None,
                                allow_direct_input=False,
                            ),  # its box showed the index
                            html.Div(
                                "click a heatmap cell to open that layer's spectrum; drag the slider to move "
                                "through training",
                                className="hint",
                            ),
                        ],
                    ),
                ],
            ),
            panel(
                "Trajectories",
                "trajectories",
                [
                    dcc.Dropdown(id="traj-metric", options=[], value="rankme", clearable=False, className="dropdown"),
                    dcc.Dropdown(
                        id="traj-probes",
                        options=[],
                        value=[],
                        multi=True,
                        placeholder="layers (default: spread)",
                        className="dropdown wide",
                    ),
                ],
            ),
            *(panel(PANEL_TITLES.get(p, p), f"stat-{p}") for p in STAT_PANELS),
            panel(
                "Weight ESD per layer · power-law tail and MP bulk edge (WeightWatcher's plot)",
                "esd",
                [
                    dcc.Dropdown(id=i, options=[], value=None, clearable=False, className="dropdown", placeholder=ph)
                    for i, ph in zip(ESD_CONTROLS, ("run", "weight matrix", "step"))
                ],
            ),
            panel("Phases per layer", "phases"),
            panel(
                "Gradients",
                "gradients",
                [dcc.Dropdown(id="grad-stat", options=[], value=None, placeholder="statistic", className="dropdown")],
            ),
            panel(
                "Gradient layer profile · a statistic per projection kind against depth (Li et al. 2024)",
                "gradient-profile",
                [
                    dcc.Dropdown(id="gp-stat", options=[], value="grad_nuclear", clearable=False, className="dropdown"),
                    dcc.Dropdown(id="gp-step", options=[], value="last", clearable=False, className="dropdown"),
                    dcc.Checklist(id="gp-per-loss", options=[{"label": " ÷ loss", "value": "per_loss"}], value=[]),
                ],
            ),
            _table_panel("Stages · the phases within each training stage (obs.stage)", "stage-table"),
            _table_panel(
                "Sweep · the selected runs by their early signals (first 10 % of steps), "
                "and how each predicts the final loss (Spearman ρ over finished runs)",
                "sweep-table",
                [
                    dcc.Dropdown(
                        id="sweep-rank",
                        options=[
                            {"label": f"rank by {s}", "value": s} for s in ("grad_norm", "loss", "rankme", "alpha")
                        ],
                        value="grad_norm",
                        clearable=False,
                        className="dropdown",
                    )
                ],
            ),
            html.Div(
                className="row",
                children=[
                    _table_panel("Run metadata", "meta-table"),
                    _table_panel("Data quality", "quality-table"),
                ],
            ),
        ],
    )


def fill(component, values: dict[tuple[str, str], object]):
    """Set ``values[(id, prop)]`` on the components of a layout tree (in place); returns the tree."""
    stack = [component]
    while stack:
        c = stack.pop()
        cid = getattr(c, "id", None)
        if cid is not None:
            for (i, prop), v in values.items():
                if i == cid:
                    setattr(c, prop, v)
        kids = getattr(c, "children", None)
        if isinstance(kids, (list, tuple)):
            stack.extend(k for k in kids if hasattr(k, "to_plotly_json"))
        elif hasattr(kids, "to_plotly_json"):
            stack.append(kids)
    return component
