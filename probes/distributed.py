"""torch.distributed for live capture: DDP/FSDP1 unwrapping, rank info, probe-set sharding, loss
averaging, FSDP2 (``fully_shard``) reshard-after-probe, and gradient norms of sharded DTensors.

Each rank captures a shard of the probe set; the covariance accumulators are all-reduced (their state
is sum-reducible, so the merge is exact) before the eigendecomposition on rank 0
(:func:`all_reduce_accumulators`). Under FSDP2 every rank runs the same number of probe forwards (FSDP
all-gathers inside each) and each capture ends with ``FSDPModule.reset_iter_state()`` on the outermost
``fully_shard`` modules (:class:`fsdp_resharded`), so the optimizer's sharded parameters are the ones
the next training forward gathers. Sharded gradient norms sum squared shard norms over the mesh
dimensions that shard them, never over HSDP replicas (:func:`sharded_norms`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from phasescope.errors import PhasescopeError
from phasescope.spectra import CovarianceAccumulator

from .capture import ProbeSet


def collective(step: int, what: str, rank: int, world: int, fn: Callable):
    """Run a torch.distributed collective; a failure (a rank died or left) becomes one clear error."""
    try:
        return fn()
    except Exception as exc:
        raise PhasescopeError(
            f"phasescope: the all-reduce of {what} at step {step} failed on rank {rank} of {world} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); a rank probably "
            "died or stopped calling obs.step; every committed step is kept in the store"
        ) from exc


def all_reduce_accumulators(
    accs: list,
    dims: list[int],
    names: list[str],
    step: int,
    rank: int,
    world: int,
    device,
    group,
    *,
    raw: bool = False,
    precision: str = "auto",
) -> list:
    """Exact merge of every rank's sufficient statistics before the eigendecomposition (in place); a rank
    without a probe's statistics joins with an empty accumulator (``raw``: keeping raw singular values, as
    the others do for ``rankme_raw``)."""
    import torch

    accs = list(accs)
    for i in range(len(accs)):
        if accs[i] is None and dims[i]:
            accs[i] = CovarianceAccumulator(dims[i], raw_singular_values=raw, precision=precision)
            accs[i].update(torch.zeros((0, dims[i]), device=device))  # state on the model's device
        acc = accs[i]
        if acc is not None:
            collective(step, f"probe {names[i]!r} statistics", rank, world, lambda acc=acc: acc.all_reduce(group))
    return accs


def barrier(group) -> None:
    """Wait for every rank of ``group`` (the end of a collective close)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier(group=group)


def unwrap(model):
    """The user's module inside a DistributedDataParallel / FSDP1 wrapper (probe names stay the same)."""
    cls = type(model).__name__
    if cls in ("DistributedDataParallel", "FullyShardedDataParallel", "DataParallel") and hasattr(model, "module"):
        return model.module
    return model


def dist_info(distributed: bool | None, group) -> tuple[int, int]:
    """(rank, world size) of ``group``; (0, 1) when not distributed (or ``distributed=False``)."""
    if distributed is False:
        return 0, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if distributed:
            raise PhasescopeError(
                "distributed=True but torch.distributed is not initialised; call "
                "torch.distributed.init_process_group(...) before creating the Observatory"
            )
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def backend_name(group) -> str:
    import torch.distributed as dist

    try:
        return str(dist.get_backend(group))
    except Exception:  # noqa: BLE001 - metadata only
        return "unknown"


def shard_probe_set(ps: ProbeSet, rank: int, world: int) -> None:
    """Keep this rank's batches (k ≡ rank mod world): the union over ranks is exactly the probe set."""
    keep = [k for k in range(len(ps.batches)) if k % world == rank]
    ps.batches = [ps.batches[k] for k in keep]
    if ps.plans is not None:
        ps.plans = [ps.plans[k] for k in keep]


def mean_over_ranks(loss, device, group):
    import torch
    import torch.distributed as dist

    t = loss.detach().float().reshape(()).clone() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
    if backend_name(group) == "nccl" and t.device.type != "cuda":
        t = t.to(device)
    dist.all_reduce(t, group=group)
    return t / dist.get_world_size(group)


def fsdp_roots(model) -> list:
    """The outermost FSDP2 (``fully_shard``) modules of ``model``: the roots of its FSDP states."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except Exception:  # noqa: BLE001 - torch without FSDP2
        return []
    roots: list[str] = []
    out = []
    for name, m in model.named_modules():
        if isinstance(m, FSDPModule) and not any(name == r or name.startswith(r + ".") if r else True for r in roots):
            roots.append(name)
            out.append(m)
    return out


def check_fsdp_reset(roots: list) -> None:
    if not all(hasattr(m, "reset_iter_state") for m in roots):
        raise PhasescopeError(
            "probe-set capture on an FSDP2 (fully_shard) model needs "
            "FSDPModule.reset_iter_state (torch >= 2.13); upgrade torch or pass "
            "capture='in_flight'"
        )


class fsdp_resharded:
    """After a probe forward on an FSDP2 model (which may stop early, by exception, after the last
    probe), reset each root's per-iteration state: the sharded parameters are registered again and
    the next training forward all-gathers the weights the optimizer has updated since. Called between
    backward and optimizer.step, when no gradient reduction is in flight."""

    def __init__(self, roots: list):
        self.roots = roots

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for m in self.roots:
            m.reset_iter_state()


def has_dtensor(params) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except Exception:  # noqa: BLE001 - old torch / no distributed
        return False
    return any(isinstance(p, DTensor) for p in params)


def sharded_norms(params):
    """‖g_i‖₂ of sharded (DTensor) gradients on the writing rank: ‖g_i‖² = Σ over shards of ‖local
    shard‖², summed over the device-mesh dimensions on which the gradient is sharded (``Shard``) and
    taken once over those on which it is replicated (HSDP's replicate dimension); a plain tensor counts
    once (rank 0's copy). One all-reduce of a (P,) vector per (mesh, sharded dimensions) bucket."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    present = [p.grad is not None for p in params]
    device = params[0].device if params else torch.device("cpu")
    sq = torch.zeros(len(params), dtype=torch.float64, device=device)
    buckets: list[tuple[Any, tuple[int, ...], list[int]]] = []  # (mesh, sharded mesh dims, params)
    with torch.no_grad():
        for i, p in enumerate(params):
            g = p.grad
            if g is None:
                continue
            local = g.to_local() if isinstance(g, DTensor) else g
            sq[i] = local.detach().double().pow(2).sum().to(device)
            dims = tuple(d for d, pl in enumerate(g.placements) if pl.is_shard()) if isinstance(g, DTensor) else ()
            if not dims:
                continue
            for mesh, bdims, idx in buckets:
                if bdims == dims and mesh == g.device_mesh:
                    idx.append(i)
                    break
            else:
                buckets.append((g.device_mesh, dims, [i]))
        for mesh, dims, idx in buckets:  # same order on every rank: parameters are in the same order
            part = sq[idx]
            for d in dims:
                dist.all_reduce(part, group=mesh.get_group(d))
            sq[idx] = part
    norms = sq.sqrt().float()
    norms[torch.tensor([not x for x in present], dtype=torch.bool, device=device)] = float("nan")
    return norms, present
