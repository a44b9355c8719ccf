"""The sweep view's first page with 20 runs ticked, side by side with the single-run page (issue 16).

    .venv/bin/python bench/dashboard_sweep.py [--runs 20] [--pages 4]

``--runs`` synthetic runs (``phasescope.testing.synthetic``: 150–340 steps, 12 probes × 128 eigenvalues,
gradient statistics), served by one app. In headless Chromium (Playwright, /usr/bin/chromium), alternating:
a fresh page asking for one run (``/?run=r00.zarr``) and one asking for all of them (``?run=…&run=…``);
timed from navigation until every graph of the page is drawn (its plotly layout exists) and, for the
sweep, the Sweep table holds a row per run and its Spearman row. Budget: < 2 s for the sweep page.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from browser import AppServer, graph_js, launch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--pages", type=int, default=4)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from phasescope.dashboard import create_app
    from phasescope.dashboard.layout import GRAPHS
    from phasescope.testing.synthetic import write_synthetic_run

    root = Path(tempfile.mkdtemp(prefix="ps-sweep-")) / "runs"
    t = time.perf_counter()
    names = [f"r{i:02d}.zarr" for i in range(args.runs)]
    for i, n in enumerate(names):
        write_synthetic_run(root / n, n_steps=150 + 10 * i, n_probes=12, rank=128, n_layers=2)
    print(f"wrote {args.runs} runs in {time.perf_counter() - t:.1f} s")
    urls = {
        "one run": "/?" + urlencode({"run": names[0]}),
        f"{args.runs} runs": "/?" + urlencode([("run", n) for n in names]),
    }
    drawn = " && ".join(f"(() => {{ const gd = {graph_js(g)}; return gd && gd._fullLayout; }})()" for g in GRAPHS)
    times: dict[str, list[float]] = {k: [] for k in urls}
    with sync_playwright() as pw:
        browser = launch(pw)
        with AppServer(create_app(root)) as srv:
            for i in range(args.pages + 1):
                for k, url in urls.items():
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    t = time.perf_counter()
                    page.goto(srv.url + url)
                    cond = drawn
                    if k != "one run":  # the Sweep table: a row per run and the Spearman row
                        cond += f" && document.querySelectorAll('#sweep-table tbody tr').length == {args.runs + 1}"
                    page.wait_for_function(f"(() => {cond})()", timeout=120_000, polling="raf")
                    if i:  # the first round warms the browser's cache of the JS bundles
                        times[k].append(time.perf_counter() - t)
                    page.close()
        browser.close()
    one, many = (statistics.median(v) for v in times.values())
    print(f"first full page ({len(GRAPHS)} graphs and the tables; median of {args.pages} fresh pages, alternating):")
    print(
        f"  one run: {one:.2f} s    {args.runs} runs: {many:.2f} s    ratio {many / one:.2f}"
        f"    budget 2 s: {many / 2:.2f}"
    )
    print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
