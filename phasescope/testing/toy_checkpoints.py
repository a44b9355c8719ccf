"""A small real checkpoint sweep to analyse: GPT-2 trained from a config on the KJV demo corpus.

The demo's training loop (``phasescope.demo.train``: next-token cross-entropy on random windows of the
training split) with AdamW at a constant learning rate, saving ``checkpoint-<step>`` folders (model and
tokenizer) as a Hugging Face Trainer lays them out. Used by the offline tests and ``bench/offline.py``;
handy to try ``phasescope analyze`` without downloading anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from phasescope.corpus import hf_tokenizer, load_kjv, split_verses, train_tokenizer
from phasescope.demo import save_checkpoint, token_stream, train


def kjv_tokenizer(vocab_size: int = 8192):
    """The demo's byte-level BPE (trained on the KJV training split, cached) as a HF fast tokenizer,
    and the corpus split."""
    split = split_verses(load_kjv())
    return hf_tokenizer(train_tokenizer(split.train, vocab_size)), split


def train_checkpoints(
    out: str | Path,
    save_steps: Sequence[int],
    *,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    seq_len: int = 32,
    batch_size: int = 8,
    lr: float = 3e-3,
    vocab_size: int = 8192,
    seed: int = 0,
    safe_serialization: bool = True,
    return_model: bool = False,
    on_backward=None,
):
    """Train and save ``checkpoint-<step>`` folders (model + tokenizer) at ``save_steps`` (step 0 = init).

    Trains on the first 4,000 training verses. ``on_backward(step, loss, model)`` is called after each
    backward pass, before the optimizer step (where a live Observatory's ``step`` goes). Returns the
    list of folders (and the final model when ``return_model``)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok, split = kjv_tokenizer(vocab_size)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    stream = token_stream(tok(split.train[:4000], add_special_tokens=False)["input_ids"], eos)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=max(64, seq_len),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    saves = sorted({int(s) for s in save_steps})
    folders: list[Path] = []

    def save(step: int) -> None:
        if step in saves:
            folders.append(
                save_checkpoint(out / f"checkpoint-{step}", model, tok, safe_serialization=safe_serialization)
            )

    hook = None if on_backward is None else (lambda step, loss, _lr: on_backward(step, loss, model))
    train(
        model,
        opt,
        stream,
        saves[-1],
        seq_len=seq_len,
        batch_size=batch_size,
        rng=rng,
        before_step=save,
        on_backward=hook,
    )
    save(saves[-1])  # the weights after the last update
    return (folders, model) if return_model else folders


def write_probe_file(path: str | Path, n: int = 64, seed: int = 1) -> list[str]:
    """``n`` held-out KJV verses (seeded choice), one per line; returns them."""
    held = split_verses(load_kjv()).heldout
    idx = sorted(np.random.default_rng(seed).choice(len(held), n, replace=False))
    texts = [held[i] for i in idx]
    Path(path).write_text("\n".join(texts) + "\n", encoding="utf-8")
    return texts
