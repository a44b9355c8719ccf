"""Make the README's picture: the dashboard on the demo run, in headless Chromium, kept small.

    .venv/bin/python docs/picture.py                     # uses runs/demo.zarr (run `make demo` first)
    .venv/bin/python docs/picture.py --run RUN --out docs/dashboard.png

Serves the Dash app for one run on a free 127.0.0.1 port in a daemon thread, opens it in Debian's
headless Chromium through Playwright (never a downloaded browser), waits until every graph holds data,
takes a screenshot of the page's top (run picker, overview, trajectories) and writes it as an indexed
PNG (256 colours, Pillow) so the repository stays small. Prints the path and its size.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' own server and browser settings, as bench/dashboard.py

from browser import CHROMIUM, CHROMIUM_ARGS, AppServer  # noqa: E402

#: every graph of the page drawn by plotly (its full layout computed; a panel the run has no data for is
#: drawn empty, with its note), the first one with data, and no callback still pending
ALL_DRAWN = """() => { const g = [...document.querySelectorAll('.js-plotly-plot')];
  return g.length > 0 && g.every(d => d._fullLayout) && (g[0].data || []).length > 0
         && !document.querySelector('[data-dash-is-loading="true"]'); }"""


def screenshot(run: Path, width: int, height: int) -> bytes:
    """PNG bytes of the dashboard for ``run`` at a ``width`` × ``height`` window (top of the page)."""
    from playwright.sync_api import sync_playwright

    from phasescope.dashboard.app import create_app

    with AppServer(create_app(run)) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(srv.url + "/")
        page.wait_for_function(ALL_DRAWN, timeout=60_000)
        page.wait_for_timeout(500)  # let plotly finish its last relayout
        png = page.screenshot(full_page=False)
        browser.close()
    return png


def small_png(png: bytes, colours: int = 256) -> bytes:
    """The picture as an indexed PNG of ``colours`` colours (a dashboard has few: ~4× smaller)."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run", type=Path, default=REPO / "runs" / "demo.zarr", help="run store to show (default: the demo's)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png", help="PNG to write")
    ap.add_argument("--width", type=int, default=1280, help="window width in pixels")
    ap.add_argument("--height", type=int, default=1000, help="window height in pixels (the part of the page shown)")
    args = ap.parse_args(argv)
    if not (args.run / "zarr.json").exists():
        print(f"picture: no run store at {args.run}; run `make demo` first or pass --run", file=sys.stderr)
        return 2
    try:
        data = small_png(screenshot(args.run, args.width, args.height))
    except Exception as exc:  # noqa: BLE001 - one line, no traceback: Chromium missing, page never drawn, …
        print(
            f"picture: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (Chromium at "
            f"{CHROMIUM}: apt-get install chromium)",
            file=sys.stderr,
        )
        return 1
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
