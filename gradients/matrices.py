"""Spectral statistics of 2-D weight gradients, batched over same-shape matrices on the device.

For a weight gradient G ∈ R^{m×n} with singular values σ_1 ≥ … ≥ σ_r (r = min(m, n)):

- nuclear norm   ‖G‖_* = Σ_k σ_k
- spectral norm  ‖G‖_2 = σ_1
- Frobenius norm ‖G‖_F = (Σ_k σ_k²)^½
- stable rank    ‖G‖_F² / ‖G‖_2²   (Rudelson & Vershynin 2007; 1 ≤ srank ≤ r)
- top ratio      σ_1 / ‖G‖_*      (share of the nuclear norm in the top direction)
- smallest σ     σ_r

as in "What Happened in LLMs Layers when Trained for Fast vs. Slow Thinking: A Gradient Perspective"
(Li et al. 2024), which reports nuclear norms of the q, k, v, o projection gradients per layer; here
every 2-D weight (MLP gate/up/down and fused qkv too) is covered. Matrices of equal shape are stacked
and passed to one ``torch.linalg.svdvals`` call (float32), so an L-layer model costs one batched SVD
per distinct shape. All statistics except the scale-free ones (stable rank, top ratio) are divided by
``scale`` (a GradScaler's loss scale) so they describe the unscaled gradient.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from phasescope.errors import PhasescopeError

MATRIX_STATS = (
    "grad_nuclear",
    "grad_spectral",
    "grad_frobenius",
    "grad_stable_rank",
    "grad_top_ratio",
    "grad_sigma_min",
)

# Projection kinds by the leaf module name (and, where ambiguous, its parent).
_KIND_BY_LEAF = {
    "q_proj": "q",
    "query": "q",
    "wq": "q",
    "k_proj": "k",
    "key": "k",
    "wk": "k",
    "v_proj": "v",
    "value": "v",
    "wv": "v",
    "o_proj": "o",
    "out_proj": "o",
    "wo": "o",
    "c_attn": "qkv",
    "query_key_value": "qkv",
    "Wqkv": "qkv",
    "qkv_proj": "qkv",
    "att_proj": "qkv",
    "gate_proj": "gate",
    "w1": "gate",
    "up_proj": "up",
    "w3": "up",
    "down_proj": "down",
    "w2": "down",
    "c_fc": "mlp_in",
    "dense_h_to_4h": "mlp_in",
    "fc1": "mlp_in",
    "fc_in": "mlp_in",
    "gate_up_proj": "gate_up",
    "dense_4h_to_h": "mlp_out",
    "fc2": "mlp_out",
    "fc_out": "mlp_out",
    "ff_out": "mlp_out",
}
_ATTN_PARENTS = ("attn", "attention", "self_attn", "self_attention")


def _module_parts(param_name: str) -> list[str]:
    """The dotted name's parts, without a trailing ``weight``/``bias``."""
    parts = param_name.split(".")
    return parts[:-1] if parts and parts[-1] in ("weight", "bias") else parts


def block_index(param_name: str) -> int | None:
    """The transformer block a parameter (or module) name lies in, or None outside the blocks.

    The block is the first integer part after the first part and before the leaf module
    (``transformer.h.3.attn.c_attn.weight`` → 3, ``model.layers.5.mlp.up_proj.weight`` → 5,
    ``encoder.layer.1.output.dense.weight`` → 1); embeddings, the final norm and the LM head give None.
    The one parser of block numbers: gradient grouping, matrix selection and the dashboard use it.
    """
    parts = _module_parts(param_name)
    for i, p in enumerate(parts[:-1]):
        if p.isdigit() and i > 0:
            return int(p)
    return None


def matrix_group(param_name: str) -> dict:
    """``{"block": i or None, "kind": projection kind}`` for a weight name (grouping per block and type).

    Kinds: q, k, v, o, qkv, gate, up, down, gate_up, mlp_in, mlp_out, embedding, other.
    """
    parts = _module_parts(param_name)
    block = block_index(param_name)
    leaf = parts[-1] if parts else ""
    parent = parts[-2] if len(parts) > 1 else ""
    kind = _KIND_BY_LEAF.get(leaf)
    if kind is None:
        if leaf in ("c_proj", "dense"):
            if parent in _ATTN_PARENTS or (parent == "output" and len(parts) > 2 and parts[-3] == "attention"):
                kind = "o"
            elif parent in ("mlp", "output"):
                kind = "mlp_out"
            elif parent == "intermediate":
                kind = "mlp_in"
        elif re.search(r"(wte|wpe|embed|embedding)", leaf):
            kind = "embedding"
    return {"block": block, "kind": kind or "other"}


def select_matrices(named_params: Sequence[tuple[str, Any]], which: str | Callable | None = "blocks") -> list[int]:
    """Indices into ``named_params`` ((name, array) pairs; any array with ``ndim``) of the 2-D weights
    that get singular-value statistics: ``"blocks"`` = inside transformer blocks, embeddings excluded
    (the default, live and offline), ``"all"`` = every 2-D parameter, ``"none"`` (or None/False) = none,
    or a predicate ``fn(name, param) -> bool`` asked about each 2-D parameter."""
    if which in (None, "none", False):
        return []
    if not (which in ("blocks", "all") or callable(which)):
        raise PhasescopeError(
            f"matrices must be 'blocks', 'all', 'none' or a predicate (name, param) -> bool, got {which!r}"
        )
    out = []
    for i, (name, p) in enumerate(named_params):
        if p.ndim != 2:
            continue
        if which == "all":
            ok = True
        elif which == "blocks":
            g = matrix_group(name)
            ok = g["block"] is not None and g["kind"] != "embedding"
        else:
            ok = callable(which) and bool(which(name, p))  # a predicate (checked above)
        if ok:
            out.append(i)
    return out


def gradient_matrix_stats(grads: Sequence, scale=None) -> dict:
    """Per-matrix statistics of 2-D gradients, each a (M,) float32 array on the gradients' device and
    backend (torch, numpy, jax, …; one batched ``svdvals`` per shape).

    ``grads``: list of 2-D arrays (None entries give NaN rows). ``scale``: a number or 0-d array the
    gradients are multiplied by (GradScaler's scale); norms are divided by it.
    """
    import array_api_compat
    import numpy as np

    m = len(grads)
    present = [g for g in grads if g is not None]
    if not present:
        return {k: np.full(m, np.nan, dtype=np.float32) for k in MATRIX_STATS}
    xp = array_api_compat.array_namespace(*present)
    device = array_api_compat.device(present[0])
    by_shape: dict[tuple, list[int]] = {}
    for i, g in enumerate(grads):
        if g is not None:
            by_shape.setdefault((tuple(g.shape), str(array_api_compat.device(g))), []).append(i)
    order: list[int] = []
    parts: dict[str, list] = {k: [] for k in MATRIX_STATS}
    for idx in by_shape.values():
        stack = xp.astype(xp.stack([_detached(grads[i]) for i in idx]), xp.float32)
        dev = array_api_compat.device(stack)
        finite = xp.all(xp.reshape(xp.isfinite(stack), (len(idx), -1)), axis=1)
        # svdvals fails on non-finite input: zero those matrices (no host sync) and report NaN for them.
        stack = xp.where(finite[:, None, None], stack, xp.zeros((), dtype=stack.dtype, device=dev))
        s = xp.linalg.svdvals(stack)  # (B, r), descending
        nuc = xp.sum(s, axis=1)
        top = s[:, 0]
        fro2 = xp.sum(s * s, axis=1)
        stats = {
            "grad_nuclear": nuc,
            "grad_spectral": top,
            "grad_frobenius": xp.sqrt(fro2),
            "grad_stable_rank": fro2 / (top * top),
            "grad_top_ratio": top / nuc,
            "grad_sigma_min": s[:, -1],
        }
        if scale is not None:
            inv = 1.0 / xp.asarray(scale, dtype=xp.float32, device=dev)
            for k in ("grad_nuclear", "grad_spectral", "grad_frobenius", "grad_sigma_min"):
                stats[k] = stats[k] * inv
        nan = xp.asarray(float("nan"), dtype=xp.float32, device=dev)
        for k, v in stats.items():
            parts[k].append(xp.where(finite, v, nan))
        order.extend(idx)
    missing = [i for i in range(m) if grads[i] is None]
    # Rows in input order: concatenate the shape groups (and NaN rows for absent gradients), then
    # gather with the inverse permutation.
    inverse = [0] * m
    for pos, i in enumerate(order + missing):
        inverse[i] = pos
    take = xp.asarray(inverse, device=device)
    fill = xp.full((len(missing),), float("nan"), dtype=xp.float32, device=device)
    return {k: xp.take(xp.concat([*v, fill]), take) for k, v in parts.items()}


def _detached(g):
    return g.detach() if hasattr(g, "detach") else g
