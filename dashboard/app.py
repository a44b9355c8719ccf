"""``create_app`` builds the observatory Dash app for the runs under one root; ``serve`` runs it.

The server binds to 127.0.0.1 unless told otherwise and serves only runs under ``root`` (see
``data.RunSource.resolve``). Figures are built by the pure functions of ``figures``; callbacks only
route (``callbacks``); the page is described in ``layout``.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

import dash
import flask

from phasescope.errors import PhasescopeError

from .callbacks import register
from .data import RunSource
from .layout import build_layout, fill

ASSETS = Path(__file__).with_name("assets")
# plotly.js as a plain page script: dcc.Graph uses window.Plotly when present instead of fetching its own
# full bundle. We serve plotly.js's official *cartesian* dist bundle (npm plotly.js-cartesian-dist-min, the
# same version as the plotly.js bundled with the installed plotly; MIT, see assets/README): 1.5 MB instead
# of 4.8 MB, with every trace type the observatory draws (heatmap, scatter; shapes and annotations are
# layout features of every bundle). As an early page script it downloads with the other bundles and is
# compiled while the page boots instead of after the layout has arrived. It is kept out of Dash's
# automatic asset scripts (ASSETS_IGNORE) so that it loads once, ahead of the components.
# First full render of the bench run (bench/dashboard.py, 1,000 × 48 × 1,024): 2.10 → 1.50 s side by side
# against the full bundle (load 1.5–1.7 on 2 cores).
PLOTLY_JS = "/assets/plotly-cartesian.min.js"
ASSETS_IGNORE = r"plotly-cartesian\.min\.js$"


def create_app(root: str | Path, *, refresh_ms: int = 2000):
    """The Dash app for the runs under ``root`` (a runs directory or a single run store), refreshing
    live runs every ``refresh_ms`` milliseconds."""
    # No figure warm-up at start-up any more: figures are plain dicts (``_plotly``), so nothing lazy is
    # left for a first page to pay. Measured on a 400-step, 12-probe run (2 cores, load 1.3): first
    # server-rendered page 0.04 s with or without the warm-up, start-up + first page 0.99 vs 0.97 s.
    if int(refresh_ms) <= 0:
        raise PhasescopeError(f"refresh_ms must be a positive number of milliseconds, got {refresh_ms}")
    src = RunSource(root)
    app = dash.Dash(
        __name__,
        title="phasescope observatory",
        assets_folder=str(ASSETS),
        assets_ignore=ASSETS_IGNORE,
        update_title=None,
        suppress_callback_exceptions=False,
        external_scripts=[PLOTLY_JS],
    )
    app._phasescope_refresh_ms = int(refresh_ms)
    app._phasescope_source = src
    views = register(app, src)

    def page():
        """The page with its first view rendered on the server, for the runs its URL asks for (the
        layout request's Referer carries the page URL; without one, the most recent run)."""
        layout = build_layout(str(src.root), int(refresh_ms))
        try:
            return fill(layout, views.initial(_page_query()))
        except Exception:
            logging.getLogger(__name__).exception("phasescope: first page not rendered on the server")
            return layout

    app.layout = page
    return app


def _page_query() -> str:
    """The query string of the page being loaded, from the layout request's Referer ('' outside one)."""
    if not flask.has_request_context():
        return ""
    return urlparse(flask.request.referrer or "").query


def check_port(host: str, port: int) -> None:
    """Refuse a port something else holds, before printing a URL that would not be ours."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is free
        try:
            s.bind((host, int(port)))
        except OSError as exc:
            raise PhasescopeError(
                f"port {port} on {host} is in use ({exc.strerror}); pass --port with a free "
                "port, or stop the program holding it"
            ) from None


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 8050, *, refresh_ms: int = 2000) -> None:
    """Serve the observatory for ``root`` at http://host:port/ until interrupted."""
    check_port(host, port)
    app = create_app(root, refresh_ms=refresh_ms)
    src = app._phasescope_source
    print(f"phasescope observatory: http://{host}:{port}/  (runs under {src.root})", flush=True)
    if not src.run_paths():
        print(
            f"no phasescope run under {src.root} yet: runs written there appear in the run picker as they "
            "start (a run is a .zarr store written by phasescope)",
            flush=True,
        )
    app.run(host=host, port=int(port), debug=False)
