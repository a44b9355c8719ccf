"""The observatory over plain HTTP (no browser): real run stores written by RunWriter, the app served
on a free 127.0.0.1 port, the layout and callback endpoints answering with the stored data."""

import inspect

import numpy as np
import pytest
from browser import serve_app

from phasescope.dashboard import create_app, serve
from phasescope.dashboard.data import PathRefused, RunSource
from phasescope.dashboard.figures import decode_array
from phasescope.errors import PhasescopeError
from phasescope.store import open_run
from phasescope.testing.synthetic import write_synthetic_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("http")
    root = base / "runs"
    write_synthetic_run(root / "alpha.zarr", n_steps=60, n_probes=4, rank=64, n_layers=2)
    write_synthetic_run(root / "group" / "beta.zarr", n_steps=40, n_probes=3, rank=32, n_layers=1, finish=False)
    write_synthetic_run(base / "secret.zarr", n_steps=10, n_probes=2, rank=16, n_layers=1)
    return root


@pytest.fixture(scope="module")
def server(runs):
    with serve_app(create_app(runs)) as srv:
        yield srv


def update(srv, outputs, inputs, state=(), changed=None):
    """POST one callback to /_dash-update-component like the renderer does; ``outputs`` is
    "id.prop" or a list of them (multi-output callbacks are addressed by their joined id)."""
    many = not isinstance(outputs, str)
    outs = [o.split(".") for o in (outputs if many else [outputs])]
    body = {
        "output": (f"..{'...'.join(outputs)}.." if many else outputs),
        "outputs": [{"id": i, "property": p} for i, p in outs] if many else {"id": outs[0][0], "property": outs[0][1]},
        "inputs": [{"id": i, "property": p, "value": v} for (i, p), v in inputs],
        "changedPropIds": [changed or "{}.{}".format(*inputs[0][0])],
        "state": [{"id": i, "property": p, "value": v} for (i, p), v in state],
    }
    status, data = srv.post_json("/_dash-update-component", body)
    assert status == 200
    return data["response"]


def test_layout_is_served_with_every_panel(server):
    text = str(server.get_json("/_dash-layout"))
    for cid in ("overview", "heatmap", "spectrum", "trajectories", "gradients", "runs", "meta-table", "poll"):
        assert f"'id': '{cid}'" in text


def test_overview_callback_serves_the_stored_rankme_and_alpha(server, runs):
    version = {"runs": ["alpha.zarr"], "tokens": []}
    resp = update(
        server,
        "overview.figure",
        [(("version", "data"), version), (("align", "value"), "step"), (("stage", "value"), None)],
        state=[(("overview", "relayoutData"), None)],
    )
    fig = resp["overview"]["figure"]
    ds = open_run(runs / "alpha.zarr")
    assert [t["type"] for t in fig["data"]] == ["heatmap", "heatmap"]
    assert np.allclose(decode_array(fig["data"][0]["z"]), ds["rankme"].values.T)
    assert np.allclose(decode_array(fig["data"][1]["z"]), ds["alpha"].values.T)
    assert fig["layout"]["xaxis"]["type"] == "log"


def test_catalog_lists_nested_runs_and_refuses_paths_outside_the_root(server):
    cat = update(server, "runs.options", [(("catalog-poll", "n_intervals"), 0)])
    assert [o["value"] for o in cat["runs"]["options"]] == ["alpha.zarr", "group/beta.zarr"]
    out = update(
        server, ["runs.value", "notice.children"], [(("url", "search"), "?run=../secret.zarr&run=group/beta.zarr")]
    )
    assert out["runs"]["value"] == ["group/beta.zarr"]
    notice = str(out["notice"]["children"])
    assert "refused" in notice and "../secret.zarr" in notice and "outside the served root" in notice


def test_run_source_refuses_every_escape(runs, tmp_path):
    src = RunSource(runs)
    assert src.resolve("group/beta.zarr") == (runs / "group" / "beta.zarr").resolve()
    (runs / "link.zarr").symlink_to(runs.parent / "secret.zarr")
    try:
        for bad in [
            "../secret.zarr",
            str(runs.parent / "secret.zarr"),
            "group/../../secret.zarr",
            "link.zarr",
            "group",
            "",
            "group\\..\\..\\secret.zarr",
        ]:
            with pytest.raises(PathRefused, match="refused"):
                src.resolve(bad)
    finally:
        (runs / "link.zarr").unlink()
    single = RunSource(runs / "alpha.zarr")  # a root that is itself a run
    assert [r.key for r in single.catalog()] == ["."]
    with pytest.raises(PathRefused):
        single.resolve("..")
    with pytest.raises(PhasescopeError, match="does not exist"):
        create_app(tmp_path / "nope")
    with pytest.raises(PhasescopeError, match="refresh_ms"):
        create_app(runs, refresh_ms=0)


def test_catalog_reports_live_and_finished(runs):
    cat = {r.key: r for r in RunSource(runs).catalog()}
    assert cat["alpha.zarr"].n_steps == 60 and cat["alpha.zarr"].last_step == 59 and not cat["alpha.zarr"].live
    assert cat["group/beta.zarr"].live and cat["group/beta.zarr"].model == "synthetic-gpt"


def test_serve_binds_localhost_by_default():
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


def find(node, cid):
    """The component with id ``cid`` in a /_dash-layout tree."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if n.get("props", {}).get("id") == cid:
                return n["props"]
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return None


def test_first_page_comes_rendered_for_the_runs_its_url_asks_for(server, runs):
    import json
    import urllib.request

    def layout(referer=None):
        req = urllib.request.Request(server.url + "/_dash-layout", headers={"Referer": referer} if referer else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    page = layout(server.url + "/?run=alpha.zarr")
    ds = open_run(runs / "alpha.zarr")
    assert find(page, "runs")["value"] == ["alpha.zarr"]
    fig = find(page, "overview")["figure"]
    assert np.allclose(decode_array(fig["data"][0]["z"]), ds["rankme"].values.T)
    assert find(page, "heatmap-metric")["value"] == "alpha_r2"  # not a metric the overview already draws
    spec = find(page, "spectrum")["figure"]["layout"]["meta"]
    assert spec["step"] == int(ds["capture_step"].values[-1]) and spec["probe"] == "layer.03"
    assert find(page, "spec-slider")["max"] == ds.sizes["capture_step"] - 1
    assert find(page, "version")["data"]["runs"] == ["alpha.zarr"]
    beta = layout(server.url + "/?run=group/beta.zarr")
    assert find(beta, "runs")["value"] == ["group/beta.zarr"] and len(find(beta, "trajectories")["figure"]["data"]) > 0
    refused = layout(server.url + "/?run=../secret.zarr")
    assert (
        find(refused, "runs")["value"] == []
        and "no run selected" in find(refused, "overview")["figure"]["layout"]["meta"]["empty"]
    )
    default = layout()  # no Referer: the most recently updated run
    assert find(default, "runs")["value"] == ["group/beta.zarr"]


def test_play_ticks_stop_on_the_last_capture(server, runs):
    steps = open_run(runs / "alpha.zarr")["capture_step"].values
    version = {"runs": ["alpha.zarr"], "tokens": []}
    outs = [
        "spectrum.figure",
        "spec-slider.value",
        "spec-slider.max",
        "spec-slider.marks",
        "sel.data",
        "anim.disabled",
        "spec-play.children",
    ]

    dep = next(d for d in server.get_json("/_dash-dependencies") if d["output"].startswith("..spectrum.figure"))
    spec = dep["output"].strip(".").split("...")  # duplicate outputs carry an "@hash" suffix
    assert [o.split("@")[0] for o in spec] == outs

    def tick(step):
        values = {
            "anim.n_intervals": 5,
            "version.data": version,
            "spec-slider.value": 0,
            "sel.data": {"run": "alpha.zarr", "probe": "layer.01", "step": int(step)},
            "heatmap-metric.value": "rankme",
        }
        body = {
            "output": dep["output"],
            "changedPropIds": ["anim.n_intervals"],
            "outputs": [{"id": o.split(".")[0], "property": o.split(".", 1)[1]} for o in spec],
            "inputs": [{**i, "value": values.get(f"{i['id']}.{i['property']}")} for i in dep["inputs"]],
            "state": [{**i, "value": values.get(f"{i['id']}.{i['property']}")} for i in dep["state"]],
        }
        status, data = server.post_json("/_dash-update-component", body)
        assert status == 200
        return data["response"]

    mid = tick(steps[3])
    assert mid["sel"]["data"]["step"] == steps[4] and "anim" not in mid  # still playing
    end = tick(steps[-2])
    assert end["sel"]["data"]["step"] == steps[-1] and end["anim"]["disabled"] is True
    assert "play" in end["spec-play"]["children"]
    again = tick(steps[-1])  # a tick already in flight when it stopped: stays on the last capture
    assert again["sel"]["data"]["step"] == steps[-1] and again["anim"]["disabled"] is True


def test_a_damaged_run_still_gets_a_page_that_says_what_is_wrong(tmp_path):
    import json

    path = write_synthetic_run(tmp_path / "runs" / "bad.zarr", n_steps=30, n_probes=2, rank=16, n_layers=1)
    (path / "rankme" / "c.0.0").unlink()  # a lost chunk: the store refuses to read fill values as data
    app = create_app(tmp_path / "runs")
    r = app.server.test_client().get("/_dash-layout", headers={"Referer": "http://x/?run=bad.zarr"})
    assert r.status_code == 200
    page = json.loads(r.data)
    assert find(page, "runs")["value"] == ["bad.zarr"]
    for gid in ("overview", "heatmap", "trajectories", "gradients", "spectrum"):
        msg = find(page, gid)["figure"]["layout"]["meta"]["empty"]
        assert msg.startswith("could not draw this panel") and "rankme" in msg, (gid, msg)


def write_lossy_run(path, n_steps=20):
    """A real run whose writer lost data: failures of two stages, steps with lost and dropped captures,
    dropped step rows, closed "failed" (as the store writer closes a run after a failed write)."""
    from phasescope.store import RunWriter

    w = RunWriter(
        path,
        probes=["layer.00", "layer.01"],
        params=["w"],
        metrics=["rankme", "alpha"],
        max_rank=8,
        flags=["nonfinite", "skipped", "dropped", "lost"],
        attrs={"model": "lossy"},
    )
    for s in range(n_steps):
        w.append_step(
            s,
            {"loss": 1.0 / (s + 1), "lr": 1e-3, "grad_norm": 1.0},
            params={"grad_norm": np.ones(1)},
            flags={"lost": int(s in (4, 5, 6)), "dropped": int(s == 9)},
        )
        if s % 2 == 0 and s not in (4, 6):
            w.append_capture(
                s,
                {"rankme": np.full(2, 3.0), "alpha": np.full(2, 1.0)},
                eigenvalues=np.tile(1.0 / np.arange(1, 9), (2, 1)),
                n_samples=np.full(2, 32),
            )
    w.set_attrs(
        failures={"hook": 3, "write": 1},
        errors=4,
        n_dropped=1,
        n_dropped_steps=2,
        first_failures={
            "hook": "PhasescopeError: attention_mask shape (8, 6) does not match the probe output",
            "write": "OSError: [Errno 28] No space left on device",
        },
    )
    w.close(status="failed", error="store writer: OSError(28, 'No space left on device')")
    return path


def classes(node, cls):
    """Every component of a /_dash-layout tree whose className has ``cls``, as {className, text}."""
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            props = n.get("props", {})
            if cls in str(props.get("className", "")).split():
                out.append({"className": props["className"], "text": str(props.get("children"))})
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out


def test_first_page_shows_a_lossy_failed_run_red(tmp_path):
    """The server-rendered first page: every loss the run recorded is a red ('error') data-quality row,
    and the run picker's badge says 'failed'."""
    import json

    write_lossy_run(tmp_path / "runs" / "lossy.zarr")
    write_synthetic_run(tmp_path / "runs" / "clean.zarr", n_steps=12, n_probes=2, rank=16, n_layers=1)
    app = create_app(tmp_path / "runs")
    client = app.server.test_client()
    page = json.loads(client.get("/_dash-layout", headers={"Referer": "http://x/?run=lossy.zarr"}).data)
    red = classes(find(page, "quality-table"), "error")
    text = " | ".join(r["text"] for r in red)
    for want in (
        "run state",
        "failed: store writer: OSError",
        "phasescope failures: hook",
        "3 (first: PhasescopeError",
        "phasescope failures: write",
        "No space left on device",
        "steps flagged lost",
        "3 steps, 3 ",
        "steps flagged dropped",
        "n_dropped_steps",
    ):
        assert want in text, (want, text)
    assert len(red) == 6, text
    badges = {b["text"]: b["className"] for b in classes(find(page, "runs"), "badge")}
    assert badges["failed: store writer: OSError(28, 'No space left on device')"] == "badge failed"
    assert badges["finished"] == "badge finished"
    assert "bad" in str(find(page, "status")["children"])  # the header's state text is red too
    clean = json.loads(client.get("/_dash-layout", headers={"Referer": "http://x/?run=clean.zarr"}).data)
    assert classes(find(clean, "quality-table"), "error") == []


def test_plotly_js_is_a_page_script_served_by_dash(server):
    import urllib.request

    from phasescope.dashboard.app import PLOTLY_JS

    index = urllib.request.urlopen(server.url + "/", timeout=10).read().decode()
    assert f'src="{PLOTLY_JS}"' in index
    assert index.index(PLOTLY_JS) < index.index("dash_renderer")  # compiled before the renderer boots
    with urllib.request.urlopen(server.url + PLOTLY_JS, timeout=10) as r:
        head = r.read(4000)
    assert r.status == 200 and b"plotly.js" in head
    # the cartesian bundle is the same plotly.js release as the one the plotly package ships (and that
    # figures are validated against), and it is loaded once: not also as an automatic asset script
    from plotly.offline import get_plotlyjs_version

    assert f"v{get_plotlyjs_version()}\n".encode() in head, head[:200]
    assert index.count("plotly-cartesian.min.js") == 1


def test_a_run_served_as_the_root_is_named_by_its_folder_not_dot(runs):
    """`phasescope dashboard runs/demo.zarr`: the run's key is "." but every figure names it "alpha"."""
    from phasescope.dashboard.app import create_app as make

    app = make(runs / "alpha.zarr")
    with serve_app(app) as srv:
        import json
        import urllib.request

        with urllib.request.urlopen(srv.url + "/_dash-layout", timeout=30) as r:
            page = json.loads(r.read())
    assert find(page, "version")["data"]["runs"] == ["."]
    titles = [a["text"] for a in find(page, "overview")["figure"]["layout"]["annotations"]]
    assert any(t.startswith("alpha · ") for t in titles), titles
    assert not any(t.startswith(". ") for t in titles), titles
    assert {
        t["name"].split(" · ")[0]
        for t in find(page, "trajectories")["figure"]["data"]
        if t.get("name") and " · " in t["name"]
    } <= {"alpha"}
