"""The statistic registry and its first new statistic, linear CKA (Kornblith et al. 2019).

CKA is checked against known answers (invariances that make it exactly 1), against an independent
feature-space implementation (‖YᵀX‖_F² / (‖XᵀX‖_F ‖YᵀY‖_F), Kornblith et al. eq. 5) on numpy, torch and
jax, and live: an Observatory on a real GPT-2 training loop stores cka_first / cka_previous equal to
the same reference computed from ``output_hidden_states`` at the captured steps. Registering a new
statistic is shown to need no edit anywhere else: the store, the reducer and the dashboard pick it up.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import phasescope
from phasescope.errors import PhasescopeError
from phasescope.probes import schedules as S
from phasescope.spectra.similarity import centered_gram, linear_cka
from phasescope.statistics import REGISTRY, Statistic, Variable, get, names, register
from phasescope.store import open_run


def reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, eq. 5, in feature space (never forms a Gram matrix)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def cka(x, y) -> float:
    return linear_cka(centered_gram(x), centered_gram(y))


def test_cka_known_answers_and_invariances():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16))
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, 3.5 * x @ q + 7.0) == pytest.approx(1.0, abs=1e-6)  # orthogonal map, scale, shift
    assert cka(x, 3.5 * x @ q + 1e4) == pytest.approx(1.0, abs=1e-6)  # a large offset cancels (float64 centring)
    wide = np.hstack([x, np.zeros((200, 5))])  # width does not matter
    assert cka(x, wide) == pytest.approx(1.0, abs=1e-12)
    # Independent directions: CKA of two independent Gaussian blocks is small (→ 0 as n grows).
    assert cka(x, rng.standard_normal((200, 16))) < 0.2
    # Not 1 for a non-isotropic rescaling of features.
    assert cka(x, x * np.linspace(0.1, 3, 16)) < 0.99
    assert np.isnan(linear_cka(centered_gram(x), centered_gram(x[:10])))  # not the same samples
    assert np.isnan(cka(np.ones((5, 3)), x[:5]))  # a constant representation


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_cka_equals_the_feature_space_reference(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 24))
    y = np.tanh(x @ rng.standard_normal((24, 40))) + 0.3 * rng.standard_normal((300, 40))
    want = reference_cka(x, y)
    if backend == "torch":
        xs, ys = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    elif backend == "jax":
        jnp = pytest.importorskip("jax.numpy")
        xs, ys = jnp.asarray(x, dtype=jnp.float32), jnp.asarray(y, dtype=jnp.float32)
    else:
        xs, ys = x, y
    assert cka(xs, ys) == pytest.approx(want, rel=1e-5)  # the n × n product in float32 (the default)
    if backend == "numpy":
        exact = linear_cka(centered_gram(xs, exact=True), centered_gram(ys, exact=True))
        assert exact == pytest.approx(want, rel=1e-12)
    assert 0.2 < want < 0.95  # a case where the value itself is informative


def test_registry_declares_statistics_and_refuses_clashes():
    assert names("metric")[:2] == ("rankme", "alpha") and {"cka_first", "cka_previous"} <= set(names("metric"))
    cka_stat = get("cka")
    assert cka_stat.cost == "capture" and cka_stat.schedule == "capture" and "similarity" in cka_stat.panels
    assert [v.dims for v in cka_stat.variables] == [("capture_step", "probe")] * 3
    assert get("matrix_svd").variables[0].dtype == "float32"
    with pytest.raises(PhasescopeError, match="did you mean cka"):
        get("ckaa")
    with pytest.raises(PhasescopeError, match="already registered: rankme"):
        register(Statistic("dup", "capture", "capture", ("spectrum",), (Variable("rankme", "metric"),), compute=len))
    with pytest.raises(PhasescopeError, match="unknown kind"):
        Statistic("bad", "capture", "capture", (), (Variable("x", "tensor"),), compute=len)


def _gpt2(d=32):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=d,
            n_head=2,
            vocab_size=128,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


def test_live_cka_matches_hidden_state_reference(tmp_path):
    model = _gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 128, (40, 12), generator=g)
    ref = {}
    with phasescope.Observatory(
        model,
        store=str(tmp_path / "cka.zarr"),
        probes=["transformer.ln_f"],
        schedule=S.explicit([0, 4, 9]),
        probe_inputs={"input_ids": ids},
        strict=True,
        write_interval=0.0,
    ) as obs:
        for step in range(10):
            if step in (0, 4, 9):
                model.eval()
                with torch.no_grad():
                    ref[step] = (
                        model(input_ids=ids, output_hidden_states=True).hidden_states[-1][:, -1].double().numpy()
                    )
                model.train()
            x = torch.randint(0, 128, (8, 12), generator=g)
            model(input_ids=x, labels=x).loss.backward()
            obs.step(step, loss=1.0)
            opt.step()
            opt.zero_grad()
    ds = open_run(tmp_path / "cka.zarr")
    first = ds.cka_first.isel(probe=0).values
    prev = ds.cka_previous.isel(probe=0).values
    assert first[0] == 1.0 and np.isnan(prev[0])
    np.testing.assert_allclose(first[1:], [reference_cka(ref[4], ref[0]), reference_cka(ref[9], ref[0])], rtol=1e-5)
    np.testing.assert_allclose(prev[1:], [reference_cka(ref[4], ref[0]), reference_cka(ref[9], ref[4])], rtol=1e-5)
    assert first[2] < 0.999  # training moved the representation


def test_in_flight_captures_store_no_cka(tmp_path):
    model = _gpt2()
    with phasescope.Observatory(
        model,
        store=str(tmp_path / "fly.zarr"),
        probes=["transformer.ln_f"],
        capture="in_flight",
        schedule=S.explicit([0, 1]),
        strict=True,
    ) as obs:
        for step in range(2):
            x = torch.randint(0, 128, (8, 12))
            model(input_ids=x, labels=x).loss.backward()
            obs.step(step)
    ds = open_run(tmp_path / "fly.zarr")
    assert ds.rankme.notnull().all() and ds.cka_first.isnull().all()  # different samples every step


def test_a_new_statistic_is_one_registration(tmp_path):
    """A statistic registered from outside (here: the largest eigenvalue's share, λ₁/Σλ, computed by
    the test) is stored by the Recorder and offered by the dashboard without touching either."""
    from phasescope.dashboard import figures as F
    from phasescope.probes import Recorder

    def top_share(inputs, state):
        lam = inputs.spectrum.eigenvalues[: inputs.spectrum.n_components]
        return {"top_share": float(lam[0] / lam.sum())}

    stat = register(
        Statistic(
            "top_share",
            "capture",
            "capture",
            ("spectrum",),
            (Variable("top_share", "metric", "λ₁ / Σλ"),),
            compute=lambda x: x,
            per_probe=top_share,
        )
    )
    try:
        x = np.random.default_rng(3).standard_normal((64, 6)) * np.arange(1, 7)
        with Recorder(str(tmp_path / "new.zarr"), write_interval=0.0, strict=True) as rec:
            rec.record(0, activations={"h": x})
        ds = open_run(tmp_path / "new.zarr")
        lam = np.linalg.eigvalsh(np.cov(x.T))
        assert float(ds.top_share.values[0, 0]) == pytest.approx(lam.max() / lam.sum(), rel=1e-9)
        assert "top_share" in F.capture_metrics(ds)
    finally:
        REGISTRY.pop(stat.name)


def test_readme_statistic_example_runs_as_written(tmp_path):
    """The README's "## Metrics" snippet registers a statistic; a Recorder then stores it and the
    dashboard page gets the panel it names — nothing else is edited."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    script = (
        snippet
        + f"""
import numpy as np
from phasescope.probes import Recorder
from phasescope.dashboard.layout import GRAPHS
with Recorder({str(tmp_path / "r.zarr")!r}, write_interval=0.0, strict=True) as rec:
    rec.record(0, activations={{"h": np.random.default_rng(0).standard_normal((50, 4)) * [4, 3, 2, 1]}})
print("stat-shares" in GRAPHS)
"""
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
    share = float(open_run(tmp_path / "r.zarr").top_share.values[0, 0])
    assert 0.25 < share < 1.0
