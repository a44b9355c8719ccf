"""Shared fixtures for the integration tests: a tiny GPT-2 and token blocks from the demo corpus."""

from __future__ import annotations

import numpy as np
import torch

from phasescope.corpus import load_kjv, split_verses, train_tokenizer

VOCAB, T = 320, 24


def corpus_blocks(cache, n_train: int = 64, n_probe: int = 16):
    """(train ids (n_train, T), probe ids, probe mask) from KJV verses with a small BPE tokenizer."""
    split = split_verses(load_kjv()[:3000])
    tok = train_tokenizer(split.train, VOCAB, cache=cache)
    pad = tok.token_to_id("<|pad|>")

    def encode(texts, n):
        ids = np.full((n, T), pad, dtype=np.int64)
        mask = np.zeros((n, T), dtype=np.int64)
        for i, t in enumerate(texts[:n]):
            e = tok.encode(t).ids[:T]
            ids[i, : len(e)] = e
            mask[i, : len(e)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    train, _ = encode(split.train, n_train)
    pids, pmask = encode(split.heldout, n_probe)
    return train, pids, pmask, pad


def tiny_gpt2(seed: int = 0, d: int = 32, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=layers,
        n_embd=d,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=T,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg)


def ref_last_token_eigs(model, ids, mask, layer: int = -1) -> np.ndarray:
    """Independent reference: covariance eigenvalues of hidden_states[layer] at the last non-pad token."""
    model.eval()
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
    last = mask.sum(1) - 1
    x = hs[torch.arange(len(last)), last].double().numpy()
    return np.sort(np.linalg.eigvalsh(np.cov(x.T, ddof=1)))[::-1]


def assert_stored_eigs(got: np.ndarray, ref: np.ndarray, n: int, rtol: float = 1e-4) -> None:
    """Stored eigenvalues are the first min(n, d) of the reference (what a PCA of the n × d data returns),
    NaN past them (the one reducer's rule, live and offline)."""
    k = min(int(n), len(ref))
    assert np.isfinite(got[:k]).all() and np.isnan(got[k:]).all(), f"expected {k} stored eigenvalues, got {got}"
    np.testing.assert_allclose(got[:k], ref[:k], rtol=rtol, atol=1e-6 * ref[0])
