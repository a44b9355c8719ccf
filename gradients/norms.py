"""Per-parameter gradient L2 norms in one batched device op and one host transfer.

For parameters θ_1 … θ_P with gradients g_i, the per-parameter norm is ‖g_i‖₂ = (Σ_j g_ij²)^½ and the
global norm is ‖g‖₂ = (Σ_i ‖g_i‖₂²)^½ (the quantity ``torch.nn.utils.clip_grad_norm_`` returns).
Norms are computed with ``torch._foreach_norm`` per (device, dtype) group — the same fused kernel
clip_grad_norm_ uses — then stacked into one float32 vector, so the host sees a single small copy.
A parameter without a gradient gets NaN in the vector and False in the returned ``present`` mask
(so a NaN *inside* a gradient, which also gives a NaN norm, is never confused with "no gradient").
"""

from __future__ import annotations

from collections.abc import Sequence


def grad_norms(params: Sequence):
    """``(norms, present)`` for the ``.grad`` of torch parameters (see :func:`array_norms`)."""
    return array_norms([p.grad for p in params])


def array_norms(grads: Sequence):
    """``(norms, present)``: (P,) float32 vector of ‖g_i‖₂ on the gradients' device and backend, and a
    list of bools saying which entries were given (NaN in ``norms`` where ``grads[i]`` is None).

    torch tensors: one ``torch._foreach_norm`` per (device, dtype) group (clip_grad_norm_'s kernel);
    numpy/jax/other array-API arrays: ``linalg.vector_norm`` of each in float32, stacked.
    """
    present = [g is not None for g in grads]
    given = [g for g in grads if g is not None]
    if given and all(type(g).__module__.startswith("torch") for g in given):
        return _torch_norms(grads), present
    import array_api_compat
    import numpy as np

    if not given:
        return np.full(len(grads), np.nan, dtype=np.float32), present
    xp = array_api_compat.array_namespace(*given)
    vals = [xp.linalg.vector_norm(xp.astype(xp.reshape(g, (-1,)), xp.float32)) for g in given]
    if len(given) == len(grads):
        return xp.stack(vals), present
    out = np.full(len(grads), np.nan, dtype=np.float32)  # absent entries: one host vector
    out[np.flatnonzero(present)] = [float(v) for v in vals]
    return out, present


def _torch_norms(grads: Sequence):
    import torch

    present = [g is not None for g in grads]
    groups: dict[tuple, tuple[list[int], list]] = {}
    device = None
    for i, grad in enumerate(grads):
        if grad is None:
            continue
        g = grad.coalesce()._values() if grad.is_sparse else grad
        device = device or g.device
        idx, ts = groups.setdefault((g.device, g.dtype), ([], []))
        idx.append(i)
        ts.append(g)
    if len(groups) == 1 and all(present):
        ((_, ts),) = groups.values()
        return torch.stack(torch._foreach_norm(ts)).float()
    out = torch.full((len(grads),), float("nan"), dtype=torch.float32, device=device)
    for idx, ts in groups.values():
        vals = torch.stack([n.float() for n in torch._foreach_norm(ts)]).to(device)
        out[torch.tensor(idx, device=device)] = vals
    return out


def global_norm(norms, present=None) -> float:
    """‖g‖₂ = sqrt(Σ_i ‖g_i‖²) over parameters that had a gradient; NaN/Inf propagate."""
    import numpy as np

    a = np.asarray(norms, dtype=np.float64)
    if present is not None:
        a = a[np.asarray(present, dtype=bool)]
    if a.size == 0:
        return float("nan")
    return float(np.sqrt(np.sum(a * a)))


def nonfinite(norms, present=None) -> bool:
    """True if any present gradient has a NaN/Inf entry (its norm is then NaN or Inf)."""
    import numpy as np

    a = np.asarray(norms, dtype=np.float64)
    if present is not None:
        a = a[np.asarray(present, dtype=bool)]
    return bool(a.size and not np.all(np.isfinite(a)))
