"""Figures for papers (`phasescope report`, `phasescope.report`): the dashboard's builders restyled for print,
written as PDF, SVG, PNG and HTML from real run stores, each format read back and checked against the runs'
data; two runs are each named and no figure claims a run it does not draw; bad input is one line and exit 2.
Tests that start Chromium through kaleido are marked ``browser``."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import phasescope
from phasescope.cli import main
from phasescope.dashboard._plotly import decode_array
from phasescope.dashboard.report import Style, load_runs, report, report_figures
from phasescope.store import open_run
from phasescope.testing.synthetic import write_synthetic_run

EXE = [sys.executable, "-m", "phasescope.cli", "report"]
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "runs"
    a = write_synthetic_run(root / "north.zarr", n_steps=90, n_probes=4, rank=64, n_layers=1)
    b = write_synthetic_run(root / "south.zarr", n_steps=60, n_probes=4, rank=64, n_layers=1)
    return [a, b]


@pytest.fixture(scope="module")
def pages(runs):
    return report_figures(runs, style=Style(width=640, height=420, font_size=13))


def arr(v):
    return np.asarray(decode_array(v), dtype=float)


def same(a, b) -> bool:
    return np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=1e-6)


def lines_of(fig):
    """Traces drawn as lines (with at least two points): one SVG path each."""
    return [
        t for t in fig.data if t.type == "scatter" and "lines" in (t.mode or "") and np.isfinite(arr(t.y)).sum() >= 2
    ]


# -- figures (no browser) --------------------------------------------------------------------------
def test_every_figure_of_two_runs_holds_their_data_and_claims_no_run_it_does_not_draw(runs, pages):
    pages, notes = pages
    ds = {"north": open_run(runs[0]), "south": open_run(runs[1])}
    assert not notes
    assert [(p.kind, p.run) for p in pages] == [
        ("trajectories", None),
        ("heatmap", "north"),
        ("heatmap", "south"),
        ("spectrum", "north"),
        ("spectrum", "south"),
        ("profile", None),
    ]
    for page in pages:
        fig, title = page.figure, page.figure.layout.title.text
        drawn = set()
        for name, d in ds.items():
            rankme = d["rankme"].transpose("capture_step", "probe").values
            for t in fig.data:
                y = arr(t.y) if t.type == "scatter" and t.y is not None else None
                if t.type == "heatmap" and same(arr(t.z), rankme.T):
                    drawn.add(name)
                elif (
                    t.type == "scatter"
                    and name in (t.name or "")
                    and y is not None
                    and (
                        any(same(y, col) for col in rankme.T)  # a trajectory
                        or same(y, rankme[-1])  # a profile
                        or same(y, d["loss"].values)
                    )
                ):  # its loss
                    drawn.add(name)
            if page.kind == "spectrum" and page.run == name:
                eig = d["eigenvalues"].values[-1, -1]
                assert same(arr(fig.data[0].y), eig[eig > 0]) and title.startswith(name)
                drawn.add(name)
        claimed = {n for n in ds if n in title or any(n in (t.name or "") for t in fig.data)}
        if page.run is not None:
            assert claimed == drawn == {page.run}, (page.kind, title)  # a page per run, titled with it
        else:
            assert claimed == drawn == set(ds), (page.kind, title)  # overlays name and draw both runs
        assert fig.layout.width == 640 and fig.layout.height == 420 and fig.layout.font.size == 13
        assert fig.layout.uirevision is None and fig.layout.paper_bgcolor == "white"  # print: no UI state


def test_phases_of_overlaid_runs_are_drawn_in_a_strip_of_their_own(runs, pages):
    (bare,), _ = report_figures(runs, figure="trajectories", phases=False)
    assert not bare.figure.layout.shapes and not bare.figure.layout.annotations  # not asked for: no "not computed"
    traj = pages[0][0].figure
    strips = traj.layout.meta["phase_strips"]
    assert strips == ["north", "south"]
    top = traj.layout.yaxis.domain[1]
    rects = [s for s in traj.layout.shapes if s.type == "rect"]
    assert rects and all(s.y0 >= top for s in rects)  # never behind the lines
    labels = [a.text for a in traj.layout.annotations]
    assert "north" in labels and "south" in labels  # each strip says whose phases


def test_profile_at_a_chosen_step_and_one_run_named_in_title(runs):
    (page,), _ = report_figures(runs[0], figure="profile", metric="alpha", step=31)
    d = open_run(runs[0])
    c = list(d["capture_step"].values).index(31)
    assert np.allclose(arr(page.figure.data[0].y), d["alpha"].values[c])
    assert page.figure.data[0].name == "north · step 31" and "north" in page.figure.layout.title.text
    assert list(page.figure.layout.xaxis.ticktext) == [str(p) for p in d["probe"].values]


def test_runs_with_the_same_folder_name_are_told_apart(tmp_path, runs):
    import shutil

    for parent in ("x", "y"):
        shutil.copytree(runs[0], tmp_path / parent / "run.zarr")
    data, _ = load_runs([tmp_path / "x" / "run.zarr", tmp_path / "y" / "run.zarr"])
    assert list(data) == ["x/run", "y/run"]


def test_html_holds_every_figure_and_every_value_offline(runs, pages, tmp_path):
    assert phasescope.report is report
    out = tmp_path / "fig.html"
    assert phasescope.report(runs, out, width=640, height=420, font_size=13) == [out]
    text = out.read_text()
    assert '<script src="http' not in text and "<script src='http" not in text  # plotly.js inlined: offline
    calls = [m.end() for m in re.finditer(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", text)]
    assert len(calls) == len(pages[0])
    for start, page in zip(calls, pages[0]):
        data, _ = json.JSONDecoder().raw_decode(text, start)
        assert len(data) == len(page.figure.data)
        for got, want in zip(data, page.figure.data):
            key = "z" if want.type == "heatmap" else "y"
            if want[key] is not None:
                assert np.allclose(arr(got[key]), arr(want[key]), equal_nan=True), (page.kind, want.name)


# -- bad input: one line, exit 2, no traceback -------------------------------------------------------
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path):
    a, b = (str(r) for r in runs)
    out = str(tmp_path / "f.pdf")
    cases = {
        "ext": ([a, "--out", str(tmp_path / "f.jpg")], "must end in .pdf, .svg, .png, .html"),
        "missing": ([str(tmp_path / "nope.zarr"), "--out", out], "does not exist"),
        "twice": ([a, a, "--out", out], "given twice"),
        "metric": ([a, "--out", out, "--metric", "rankmee"], "closest: rankme"),
        "probe": ([a, "--out", out, "--probe", "layer.9"], "closest: layer.0"),
        "step": ([a, b, "--out", out, "--step", "30"], "nearest captured step is 31"),
        "folder": ([a, "--out", str(tmp_path)], "must end in"),
        "figure": ([a, "--out", out, "--figure", "stages"], "invalid choice"),
    }
    driver = textwrap.dedent("""
        import contextlib, io, json, sys, traceback
        from phasescope.cli import main
        out = {}
        for key, argv in json.loads(sys.argv[1]).items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    rc = main(["report", *argv])
                except SystemExit as e:
                    rc = e.code
                except BaseException:
                    rc, _ = "raised", err.write(traceback.format_exc())
            out[key] = [rc, err.getvalue()]
        print(json.dumps(out))
    """)
    res = subprocess.run(
        [sys.executable, "-c", driver, json.dumps({k: v[0] for k, v in cases.items()})],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for key, (_, needle) in cases.items():
        rc, err = got[key]
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err and needle in lines[0], (key, rc, err)
    assert not list(tmp_path.glob("f.*"))  # nothing half-written
    real = subprocess.run(
        [*EXE, str(tmp_path / "nope.zarr"), "--out", out], capture_output=True, text=True, timeout=120
    )  # and the real command
    assert real.returncode == 2 and "Traceback" not in real.stderr and len(real.stderr.strip().splitlines()) == 1


def test_missing_kaleido_or_chromium_names_the_fix(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kaleido", None)  # makes `import kaleido` fail
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "f.svg"), "--figure", "profile"]) == 2
    assert "pip install 'phasescope[report]'" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "kaleido")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium"))
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "f.svg"), "--figure", "profile"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install chromium" in err[0], err
    assert not list(tmp_path.glob("f*.svg"))


# -- static formats through kaleido (Chromium) -------------------------------------------------------
def _svg_line_paths(path) -> int:
    """Line paths of the plot's scatter traces (g.trace.scatter in the cartesian layer), not the legend's."""
    root = ET.parse(path).getroot()
    n = 0
    for g in root.iter(f"{SVG}g"):
        cls = g.get("class", "").split()
        if "trace" in cls and "scatter" in cls:
            n += sum("js-line" in p.get("class", "").split() for p in g.iter(f"{SVG}path"))
    return n


@pytest.mark.browser
def test_svg_has_one_path_per_line_trace_and_the_command_prints_the_files(runs, pages, tmp_path):
    out = tmp_path / "fig.svg"
    res = subprocess.run(
        [*EXE, *map(str, runs), "--out", str(out), "--width", "640", "--height", "420", "--font-size", "13"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    written = res.stdout.split()
    want = [tmp_path / f"fig-{p.kind}" for p in pages[0]]
    want = [f"{w}-{p.run}.svg" if p.run else f"{w}.svg" for w, p in zip(want, pages[0])]
    assert written == want
    for path, page in zip(written, pages[0]):
        assert _svg_line_paths(path) == len(lines_of(page.figure)), (path, page.kind)
        text = " ".join("".join(t.itertext()) for t in ET.parse(path).getroot().iter(f"{SVG}text"))
        for name in ("north", "south"):
            assert (name in text) == (page.run in (None, name)), (path, name)  # names only the runs it draws
    assert _svg_line_paths(written[0]) == 2 * 4 + 2  # 4 layers and the loss, per run


@pytest.mark.browser
def test_png_has_the_requested_pixel_size(runs, tmp_path):
    out = tmp_path / "profile.png"
    assert report(runs, out, figure="profile", width=500, height=300, scale=3) == [out]
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1500, 900)


@pytest.mark.browser
def test_pdf_has_one_page_per_figure_naming_its_runs(runs, pages, tmp_path):
    pypdf = pytest.importorskip("pypdf")
    out = tmp_path / "fig.pdf"
    assert report(runs, out, width=640, height=420, font_size=13) == [out]
    reader = pypdf.PdfReader(out)
    assert len(reader.pages) == len(pages[0]) == 6
    for pdf_page, page in zip(reader.pages, pages[0]):
        text = pdf_page.extract_text()
        for name in ("north", "south"):
            assert (name in text) == (page.run in (None, name)), (page.kind, page.run, name)
        # vector: the layout size (CSS pixels at 96 dpi, 0.75 pt each), not multiplied by --scale
        assert float(pdf_page.mediabox.width) == pytest.approx(640 * 0.75, abs=1)


@pytest.mark.browser
def test_the_readme_report_commands_run_as_written(tmp_path):
    """The README's `phasescope report` block, line by line, in a folder holding the runs it names."""
    import os

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"\*\*Figures for papers\*\*.*?```bash\n(.*?)```", readme, flags=re.S).group(1)
    lines = [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 3 and all(ln.startswith(".venv/bin/phasescope report ") for ln in lines)
    for name in ("demo", "a", "b"):
        write_synthetic_run(tmp_path / "runs" / f"{name}.zarr", n_steps=40, n_probes=3, rank=16, n_layers=1)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "phasescope").symlink_to(Path(sys.executable).with_name("phasescope"))
    for line in lines:
        res = subprocess.run(
            line,
            shell=True,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert res.returncode == 0, (line, res.stderr[-2000:])
        out = tmp_path / re.search(r"--out (\S+)", line).group(1)
        assert out.exists() and out.stat().st_size > 1000, line


def test_training_stages_are_marked_on_the_report_figures(tmp_path):
    """A run with stages: its trajectories and heatmap pages mark where each stage begins (the dashboard's
    dotted line on every x axis, named), as the README says."""
    from test_phases_stages import write_staged

    from phasescope.dashboard.stage_figures import STAGE_COLOUR

    path = write_staged(tmp_path / "staged.zarr", metrics=("rankme", "alpha"))
    got, _ = report_figures([path], figure=["trajectories", "heatmap"], phases=False)
    for page in got:
        marks = [s for s in page.figure.layout.shapes if s.type == "line" and s.line.color == STAGE_COLOUR]
        assert marks and {s.x0 for s in marks} == {1000.0}, page.kind
        assert {"▸ sft", "▸ rl"} <= {a.text for a in page.figure.layout.annotations}, page.kind
