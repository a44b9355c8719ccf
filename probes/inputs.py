"""Probe inputs of any kind, as the batches a probe set feeds the model's forward.

``probe_inputs`` may be

- **token ids**: a dict with ``input_ids`` (and ``attention_mask``), or a 2-D integer tensor/array/
  nested list. Passed by keyword when ``forward`` takes ``input_ids``, else positionally. Right-padded
  sets are sorted by length and each batch cut at its longest sequence (results are unchanged: pad
  positions never reach real tokens); token rules (last/first non-pad token) use the mask.
- **a tensor** (images, features, …): passed positionally, batched along its first axis.
- **a tuple or list of tensors**: positional arguments, all batched along the first axis. Elements
  beyond what ``forward`` takes positionally are not passed: ``(images, labels)`` → ``forward(x)``.
- **a dict with any keys**: keyword arguments (``labels`` is never passed: a probe forward reads
  representations, not a loss); keys ``forward`` does not take are left out and reported.
- **an iterable of such batches** (a ``DataLoader``): read once, kept as batched, fixed thereafter.

Every tensor's first axis is the sample axis; within one batch they must agree. Floating inputs are
cast to the model's floating dtype. Under ``torch.distributed`` every rank must pass the same probe
set (each rank then captures its shard of it): a DataLoader without shuffling or a DistributedSampler.
An iterable is kept whole on the model's device: pass a held-out probe set, not the training loader. The result records
what was found (:meth:`ProbeInputs.describe`, stored in the run's ``probe_inputs`` attribute).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from phasescope.errors import PhasescopeError

NEVER_PASSED = ("labels",)


@dataclass
class Batch:
    """One probe forward: positional ``args``, keyword ``kwargs``, ``n`` samples and, for token ids,
    the attention ``mask`` (also among ``kwargs`` when the model takes it)."""

    args: tuple
    kwargs: dict
    n: int
    mask: Any = None

    def head(self, k: int = 1) -> Batch:
        """The first ``k`` samples (discovery and padding forwards)."""
        return _cut(self.args, self.kwargs, self.n, slice(0, k), None if self.mask is None else self.mask[:k])

    def __call__(self, model, **extra):
        return model(*self.args, **self.kwargs, **extra)


@dataclass
class ProbeInputs:
    """The probe set as batches; ``token_ids``: token rules apply; ``mask``: the whole (sorted) set's
    attention mask, from which ``tokens="all"`` draws its fixed positions."""

    batches: list[Batch]
    kind: str
    token_ids: bool = False
    mask: Any = None
    notes: list[str] = field(default_factory=list)
    rebatchable: bool = True  # False for an iterable of batches: it keeps its own batching and is read once
    device: Any = None  # where the batches are (the model's device)

    @property
    def n(self) -> int:
        return sum(b.n for b in self.batches)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "samples": self.n,
            "batches": len(self.batches),
            "token_ids": self.token_ids,
            **({"notes": self.notes} if self.notes else {}),
        }


def _per_sample(v, n: int) -> bool:
    """Whether ``v`` is an array whose first axis holds the ``n`` samples."""
    return _is_array(v) and bool(v.shape) and int(v.shape[0]) == n


def _cut(args: tuple, kwargs: dict, n: int, rows: slice, mask=None) -> Batch:
    """The batch of samples ``rows`` of ``n``: per-sample arrays sliced, everything else passed as is."""

    def take(v):
        return v[rows] if _per_sample(v, n) else v

    return Batch(tuple(take(a) for a in args), {k: take(v) for k, v in kwargs.items()}, len(range(n)[rows]), mask)


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _tensor(v, device):
    import torch

    if isinstance(v, torch.Tensor):
        return v.to(device)
    return torch.as_tensor(np.asarray(v)).to(device)


def _forward_params(model) -> tuple[list[str], list[str], bool, bool]:
    """(positional parameter names, keyword-only names, takes *args, takes **kwargs) of the forward of
    ``model`` — of the module inside a ``torch.compile`` or (Distributed)DataParallel wrapper."""
    for attr in ("_orig_mod", "module"):
        while hasattr(model, attr) and hasattr(getattr(model, attr), "forward"):
            model = getattr(model, attr)
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return [], [], True, True
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    return (
        positional,
        keyword,
        any(p.kind is p.VAR_POSITIONAL for p in params),
        any(p.kind is p.VAR_KEYWORD for p in params),
    )


def _batch_size(values: dict, what: str) -> int:
    sizes = {k: int(v.shape[0]) for k, v in values.items() if _is_array(v) and v.shape}
    if not sizes:
        raise PhasescopeError(f"probe_inputs ({what}) hold no tensor; pass tensors whose first axis is the samples")
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k}: {n}" for k, n in sizes.items())
        raise PhasescopeError(
            f"probe_inputs tensors disagree on the number of samples ({listed}); every "
            "tensor's first axis is the sample axis, so they must be equal"
        )
    return next(iter(sizes.values()))


def _is_token_ids(v) -> bool:
    return _is_array(v) and len(v.shape) == 2 and not _floating(v)


def _floating(v) -> bool:
    if hasattr(v, "is_floating_point"):  # torch (bfloat16 has no numpy dtype)
        return bool(v.is_floating_point() or v.is_complex())
    return np.dtype(v.dtype).kind in "fc" if hasattr(v, "dtype") else False


def _as_array(v):
    return v if _is_array(v) else np.asarray(v)


class _Builder:
    def __init__(self, model, device, batch_size: int):
        self.model, self.device, self.batch_size = model, device, batch_size
        self.positional, self.keyword, self.var_args, self.var_kwargs = _forward_params(model)
        self._notes: list[str] = []
        params = [p for p in model.parameters() if p.is_floating_point()] if hasattr(model, "parameters") else []
        self.dtype = params[0].dtype if params else None

    @property
    def notes(self) -> list[str]:
        return list(dict.fromkeys(self._notes))  # once each, in order (a loader repeats them per batch)

    def note(self, text: str) -> None:
        self._notes.append(text)

    def takes(self, key: str) -> bool:
        return self.var_kwargs or key in self.positional or key in self.keyword

    def tensor(self, v):
        """``v`` on the model's device; floating inputs in the model's floating dtype (numpy's float64
        into a float32 model, float32 into a bfloat16 one), said in a note."""
        t = _tensor(v, self.device)
        if t.is_floating_point() and self.dtype is not None and t.dtype != self.dtype:
            self.note(
                f"floating inputs cast from {str(t.dtype).removeprefix('torch.')} to the model's "
                f"{str(self.dtype).removeprefix('torch.')}"
            )
            t = t.to(self.dtype)
        return t

    # ---------------------------------------------------------------- token ids
    def tokens(self, d: Mapping) -> ProbeInputs:
        ids = _as_array(d["input_ids"])
        if len(ids.shape) != 2:
            raise PhasescopeError(
                f"probe_inputs['input_ids'] must be 2-D (sequences, tokens), got shape {tuple(ids.shape)}"
            )
        if _floating(ids):
            raise PhasescopeError(
                f"probe_inputs['input_ids'] must hold integers, got {ids.dtype}; pass token "
                "ids, or pass float inputs as a tensor or a dict without 'input_ids'"
            )
        ids = _tensor(ids, self.device)
        mask = d.get("attention_mask")
        if mask is not None:
            mask = _tensor(mask, self.device)
            if tuple(mask.shape) != tuple(ids.shape):
                raise PhasescopeError(
                    f"probe_inputs attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}"
                )
        n = int(ids.shape[0])
        others = {}
        for k, v in d.items():
            if k in ("input_ids", "attention_mask"):
                continue
            if k in NEVER_PASSED or not self.takes(k):
                why = "a probe forward computes no loss" if k in NEVER_PASSED else "forward does not take it"
                self.note(f"{k!r} not passed ({why})")
                continue
            others[k] = self.tensor(v) if _is_array(v) or isinstance(v, list) else v
        _batch_size({"input_ids": ids, **{k: v for k, v in others.items() if _is_array(v)}}, "token ids")
        by_keyword = self.takes("input_ids")
        widths, order = None, None
        if mask is not None and bool((mask[:, 1:] <= mask[:, :-1]).all()):
            import torch

            lengths = mask.sum(1)
            order = torch.argsort(lengths, stable=True)
            ids, mask = ids[order], mask[order]
            lengths = lengths[order].tolist()
            widths = [max(1, *lengths[s : s + self.batch_size]) for s in range(0, n, self.batch_size)]
        batches = []
        for k, s in enumerate(range(0, n, self.batch_size)):
            w = widths[k] if widths else ids.shape[1]
            sl = slice(s, s + self.batch_size)
            kw = {}
            for key, value in others.items():
                v = value
                if _per_sample(v, n):
                    v = v[order] if order is not None else v
                    v = v[sl, :w] if tuple(v.shape[:2]) == tuple(ids.shape) else v[sl]
                kw[key] = v
            b_ids, b_mask = ids[sl, :w], None if mask is None else mask[sl, :w]
            if b_mask is not None and self.takes("attention_mask"):
                kw = {"attention_mask": b_mask, **kw}
            elif b_mask is not None and k == 0:
                self.note(
                    "attention_mask not passed (forward does not take it); used to find the last "
                    "and first non-pad tokens"
                )
            args = () if by_keyword else (b_ids,)
            if by_keyword:
                kw = {"input_ids": b_ids, **kw}
            batches.append(Batch(args, kw, int(b_ids.shape[0]), b_mask))
        return ProbeInputs(batches, "token ids", True, mask, self.notes)

    # ---------------------------------------------------------------- anything else
    def one(self, item) -> tuple[tuple, dict, int]:
        """A single batch (not re-batched): its positional and keyword arguments and its size."""
        if _is_array(item):
            return (self.tensor(item),), {}, _batch_size({"input": item}, "a tensor")
        if isinstance(item, Mapping):
            kw, left = {}, []
            for k, v in item.items():
                if k in NEVER_PASSED or not self.takes(k):
                    left.append(k)
                    continue
                kw[k] = self.tensor(v) if _is_array(v) else v
            if not kw:
                raise PhasescopeError(
                    f"probe_inputs keys {', '.join(map(repr, item))} are not parameters of "
                    f"{type(self.model).__name__}.forward({', '.join(self.positional)}); key the "
                    "dict by forward's parameter names, or pass a tensor or tuple"
                )
            if left:
                self.note(
                    f"keys {', '.join(map(repr, left))} not passed (forward does not take them"
                    f"{'; a probe forward computes no loss' if set(left) & set(NEVER_PASSED) else ''})"
                )
            return (), kw, _batch_size(kw, "a dict")
        if isinstance(item, (tuple, list)) and item:
            args = list(item)
            if not self.var_args and len(args) > max(len(self.positional), 1):
                cut = max(len(self.positional), 1)
                self.note(
                    f"elements {cut}…{len(args) - 1} of each batch not passed "
                    f"(forward({', '.join(self.positional)}) takes {cut})"
                )
                args = args[:cut]
            args = [self.tensor(a) if _is_array(a) else a for a in args]
            return tuple(args), {}, _batch_size({f"[{i}]": a for i, a in enumerate(args)}, "a tuple")
        raise PhasescopeError(f"probe_inputs batch of type {type(item).__name__} is not a tensor, tuple or dict")

    def split(self, args: tuple, kwargs: dict, n: int) -> list[Batch]:
        return [_cut(args, kwargs, n, slice(s, s + self.batch_size)) for s in range(0, n, self.batch_size)]


def _looks_like_token_list(obj) -> bool:
    """A nested list of integers (token ids written out)."""
    return (
        isinstance(obj, list)
        and bool(obj)
        and isinstance(obj[0], (list, tuple))
        and bool(obj[0])
        and isinstance(obj[0][0], (int, np.integer))
    )


def _looks_like_batches(items, b: _Builder) -> bool:
    """More same-shaped tensors than ``forward`` takes positionally: batches (``list(loader)``), not
    arguments ((images, labels) differ in shape and stay positional)."""
    if b.var_args or len(items) <= max(len(b.positional), 1) or not all(_is_array(a) for a in items):
        return False
    return len({(tuple(a.shape[1:]), str(a.dtype)) for a in items}) == 1


def build_probe_inputs(probe_inputs, model, device, batch_size: int = 64) -> ProbeInputs:
    """Normalise ``probe_inputs`` (module docstring) for ``model`` on ``device``, in batches of ``batch_size``
    (an iterable of batches keeps its own batching)."""
    b = _Builder(model, device, batch_size)
    if isinstance(probe_inputs, Mapping) and "input_ids" in probe_inputs:
        out = b.tokens(probe_inputs)
    elif _looks_like_token_list(probe_inputs) or _is_token_ids(probe_inputs):
        out = b.tokens({"input_ids": probe_inputs})
    elif isinstance(probe_inputs, (tuple, list)) and _looks_like_batches(probe_inputs, b):
        out = _from_batches(b, probe_inputs)
    elif (
        _is_array(probe_inputs)
        or isinstance(probe_inputs, Mapping)
        or (isinstance(probe_inputs, (tuple, list)) and probe_inputs and all(_is_array(a) for a in probe_inputs))
    ):
        args, kwargs, n = b.one(probe_inputs)
        kind = (
            "tensor"
            if _is_array(probe_inputs)
            else "dict"
            if isinstance(probe_inputs, Mapping)
            else f"tuple of {len(probe_inputs)}"
        )
        out = ProbeInputs(b.split(args, kwargs, n), kind, notes=b.notes)
    elif hasattr(probe_inputs, "__iter__") and not isinstance(probe_inputs, (str, bytes)):
        out = _from_batches(b, probe_inputs)
    else:
        raise PhasescopeError(
            f"probe_inputs of type {type(probe_inputs).__name__} is not a tensor, tuple, dict "
            "or an iterable of batches (a DataLoader)"
        )
    if out.n < 2:
        raise PhasescopeError(
            f"probe_inputs hold {out.n} sample(s); a covariance spectrum needs at least 2: pass a larger probe set"
        )
    return replace(out, device=device)


def _from_batches(b: _Builder, batches) -> ProbeInputs:
    items = list(batches)
    if not items:
        raise PhasescopeError(
            f"probe_inputs ({type(batches).__name__}) yielded no batches; pass a DataLoader over at least 2 samples"
        )
    if all(isinstance(i, Mapping) and "input_ids" in i for i in items):
        return _token_batches(b, items, type(batches).__name__)
    out = []
    for item in items:
        args, kwargs, n = b.one(item)
        out.append(Batch(args, kwargs, n))
    return ProbeInputs(out, f"{type(batches).__name__} of {len(out)} batches", notes=b.notes, rebatchable=False)


def _token_batches(b: _Builder, items: list, what: str) -> ProbeInputs:
    """Token batches of a loader, right-padded (mask 0) to one length and taken as one probe set."""
    import torch

    width = max(int(_as_array(i["input_ids"]).shape[1]) for i in items)
    ids, masks = [], []
    for i in items:
        t = _tensor(i["input_ids"], "cpu")
        m = i.get("attention_mask")
        m = torch.ones_like(t) if m is None else _tensor(m, "cpu")
        pad = width - t.shape[1]
        if pad and i.get("attention_mask") is None:
            raise PhasescopeError(
                "probe_inputs token batches differ in length and carry no attention_mask; "
                "pad them to one length or include the mask"
            )
        ids.append(torch.nn.functional.pad(t, (0, pad)))
        masks.append(torch.nn.functional.pad(m, (0, pad)))
    out = b.tokens({"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)})
    others = sorted({k for i in items for k in i if k not in ("input_ids", "attention_mask")})
    notes = out.notes + (
        [
            f"keys {', '.join(map(repr, others))} of the token batches not passed (only "
            "input_ids and attention_mask are joined across batches)"
        ]
        if others
        else []
    )
    return replace(out, kind=f"token ids ({what} of {len(items)} batches)", rebatchable=False, notes=notes)
