"""Test helpers for the dashboard: serve a Dash app on a free 127.0.0.1 port in a daemon thread, and
launch the system's headless Debian Chromium through Playwright (never a downloaded browser).

Import the fixtures into a test module with ``from browser import chromium, served``; ``serve_app`` is
a context manager for a one-off server. Chromium is installed by ``make test`` on fresh machines
(``apt-get install -y chromium chromium-driver``); tests skip with that hint when it is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("PHASESCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """A werkzeug server for ``app`` (a Dash app) on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app):
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_request(self, *a, **k):  # keep test output free of access logs
                pass

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._srv = make_server("127.0.0.1", self.port, app.server, threaded=True, request_handler=Quiet)
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True, name="dash-test-server")

    def __enter__(self) -> AppServer:
        self._thread.start()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/_dash-layout", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the test server at {self.url} did not answer")

    def __exit__(self, *exc) -> None:
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(timeout=5)

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def post_json(self, path: str, payload: dict):
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return r.status, (json.loads(body) if body else None)


@contextlib.contextmanager
def serve_app(app):
    with AppServer(app) as srv:
        yield srv


def launch(playwright):
    """Headless system Chromium. `make test` installs it; a missing browser fails the browser tests
    rather than skipping them, so CI can never pass without having run them."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make test` (it installs chromium chromium-driver) or "
            "apt-get install -y chromium chromium-driver"
        )
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the whole test module."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    sync_api = pytest.importorskip("playwright.sync_api")
    pw = sync_api.sync_playwright().start()
    try:
        browser = launch(pw)
    except BaseException:
        pw.stop()
        raise
    yield browser
    browser.close()
    pw.stop()


def graph_js(gid: str) -> str:
    """JS expression for the plotly graph div inside dcc.Graph ``gid``."""
    return f"document.querySelector('#{gid} .js-plotly-plot')"
