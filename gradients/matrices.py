"""Spectral statistics of 2-D weight gradients: singular values per matrix, by a route chosen per device.

For a weight gradient G ∈ R^{m×n} with singular values σ_1 ≥ … ≥ σ_r (r = min(m, n)):

- nuclear norm   ‖G‖_* = Σ_k σ_k
- spectral norm  ‖G‖_2 = σ_1
- Frobenius norm ‖G‖_F = (Σ_k σ_k²)^½
- stable rank    ‖G‖_F² / ‖G‖_2²   (Rudelson & Vershynin 2007; 1 ≤ srank ≤ r)
- top ratio      σ_1 / ‖G‖_*      (share of the nuclear norm in the top direction)
- smallest σ     σ_r

as in "What Happened in LLMs Layers when Trained for Fast vs. Slow Thinking: A Gradient Perspective"
(Li et al. 2024), which reports nuclear norms of the q, k, v, o projection gradients per layer; here
every 2-D weight (MLP gate/up/down and fused qkv too) is covered. All statistics except the scale-free
ones (stable rank, top ratio) are divided by ``scale`` (a GradScaler's loss scale) so they describe the
unscaled gradient.

Routes (``gradient_matrix_stats(..., route=)``; the choice is deterministic, see :func:`matrix_route`):

- **gram** — σ_k² are the eigenvalues of the smaller Gram side C = GGᵀ (m ≤ n) or GᵀG, formed in
  float64 and passed to a float64 ``eigvalsh``; σ_k = √max(λ_k, 0) and ‖G‖_F² = tr C. About
  m·n·r + (4/3)·r³ flops (BLAS syrk computes one triangle) instead of an SVD's bidiagonalisation.
  On the host each matrix is converted to float64 (a transient copy twice the float32 size) and done
  one at a time; shapes with at most ``HOST_STACK_MAX`` entries (2¹⁴, where stacking stopped paying
  off) are stacked, so small matrices cost one numpy call per shape rather than a Python loop.
- **svd** — float32 ``svdvals``: on the host each matrix in its tall orientation (the transpose is a
  free view; torch's CPU gesdd takes 2.4–3.4× longer on a wide m < n matrix than on its transpose),
  on accelerators one stacked call per shape.
- **auto** (default) — gram for host arrays (numpy, torch CPU tensors, concrete jax CPU arrays): on
  this machine class it was faster than the SVD at every size measured, 4×4 to 11008×4096, and more
  accurate, so there is no size threshold. On accelerators (CUDA, …; and traced jax values) svd, one
  stacked float32 call per shape with no host synchronisation, as before issue 18 (not re-measured on a
  GPU; ``route="gram"`` there stacks float64 products and ``eigvalsh``).

Measured by ``bench/gradients.py`` (CPU seconds, one thread, two runs on a shared machine; against a
per-matrix loop of ``torch.linalg.svdvals``): on GPT-2-small's 48 block gradients auto is 3.5–4.5×
faster than the loop, on Llama-7B shapes 2.8–3.6×, on small matrices (8×8 … 128×128) 1.5×. The old
batched route was 0.78–0.98× the loop: its copies (stack, cast, finite mask, ``where``: 1.0 s of 21)
and a batched gesdd ~2 % slower than single calls. Most of both routes' time went to the wide
orientation: c_attn and c_fc are stored 768 × 2304/3072, and their SVDs took 2.4–3.4× longer than
those of the transposes.

Accuracy, against a float64 SVD of the same float32 arrays (float64 Gram products are needed: float32
ones move the nuclear norm of a rank-deficient gradient by 2e-3 and σ_min by 100 %):

- nuclear, spectral, Frobenius, stable rank, top ratio: relative error ≤ 1e-4 on both routes
  (measured ≤ 1e-7 for gram, the float32 rounding of the output, and ≤ 8e-6 for svd).
- σ_min by gram: relative error ≤ 1e-4 when σ_min/σ₁ ≥ ``SIGMA_MIN_FLOOR`` (1e-5; measured ≤ 2e-7
  there, 2e-5 at 1e-6). Below the floor the squaring costs relative accuracy (|Δλ| ~ ε₆₄·λ₁, so
  |Δσ_min|/σ_min ~ ε₆₄·(σ₁/σ_min)²): only the absolute bound |Δσ_min| ≤ 1e-7·σ₁ holds (measured
  ≤ 1e-8·σ₁; an exactly rank-deficient gradient, e.g. fewer tokens than min(m, n), gives σ_min ≈ 0).
  The float32 SVD is no better there (relative error ~ ε₃₂·σ₁/σ_min: 3e-4 at 1e-5, 3.9 at 3e-9;
  absolute ≤ 1e-6·σ₁), so the Gram value is kept rather than recomputed by an SVD: a σ_min below
  1e-5·σ₁ says "numerically rank-deficient at float32 precision", not a number to compare.
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


ROUTES = ("auto", "svd", "gram")
HOST_STACK_MAX = 2**14
"""Gram-route host matrices with at most this many entries are stacked per shape (see ``_host_stats``)."""
SIGMA_MIN_FLOOR = 1e-5
"""σ_min/σ₁ above which the Gram route's σ_min is within 1e-4 relative; below it, see the module doc."""


def gradient_matrix_stats(grads: Sequence, scale=None, *, route: str = "auto") -> dict:
    """Per-matrix statistics of 2-D gradients, each a (M,) float32 array on the gradients' device and
    backend (torch, numpy, jax, …). Routes and their accuracy: see the module docstring.

    ``grads``: list of 2-D arrays (None entries, empty and non-finite matrices give NaN rows).
    ``scale``: a number or 0-d array the gradients are multiplied by (GradScaler's scale); norms are
    divided by it. ``route``: ``"auto"`` (the measured choice), ``"svd"`` (float32 singular values
    only) or ``"gram"`` (float64 eigenvalues of the smaller Gram side only).
    """
    import array_api_compat
    import numpy as np

    if route not in ROUTES:
        raise PhasescopeError(f"route must be one of {', '.join(map(repr, ROUTES))}, got {route!r}")
    m = len(grads)
    present = [g for g in grads if g is not None]
    if not present:
        return {k: np.full(m, np.nan, dtype=np.float32) for k in MATRIX_STATS}
    xp = array_api_compat.array_namespace(*present)
    device = array_api_compat.device(present[0])
    by_shape: dict[tuple, list[int]] = {}
    missing: list[int] = []
    for i, g in enumerate(grads):
        if g is None or 0 in g.shape:
            missing.append(i)
        else:
            by_shape.setdefault((tuple(g.shape), str(array_api_compat.device(g))), []).append(i)
    order: list[int] = []
    parts: dict[str, list] = {k: [] for k in MATRIX_STATS}
    for idx in by_shape.values():
        group = [_detached(grads[i]) for i in idx]
        kind = _host_kind(group[0])
        gram = matrix_route(group[0], route) == "gram"
        if kind is not None:
            rows = _host_stats(group, kind, gram, scale)
            dev = array_api_compat.device(group[0])
            for j, k in enumerate(MATRIX_STATS):
                parts[k].append(xp.asarray(np.ascontiguousarray(rows[:, j]), device=dev))
        else:
            for k, v in _batched_stats(xp, group, gram, scale).items():
                parts[k].append(v)
        order.extend(idx)
    # Rows in input order: concatenate the shape groups (and NaN rows for absent gradients), then
    # gather with the inverse permutation.
    inverse = [0] * m
    for pos, i in enumerate(order + missing):
        inverse[i] = pos
    take = xp.asarray(inverse, device=device)
    fill = xp.full((len(missing),), float("nan"), dtype=xp.float32, device=device)
    return {k: xp.take(xp.concat([*v, fill]), take) for k, v in parts.items()}


def matrix_route(g, route: str = "auto") -> str:
    """The route gradient ``g`` takes, ``"gram"`` or ``"svd"``: ``route`` itself unless ``"auto"``;
    then ``"gram"`` for host arrays (numpy, torch CPU, concrete jax CPU; measured faster and more
    accurate at every size) and ``"svd"`` (one stacked float32 ``svdvals`` per shape) on accelerators."""
    if route != "auto":
        return route
    return "gram" if _host_kind(g) is not None else "svd"


def _host_kind(g) -> str | None:
    """ "numpy", "torch" or "jax" for a concrete array in host memory, None for accelerator arrays and
    traced values (those take the batched route on their device)."""
    import array_api_compat

    if array_api_compat.is_numpy_array(g):
        return "numpy"
    if array_api_compat.is_torch_array(g):
        return "torch" if g.device.type == "cpu" else None
    if array_api_compat.is_jax_array(g):
        return "jax" if getattr(array_api_compat.device(g), "platform", None) == "cpu" else None
    return None


def _host_stats(group: list, kind: str, gram: bool, scale) -> Any:
    """(B, 6) float32 numpy rows of :data:`MATRIX_STATS` for host matrices of one shape: one at a time,
    or, for Gram-route matrices of at most :data:`HOST_STACK_MAX` entries, stacked (one numpy call
    each for the products and the eigenvalues instead of a Python-level loop)."""
    import numpy as np

    b, (m, n) = len(group), group[0].shape
    if gram and m * n <= HOST_STACK_MAX:
        a = np.stack([_as_numpy(g, kind, np.float64) for g in group])
        finite = np.isfinite(a.sum(axis=(1, 2)))
        a[~finite] = 0.0
        if m > n:
            a = np.swapaxes(a, 1, 2)
        c = a @ np.swapaxes(a, 1, 2)
        s = np.sqrt(np.maximum(np.linalg.eigvalsh(c)[:, ::-1], 0.0))
        fro2 = np.trace(c, axis1=1, axis2=2)
    else:
        s, fro2, finite = np.zeros((b, min(m, n))), np.zeros(b), np.ones(b, dtype=bool)
        for j, g in enumerate(group):
            res = _host_values(g, kind, gram)
            if res is None:
                finite[j] = False
            else:
                s[j], fro2[j] = res
    nuc, top = s.sum(axis=1), s[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero gradient: 0/0 → NaN
        rows = np.stack([nuc, top, np.sqrt(fro2), fro2 / (top * top), top / nuc, s[:, -1]], axis=1)
    rows[~finite] = np.nan
    if scale is not None:
        rows[:, [0, 1, 2, 5]] /= float(scale)
    return rows.astype(np.float32)


def _host_values(g, kind: str, gram: bool) -> tuple[Any, Any] | None:
    """Descending singular values (float64 numpy) and ‖G‖_F² of one host matrix; None if it holds a
    non-finite value. (Finiteness is read off the float64 sum of the entries, which cannot overflow
    for float32 or narrower entries: one reduction instead of a boolean mask.)"""
    import math

    import numpy as np

    if gram:
        a = _as_numpy(g, kind, np.float64)
        if not math.isfinite(a.sum()):
            return None
        if a.shape[0] > a.shape[1]:
            a = a.T
        c = a @ a.T  # the smaller Gram side; numpy sees A·Aᵀ and calls BLAS syrk (half a GEMM)
        lam = np.linalg.eigvalsh(c)[::-1]
        return np.sqrt(np.maximum(lam, 0.0)), np.trace(c)
    if kind == "torch":
        import torch

        t = g.to(torch.float32)
        if not math.isfinite(t.sum(dtype=torch.float64)):
            return None
        # Singular values of the tall orientation (a free transposed view): torch's CPU gesdd takes
        # 2.4-3.4x longer on a wide m < n matrix than on its transpose (bench/gradients.py).
        s = torch.linalg.svdvals(t if t.shape[0] >= t.shape[1] else t.mT).numpy()
    else:
        a = _as_numpy(g, kind, np.float32)
        if not math.isfinite(a.sum(dtype=np.float64)):
            return None
        s = np.linalg.svd(a if a.shape[0] >= a.shape[1] else a.T, compute_uv=False)
    s = s.astype(np.float64)
    return s, s @ s


def _as_numpy(g, kind: str, dtype) -> Any:
    """A host array as numpy in ``dtype`` (a view when it already has it)."""
    import numpy as np

    if kind == "torch":
        import torch

        return g.to(torch.float64 if dtype == np.float64 else torch.float32).numpy()
    return np.asarray(g).astype(dtype, copy=False)


def _batched_stats(xp, group: list, gram: bool, scale) -> dict:
    """Statistics of same-shape matrices on an accelerator: one stacked ``svdvals`` (float32), or with
    ``gram`` one stacked product and ``eigvalsh`` in float64; no host synchronisation."""
    import contextlib

    import array_api_compat

    ctx: Any = contextlib.nullcontext()
    if gram and array_api_compat.is_jax_namespace(xp):
        import jax

        ctx = jax.enable_x64(True)
    with ctx:
        stack = xp.astype(xp.stack(group), xp.float64 if gram else xp.float32)
        b = len(group)
        dev = array_api_compat.device(stack)
        finite = xp.all(xp.reshape(xp.isfinite(stack), (b, -1)), axis=1)
        # svdvals and eigvalsh fail on non-finite input: zero those matrices (no host sync), report NaN.
        zero = xp.zeros((), dtype=stack.dtype, device=dev)
        stack = xp.where(finite[:, None, None], stack, zero)
        if gram:
            a = stack if stack.shape[1] <= stack.shape[2] else xp.matrix_transpose(stack)
            c = xp.matmul(a, xp.matrix_transpose(a))
            lam = xp.flip(xp.linalg.eigvalsh(c), axis=-1)
            s = xp.sqrt(xp.where(lam > zero, lam, zero))
            fro2 = xp.sum(xp.linalg.diagonal(c), axis=-1)
        else:
            s = xp.linalg.svdvals(stack)  # (B, r), descending
            fro2 = xp.sum(s * s, axis=1)
        nuc = xp.sum(s, axis=1)
        top = s[:, 0]
        stats = {
            "grad_nuclear": nuc,
            "grad_spectral": top,
            "grad_frobenius": xp.sqrt(fro2),
            "grad_stable_rank": fro2 / (top * top),
            "grad_top_ratio": top / nuc,
            "grad_sigma_min": s[:, -1],
        }
        if scale is not None:
            inv = 1.0 / xp.asarray(scale, dtype=stack.dtype, device=dev)
            for k in ("grad_nuclear", "grad_spectral", "grad_frobenius", "grad_sigma_min"):
                stats[k] = stats[k] * inv
        nan = xp.asarray(float("nan"), dtype=xp.float32, device=dev)
        return {k: xp.where(finite, xp.astype(v, xp.float32), nan) for k, v in stats.items()}


def _detached(g):
    return g.detach() if hasattr(g, "detach") else g
