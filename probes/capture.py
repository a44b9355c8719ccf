"""Hook lifetime and the two capture modes.

- :class:`HookSet` registers forward hooks and always removes them (context manager; ``remove()`` is
  idempotent), on exceptions too — hooks are global state on the user's model.
- :class:`ProbeSet` runs a fixed probe set under ``torch.no_grad`` with every module temporarily in
  eval mode (each module's own train/eval flag is restored afterwards), batch by batch
  (:mod:`.inputs`: token ids, tensors, tuples, dicts or a DataLoader). Each probe's output is reduced
  to samples × features by its :class:`~.shapes.Reduction` (chosen from the first output seen) into one
  :class:`~phasescope.spectra.CovarianceAccumulator` per probe, on the model's device. The forward
  pass is stopped as soon as every probe has fired (so e.g. an LM head over a large vocabulary is
  never computed for a probe capture).
- :class:`InFlight` reads the same probes from the training forward pass itself (no extra forward):
  armed before a scheduled step, it accumulates the reduced probe outputs of every training forward
  until the next ``Observatory.step`` (so gradient-accumulation micro-batches all count).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from phasescope.errors import PhasescopeError
from phasescope.spectra import CovarianceAccumulator
from phasescope.spectra.similarity import GramSampler

from .inputs import Batch, ProbeInputs
from .registry import Probe
from .shapes import Reduction, activation, choose, requested_for
from .shapes import rows as reduce_rows
from .tokens import TokenSelection, plan_all


class _StopForward(Exception):
    """Raised by the last probe hook to end a probe forward pass early."""


def first_tensor(output):
    """The activation tensor in a module output (see :func:`.shapes.activation`)."""
    return activation(output)[0]


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

    def __enter__(self) -> HookSet:
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


def _make_acc(dim: int, raw: bool = False, precision: str = "auto"):
    """A probe's accumulator; ``raw``: keep the raw singular values too (``rankme_raw``); ``precision``:
    of the covariance products (``spectra_precision``)."""
    return CovarianceAccumulator(dim, raw_singular_values=raw, precision=precision)


def _local_generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


class ProbeSet:
    """A fixed probe set (:class:`~.inputs.ProbeInputs`), captured under no_grad/eval at scheduled steps."""

    def __init__(
        self,
        model,
        probes: Sequence[Probe],
        inputs: ProbeInputs,
        selection: TokenSelection,
        reduction=None,
        *,
        raw: bool = False,
        precision: str = "auto",
    ):
        self.model, self.probes, self.selection = model, list(probes), selection
        self.raw, self.precision = raw, precision
        self.inputs = inputs
        self.batches: list[Batch] = list(inputs.batches)
        self.n_sequences = inputs.n
        self.reduction = reduction
        self.extra = {"use_cache": False} if accepts(model, "use_cache") else {}
        self.reductions: dict[str, Reduction] = {}
        self.samples: dict[str, int] = {}
        #: per batch, per probe: the fixed (rows, cols) of a sampled reduction (None elsewhere)
        self.plans: list[list] | None = None
        self.dims: dict[str, int] | None = None
        # the autocast dtype the probe forward ran under (e.g. Accelerate's mixed-precision forward), or None
        self.autocast: str | None = None

    def _run(
        self,
        batches: Sequence[Batch],
        on_rows: Callable[[int, Any], None],
        plans=None,
        reductions: Callable[[int, Any, str], Reduction] | None = None,
    ) -> None:
        import torch

        n_probes = len(self.probes)
        state: dict[str, Any] = {}

        def make_hook(i: int):
            name = self.probes[i].name

            def hook(module, args, output):
                h, source = activation(output)
                h = h.detach()
                self.autocast = autocast_dtype(h) or self.autocast
                red = reductions(i, h, source) if reductions else self.reductions[name]
                plan = state["plans"][i] if state["plans"] else None
                on_rows(i, reduce_rows(h, red, self.selection, mask=state["mask"], plan=plan, generator=state["gen"]))
                state["fired"].add(i)
                if len(state["fired"]) == n_probes:
                    raise _StopForward

            return hook

        with HookSet() as hooks, _EvalMode(self.model), torch.no_grad():
            for i, p in enumerate(self.probes):
                hooks.forward(p.module, make_hook(i))
            for k, b in enumerate(batches):
                # a generator only at discovery: afterwards sampled reductions follow their fixed plans
                state.update(
                    mask=b.mask,
                    plans=plans[k] if plans else None,
                    fired=set(),
                    gen=_local_generator(self.selection.seed) if reductions else None,
                )
                with contextlib.suppress(_StopForward):
                    b(self.model, **self.extra)
                if len(state["fired"]) < n_probes:
                    missing = [self.probes[i].name for i in range(n_probes) if i not in state["fired"]]
                    raise PhasescopeError(
                        f"probe(s) {', '.join(missing)} did not run during the probe "
                        "forward pass; select modules that the model's forward calls"
                    )

    def discover_dims(self) -> dict[str, int]:
        """Run the first two samples through the model once (two: a BatchNorm on batch statistics refuses
        one): validates the inputs, chooses each probe's reduction from its output shape, fixes the
        sampled positions, and counts each probe's samples."""
        dims: dict[str, int] = {}

        def reduction(i, h, source):
            name = self.probes[i].name
            red = choose(
                name,
                tuple(h.shape),
                requested_for(name, self.reduction),
                self.selection,
                source,
                token_ids=self.inputs.token_ids,
            )
            self.reductions[name] = red
            dims[name] = red.features
            return red

        try:
            self._run([self.batches[0].head(2)], lambda i, rows: None, None, reduction)
        except PhasescopeError:
            raise
        except Exception as exc:
            raise PhasescopeError(
                f"the model failed on probe_inputs ({type(exc).__name__}: {exc}); pass "
                "probe_inputs its forward accepts (see phasescope.probes.inputs)"
            ) from exc
        self.dims = dims
        self._plan()
        return dims

    def _plan(self) -> None:
        """Sampled reductions: one seeded subsample of (input, position) pairs over the whole probe set,
        the same at every capture; then each probe's sample count, refused below 2."""
        import torch

        n, sel = self.n_sequences, self.selection
        starts = [0]
        for b in self.batches:
            starts.append(starts[-1] + b.n)
        per_probe: list[list[tuple[Any, Any]] | None] = []
        for p in self.probes:
            red = self.reductions[p.name]
            if not red.sampled:
                per_probe.append(None)
                self.samples[p.name] = n
                continue
            grid = self.inputs.mask if red.kind == "tokens" and self.inputs.mask is not None else None
            if grid is None:
                grid = torch.ones((n, red.positions), dtype=torch.bool)
            rows, cols = plan_all(grid.cpu(), sel.max_tokens, _local_generator(sel.seed))
            self.samples[p.name] = int(rows.shape[0])
            per_probe.append(
                [
                    ((rows[keep] - s), cols[keep])
                    for s, e in itertools.pairwise(starts)
                    for keep in [(rows >= s) & (rows < e)]
                ]
            )
        for p in self.probes:
            if self.samples[p.name] < 2:
                raise PhasescopeError(
                    f"probe {p.name!r} gets {self.samples[p.name]} sample(s) per capture "
                    f"({self.reductions[p.name].name}); a covariance spectrum needs at least "
                    "2: pass more probe inputs"
                )
        if any(pl is not None for pl in per_probe):
            device = self.inputs.device
            self.plans = [
                [None if pl is None else tuple(t.to(device) for t in pl[k]) for pl in per_probe]
                for k in range(len(self.batches))
            ]

    def capture(self, gram_samples: int = 0) -> tuple[list, list]:
        """One capture: a fresh accumulator per probe fed with every batch, and (``gram_samples`` > 0)
        the centred Gram of each probe's first ``gram_samples`` selected rows — the same samples at
        every capture, in the fixed batch order — for linear CKA. Returns (accumulators, grams)."""
        dims = self.dims
        if dims is None:
            raise PhasescopeError("ProbeSet.capture() needs the probes' widths: call discover_dims() first")
        accs = [_make_acc(dims[p.name], self.raw, self.precision) for p in self.probes]
        samplers = [GramSampler(gram_samples) for _ in self.probes]

        def on_rows(i, rows):
            accs[i].update(rows)
            samplers[i].update(rows)

        self._run(self.batches, on_rows, self.plans)
        return accs, [s.gram() for s in samplers]

    def padding_forward(self, batch: Batch) -> None:
        """One discarded probe forward of ``batch`` (FSDP2: every rank must run as many forwards)."""
        import torch

        plans = None
        if self.plans is not None:  # this rank may hold no batch (and no plan) of its own
            zero = torch.zeros(1, dtype=torch.long)
            plans = [[(zero, zero) if self.reductions[p.name].sampled else None for p in self.probes]]
        self._run([batch], lambda i, rows: None, plans)

    def describe(self) -> dict[str, dict]:
        """Per probe: its reduction, output shape, features, samples per capture and the spectrum's cap."""
        out = {}
        for p in self.probes:
            red, n = self.reductions[p.name], self.samples[p.name]
            out[p.name] = {**red.describe(), "samples": n, "rank_cap": min(red.features, n - 1)}
        return out


class InFlight:
    """Accumulate probe states from training forward passes while armed (see module docstring).

    Hook bodies run inside the user's training forward: a failure in one is recorded in ``failures``
    (a :class:`phasescope.failures.FailureLog`; raised only when strict) and that capture counts as
    lost (``lost``), the forward goes on. An output no reduction can read is a usage error, not a
    failure: it is kept in ``error`` and raised by the Observatory at that step."""

    def __init__(
        self,
        model,
        probes: Sequence[Probe],
        selection: TokenSelection,
        failures=None,
        reduction=None,
        *,
        raw: bool = False,
        precision: str = "auto",
    ):
        self.model, self.probes, self.selection = model, list(probes), selection
        self.raw, self.precision = raw, precision
        self.failures = failures
        self.reduction = reduction
        self.hooks = HookSet()
        self.accs: list | None = None
        self.dims: dict[str, int] = {}
        self.reductions: dict[str, Reduction] = {}
        self.error: PhasescopeError | None = None
        self._mask = None
        self._token_ids = False
        self._gen: Any = None  # a torch.Generator once armed (torch is imported lazily)
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
                ids = kwargs.get("input_ids", args[0] if args else None)
                self._token_ids = getattr(ids, "ndim", 0) == 2 and not ids.is_floating_point()
                self.forwards += 1

        self.hooks.add(self.model.register_forward_pre_hook(pre, with_kwargs=True))

        def body(i: int, output) -> None:
            name = self.probes[i].name
            red = self.reductions.get(name)
            try:
                h, source = activation(output)
                if red is None:
                    red = choose(
                        name,
                        tuple(h.shape),
                        requested_for(name, self.reduction),
                        self.selection,
                        source,
                        token_ids=self._token_ids,
                    )
            except PhasescopeError as exc:  # a usage error: raised by the Observatory at this step
                self.error, self.lost = self.error or exc, 1
                return
            h = h.detach()
            if name not in self.reductions:
                self.reductions[name] = red
                self.dims[name] = red.features
            if dims_only:
                return
            rows = reduce_rows(h, red, self.selection, mask=self._mask, generator=self._gen)
            accs = self.accs
            if accs is None:  # disarmed (arm() sets the list before attaching the hooks)
                return
            if accs[i] is None:
                accs[i] = _make_acc(red.features, self.raw, self.precision)
            accs[i].update(rows)

        def make_hook(i: int):
            def hook(module, args, output):
                # training forwards only: not evaluation, nor generation (TRL's GRPO samples under no_grad)
                if not self.model.training or not torch.is_grad_enabled():
                    return None
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

    def describe(self) -> dict[str, dict]:
        """Per probe: its reduction, output shape and features (samples vary with the training batch)."""
        return {name: red.describe() for name, red in self.reductions.items()}

    def collect(self) -> list | None:
        """The accumulators filled since :meth:`arm` (None where a probe never fired); disarms."""
        accs = self.accs
        self.disarm()
        return accs

    def disarm(self) -> None:
        self.hooks.remove()
        self.accs = None
        self._mask = None


def autocast_dtype(h) -> str | None:
    """The dtype torch autocast computes in on ``h``'s device ("bfloat16", "float16") while it is on, else
    None: probe activations computed in a trainer's mixed precision (Accelerate wraps ``model.forward``)
    carry its rounding, ~1e-3 of λ₁ in bfloat16."""
    import torch

    kind = h.device.type
    try:
        if not torch.is_autocast_enabled(kind):
            return None
        return str(torch.get_autocast_dtype(kind)).removeprefix("torch.")
    except (TypeError, AttributeError, RuntimeError):  # torch < 2.4: no per-device query
        return None
