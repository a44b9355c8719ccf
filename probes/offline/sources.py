"""Where offline analysis reads from: checkpoint discovery, safe model loading, and the probe texts.

Checkpoints are either sub-folders of a directory whose names carry a training step (Hugging Face
Trainer's ``checkpoint-<step>``, or ``step1000``, ``global_step_1000``, ``ckpt-5`` …: the last integer
in the name is the step), or revisions of a hub model id (Pythia's ``step1000``). Steps are sorted.

Loading is safe by default: ``trust_remote_code`` is off unless asked, safetensors are preferred, and
``.bin`` weights go through ``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phasescope.corpus import PROBE_SOURCES, heldout_probe_texts
from phasescope.errors import PhasescopeError

_STEP = re.compile(r"(\d+)")
CORPORA = ("kjv",)


@dataclass(frozen=True)
class Checkpoint:
    """One model snapshot: its training ``step``, a folder or hub id ``location``, and a hub ``revision``."""

    step: int
    location: str
    revision: str | None = None

    @property
    def label(self) -> str:
        return f"{self.location}@{self.revision}" if self.revision else self.location


def step_of(name: str) -> int | None:
    """The training step in a folder or revision name: its last integer (``checkpoint-1500`` → 1500)."""
    found = _STEP.findall(name)
    return int(found[-1]) if found else None


def find_checkpoints(source: str | os.PathLike, revisions: list[str] | None = None) -> list[Checkpoint]:
    """Checkpoints of ``source`` sorted by step (see the module docstring); raises PhasescopeError."""
    if revisions:
        out = []
        for rev in revisions:
            step = step_of(rev)
            if step is None:
                raise PhasescopeError(
                    f"revision {rev!r} has no step number in its name; "
                    "pass revisions such as step1000 (Pythia's naming)"
                )
            out.append(Checkpoint(step, str(source), rev))
        return _sorted_unique(out)
    root = Path(source)
    if not root.exists():
        hint = (
            " (to analyze revisions of a hub model id, add --revisions step1000,step2000,…)"
            if "/" in str(source) and not str(source).startswith((".", "/"))
            else ""
        )
        raise PhasescopeError(f"checkpoint source {source} does not exist; pass a folder of checkpoints{hint}")
    if not root.is_dir():
        raise PhasescopeError(
            f"checkpoint source {source} is a file; pass the folder holding checkpoint-<step> folders"
        )
    out = []
    for child in root.iterdir():
        step = step_of(child.name)
        if child.is_dir() and step is not None and (child / "config.json").is_file():
            out.append(Checkpoint(step, str(child)))
    if not out:
        if (root / "config.json").is_file():
            raise PhasescopeError(
                f"{source} is a single model, not a folder of checkpoints; pass its parent, "
                "or name checkpoint folders with their step (checkpoint-<step>)"
            )
        raise PhasescopeError(
            f"no checkpoints in {source}: expected sub-folders named with a step "
            "(e.g. checkpoint-1000) that hold a config.json"
        )
    return _sorted_unique(out)


def _sorted_unique(items: list[Checkpoint]) -> list[Checkpoint]:
    items = sorted(items, key=lambda c: c.step)
    for a, b in itertools.pairwise(items):
        if a.step == b.step:
            raise PhasescopeError(f"two checkpoints have step {a.step} ({a.label}, {b.label}); keep one of them")
    return items


def load_config(ckpt: Checkpoint, trust_remote_code: bool = False):
    """The model config of a checkpoint; a clear one-line error when it cannot be had (offline hub)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ckpt.location, revision=ckpt.revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if ckpt.revision:
            raise PhasescopeError(
                f"cannot load revision {ckpt.revision} of {ckpt.location}: it is not in the local Hugging Face "
                "cache and the hub cannot be reached; download it with network access first "
                f"({type(exc).__name__})"
            ) from None
        raise PhasescopeError(f"cannot read the config of {ckpt.location}: {str(exc).splitlines()[0]}") from None


def _model_class(config):
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return AutoModelForCausalLM if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else AutoModel


def build_meta_model(config, trust_remote_code: bool = False):
    """The architecture on the ``meta`` device (no memory, no weights): names, shapes, call order."""
    import torch

    cls = _model_class(config)
    with torch.device("meta"):
        return cls.from_config(config, trust_remote_code=trust_remote_code)


def load_model(ckpt: Checkpoint, *, trust_remote_code: bool = False, device: str = "cpu", dtype: Any = None):
    """Load a checkpoint's weights safely (weights_only=True, safetensors preferred) in eval mode."""
    config = load_config(ckpt, trust_remote_code)
    cls = _model_class(config)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own bar counts checkpoints; theirs would print per load
    try:
        model = cls.from_pretrained(
            ckpt.location, revision=ckpt.revision, trust_remote_code=trust_remote_code, weights_only=True, dtype=dtype
        )
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()


def checkpoint_bytes(ckpt: Checkpoint) -> int:
    """Size of a local checkpoint's weight files (0 when unknown, e.g. hub revisions)."""
    p = Path(ckpt.location)
    if ckpt.revision or not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt"))


# ---------------------------------------------------------------------------- probe texts
@dataclass
class ProbeTexts:
    """Probe sequences: plain texts, or prompt/response pairs (the loss then counts response tokens)."""

    texts: list[str]
    prompts: list[str] | None = None  # for pairs: texts[i] = prompts[i] + responses[i]
    source: str = ""


CORPUS_PROBE_SETS = {
    "midtext": "kjv mid-text: {n} windows of held-out text (every 25th verse) cut at random points (seed {seed})",
    "verses": "kjv held-out verses (every 25th)",
}


def load_texts(spec: str, *, probes_from: str | None = None, seed: int = 0) -> ProbeTexts:
    """Read ``--text``: a corpus name (``kjv``), a JSONL file (``text`` or ``prompt``+``response``
    fields) or a plain-text file with one sequence per line (blank lines skipped).

    A corpus gives ``probes_from="midtext"`` windows by default (see
    :func:`phasescope.corpus.midtext_windows`, cut with ``seed``) or its held-out ``"verses"``;
    ``probes_from`` is refused for files, whose lines are the probes."""
    if spec in CORPORA and not Path(spec).exists():
        kind = probes_from or "midtext"
        if kind not in PROBE_SOURCES:
            raise PhasescopeError(f"--probes-from must be one of {', '.join(PROBE_SOURCES)}, got {kind!r}")
        texts = heldout_probe_texts(kind, seed=seed)
        return ProbeTexts(texts, source=CORPUS_PROBE_SETS[kind].format(n=len(texts), seed=seed))
    if probes_from is not None:
        raise PhasescopeError(
            f"--probes-from applies to a corpus (--text {' or '.join(CORPORA)}); the lines of "
            f"{spec} are the probes: drop --probes-from"
        )
    path = Path(spec)
    if not path.is_file():
        raise PhasescopeError(
            f"--text {spec}: no such file; pass a text file (one sequence per line), "
            f"a JSONL file with a 'text' field, or a corpus name ({', '.join(CORPORA)})"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise PhasescopeError(f"--text {spec} is not UTF-8 text; convert it or pass another file") from None
    if path.suffix in (".jsonl", ".json") or (lines and lines[0].lstrip().startswith("{")):
        return _jsonl(lines, spec)
    texts = [ln for ln in lines if ln.strip()]
    if not texts:
        raise PhasescopeError(f"--text {spec} holds no non-blank lines; put one probe sequence per line")
    return ProbeTexts(texts, source=str(path))


def _jsonl(lines: list[str], spec: str) -> ProbeTexts:
    texts, prompts = [], []
    for i, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError as exc:
            raise PhasescopeError(
                f"--text {spec} line {i} is not valid JSON ({exc.msg}); one object per line"
            ) from None
        if isinstance(rec, dict) and isinstance(rec.get("text"), str):
            texts.append(rec["text"])
            prompts.append(None)
        elif isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and isinstance(rec.get("response"), str):
            texts.append(rec["prompt"] + rec["response"])
            prompts.append(rec["prompt"])
        else:
            raise PhasescopeError(
                f"--text {spec} line {i} has no string 'text' field (nor 'prompt' and "
                "'response'); give each line {\"text\": ...}"
            )
    if not texts:
        raise PhasescopeError(f"--text {spec} holds no records; put one JSON object per line")
    mixed = any(p is not None for p in prompts)
    if mixed and any(p is None for p in prompts):
        raise PhasescopeError(f"--text {spec} mixes 'text' and 'prompt'/'response' records; use one kind")
    return ProbeTexts(texts, prompts if mixed else None, source=str(spec))


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False):
    """A tokenizer from a checkpoint folder (or ``--tokenizer``); pad falls back to eos (masks are used)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise PhasescopeError(
            f"cannot load a tokenizer from {path} ({type(exc).__name__}); save one with the "
            "checkpoints (tokenizer.save_pretrained) or pass --tokenizer PATH"
        ) from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise PhasescopeError(
                f"the tokenizer at {path} has neither a pad nor an eos token; pass --tokenizer "
                "with one that has a pad token"
            )
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class ProbeData:
    """Tokenized probe set, right-padded: ids/attention (N, L) and loss_mask (N, L) marking the tokens
    whose prediction counts in the loss (all but the first token; for pairs the response tokens)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(1)

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def tokenize(
    texts: ProbeTexts, tokenizer, max_length: int, *, min_tokens: int = 1, max_sequences: int | None = None
) -> ProbeData:
    """Tokenize and truncate to ``max_length`` tokens; drop sequences shorter than ``min_tokens``
    (Li et al. 2025 keep > 10 tokens: ``min_tokens=11``); keep the first ``max_sequences``."""
    seqs: list[list[int]] = []
    starts: list[int] = []  # first position whose token counts in the loss
    enc = tokenizer(texts.texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    if texts.prompts is not None:
        penc = tokenizer(texts.prompts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        renc = tokenizer([t[len(p) :] for t, p in zip(texts.texts, texts.prompts)], add_special_tokens=False)[
            "input_ids"
        ]
        enc = [(p + r)[:max_length] for p, r in zip(penc, renc)]
        first = [len(p) for p in penc]
    else:
        first = [1] * len(enc)
    for ids, f in zip(enc, first):
        if len(ids) >= max(1, min_tokens):
            seqs.append(list(ids))
            starts.append(f)
        if max_sequences is not None and len(seqs) >= max_sequences:
            break
    if not seqs:
        raise PhasescopeError(
            f"no probe sequence has at least {min_tokens} tokens; lower --min-tokens or pass longer texts"
        )
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), tokenizer.pad_token_id, dtype=np.int64)
    att = np.zeros((len(seqs), width), dtype=np.int64)
    lm = np.zeros((len(seqs), width), dtype=bool)
    for i, (s, f) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = s
        att[i, : len(s)] = 1
        lm[i, max(1, f) : len(s)] = True
    return ProbeData(ids, att, lm)
