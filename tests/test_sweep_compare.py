"""Sweeps (issue 16): 8 small runs trained here (learning rates × batch sizes), compared by their early
signals; the table checked against a direct computation from the stores; `phasescope compare` errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import phasescope
from phasescope.cli import main
from phasescope.store import open_run
from phasescope.sweep import SIGNALS, compare_paths

V, T = 64, 12


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("sweep")
    probe = torch.randint(0, V, (16, T), generator=torch.Generator().manual_seed(9))
    paths = []
    for lr in (3e-4, 1e-3, 3e-3, 1e-2):
        for bs in (4, 16):
            torch.manual_seed(0)
            cfg = GPT2Config(
                n_layer=1, n_embd=16, n_head=2, vocab_size=V, n_positions=T, bos_token_id=0, eos_token_id=0
            )
            model = GPT2LMHeadModel(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=lr)
            path = root / f"lr{lr:g}-bs{bs}.zarr"
            gen = torch.Generator().manual_seed(1)
            with phasescope.Observatory(model, store=path, probe_inputs=probe, schedule=[0, 2, 4, 10, 20, 39]) as obs:
                for step in range(40):
                    x = torch.randint(0, V // 2, (bs, T), generator=gen)  # a learnable half of the vocabulary
                    loss = model(input_ids=x, labels=x).loss
                    loss.backward()
                    obs.step(step, loss=loss, lr=lr)
                    opt.step()
                    opt.zero_grad()
            paths.append(path)
    return paths


def test_table_equals_a_direct_computation_from_the_stores(sweep):
    table = compare_paths(sweep, early=0.1, rank_by="grad_norm")
    assert len(table.rows) == 8 and all(r["finished"] for r in table.rows)
    got = {r["run"]: r for r in table.rows}
    for path in sweep:
        ds = open_run(path)
        early = ds.step.values <= 0.1 * 39  # steps 0..3
        r = got[path.name.removesuffix(".zarr")]
        assert r["early_steps"] == 3
        assert r["grad_norm"] == pytest.approx(float(ds.grad_norm.values[early].mean()), rel=1e-9)
        assert r["loss"] == pytest.approx(float(ds.loss.values[early].mean()), rel=1e-9)
        caps = ds.capture_step.values <= 3.9
        assert r["rankme"] == pytest.approx(float(np.median(ds.rankme.values[caps], axis=1).mean()), rel=1e-9)
        assert r["final"] == pytest.approx(float(ds.loss.values[-2:].mean()), rel=1e-9)  # the last 5 % of 40 steps
    ranked = [r["grad_norm"] for r in table.rows]
    assert ranked == sorted(ranked)
    for s in SIGNALS:
        want = stats.spearmanr([r[s] for r in table.rows], [r["final"] for r in table.rows]).statistic
        assert table.spearman[s] == pytest.approx(want)
    # a real sweep: the learning rates separate the final losses
    finals = {r["run"]: r["final"] for r in table.rows}
    assert finals["lr0.01-bs16"] < finals["lr0.0003-bs16"]
    text = table.text()
    assert "Spearman" in text and "lr0.01-bs16" in text


def test_compare_cli_and_its_errors(sweep, capsys):
    assert main(["compare", *map(str, sweep[:3]), "--rank-by", "loss"]) == 0
    out = capsys.readouterr().out
    assert "ranked by loss" in out
    assert main(["compare", str(sweep[0]), "--early", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--early must be a fraction in (0, 1]" in err and len(err.splitlines()) == 1
    assert main(["compare", str(sweep[0]), "--early", "1.5"]) == 2
    capsys.readouterr()
    assert main(["compare", str(sweep[0]) + "-missing"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_runs_without_steps_are_one_line(tmp_path, capsys):
    from phasescope.store import RunWriter

    with RunWriter(tmp_path / "empty.zarr", probes=[], params=[], metrics=[], max_rank=0):
        pass
    assert main(["compare", str(tmp_path / "empty.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert "none of the runs has finished steps" in err and len(err.splitlines()) == 1


def test_dashboard_sweep_table_ranks_the_selected_runs(sweep):
    from phasescope.dashboard.callbacks import Views
    from phasescope.dashboard.data import RunSource

    views = Views(RunSource(sweep[0].parent), refresh_ms=1000)
    keys = [p.name for p in sweep]
    rows = views.sweep_rows({"runs": keys})
    table = compare_paths(sweep)
    assert [r["run"] for r in rows[:-1]] == [r["run"] + ".zarr" for r in table.rows]  # the picker's names
    assert rows[-1]["run"].startswith("Spearman") and rows[-1]["loss"] == f"ρ {table.spearman['loss']:.4g}"
    assert views.sweep_rows({"runs": keys[:1]}) == []  # one run: no sweep
    by_loss = views.sweep_rows({"runs": keys}, "loss")  # the table's rank-by choice
    assert [r["run"] for r in by_loss[:-1]] == [r["run"] + ".zarr" for r in compare_paths(sweep, rank_by="loss").rows]


def test_same_folder_names_stay_apart_and_json_is_clean(sweep, tmp_path, capsys):
    import json
    import shutil

    for d in ("a", "b"):
        shutil.copytree(sweep[0], tmp_path / d / "run.zarr")
    table = compare_paths([tmp_path / "a" / "run.zarr", tmp_path / "b" / "run.zarr"], target="no_such")
    assert len(table.rows) == 2
    assert (
        main(
            [
                "compare",
                str(tmp_path / "a" / "run.zarr"),
                str(tmp_path / "b" / "run.zarr"),
                "--target",
                "nope",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["rows"][0]["final"] is None and "the correlations are NaN" in out["notes"][-1]


def test_gradient_panel_draws_every_ticked_run(sweep):
    """Issue 16: the gradients panel with several runs overlays their block norms (named, one dash per
    run) and stacks their layer x step heatmaps, a row per run and projection type."""
    import plotly.graph_objects as go

    from phasescope.dashboard.callbacks import Views
    from phasescope.dashboard.data import RunSource

    views = Views(RunSource(sweep[0].parent), refresh_ms=1000)
    keys = [sweep[0].name, sweep[-1].name]
    fig = views.gradients({"runs": keys}, "step")
    go.Figure(fig.to_dict())
    assert fig.layout.meta["runs"] == keys and "runs " + ", ".join(keys) in fig.layout.title.text
    lines = {t.name: t for t in fig.data if t.type == "scatter" and t.legendgroup == "grad"}
    a, b = lines[f"block 0 · {keys[0]}"], lines[f"block 0 · {keys[1]}"]
    assert a.line.dash != b.line.dash
    ds = open_run(sweep[-1])
    blocks = [i for i, p in enumerate(ds["param"].values) if ".h.0." in str(p)]
    want = np.sqrt((ds["param_grad_norm"].values[:, blocks] ** 2).sum(1))
    from phasescope.dashboard._plotly import decode_array

    np.testing.assert_allclose(np.asarray(decode_array(b.y), float), want, rtol=1e-5)
    heat = [t.name for t in fig.data if t.type == "heatmap"]
    assert any(n.endswith(keys[0]) for n in heat) and any(n.endswith(keys[1]) for n in heat)


def test_trajectories_of_a_sweep_draw_each_runs_deepest_probe(sweep):
    from phasescope.dashboard.callbacks import Views
    from phasescope.dashboard.data import RunSource

    views = Views(RunSource(sweep[0].parent), refresh_ms=1000)
    keys = [p.name for p in sweep]
    fig = views.trajectories({"runs": keys}, "rankme", None, "step")[0]
    drawn = {t.name for t in fig.data if t.yaxis in (None, "y") and "loss" not in (t.name or "")}
    deepest = str(open_run(sweep[0]).probe.values[-1])
    assert len(drawn) == 8 and all(deepest in n for n in drawn)  # one line per run, not a spread of layers
    picked = views.trajectories({"runs": keys}, "rankme", ["block.0"], "step")[0]  # the dropdown still chooses
    assert all(
        "block.0" in (t.name or "") for t in picked.data if t.yaxis in (None, "y") and "loss" not in (t.name or "")
    )


def test_gradient_heatmaps_of_many_runs_are_the_first_ones_and_said(sweep):
    from phasescope.dashboard.callbacks import Views
    from phasescope.dashboard.data import RunSource

    views = Views(RunSource(sweep[0].parent), refresh_ms=1000)
    keys = [p.name for p in sweep[:3]]
    fig = views.gradients({"runs": keys}, "step")
    assert fig.layout.meta["heatmap_runs"] == keys[:2] and f"heatmaps of {keys[0]}, {keys[1]}" in fig.layout.title.text
    assert {t.name.split(" · ")[-1] for t in fig.data if t.type == "heatmap"} == set(keys[:2])
    assert any(t.name.endswith(keys[2]) for t in fig.data if t.type == "scatter")  # its lines are drawn
