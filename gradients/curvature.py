"""Hessian curvature of a loss: the top eigenvalue by power iteration and the trace by Hutchinson's estimator.

Both use Hessian-vector products Hv = ∇_θ(∇_θ L(θ)ᵀ v) by double backward (Pearlmutter 1994,
"Fast exact multiplication by the Hessian"): ``loss_fn(params)`` is evaluated once, its gradient is
built with ``create_graph=True``, and every product is one more backward pass through that graph (so
a dropout mask or a batch drawn inside ``loss_fn`` is the same for all products, and the model's
``.grad`` is never touched). The vectors live in the parameters' dtype and device; inner products are
reduced in float64.

- **Top eigenvalue** (Cockpit's ``HessMaxEV``, Schneider, Dangel & Hennig 2021): power iteration
  v_{k+1} = Hv_k / ‖Hv_k‖ from a seeded Gaussian v_0, with the Rayleigh quotient λ_k = v_kᵀHv_k
  (‖v_k‖ = 1), stopped when |λ_k − λ_{k−1}| ≤ tol·|λ_k| or after ``iters`` products. Power iteration
  converges to the eigenvalue of largest *magnitude*, λ_LM; when it is ≥ 0 it is also the largest
  *algebraic* eigenvalue λ_max (Cockpit's default power-iteration path returns λ_LM, its ``eigsh(…,
  which="LA")`` path λ_max). When λ_LM < 0, a second power iteration on the shifted operator
  H − λ_LM·I (positive semi-definite, top eigenvalue λ_max − λ_LM) recovers λ_max. The value returned
  is always λ_max, the top algebraic eigenvalue.
- **Trace** (Hutchinson 1990, "A stochastic estimator of the trace of the influence matrix for
  Laplacian smoothing splines"; Cockpit's ``HessTrace`` uses exact diagonals instead): tr(H) ≈
  (1/S) Σ_s v_sᵀHv_s with Rademacher vectors v_s ∈ {−1, +1}ⁿ, unbiased with variance
  2 Σ_{i≠j} H_ij² per sample (exact when H is diagonal); the standard error is the sample standard
  deviation of the S values (ddof = 1) over √S.

Random vectors come from one ``torch.Generator`` per parameter device, seeded with ``seed``, drawn
parameter by parameter in ``params`` order (Rademacher: ``torch.randint(0, 2, shape, dtype=int8)``
mapped 0 → −1, 1 → +1; Gaussian: ``torch.randn``), so a fixed seed gives fixed vectors on one device.

Bad input never raises into training: no parameter requiring grad, a ``loss_fn`` that raises or
returns a non-finite value, a loss without an autograd graph (``.detach()``, ``argmax``,
``torch.no_grad``), a gradient that is missing or identically zero (``sign``, ``round``), or a
Hessian-vector product that fails (``@once_differentiable``) or is non-finite all give a NaN value and
a one-line ``reason``. A gradient that is constant in the parameters (a loss linear in them) has
H = 0 and gives 0.0. Wrong argument types (not a callable, not a mapping of tensors, iters < 1, …)
raise :class:`~phasescope.errors.PhasescopeError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from phasescope.errors import PhasescopeError

NAN = float("nan")


@dataclass(frozen=True)
class CurvatureResult:
    """One curvature estimate. ``value`` is NaN exactly when ``reason`` says why."""

    value: float
    stderr: float = NAN  # standard error of a stochastic estimate (Hutchinson); NaN when not applicable
    iterations: int = 0  # Hessian-vector products used
    converged: bool = False  # power iteration: the tolerance was met; Hutchinson: all samples were drawn
    reason: str | None = None  # why the value is NaN; None when it is not


class _Failed(Exception):
    """A reason for a NaN result (never leaves this module)."""


def model_loss_fn(model: Any, loss: Callable[[Any], Any], *args: Any, **kwargs: Any) -> Callable[[Mapping], Any]:
    """``f(params) = loss(model(*args, **kwargs))`` with ``params`` (name → tensor) substituted into
    ``model`` by ``torch.func.functional_call``; the argument for :func:`hessian_top_eigenvalue` and
    :func:`hessian_trace` with ``params = dict(model.named_parameters())``.

    Buffers are replaced by fresh copies for each call, so a BatchNorm in training mode normalises with
    batch statistics but its running statistics are not updated. Example:
    ``hessian_trace(model_loss_fn(model, lambda out: F.cross_entropy(out, y), x), dict(model.named_parameters()))``.
    """
    if not callable(loss):
        raise PhasescopeError(f"loss must be a callable on the model's output, got {type(loss).__name__}")

    def f(params: Mapping) -> Any:
        from torch.func import functional_call

        buffers = {name: b.clone() for name, b in model.named_buffers()}
        return loss(functional_call(model, {**buffers, **params}, args, kwargs))

    return f


def hessian_top_eigenvalue(
    loss_fn: Callable[[Mapping], Any], params: Mapping, *, iters: int = 20, tol: float = 1e-3, seed: int = 0
) -> CurvatureResult:
    """λ_max, the largest algebraic eigenvalue of ∇²_θ loss_fn(θ) at θ = ``params`` (see the module notes).

    ``loss_fn``: maps a dict name → tensor (``params`` with the differentiated tensors substituted) to
    a scalar loss tensor, e.g. :func:`model_loss_fn`. ``params``: name → tensor; the Hessian is taken
    over the tensors with ``requires_grad`` (others are passed through unchanged). ``iters``: the most
    Hessian-vector products per power iteration (up to 2·iters in all when the dominant eigenvalue is
    negative). ``tol``: stop when the Rayleigh quotient changes by at most ``tol`` relative to itself.
    ``converged`` is False when ``iters`` ran out first (the last estimate is still returned). The
    relative change is not an error bound: with a small eigengap the estimate creeps up on λ_max from
    below (a transformer at initialisation, whose most negative eigenvalue dominates, can need 10× the
    default ``iters``).
    """
    _check_int("iters", iters, 1)
    if not (isinstance(tol, int | float) and tol >= 0):
        raise PhasescopeError(f"tol must be a number >= 0, got {tol!r}")
    try:
        hvp, leaves = _hvp_operator(loss_fn, params)
        gens = _generators(leaves, seed)
        lam, k1, ok1 = _power_iteration(hvp, leaves, gens, iters, tol, shift=0.0)
        if lam >= 0:
            return CurvatureResult(lam, iterations=k1, converged=ok1)
        mu, k2, ok2 = _power_iteration(hvp, leaves, gens, iters, tol, shift=lam)
        return CurvatureResult(lam + mu, iterations=k1 + k2, converged=ok1 and ok2)
    except _Failed as e:
        return CurvatureResult(NAN, reason=str(e))


def hessian_trace(
    loss_fn: Callable[[Mapping], Any], params: Mapping, *, samples: int = 20, seed: int = 0
) -> CurvatureResult:
    """tr ∇²_θ loss_fn(θ) by Hutchinson's estimator: the mean of v_sᵀHv_s over ``samples`` Rademacher
    vectors, with ``stderr`` = std(ddof=1)/√samples (NaN for one sample). Arguments as in
    :func:`hessian_top_eigenvalue`; ``iterations`` = samples and ``converged`` = True on success."""
    _check_int("samples", samples, 1)
    try:
        hvp, leaves = _hvp_operator(loss_fn, params)
        gens = _generators(leaves, seed)
        values = []
        for _ in range(samples):
            v = [_rademacher(leaf, gens) for leaf in leaves]
            (q,) = _dots(v, hvp(v))
            if not math.isfinite(q):
                raise _Failed("Hessian-vector product is not finite")
            values.append(q)
    except _Failed as e:
        return CurvatureResult(NAN, reason=str(e))
    n = len(values)
    mean = math.fsum(values) / n
    stderr = math.sqrt(math.fsum((q - mean) ** 2 for q in values) / (n - 1) / n) if n > 1 else NAN
    return CurvatureResult(mean, stderr=stderr, iterations=n, converged=True)


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PhasescopeError(f"{name} must be an integer >= {low}, got {value!r}")


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:200]


def _hvp_operator(loss_fn: Callable[[Mapping], Any], params: Mapping) -> tuple[Callable[[list], list], list]:
    """Evaluate the loss and its gradient graph once; return ``(hvp, leaves)`` where ``hvp(v)`` maps a
    list of tensors shaped like ``leaves`` to H·v (same shapes). Raises _Failed with the reason."""
    import torch

    if not callable(loss_fn):
        raise PhasescopeError(f"loss_fn must be a callable params -> scalar loss, got {type(loss_fn).__name__}")
    if not isinstance(params, Mapping):
        raise PhasescopeError(
            "params must be a mapping name -> tensor (e.g. dict(model.named_parameters())), "
            f"got {type(params).__name__}"
        )
    for name, p in params.items():
        if not isinstance(p, torch.Tensor):
            raise PhasescopeError(f"params[{name!r}] must be a torch tensor, got {type(p).__name__}")
    names = [name for name, p in params.items() if p.requires_grad]
    if not names:
        raise _Failed("no parameter requires grad")
    leaves = [params[name].detach().requires_grad_(True) for name in names]
    inputs = {**params, **dict(zip(names, leaves, strict=True))}
    with torch.enable_grad():
        try:
            loss = loss_fn(inputs)
        except Exception as e:  # a failing loss is reported as the reason, never raised into training
            raise _Failed(f"loss_fn raised {_one_line(e)}") from e
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            what = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise _Failed(f"loss_fn must return a scalar tensor, got {what}")
        loss = loss.reshape(())
        if not torch.isfinite(loss.detach()):
            raise _Failed(f"loss is not finite ({loss.item()})")
        if not loss.requires_grad:
            raise _Failed("loss has no autograd graph to the parameters (detach, argmax or no_grad in loss_fn?)")
        try:
            first = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        except Exception as e:  # reported as the reason
            raise _Failed(f"gradient failed: {_one_line(e)}") from e
    if all(g is None for g in first):
        raise _Failed("loss does not depend on the parameters (detached inside loss_fn?)")
    grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(first, leaves, strict=True)]
    if not all(bool(torch.isfinite(g.detach()).all()) for g in grads):
        raise _Failed("gradient is not finite")
    if not any(bool(g.detach().any()) for g in grads):
        raise _Failed("gradient is identically zero (sign, round, argmax or detach in the loss?)")
    live = [i for i, g in enumerate(grads) if g.requires_grad]  # the others are constant in θ: zero rows of H
    if _once_differentiable([grads[i] for i in live]):
        raise _Failed("loss is not twice differentiable (an @once_differentiable backward in its graph)")

    def hvp(v: list) -> list:
        if not live:
            return [torch.zeros_like(x) for x in v]
        try:
            with torch.enable_grad():
                out = torch.autograd.grad(
                    [grads[i] for i in live],
                    leaves,
                    grad_outputs=[v[i] for i in live],
                    retain_graph=True,
                    allow_unused=True,
                )
        except Exception as e:  # not twice differentiable: reported as the reason
            raise _Failed(f"Hessian-vector product failed: {_one_line(e)}") from e
        return [torch.zeros_like(x) if h is None else h.detach() for h, x in zip(out, v, strict=True)]

    return hvp, leaves


def _once_differentiable(roots: list) -> bool:
    """Whether the gradient's graph holds the node that ``@once_differentiable`` puts after its backward.

    That node is attached to detached copies of the backward's outputs, so autograd with
    ``allow_unused=True`` would skip it silently and return a Hessian with terms missing."""
    seen: set = set()
    stack = [g.grad_fn for g in roots]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)  # holding the node keeps its Python object, and so its identity, alive
        if fn.name() in ("torch::autograd::Error", "torch::autograd::DelayedError"):
            return True
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return False


def _generators(leaves: list, seed: int) -> dict:
    import torch

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PhasescopeError(f"seed must be an integer, got {seed!r}")
    gens = {}
    for leaf in leaves:
        if leaf.device not in gens:
            gens[leaf.device] = torch.Generator(device=leaf.device).manual_seed(seed)
    return gens


def _rademacher(leaf: Any, gens: dict) -> Any:
    import torch

    bits = torch.randint(0, 2, leaf.shape, generator=gens[leaf.device], dtype=torch.int8, device=leaf.device)
    return bits.to(leaf.dtype) * 2 - 1


def _dots(*pairs_flat: list) -> list[float]:
    """Inner products ⟨a, b⟩ = Σ_params Σ a·b in float64 for consecutive list pairs (a, b, c, d, …) → one
    host transfer for all of them."""
    import torch

    device = pairs_flat[0][0].device
    sums = []
    for a, b in zip(pairs_flat[::2], pairs_flat[1::2], strict=True):
        parts = [torch.sum(x * y, dtype=torch.float64).to(device) for x, y in zip(a, b, strict=True)]
        sums.append(torch.stack(parts).sum())
    return [float(s) for s in torch.stack(sums).cpu().tolist()]


def _power_iteration(
    hvp: Callable[[list], list], leaves: list, gens: dict, iters: int, tol: float, shift: float
) -> tuple[float, int, bool]:
    """(Rayleigh quotient, products used, converged) of power iteration on H − shift·I."""
    import torch

    v = [torch.randn(leaf.shape, generator=gens[leaf.device], dtype=leaf.dtype, device=leaf.device) for leaf in leaves]
    (norm2,) = _dots(v, v)
    v = [x / math.sqrt(norm2) for x in v]
    prev = NAN
    for k in range(1, iters + 1):
        hv = hvp(v)
        if shift:
            hv = [h - shift * x for h, x in zip(hv, v, strict=True)]
        lam, norm2 = _dots(v, hv, hv, hv)
        if not (math.isfinite(lam) and math.isfinite(norm2)):
            raise _Failed("Hessian-vector product is not finite")
        if norm2 == 0.0:  # v lies in the null space (H = 0 when v is random): the eigenvalue is 0
            return lam, k, True
        if abs(lam - prev) <= tol * abs(lam):
            return lam, k, True
        prev = lam
        v = [h / math.sqrt(norm2) for h in hv]
    return prev, iters, False


def set_losses(
    model: Any,
    batches: Mapping[str, Any],
    loss: Callable[[Any, Any], Any],
    on_error: Callable[[str, BaseException], None] | None = None,
) -> list[float]:
    """The loss ``loss(model, batch)`` of ``model`` on each batch of ``batches`` (name → a fixed batch, e.g.
    each training stage's probe set), in order: eval mode (dropout off), no gradients, the random state
    (CPU and the model's CUDA devices) left as it was, the model's train/eval modes restored. A batch the
    model fails on gives NaN, is reported to ``on_error(name, exception)``, and the others are still
    measured; a ``loss`` that cannot be computed at all (PhasescopeError: e.g. an output without ``.loss``)
    is raised."""
    import torch

    devices = sorted({p.device.index for p in model.parameters() if p.is_cuda and p.device.index is not None})
    modes = [(m, m.training) for m in model.modules()]
    out = []
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            for name, batch in batches.items():
                try:
                    out.append(float(loss(model, batch)))
                except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                    out.append(math.nan)
                    if on_error is not None:
                        on_error(str(name), exc)
    finally:
        for m, mode in modes:
            m.training = mode
    return out
