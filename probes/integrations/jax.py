"""JAX / Flax integration: pytrees in, the same run store as the torch Observatory.

    from phasescope.probes.integrations.jax import FlaxObserver
    obs = FlaxObserver(model, "runs/x.zarr", params, probe_inputs=x_probe, schedule=log_spaced(1000))
    for step in range(n):
        (loss, grads) = jax.value_and_grad(loss_fn)(params, batch)
        obs.step(step, params, grads=grads, loss=loss, lr=schedule_fn(step))   # before the optax update
        updates, opt_state = tx.update(grads, opt_state, params); params = optax.apply_updates(params, updates)
    obs.close()

Everything goes through :class:`phasescope.probes.Recorder` (the framework-neutral path the torch
Observatory uses too): gradient norms ‖g_i‖₂ are computed by jax on the arrays' device, and on capture
steps the probe activations — Flax ``capture_intermediates`` (every submodule's ``__call__`` output)
or values stored with ``self.sow("intermediates", name, value)`` — go into covariance accumulators as
jax arrays, so the spectra (RankMe, α-ReQ, …) are computed on the device too (in float64 via
``jax.enable_x64`` inside phasescope.spectra). Parameter and probe names are the pytree paths joined
by dots (``Dense_0.kernel``; a leading ``params`` collection is dropped). The probe forward is jitted
once. Token selection for (batch, seq, dim) outputs is the torch path's rule
(:func:`phasescope.probes.tokens.select`): with ``attention_mask`` (batch, seq) for a padded probe
batch, ``"last"`` is the last non-pad token, ``"mean"`` the mean over non-pad tokens, ``"all"`` every
non-pad token; without one every position counts. (batch, dim) outputs are used as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phasescope.errors import PhasescopeError

from .. import schedules as S
from ..recorder import Recorder
from ..tokens import as_selection, plan_all, select

__all__ = ["FlaxObserver", "flatten_tree", "linen_intermediates", "select_tokens"]


def _key(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten_tree(tree, drop: tuple[str, ...] = ("params",)) -> dict[str, Any]:
    """``{dotted path: leaf}`` of a pytree (e.g. Flax params or grads); leading ``drop`` keys removed."""
    out: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = [_key(k) for k in path]
        while parts and parts[0] in drop:
            parts = parts[1:]
        out[".".join(parts)] = leaf
    return out


def _intermediate_names(tree) -> dict[str, Any]:
    """Flatten ``state["intermediates"]``: ``Dense_0.__call__.0`` → ``Dense_0``; the root output → ``output``;
    a sown ``name`` (a tuple of values) → its last value."""
    out: dict[str, Any] = {}
    for name, leaf in flatten_tree(tree, drop=("intermediates",)).items():
        parts = name.split(".")
        if parts and parts[-1].isdigit():
            parts = parts[:-1]
        if parts and parts[-1] == "__call__":
            parts = parts[:-1]
        out[".".join(parts) or "output"] = leaf
    return out


def linen_intermediates(module, variables: dict, *args, filter: Callable | bool = True, **kwargs):
    """``(output, {name: array})``: a ``flax.linen`` forward with ``capture_intermediates=filter``
    (True: every submodule's ``__call__`` output) plus anything sown into ``"intermediates"``."""
    out, state = module.apply(variables, *args, capture_intermediates=filter, mutable=["intermediates"], **kwargs)
    return out, _intermediate_names(state.get("intermediates", {}))


def select_tokens(h, tokens: str = "last", mask=None, plan=None):
    """Samples × dim rows of an activation: (batch, dim) as is; (batch, seq, dim) by ``tokens`` with the
    one rule of :func:`phasescope.probes.tokens.select` (``mask``: the (batch, seq) attention mask of a
    padded batch; ``plan``: the (rows, cols) of ``"all"`` under ``jax.jit``, from :func:`plan_all`);
    (batch, *spatial, channels) — Flax's channels-last conv maps — by the mean over spatial positions,
    the ``spatial_mean`` reduction of :mod:`phasescope.probes.shapes`."""
    if h.ndim >= 4:
        return jnp.mean(jnp.reshape(h, (h.shape[0], -1, h.shape[-1])), axis=1)
    return select(h, mask, as_selection(tokens, max_tokens=None), plan=plan)


def _masked_by(shape: tuple, mask: np.ndarray) -> bool:
    """Whether an output of ``shape`` is per token of the masked batch (or per sequence: (batch, dim))."""
    if len(shape) == 2:
        return shape[0] == mask.shape[0]
    if len(shape) < 2:
        return False
    seq = int(np.prod(shape[1:-1]))
    return (shape[0], seq) == tuple(mask.shape)


class FlaxObserver:
    """Record a Flax (linen) + optax training loop (see the module docstring).

    ``params``: the initial parameters (names, shapes and probe widths are read from them);
    ``probe_inputs``: a fixed probe batch (array or tuple of positional arguments); ``probes``: names
    of intermediates to keep (default: every captured submodule output except the model's own
    ``output``; with ``attention_mask``, those whose leading (batch, seq) axes match it); ``tokens`` and
    ``attention_mask``: token selection of (batch, seq, dim) outputs (module docstring); ``matrices``:
    2-D gradient names for singular-value statistics on capture steps (``"all"`` or a list; default
    none). Remaining keyword arguments go to :class:`Recorder`.
    """

    def __init__(
        self,
        module,
        store,
        params,
        probe_inputs,
        *,
        probes: list[str] | None = None,
        schedule=None,
        tokens: str = "last",
        attention_mask=None,
        apply_kwargs: dict | None = None,
        matrices=(),
        metadata: dict | None = None,
        **recorder_kwargs: Any,
    ):
        self.module, self.tokens = module, tokens
        selection = as_selection(tokens, max_tokens=None)
        self.schedule = S.as_schedule(schedule) if schedule is not None else S.preset("economy").capture
        self.inputs = probe_inputs if isinstance(probe_inputs, tuple) else (probe_inputs,)
        kw = dict(apply_kwargs or {})
        mask = None if attention_mask is None else np.asarray(attention_mask)
        # "all" under jit needs fixed indices: the probe batch is fixed, so its non-pad positions are too.
        plan = plan_all(mask, None) if mask is not None and selection.mode == "all" else None

        def intermediates(p):
            return linen_intermediates(module, {"params": p}, *self.inputs, **kw)[1]

        def forward(p, names):
            inter = intermediates(p)
            return {k: select_tokens(inter[k], tokens, mask, plan) for k in names}

        shapes = jax.eval_shape(intermediates, params)
        if probes is None:
            probes = [k for k, v in shapes.items() if k != "output" and (mask is None or _masked_by(v.shape, mask))]
        missing = [p for p in probes if p not in shapes]
        if missing:
            raise PhasescopeError(
                f"probe(s) {missing} are not among the captured intermediates {sorted(shapes)}; "
                "name submodules (or sown values) the model's forward produces"
            )
        self.probes = list(probes)
        self._forward = jax.jit(partial(forward, names=tuple(self.probes)))
        acts = self._forward(params)
        names = flatten_tree(params)
        if matrices == "all":
            matrices = [n for n, a in names.items() if a.ndim == 2]
        meta = {
            "integration": "flax.linen",
            "model": type(module).__name__,
            "schedule": self.schedule.describe(),
            "tokens": {**selection.describe(), "attention_mask": mask is not None},
            "probes_spec": {p: p for p in self.probes},
            "capture_mode": "probe_set",
            "probe_set_size": int(jax.tree_util.tree_leaves(self.inputs)[0].shape[0]),
        }
        meta.update(metadata or {})
        self.recorder = Recorder(
            store,
            probes=self.probes,
            params=list(names),
            dims={p: int(acts[p].shape[-1]) for p in self.probes},
            matrices=list(matrices),
            metadata=meta,
            **recorder_kwargs,
        )

    def step(self, step: int, params, grads=None, loss=None, lr: float | None = None) -> None:
        """Record one optimizer step: call with the parameters the gradients were taken at (before the update)."""
        acts = None
        if self.schedule(int(step)):
            out = self._forward(params)
            acts = {p: out[p] for p in self.probes}
        self.recorder.record(
            step, activations=acts, grads=flatten_tree(grads) if grads is not None else None, loss=loss, lr=lr
        )

    def close(self, *, error: BaseException | None = None) -> None:
        self.recorder.close(error=error)

    def __enter__(self) -> FlaxObserver:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error=exc)
