"""The demo's probe sets and learning-rate schedules (issue 21): mid-text windows by default, whole
verses on request, cosine or constant after warmup, each recorded in the run's metadata."""

from __future__ import annotations

import numpy as np
import pytest

from phasescope.corpus import heldout_probe_texts, load_kjv, midtext_windows, split_verses
from phasescope.demo import DemoConfig, lr_at, probe_sequences
from phasescope.errors import PhasescopeError

FINAL = (".", ";", ":", "?", "!", ",")


def test_windows_are_seeded_distinct_slices_of_the_held_out_text():
    held = split_verses(load_kjv()).heldout
    words = " ".join(held).split()
    a = midtext_windows(held, 300, seed=3)
    assert a == midtext_windows(held, 300, seed=3)
    assert a != midtext_windows(held, 300, seed=4)
    assert len(set(a)) == 300
    index = {}
    for i in range(len(words) - 47):
        index.setdefault(words[i], []).append(i)
    for w in a:
        ws = w.split()
        assert len(ws) == 48
        assert any(words[i : i + 48] == ws for i in index[ws[0]]), w  # a contiguous slice


def test_windows_end_inside_running_text_where_verses_end_in_punctuation():
    """The point of mid-text probes: their last word is rarely clause-final, a verse's nearly always is."""
    verses = heldout_probe_texts("verses")
    mid = heldout_probe_texts("midtext", 500, seed=1)
    verse_final = np.mean([v.rstrip().endswith(FINAL) for v in verses])
    mid_final = np.mean([w.endswith(FINAL) for w in mid])
    assert verse_final > 0.95, verse_final
    assert mid_final < 0.4, mid_final


def test_window_errors_name_the_fix():
    held = ["in the beginning god created the heaven and the earth and the earth was without form"]
    with pytest.raises(PhasescopeError, match="ask for fewer probes"):
        midtext_windows(held, 10, words=12)
    with pytest.raises(PhasescopeError, match="at least 11 words"):
        midtext_windows(held, 1, words=5)
    with pytest.raises(PhasescopeError, match="midtext, verses"):
        heldout_probe_texts("sentences")


@pytest.fixture(scope="module")
def tokenizer():
    from phasescope.corpus import train_tokenizer

    return train_tokenizer(split_verses(load_kjv()).train, 2048)


def test_demo_probe_sets(tokenizer):
    mid = probe_sequences(tokenizer, DemoConfig(probe_size=200, seq_len=64))
    ver = probe_sequences(tokenizer, DemoConfig(probe_size=200, seq_len=64, probes_from="verses"))
    assert len(mid) == len(ver) == 200
    for seqs in (mid, ver):
        assert all(10 < len(s) <= 64 for s in seqs)
    # mid-text windows fill the context; their last tokens are mostly not punctuation, the verses' are
    assert np.mean([len(s) for s in mid]) > 55
    last = lambda seqs: np.mean([tokenizer.decode([s[-1]]).strip().endswith(FINAL) for s in seqs])  # noqa: E731
    assert last(ver) > 0.75 and last(mid) < 0.3, (last(ver), last(mid))  # long verses lose their end to truncation
    assert probe_sequences(tokenizer, DemoConfig(probe_size=200, seed=1)) != mid  # seeded by the run's seed


def test_schedules_after_warmup():
    cos = DemoConfig(steps=1000, warmup=100, lr=1e-3, schedule="cosine")
    const = DemoConfig(steps=1000, warmup=100, lr=1e-3, schedule="constant")
    for cfg in (cos, const):
        assert lr_at(0, cfg) == pytest.approx(1e-5) and lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(999, cos) == pytest.approx(1e-4, rel=1e-2) and lr_at(550, cos) == pytest.approx(5.5e-4, rel=1e-2)
    assert all(lr_at(t, const) == 1e-3 for t in (100, 550, 999))
    for bad, needle in (
        ({"schedule": "linear"}, "--schedule must be one of cosine, constant"),
        ({"probes_from": "books"}, "--probes-from must be one of midtext, verses"),
        ({"warmup": -1}, "--warmup"),
    ):
        with pytest.raises(PhasescopeError, match=needle):
            DemoConfig(**bad).validate()
