"""Hook lifetime and the two capture modes.

- :class:`HookSet` registers forward hooks and always removes them (context manager; ``remove()`` is
  idempotent), on exceptions too — hooks are global state on the user's model.
- :class:`ProbeSet` runs a fixed probe set under ``torch.no_grad`` with every module temporarily in
  eval mode (each module's own train/eval flag is restored afterwards), in batches of
  ``batch_size`` sequences. Each batch's selected token states go into one
  :class:`~phasescope.spectra.CovarianceAccumulator` per probe, on the model's device. The forward
  pass is stopped as soon as every probe has fired (so e.g. an LM head over a large vocabulary is
  never computed for a probe capture).
- :class:`InFlight` reads the same probes from the training forward pass itself (no extra forward):
  armed before a scheduled step, it accumulates the selected token states of every training forward
  until the next ``Observatory.step`` (so gradient-accumulation micro-batches all count).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from phasescope.errors import PhasescopeError
from phasescope.spectra import CovarianceAccumulator
from phasescope.spectra.similarity import GramSampler

from .registry import Probe
from .tokens import TokenSelection, plan_all, select


class _StopForward(Exception):
    """Raised by the last probe hook to end a probe forward pass early."""


def first_tensor(output):
    """The activation tensor in a module output: the tensor itself, or the first element of a tuple/
    ModelOutput (attention modules return ``(attn_output, weights)``)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) or hasattr(output, "to_tuple"):
        output = tuple(output.values()) if isinstance(output, dict) else output.to_tuple()
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise PhasescopeError(f"probe output of type {type(output).__name__} holds no tensor to read; "
                          "select a module that returns a tensor")


class HookSet:
    """A set of hook handles removed together; safe to remove twice."""

    def __init__(self):
        self._handles: list = []

    def add(self, handle) -> None:
        self._handles.append(handle)

    def forward(self, module, fn: Callable, **kw) -> None:
        self.add(module.register_forward_hook(fn, **kw))

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> "HookSet":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class _EvalMode:
    """Every module in eval mode inside the block; each module's own flag restored after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for m, mode in self.modes:
            m.training = mode


def accepts(model, name: str) -> bool:
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return False
    return name in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _make_acc(dim: int):
    return CovarianceAccumulator(dim)


class ProbeSet:
    """A fixed set of probe sequences, batched, captured under no_grad/eval at scheduled steps."""

    def __init__(self, model, probes: Sequence[Probe], inputs: dict, selection: TokenSelection,
                 batch_size: int = 64):
        import torch

        self.model, self.probes, self.selection = model, list(probes), selection
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        n = ids.shape[0]
        self.n_sequences = n
        self.extra = {"use_cache": False} if accepts(model, "use_cache") else {}
        # Right-padded sets: sort by length and cut each batch at its longest sequence. Pad positions
        # past the end never influence real tokens (causal attention, or masked keys), and the
        # covariance does not depend on sample order, so results are unchanged and padding is skipped.
        widths = None
        if mask is not None and bool((mask[:, 1:] <= mask[:, :-1]).all()):
            lengths = mask.sum(1)
            order = torch.argsort(lengths, stable=True)
            ids, mask = ids[order], mask[order]
            lengths = lengths[order].tolist()
            widths = [max(1, max(lengths[s:s + batch_size])) for s in range(0, n, batch_size)]
        self.batches: list[dict] = []
        for k, s in enumerate(range(0, n, batch_size)):
            w = widths[k] if widths else ids.shape[1]
            b = {"input_ids": ids[s:s + batch_size, :w]}
            if mask is not None:
                b["attention_mask"] = mask[s:s + batch_size, :w]
            self.batches.append(b)
        # "all" tokens: one seeded subsample of the whole probe set, fixed for every capture.
        self.plans: list | None = None
        if selection.mode == "all":
            full = mask if mask is not None else torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
            gen = torch.Generator().manual_seed(selection.seed)
            rows, cols = plan_all(full.cpu(), selection.max_tokens, gen)
            self.plans = []
            for k, s in enumerate(range(0, n, batch_size)):
                keep = (rows >= s) & (rows < s + batch_size)
                self.plans.append(((rows[keep] - s).to(ids.device), cols[keep].to(ids.device)))
        self.dims: dict[str, int] | None = None

    def _run(self, batches, on_rows: Callable[[int, Any], None], plans=None) -> None:
        import torch

        n_probes = len(self.probes)
        state: dict[str, Any] = {}

        def make_hook(i: int):
            def hook(module, args, output):
                h = first_tensor(output).detach()
                on_rows(i, select(h, state["mask"], self.selection, plan=state["plan"]))
                state["fired"].add(i)
                if len(state["fired"]) == n_probes:
                    raise _StopForward
            return hook

        with HookSet() as hooks, _EvalMode(self.model), torch.no_grad():
            for i, p in enumerate(self.probes):
                hooks.forward(p.module, make_hook(i))
            for k, b in enumerate(batches):
                state.update(mask=b.get("attention_mask"), plan=plans[k] if plans else None, fired=set())
                try:
                    self.model(**b, **self.extra)
                except _StopForward:
                    pass
                if len(state["fired"]) < n_probes:
                    missing = [self.probes[i].name for i in range(n_probes) if i not in state["fired"]]
                    raise PhasescopeError(f"probe(s) {', '.join(missing)} did not run during the probe "
                                          "forward pass; select modules that the model's forward calls")

    def discover_dims(self) -> dict[str, int]:
        """Run the first sequence through the model once: validates the inputs and finds each probe's width."""
        dims: dict[str, int] = {}

        def on_rows(i, rows):
            dims[self.probes[i].name] = int(rows.shape[-1])

        first = {k: v[:1] for k, v in self.batches[0].items()}
        plan = None
        if self.plans is not None:
            import torch
            plan = (torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        try:
            self._run([first], on_rows, [plan] if plan is not None else None)
        except PhasescopeError:
            raise
        except Exception as exc:
            raise PhasescopeError(f"the model failed on probe_inputs ({type(exc).__name__}: {exc}); pass "
                                  "probe_inputs the model accepts (input_ids and attention_mask)") from exc
        self.dims = dims
        return dims

    def capture(self, gram_samples: int = 0) -> tuple[list, list]:
        """One capture: a fresh accumulator per probe fed with every batch, and (``gram_samples`` > 0)
        the centred Gram of each probe's first ``gram_samples`` selected rows — the same samples at
        every capture, in the fixed batch order — for linear CKA. Returns (accumulators, grams)."""
        accs = [_make_acc(self.dims[p.name]) for p in self.probes]
        samplers = [GramSampler(gram_samples) for _ in self.probes]

        def on_rows(i, rows):
            accs[i].update(rows)
            samplers[i].update(rows)

        self._run(self.batches, on_rows, self.plans)
        return accs, [s.gram() for s in samplers]

    def padding_forward(self, batch: dict) -> None:
        """One discarded probe forward of ``batch`` (FSDP2: every rank must run as many forwards)."""
        plan = None
        if self.plans is not None:
            import torch

            zero = torch.zeros(1, dtype=torch.long, device=batch["input_ids"].device)
            plan = [(zero, zero)]
        self._run([batch], lambda i, rows: None, plan)


class InFlight:
    """Accumulate probe states from training forward passes while armed (see module docstring).

    Hook bodies run inside the user's training forward: a failure in one is recorded in ``failures``
    (a :class:`phasescope.failures.FailureLog`; raised only when strict) and that capture counts as
    lost (``lost``), the forward goes on."""

    def __init__(self, model, probes: Sequence[Probe], selection: TokenSelection, failures=None):
        self.model, self.probes, self.selection = model, list(probes), selection
        self.failures = failures
        self.hooks = HookSet()
        self.accs: list | None = None
        self.dims: dict[str, int] = {}
        self._mask = None
        self._gen = None
        self.forwards = 0
        self.lost = 0

    @property
    def armed(self) -> bool:
        return len(self.hooks) > 0

    def arm(self, step: int, dims_only: bool = False) -> None:
        import torch

        self.disarm()
        self.accs = [None] * len(self.probes)
        self._gen = torch.Generator().manual_seed(self.selection.seed * 1_000_003 + step)
        self.forwards = 0
        self.lost = 0

        def pre(module, args, kwargs):
            if module.training:
                self._mask = kwargs.get("attention_mask")
                self.forwards += 1

        self.hooks.add(self.model.register_forward_pre_hook(pre, with_kwargs=True))

        def body(i: int, output) -> None:
            h = first_tensor(output).detach()
            self.dims[self.probes[i].name] = int(h.shape[-1])
            if dims_only:
                return
            rows = select(h, self._mask, self.selection, generator=self._gen)
            if self.accs[i] is None:
                self.accs[i] = _make_acc(int(h.shape[-1]))
            self.accs[i].update(rows)

        def make_hook(i: int):
            def hook(module, args, output):
                if not self.model.training:
                    return
                if self.failures is None:
                    return body(i, output)
                try:
                    body(i, output)
                except Exception as exc:  # noqa: BLE001 - never break the user's forward
                    self.lost = 1
                    self.failures.record("hook", exc, what=f"probe {self.probes[i].name!r}")
            return hook

        for i, p in enumerate(self.probes):
            self.hooks.forward(p.module, make_hook(i))

    def collect(self) -> list | None:
        """The accumulators filled since :meth:`arm` (None where a probe never fired); disarms."""
        accs = self.accs
        self.disarm()
        return accs

    def disarm(self) -> None:
        self.hooks.remove()
        self.accs = None
        self._mask = None
