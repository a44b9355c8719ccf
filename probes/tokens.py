"""Which token positions become samples: last or first non-pad token, all tokens (capped), or mean-pooled.

A probe's output ``h`` has shape (batch, seq, dim). Each sequence contributes rows to the (N, dim)
sample matrix whose covariance spectrum is measured:

- ``"last"``: the state at the last non-pad position, one row per sequence — Li et al. 2025 read the
  final-layer state of the last token. Works for right and left padding (the last position whose
  attention mask is 1).
- ``"first"`` (alias ``"cls"``): the state at the first non-pad position — the class token of a ViT
  or a BERT-style encoder.
- ``"all"``: every non-pad position; with ``max_tokens`` a seeded uniform subsample without
  replacement. For a fixed probe set the chosen positions are fixed once, so captures at different
  steps see the same tokens.
- ``"mean"``: the mask-weighted mean over non-pad positions, one row per sequence.

One rule for every backend: :func:`select` is written on the array API (torch hooks, nnsight traces
and the jitted JAX forward all call it), so "last" means the last non-pad token everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from array_api_compat import array_namespace, is_torch_array

from phasescope.errors import PhasescopeError

MODES = ("last", "first", "all", "mean")
ALIASES = {"cls": "first"}


@dataclass(frozen=True)
class TokenSelection:
    mode: str = "last"
    max_tokens: int | None = 8192  # cap for mode "all" (per capture for a probe set, per step in flight)
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise PhasescopeError(f"tokens must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise PhasescopeError(f"max_tokens must be a positive integer or None, got {self.max_tokens}")

    def describe(self) -> dict:
        return {"mode": self.mode, "max_tokens": self.max_tokens, "seed": self.seed}


def as_selection(tokens, max_tokens: int | None = 8192, seed: int = 0) -> TokenSelection:
    if isinstance(tokens, TokenSelection):
        return tokens
    if not isinstance(tokens, str):
        raise PhasescopeError(f"tokens must be one of {', '.join(MODES)}, got {tokens!r}")
    return TokenSelection(ALIASES.get(tokens, tokens), max_tokens, seed)


def _host_index(n: int, k: int, generator) -> np.ndarray:
    """``k`` of ``range(n)`` without replacement, sorted (numpy arrays, jax): seeded by ``generator``
    (a numpy Generator or a seed)."""
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
    return np.sort(rng.permutation(n)[:k])


def last_positions(mask):
    """Index of the last position with mask 1 in each row (0 for an all-pad row); any array backend."""
    xp = array_namespace(mask)
    pos = xp.arange(mask.shape[1], device=mask.device if is_torch_array(mask) else None)
    return xp.max(xp.where(xp.astype(mask, xp.bool), pos[None, :], xp.zeros_like(pos)[None, :]), axis=1)


def first_positions(mask):
    """Index of the first position with mask 1 in each row (0 for an all-pad row); any array backend."""
    xp = array_namespace(mask)
    n = mask.shape[1]
    pos = xp.arange(n, device=mask.device if is_torch_array(mask) else None)
    big = xp.full_like(pos, n)
    first = xp.min(xp.where(xp.astype(mask, xp.bool), pos[None, :], big[None, :]), axis=1)
    return xp.where(first == n, xp.zeros_like(first), first)


def plan_all(mask, max_tokens: int | None, generator=None) -> tuple:
    """(row, col) indices of the non-pad positions, subsampled to ``max_tokens`` without replacement
    (torch: ``torch.randperm`` with the torch ``generator``; other backends: numpy with a numpy
    generator or seed). Not traceable under ``jax.jit``: make the plan outside, from the concrete mask."""
    xp = array_namespace(mask)
    rows, cols = xp.nonzero(xp.astype(mask, xp.bool))
    n = int(rows.shape[0])
    if max_tokens is not None and n > max_tokens:
        if is_torch_array(mask):
            import torch

            keep = torch.randperm(n, generator=generator)[:max_tokens].sort().values.to(rows.device)
        else:
            keep = xp.asarray(_host_index(n, max_tokens, generator))
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def select(h, mask, sel: TokenSelection, plan=None, generator=None):
    """Rows of ``h`` (batch, seq, dim) chosen by ``sel``; ``plan`` = precomputed (rows, cols) for ``all``.

    Any array backend (torch, numpy, jax; jit-traceable for "last" and "mean", and for "all" with a
    ``plan``). 2-D outputs (batch, dim), e.g. a pooled head, are returned as they are; other shapes
    are refused (conv maps and the like go through :mod:`.shapes`, which names their reduction).
    """
    if h.ndim == 2:
        return h
    if h.ndim != 3:
        raise PhasescopeError(
            f"probe output of shape {tuple(h.shape)} is not (batch, tokens, dim); choose a "
            "reduction for it (phasescope.probes.shapes: spatial_mean or positions)"
        )
    xp = array_namespace(h)
    if mask is None:
        n = h.shape[0] * h.shape[1]
        if sel.mode == "last":
            return h[:, -1]
        if sel.mode == "first":
            return h[:, 0]
        if sel.mode == "mean":
            return xp.sum(h, axis=1) / h.shape[1]
        if plan is None and (sel.max_tokens is None or n <= sel.max_tokens):
            return xp.reshape(h, (n, h.shape[-1]))
        mask = xp.ones(h.shape[:2], dtype=xp.bool, device=h.device if is_torch_array(h) else None)
    elif tuple(mask.shape) != tuple(h.shape[:2]):
        raise PhasescopeError(
            f"attention_mask shape {tuple(mask.shape)} does not match the probe output "
            f"{tuple(h.shape[:2])}; pass the mask that goes with input_ids"
        )
    if is_torch_array(h):
        mask = mask.to(h.device) if is_torch_array(mask) else xp.asarray(mask, device=h.device)
    else:
        mask = xp.asarray(mask)
    if sel.mode in ("last", "first"):
        at = last_positions(mask) if sel.mode == "last" else first_positions(mask)
        return h[xp.arange(h.shape[0], device=h.device if is_torch_array(h) else None), at]
    if sel.mode == "mean":
        w = xp.astype(mask, h.dtype)[..., None]
        total = xp.sum(w, axis=1)
        return xp.sum(h * w, axis=1) / xp.maximum(total, xp.ones_like(total))
    rows, cols = plan if plan is not None else plan_all(mask, sel.max_tokens, generator)
    if is_torch_array(h):
        rows, cols = rows.to(h.device), cols.to(h.device)
    return h[rows, cols]
