"""A synthetic Zipfian language: unlimited text with skewed token frequencies and low-rank structure.

Li et al. 2025 trace the three geometric phases of pretraining to cross-entropy under skewed token
frequencies through a representational bottleneck (d ≪ |V|). This language has exactly those
ingredients and nothing else, and never runs out (no epoch, so no memorisation turn):

* an order-``k`` Markov chain over ``V`` tokens with next-token distribution
  ``p(y | c_1..c_k) ∝ π_y · exp(β · z_c · u_y)``;
* a Zipf prior ``π_y ∝ (y + 1)^(−s)`` (``s = 0``: uniform);
* ``z_c = Σ_i 2^(−i) e_{c_i}``, a sum of random latent vectors of the context tokens (dimension ``r``,
  variance ∝ i^(−decay) along latent axis i, a power-law spectrum as text has), and ``u_y`` random latent
  vectors of the next tokens.

``chains`` chains run side by side; :meth:`ZipfLanguage.advance` moves every chain one token on. Used by
``phasescope demo --preset three-phases`` and ``bench/third_phase.py``.
"""

from __future__ import annotations

import math

import numpy as np


class ZipfLanguage:
    """The language of the module docstring (torch tensors on the CPU), seeded and reproducible."""

    def __init__(
        self,
        vocab: int = 2048,
        *,
        zipf: float = 1.4,
        rank: int = 128,
        beta: float = 3.0,
        context: int = 2,
        decay: float = 1.0,
        support: int = 0,
        chains: int = 512,
        seed: int = 0,
    ):
        import torch

        self.torch, self.vocab, self.support = torch, vocab, support
        self.g = torch.Generator().manual_seed(10_000 + seed)
        ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
        self.log_prior = -zipf * ranks.log()
        self.log_prior -= self.log_prior.logsumexp(0)
        scale = torch.arange(1, rank + 1, dtype=torch.float32) ** (-decay / 2)
        self.e = torch.randn(vocab, rank, generator=self.g) * (scale / scale.norm())
        self.u = torch.randn(vocab, rank, generator=self.g)
        self.beta = beta
        self.weights = [2.0**-i for i in range(context)]
        # β·e_c·u_y for every (c, y) when it fits (64 MiB at V = 4,096): the logits are then a weighted sum of
        # k rows, twice as fast as the (B, r) × (r, V) product per step
        self.table = beta * (self.e @ self.u.T) if vocab <= 4096 else None
        self.state = torch.multinomial(self.log_prior.exp(), chains * context, replacement=True, generator=self.g).view(
            chains, context
        )
        for _ in range(4 * context):  # burn in: forget the i.i.d. start
            self.advance()

    def logits(self, ctx):
        """Next-token log-probabilities (unnormalised) for contexts ``ctx`` of shape (B, k)."""
        torch = self.torch
        if self.table is None:
            z = sum(w * self.e[ctx[:, i]] for i, w in enumerate(self.weights))
            return self.log_prior + self.beta * z @ self.u.T
        out = torch.index_select(self.table, 0, ctx[:, 0]).mul_(self.weights[0])
        for i, w in enumerate(self.weights[1:], 1):
            out.add_(torch.index_select(self.table, 0, ctx[:, i]), alpha=w)
        return out.add_(self.log_prior)

    def advance(self):
        """One token for every chain: returns (context (chains, k), next token (chains,))."""
        torch = self.torch
        ctx = self.state
        logits, top = self.logits(ctx), None
        if self.support:  # sparse: only a context's K likeliest tokens may follow
            logits, top = logits.topk(self.support, dim=-1)
        cdf = logits.softmax(-1).cumsum(-1)  # inverse-CDF sampling: ~10x torch.multinomial here
        u = torch.rand(len(ctx), 1, generator=self.g) * cdf[:, -1:]
        nxt = torch.searchsorted(cdf, u).clamp_(max=cdf.shape[1] - 1)
        nxt = (nxt if top is None else top.gather(1, nxt)).squeeze(1)
        self.state = torch.cat([nxt[:, None], ctx[:, :-1]], 1)
        return ctx, nxt

    def text(self, tokens_per_chain: int) -> np.ndarray:
        """(chains, tokens_per_chain) int64 tokens: each row one chain's running text."""
        out = self.torch.empty(len(self.state), tokens_per_chain, dtype=self.torch.long)
        for t in range(tokens_per_chain):
            out[:, t] = self.advance()[1]
        return out.numpy()

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the Zipf prior: ln V for s = 0, smaller as the skew grows."""
        p = self.log_prior.exp()
        return float(-(p * self.log_prior).sum())


def corpus(
    vocab: int, tokens: int, *, heldout: int, seq_len: int, seed: int = 0, chains: int = 512, **language
) -> tuple[np.ndarray, np.ndarray]:
    """A training stream of at least ``tokens`` tokens and ``heldout`` held-out windows of ``seq_len``.

    The language is sampled once as ``chains`` chains; the last ``seq_len`` tokens of each chain (after a
    gap of ``seq_len``, so no training window reaches into them) are its held-out window. Returns
    ``(stream (n,), windows (heldout, seq_len))``; raises ValueError when ``heldout > chains``."""
    if heldout > chains:
        raise ValueError(f"{heldout} held-out windows need at least as many chains (got {chains})")
    lang = ZipfLanguage(vocab, chains=chains, seed=seed, **language)
    per_chain = math.ceil(tokens / chains) + 2 * seq_len
    text = lang.text(per_chain)
    return text[:, : -2 * seq_len].reshape(-1), text[:heldout, -seq_len:].copy()
