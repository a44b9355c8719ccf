"""The synthetic Zipfian language and `phasescope demo --preset three-phases` (issue 15, the third phase).

The language: seeded, its token frequencies follow the skew asked for, held-out windows are never in the
training stream. The preset: its settings reach the run, flags override them, and its mistakes are
one-line errors. The run itself (6-13 minutes) is `make test-long`; tests/test_phases_three.py also
labels a recorded one."""

from __future__ import annotations

import numpy as np
import pytest

from phasescope.cli import build_parser, demo_config, main
from phasescope.demo import PRESETS, DemoConfig
from phasescope.zipf import ZipfLanguage, corpus


def _entropy(tokens: np.ndarray, vocab: int) -> float:
    p = np.bincount(tokens.ravel(), minlength=vocab) / tokens.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_language_is_seeded_and_skewed_as_asked():
    a = ZipfLanguage(512, zipf=1.4, chains=64, seed=3).text(200)
    assert np.array_equal(a, ZipfLanguage(512, zipf=1.4, chains=64, seed=3).text(200))
    assert not np.array_equal(a, ZipfLanguage(512, zipf=1.4, chains=64, seed=4).text(200))
    uniform = ZipfLanguage(512, zipf=0.0, chains=64, seed=3).text(200)
    # skew lowers the unigram entropy (uniform over 512 tokens: ln 512 = 6.24 nats at most)
    assert _entropy(a, 512) < _entropy(uniform, 512) - 1.0
    assert _entropy(uniform, 512) > 5.5
    # frequent tokens are the low ids, as the prior says: token 0 far outranks the median token
    counts = np.bincount(a.ravel(), minlength=512)
    assert counts[:8].sum() > 10 * counts[256:264].sum()
    # the context matters: the next token is far more predictable from the previous one than from nothing
    lang = ZipfLanguage(512, zipf=1.4, chains=4096, seed=3)
    ctx, _nxt = lang.advance()
    lp = lang.logits(ctx).log_softmax(-1)
    cond = float(-lp.exp().mul(lp).sum(-1).mean())
    assert cond < lang.unigram_entropy() - 0.5


def test_the_logit_table_equals_the_latent_product():
    """Up to V = 4,096 the logits come from a precomputed (V, V) table; beyond, from the latent product."""
    lang = ZipfLanguage(512, zipf=1.4, chains=32, seed=1)
    ctx = lang.state
    z = sum(w * lang.e[ctx[:, i]] for i, w in enumerate(lang.weights))
    direct = lang.log_prior + lang.beta * z @ lang.u.T
    assert lang.table is not None
    np.testing.assert_allclose(lang.logits(ctx).numpy(), direct.numpy(), rtol=1e-5, atol=1e-4)
    lang.table = None
    np.testing.assert_allclose(lang.logits(ctx).numpy(), direct.numpy(), rtol=1e-6, atol=1e-6)


def test_corpus_keeps_held_out_windows_apart():
    stream, held = corpus(256, 20_000, heldout=32, seq_len=16, seed=0, chains=64)
    assert stream.dtype == np.int64 and held.shape == (32, 16) and len(stream) >= 20_000
    assert stream.min() >= 0 and stream.max() < 256
    # by construction: each chain's last seq_len tokens are held out after a gap of seq_len
    per_chain = len(stream) // 64
    text = ZipfLanguage(256, chains=64, seed=0).text(per_chain + 32)
    assert np.array_equal(text[:32, -16:], held)
    assert np.array_equal(text[:, :-32].reshape(-1), stream)
    with pytest.raises(ValueError, match="at least as many chains"):
        corpus(256, 1000, heldout=65, seq_len=16, chains=64)


def test_preset_values_reach_the_config_and_flags_override_them():
    parse = lambda *a: demo_config(build_parser().parse_args(["demo", *a]))  # noqa: E731
    assert parse() == DemoConfig()
    cfg = parse("--preset", "three-phases")
    for k, v in PRESETS["three-phases"].items():
        assert getattr(cfg, k) == v, k
    cfg = parse("--preset", "three-phases", "--steps", "500", "--n-embd", "32")
    assert cfg.steps == 500 and cfg.n_embd == 32 and cfg.corpus == "zipf" and cfg.vocab_size == 2048
    # a flag equal to the plain default still wins over the preset
    assert parse("--preset", "three-phases", "--weight-decay", "0.1").weight_decay == 0.1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--corpus", "zipf", "--save-every", "10"], "drop --save-every"),
        (["--corpus", "zipf", "--probe-size", "600"], "at most 512"),
        (["--weight-decay", "-1"], "must be 0 or positive"),
    ],
)
def test_preset_mistakes_are_one_line_errors(tmp_path, capsys, argv, needle):
    assert main(["demo", "--out", str(tmp_path / "x.zarr"), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "x.zarr").exists()


def test_a_short_zipf_run_records_its_corpus(tmp_path):
    """A real (short) run of the preset's corpus: the store names the language and the probe set."""
    from phasescope.demo import run_demo
    from phasescope.store import open_run

    cfg = DemoConfig(**{**PRESETS["three-phases"], "steps": 60, "capture_every": 30, "probe_size": 64})
    run_demo(cfg, tmp_path / "z.zarr", progress=False)
    ds = open_run(tmp_path / "z.zarr")
    assert ds.attrs["corpus"].startswith("synthetic Zipfian language") and "2048 tokens" in ds.attrs["corpus"]
    assert ds.attrs["probe_set"].startswith("held-out windows") and ds.attrs["demo_config"]["probes_from"] is None
    assert ds.sizes["step"] == 60 and np.isfinite(ds["rankme"].values).all()
    assert (ds["rankme"].values <= 16).all()  # d = 16
