"""The observatory in a real browser: headless Debian Chromium (Playwright) against the app served on a
free 127.0.0.1 port, on run stores written by RunWriter. Screenshots land in each test's tmp dir."""

import subprocess
import sys
import time

import numpy as np
import pytest
from browser import chromium, graph_js, serve_app  # noqa: F401  (chromium is a fixture)
from test_phases_stages import write_staged

from phasescope.dashboard import create_app
from phasescope.store import open_run
from phasescope.testing.synthetic import write_synthetic_run

pytestmark = [pytest.mark.browser]
TIMEOUT = 40_000  # ms: generous, the 2-core CI machine is often shared


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    root = base / "runs"
    write_synthetic_run(root / "alpha.zarr", n_steps=80, n_probes=5, rank=128, n_layers=2)
    write_synthetic_run(root / "beta.zarr", n_steps=50, n_probes=5, rank=128, n_layers=2, tokens_per_step=2048)
    write_synthetic_run(base / "secret.zarr", n_steps=10, n_probes=2, rank=16, n_layers=1)
    return root


@pytest.fixture(scope="module")
def server(runs):
    with serve_app(create_app(runs, refresh_ms=1000)) as srv:
        yield srv


@pytest.fixture
def page(chromium):  # noqa: F811
    ctx = chromium.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def wait_graph(page, gid, cond="gd.data.length > 0"):
    page.wait_for_function(
        f"(() => {{ const gd = {graph_js(gid)}; return gd && gd.data && ({cond}); }})()", timeout=TIMEOUT, polling="raf"
    )


def graph(page, gid, expr):
    return page.evaluate(f"(() => {{ const gd = {graph_js(gid)}; return {expr}; }})()")


HEAT_Z = "gd._fullData.map(t => t.type === 'heatmap' ? Array.from(t.z, r => Array.from(r)) : null)"


def cell_xy(page, gid, x, y, axis=""):
    """Page coordinates of data point (x, y) on subplot ``axis`` ('' for the first)."""
    return page.evaluate(f"""(() => {{ const gd = {graph_js(gid)}; const fl = gd._fullLayout;
        const xa = fl['xaxis{axis}'], ya = fl['yaxis{axis}']; const r = gd.getBoundingClientRect();
        return [r.left + xa._offset + xa.d2p({x}), r.top + ya._offset + ya.d2p({y!r})]; }})()""")


def user_zooms(page, gid):
    """Drag a zoom box over the middle of the plot with the mouse; returns the new x range."""
    page.locator(f"#{gid}").scroll_into_view_if_needed()
    box = page.evaluate(f"""(() => {{ const gd = {graph_js(gid)}; const fl = gd._fullLayout;
        const r = gd.getBoundingClientRect(); const xa = fl.xaxis, ya = fl.yaxis;
        return [r.left + xa._offset, r.top + ya._offset, xa._length, ya._length]; }})()""")
    left, top, w, h = box
    before = graph(page, gid, "gd._fullLayout.xaxis.range.slice()")
    page.mouse.move(left + 0.3 * w, top + 0.2 * h)
    page.mouse.down()
    page.mouse.move(left + 0.5 * w, top + 0.5 * h, steps=5)
    page.mouse.move(left + 0.7 * w, top + 0.8 * h, steps=5)
    page.mouse.up()
    page.wait_for_function(
        f"(() => {{ const gd = {graph_js(gid)}; return gd._fullLayout.xaxis.range[0] != {before[0]}; }})()",
        timeout=TIMEOUT,
    )
    return graph(page, gid, "gd._fullLayout.xaxis.range.slice()")


def test_first_page_shows_rankme_and_alpha_heatmaps_and_a_click_opens_the_spectrum(page, server, runs, tmp_path):
    page.goto(server.url + "/?run=alpha.zarr")
    wait_graph(page, "overview", "gd._fullData.length == 2 && gd._fullData[0].type == 'heatmap'")
    ds = open_run(runs / "alpha.zarr")
    z = graph(page, "overview", HEAT_Z)
    assert np.allclose(np.array(z[0], float), ds["rankme"].values.T)
    assert np.allclose(np.array(z[1], float), ds["alpha"].values.T)
    assert graph(page, "overview", "gd._fullLayout.xaxis.type") == "log"
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

    c, probe = 12, "layer.03"
    step = int(ds["capture_step"].values[c])
    x, y = cell_xy(page, "overview", step, probe, axis="2")  # the α heatmap
    page.mouse.click(x, y)
    wait_graph(
        page, "spectrum", f"gd.layout.meta && gd.layout.meta.step === {step} && gd.layout.meta.probe === '{probe}'"
    )
    eig = graph(page, "spectrum", "Array.from(gd._fullData[0].y)")
    want = ds["eigenvalues"].values[c, 3]
    assert np.allclose(eig, want[want > 0], rtol=1e-6)
    assert graph(page, "spectrum", "gd.layout.meta.alpha") == pytest.approx(ds["alpha"].values[c, 3], rel=1e-5)
    assert graph(page, "spectrum", "gd._fullLayout.xaxis.type + gd._fullLayout.yaxis.type") == "loglog"
    assert page.locator("#spec-slider").count() == 1
    page.screenshot(path=str(tmp_path / "spectrum.png"), full_page=True)


def test_selecting_two_runs_overlays_them(page, server, runs, tmp_path):
    page.goto(server.url + "/?run=alpha.zarr")
    wait_graph(page, "trajectories", "gd._fullData.some(t => t.name.startsWith('layer'))")
    page.locator("#runs label", has_text="beta").click()
    wait_graph(page, "overview", "gd._fullData.length == 4")
    wait_graph(page, "trajectories", "gd._fullData.some(t => t.name.endsWith('· beta.zarr'))")
    names = graph(page, "trajectories", "gd._fullData.map(t => t.name)")
    assert any(n.endswith("· alpha.zarr") for n in names) and any(n.endswith("· beta.zarr") for n in names)
    beta = open_run(runs / "beta.zarr")
    ys = graph(page, "trajectories", "Array.from(gd._fullData.find(t => t.name == 'layer.04 · beta.zarr').y)")
    assert np.allclose(ys, beta["rankme"].sel(probe="layer.04").values)
    # align by tokens seen: beta's x becomes step × 2048
    page.locator("#align label", has_text="tokens").click()
    wait_graph(page, "trajectories", "gd._fullLayout.xaxis.title.text.startsWith('tokens')")
    xs = graph(page, "trajectories", "Array.from(gd._fullData.find(t => t.name == 'layer.04 · beta.zarr').x)")
    assert np.allclose(xs[1:], beta["capture_step"].values[1:] * 2048)
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)


def test_a_path_outside_the_root_is_refused_visibly(page, server):
    page.goto(server.url + "/?run=../secret.zarr")
    notice = page.locator("#notice")
    notice.wait_for(state="visible", timeout=TIMEOUT)
    text = notice.inner_text()
    assert "refused" in text and "outside the served root" in text
    assert page.locator("#runs label", has_text="secret").count() == 0
    wait_graph(page, "overview", "!!(gd.layout.meta && gd.layout.meta.empty)")
    assert "no run selected" in graph(page, "overview", "gd.layout.meta.empty")


def test_live_run_refreshes_keeps_zoom_and_stops_polling_when_finished(page, chromium, tmp_path):  # noqa: F811
    root = tmp_path / "live"
    path = root / "live.zarr"
    kw = dict(n_steps=90, n_probes=4, rank=64, n_layers=1)
    write_synthetic_run(path, upto=30, finish=False, **kw)
    with serve_app(create_app(root, refresh_ms=500)) as srv:
        page.goto(srv.url)
        wait_graph(page, "heatmap", "gd._fullData.length == 1")
        n0 = graph(page, "heatmap", "gd._fullData[0].z[0].length")
        assert "live" in page.locator("#status").inner_text()
        zoom = user_zooms(page, "heatmap")
        code = (
            "from phasescope.testing.synthetic import write_synthetic_run as w; "
            f"w({str(path)!r}, resume=True, delay=0.03, n_steps={kw['n_steps']}, n_probes=4, rank=64, n_layers=1)"
        )
        writer = subprocess.Popen([sys.executable, "-c", code])
        try:
            wait_graph(page, "heatmap", f"gd._fullData[0].z[0].length > {n0}")
            assert graph(page, "heatmap", "gd._fullLayout.xaxis.range") == pytest.approx(zoom)
            assert writer.wait(timeout=60) == 0
        finally:
            writer.kill()
        page.wait_for_function("document.querySelector('#status').innerText.includes('finished')", timeout=TIMEOUT)
        final = open_run(path)
        wait_graph(page, "heatmap", f"gd._fullData[0].z[0].length == {final.sizes['capture_step']}")
        assert graph(page, "heatmap", "gd._fullLayout.xaxis.range") == pytest.approx(zoom)
        page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
        # polling is off: no more update requests once finished
        seen = []
        page.on("request", lambda r: seen.append(r.url) if "_dash-update-component" in r.url else None)
        time.sleep(1.0)
        assert seen == []


def download(page, selector, tmp_path):
    """Click ``selector`` and return the path of the file the browser downloads."""
    with page.expect_download(timeout=TIMEOUT) as info:
        page.click(selector)
    dl = info.value
    path = tmp_path / dl.suggested_filename
    dl.save_as(str(path))
    return path


def test_export_buttons_download_the_figures_data_and_a_working_html_page(page, server, runs, tmp_path):
    import pandas as pd

    from phasescope.dashboard.figures import quality_rows

    page.goto(server.url + "/?run=alpha.zarr")
    wait_graph(page, "heatmap", "gd._fullData.length == 1")
    ds = open_run(runs / "alpha.zarr")
    csv = download(page, "#heatmap-csv", tmp_path)
    assert csv.name == "heatmap.csv"
    table = pd.read_csv(csv).pivot(index="row", columns="x", values="value")
    assert list(table.columns) == list(ds["capture_step"].values)  # true steps, step 0 included
    shown_metric = "alpha_r2"  # the heatmap panel opens on a metric the overview does not draw
    assert np.allclose(table.loc[[str(p) for p in ds["probe"].values]].values, ds[shown_metric].values.T, rtol=1e-6)

    html = download(page, "#heatmap-html", tmp_path)
    assert html.name == "heatmap.html" and "Plotly.newPlot" in html.read_text()
    offline = page.context.new_page()
    offline.goto(html.as_uri())
    offline.wait_for_function(
        "(() => { const gd = document.querySelector('.js-plotly-plot'); "
        "return gd && gd._fullData && gd._fullData.length == 1; })()",
        timeout=TIMEOUT,
    )
    z = offline.evaluate("Array.from(document.querySelector('.js-plotly-plot')._fullData[0].z, r => Array.from(r))")
    assert np.allclose(np.array(z, float), ds[shown_metric].values.T, rtol=1e-6)
    offline.close()

    quality = pd.read_csv(download(page, "#quality-table-csv", tmp_path), dtype=str, keep_default_na=False)
    assert quality.to_dict("records") == quality_rows(ds)
    shown = page.locator("#quality-table tbody tr").all_inner_texts()
    assert len(shown) == len(quality) and shown[0].split("\t")[0] == quality["check"][0]


def test_a_lossy_failed_run_shows_red_in_data_quality_and_the_run_picker(page, tmp_path):
    """What a user sees of lost data: the data-quality rows of phasescope's losses and of the failed run
    are drawn red (computed style, not just a class), the failed run's badge too, a clean run's are not."""
    from test_dashboard_http import write_lossy_run

    root = tmp_path / "runs"
    write_lossy_run(root / "lossy.zarr")
    write_synthetic_run(root / "clean.zarr", n_steps=12, n_probes=2, rank=16, n_layers=1)
    with serve_app(create_app(root, refresh_ms=1000)) as srv:
        page.goto(srv.url + "/?run=lossy.zarr")
        page.locator("#quality-table tr.error").first.wait_for(timeout=TIMEOUT)
        rows = page.evaluate("""Array.from(document.querySelectorAll('#quality-table tbody tr')).map(tr => ({
            cls: tr.className, text: tr.innerText, bg: getComputedStyle(tr.cells[0]).backgroundColor}))""")
        red = [r for r in rows if r["cls"] == "error"]
        assert [r["text"].split("\t")[0] for r in red] == [
            "run state",
            "phasescope failures: hook",
            "phasescope failures: write",
            "steps flagged dropped",
            "steps flagged lost",
            "step rows dropped by the store writer (n_dropped_steps)",
        ]
        assert {r["bg"] for r in red} == {"rgb(248, 201, 201)"}  # style.css: tr.error td
        assert all(r["bg"] != "rgb(248, 201, 201)" for r in rows if r["cls"] != "error")
        badge = page.locator("#runs .badge.failed")
        assert "failed: store writer" in badge.inner_text()
        assert badge.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(248, 201, 201)"
        assert (
            page.locator("#runs .badge.finished").evaluate("e => getComputedStyle(e).backgroundColor")
            == "rgb(229, 231, 235)"
        )
        assert page.locator("#status .bad").evaluate("e => getComputedStyle(e).color") == "rgb(204, 0, 0)"
        page.locator("#quality-table").scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "quality.png"), full_page=True)
        page.goto(srv.url + "/?run=clean.zarr")
        page.wait_for_function(
            "document.querySelector('#quality-table tbody tr') && "
            "document.querySelector('#quality-table').innerText.includes('finished')",
            timeout=TIMEOUT,
        )
        assert page.locator("#quality-table tr.error").count() == 0


@pytest.fixture(scope="module")
def phase_server(tmp_path_factory):
    """A run with its phases group stored by the real detector, and a tiny run (6 captures) to play."""
    from phasescope.cli_phases import phases_for_run

    root = tmp_path_factory.mktemp("browser-phases") / "runs"
    write_synthetic_run(root / "tiny.zarr", n_steps=6, n_probes=3, rank=64, n_layers=1)
    write_synthetic_run(root / "ph.zarr", n_steps=300, n_probes=6, rank=128, n_layers=2)
    result, status = phases_for_run(root / "ph.zarr")
    assert status == "computed, saved"
    write_staged(root / "staged.zarr")
    phases_for_run(root / "staged.zarr")
    with serve_app(create_app(root, refresh_ms=1000)) as srv:
        yield srv, root, result


def test_phase_strip_and_phase_shading_on_a_real_phases_group(page, phase_server, tmp_path):
    srv, _root, result = phase_server
    page.goto(srv.url + "/?run=ph.zarr")
    wait_graph(page, "phases", "gd._fullData.length > 1 && gd._fullData[0].type == 'heatmap'")
    rows = graph(page, "phases", "Array.from(gd._fullData[0].y)")
    assert rows == ["model"] + [f"layer.{i:02d}" for i in range(6)]
    labels = graph(page, "phases", "gd.layout.meta.labels")
    z = np.array(graph(page, "phases", "Array.from(gd._fullData[0].z, r => Array.from(r))"), float)
    first = {s.probe: s.label for s in reversed(result.segments)}  # each probe's first phase
    assert [labels[int(v)] for v in z[:, 0]] == [first[r] for r in rows]
    n_events = len(result.events())
    assert graph(page, "phases", "gd.layout.meta.events") == n_events > 0
    wait_graph(page, "trajectories", "gd._fullLayout.shapes.length > 0")
    rects = graph(page, "trajectories", "gd._fullLayout.shapes.filter(s => s.type == 'rect').map(s => s.x1)")
    assert rects == pytest.approx([s.end_step for s in result.segments_for("model")], rel=1e-9)  # log-axis round trip
    shown = graph(page, "trajectories", "Array.from(gd.querySelectorAll('.annotation-text')).map(e => e.textContent)")
    from phasescope.dashboard.figures import phase_text

    assert [phase_text(s.label) for s in result.segments_for("model")] == shown  # every label drawn, the first too
    page.locator("#panel-trajectories").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "phases.png"), full_page=True)


def test_stages_are_marked_on_the_step_axes_and_tabled(page, phase_server, tmp_path):
    srv, _root, _ = phase_server
    page.goto(srv.url + "/?run=staged.zarr")
    stage_line = "s => s.type == 'line' && s.line.color == '#6a3d9a'"  # dashboard.stage_figures.STAGE_COLOUR
    wait_graph(page, "trajectories", f"gd._fullLayout.shapes.some({stage_line})")
    xs = graph(page, "trajectories", f"gd._fullLayout.shapes.filter({stage_line}).map(s => s.x0)")
    n_axes = graph(page, "trajectories", "Object.keys(gd._fullLayout).filter(k => /^xaxis\\d*$/.test(k)).length")
    assert xs == pytest.approx([1000] * n_axes, rel=1e-9)  # one line on each x axis, where rl begins
    shown = graph(page, "trajectories", "Array.from(gd.querySelectorAll('.annotation-text')).map(e => e.textContent)")
    assert "▸ sft" in shown and "▸ rl" in shown
    table = page.locator("#stage-table").inner_text()
    assert "compression-seeking" in table and "entropy-seeking" in table and "1000–1999" in table
    page.locator("#stage-table").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "stages.png"), full_page=True)
    page.locator("#stage").click()  # the stage selector: every step axis over the rl stage's steps
    page.get_by_role("option", name="rl").click()
    wait_graph(page, "trajectories", "gd._fullLayout.xaxis.range[0] > 2.9")
    lo, hi = graph(page, "trajectories", "gd._fullLayout.xaxis.range.slice()")
    assert lo == pytest.approx(2.98) and hi == pytest.approx(np.log10(1999) + 0.02)
    assert graph(page, "overview", "gd._fullLayout.xaxis.range[0]") == pytest.approx(2.98)


def test_play_runs_to_the_last_capture_and_stops_there(page, phase_server):
    srv, root, _ = phase_server
    steps = [int(s) for s in open_run(root / "tiny.zarr")["capture_step"].values]
    page.goto(srv.url + "/?run=tiny.zarr")
    wait_graph(page, "spectrum", f"gd.layout.meta && gd.layout.meta.step === {steps[-1]}")
    seen = []
    # a Python function, not the builtin bound method: playwright sets attributes on the callback
    page.expose_function("seenStep", lambda s: seen.append(s))  # noqa: PLW0108
    page.evaluate(f"""(() => {{ const gd = {graph_js("spectrum")};
        gd.on('plotly_afterplot', () => window.seenStep(gd.layout.meta.step)); }})()""")
    page.click("#spec-play")  # at the last capture: play starts over from the first
    page.wait_for_function("document.querySelector('#spec-play').innerText.includes('pause')", timeout=TIMEOUT)
    page.wait_for_function("document.querySelector('#spec-play').innerText.includes('play')", timeout=TIMEOUT)
    time.sleep(1.2)  # three more ticks of the 400 ms interval if it were still running
    assert graph(page, "spectrum", "gd.layout.meta.step") == steps[-1]
    visited = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert steps[0] in visited, visited  # (a redraw of the last capture may come first: resize, hover)
    assert visited[visited.index(steps[0]) :] == steps, visited  # every capture once, in order, no wrap


def test_the_image_format_choice_takes_effect_on_the_next_camera_click(page, server, tmp_path):
    """dcc.Graph applies a new ``config`` only when it re-plots (plotly/dash#2865): choosing svg must
    reach plotly.js at once, keep the user's zoom, and the very next camera click must save an SVG."""
    page.goto(server.url + "/?run=alpha.zarr")
    wait_graph(page, "heatmap", "gd._fullData.length == 1")
    assert graph(page, "heatmap", "gd._context.toImageButtonOptions.format") == "png"
    zoomed = user_zooms(page, "heatmap")
    page.locator("#img-format label", has_text="svg").click()
    for gid in ("overview", "heatmap", "trajectories"):  # no other redraw asked for: only the choice
        wait_graph(page, gid, "gd._context.toImageButtonOptions.format === 'svg'")
    assert graph(page, "heatmap", "gd._fullLayout.xaxis.range.slice()") == pytest.approx(zoomed)
    with page.expect_download(timeout=TIMEOUT) as info:
        page.locator("#heatmap .modebar-btn[data-title^='Download plot']").click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(str(path))
    assert path.suffix == ".svg" and path.read_text()[:200].lstrip().startswith("<svg"), path


def test_the_readme_picture_script_draws_a_small_indexed_png_of_a_run(tmp_path):
    """docs/picture.py (the README's picture): a real page in headless Chromium, every graph drawn, kept small."""
    from pathlib import Path

    from PIL import Image

    run = tmp_path / "pic.zarr"
    write_synthetic_run(run, n_steps=40, n_probes=4, rank=32, n_layers=2)
    out = tmp_path / "pic.png"
    script = Path(__file__).resolve().parents[1] / "docs" / "picture.py"
    res = subprocess.run(
        [sys.executable, str(script), "--run", str(run), "--out", str(out), "--width", "900", "--height", "700"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    img = Image.open(out)
    assert img.size == (900, 700) and img.mode == "P"  # indexed colours: small
    assert out.stat().st_size < 150_000 and len(set(img.getdata())) > 20  # a drawn page, not a blank one
    missing = subprocess.run(
        [sys.executable, str(script), "--run", str(tmp_path / "none.zarr")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and "make demo" in missing.stderr and "Traceback" not in missing.stderr
