"""phasescope.dashboard: the observatory, an interactive Dash app over run stores.

    from phasescope.dashboard import create_app, serve
    serve("runs/")                    # http://127.0.0.1:8050/

Figure builders (xarray Dataset → plotly Figure) live in ``phasescope.dashboard.figures``.
Dash is imported only when an app is created, so importing this package stays cheap: the figures alone
import in ~0.09 s, the app (dash, flask, the callbacks) in ~0.4 s (2 cores), which notebook users who
only draw figures should not pay.
"""

from __future__ import annotations

__all__ = ["create_app", "serve"]


def create_app(root, *, refresh_ms: int = 2000):
    from .app import create_app as _create

    return _create(root, refresh_ms=refresh_ms)


def serve(root, host: str = "127.0.0.1", port: int = 8050, *, refresh_ms: int = 2000) -> None:
    from .app import serve as _serve

    return _serve(root, host=host, port=port, refresh_ms=refresh_ms)


create_app.__doc__ = "Build the observatory Dash app for the runs under ``root`` (see dashboard.app)."
serve.__doc__ = "Serve the observatory for ``root`` on host:port, 127.0.0.1 by default (see dashboard.app)."
