"""How a probe's output becomes samples × features: one named reduction per activation shape.

A probe module's output is first reduced to one tensor (:func:`activation`): the tensor itself, a
Hugging Face ``ModelOutput``'s ``last_hidden_state``, or the first tensor of a tuple/list/dict
(attention modules return ``(attn_output, weights)``). Then one :class:`Reduction`, chosen per probe
when its first output is seen (:func:`choose`), makes the (samples, features) matrix whose covariance
spectrum is measured:

==================  ==================  ===============================================================
output shape        reduction           samples × features
==================  ==================  ===============================================================
(N, d)              ``features``        as it is: N × d
(N, T, d)           ``tokens``          by token selection (``tokens=``: last | first | mean | all;
                                        see :mod:`.tokens`): N × d, or up to ``max_tokens`` × d
(N, C, *spatial)    ``spatial_mean``    mean over the spatial positions: N × C (the default for 4-D
                                        and 5-D outputs: conv feature maps, channels first)
(N, C, *spatial)    ``positions``       every spatial position a sample, seeded subsample of at most
                                        ``max_tokens`` (fixed for a probe set): ≤ N·H·W × C
==================  ==================  ===============================================================

``reduction="auto"`` picks by the number of dimensions: 2 → ``features``, 3 → ``tokens``, 4 or 5 →
``spatial_mean``; a 3-D conv output (N, C, L) needs ``reduction="spatial_mean"`` named for its probe,
since (N, T, d) token states have the same rank. Anything else is refused with the shape and the options.
Written on the array API, like :func:`.tokens.select`, so every backend reduces the same way.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from array_api_compat import array_namespace

from phasescope.errors import PhasescopeError

from .tokens import TokenSelection, select

KINDS = ("features", "tokens", "spatial_mean", "positions")
REDUCTIONS = ("auto", *KINDS)
_OPTIONS = (
    "features for (N, d); tokens for (N, T, d) with tokens=last|first|mean|all; "
    "spatial_mean or positions for channels-first (N, C, ...) maps"
)


@dataclass(frozen=True)
class Reduction:
    """The reduction of one probe: ``kind`` (one of :data:`KINDS`), where its tensor came from in the
    module output (``source``), the output's shape without the batch axis, and the token mode."""

    kind: str
    source: str
    sample_shape: tuple[int, ...]
    token_mode: str | None = None

    @property
    def features(self) -> int:
        return int(self.sample_shape[0] if self.kind in ("spatial_mean", "positions") else self.sample_shape[-1])

    @property
    def positions(self) -> int:
        """Candidate rows per input sample: tokens (T) or spatial positions (H·W); 1 otherwise."""
        if self.kind == "tokens":
            return int(self.sample_shape[0])
        if self.kind == "positions":
            return int(math.prod(self.sample_shape[1:]))
        return 1

    @property
    def sampled(self) -> bool:
        """Whether rows are a (capped, seeded) subsample of positions rather than one row per input."""
        return self.kind == "positions" or (self.kind == "tokens" and self.token_mode == "all")

    @property
    def name(self) -> str:
        return f"tokens:{self.token_mode}" if self.kind == "tokens" else self.kind

    def describe(self) -> dict:
        return {
            "reduction": self.name,
            "source": self.source,
            "output_shape": ["N", *self.sample_shape],
            "features": self.features,
        }


def activation(output) -> tuple[Any, str]:
    """The tensor a probe reads from a module output, and where it was found."""
    if hasattr(output, "shape") and hasattr(output, "ndim"):
        return output, "output"
    hidden = getattr(output, "last_hidden_state", None) if hasattr(output, "to_tuple") else None
    if hidden is not None:
        return hidden, "last_hidden_state"
    if isinstance(output, Mapping) or hasattr(output, "to_tuple"):
        items = list(output.items()) if isinstance(output, Mapping) else list(zip(output.keys(), output.to_tuple()))
        for key, v in items:
            if hasattr(v, "shape"):
                return v, f"output[{key!r}]"
    elif isinstance(output, (tuple, list)) and output and hasattr(output[0], "shape"):
        return output[0], "output[0]"
    raise PhasescopeError(
        f"probe output of type {type(output).__name__} holds no tensor to read; select a module that returns a tensor"
    )


def requested_for(name: str, reduction: str | Mapping[str, str] | None) -> str:
    """The reduction asked for probe ``name``: one string for all, or ``{probe name or glob: reduction}``
    (first match wins; unmatched probes get ``auto``)."""
    if reduction is None:
        return "auto"
    if isinstance(reduction, str):
        return reduction
    for pattern, value in reduction.items():
        if pattern == name or fnmatch.fnmatchcase(name, pattern):
            return value
    return "auto"


def check_requested(reduction) -> None:
    values = [reduction] if reduction is None or isinstance(reduction, str) else list(dict(reduction).values())
    for v in values:
        if v is not None and v not in REDUCTIONS:
            raise PhasescopeError(
                f"reduction must be one of {', '.join(REDUCTIONS)} (or a dict of them per "
                f"probe name or glob), got {v!r}"
            )


def choose(
    probe: str,
    shape: tuple[int, ...],
    requested: str,
    selection: TokenSelection,
    source: str = "output",
    token_ids: bool = False,
) -> Reduction:
    """The reduction of probe ``probe`` whose output has ``shape`` (batch axis first); ``token_ids``:
    the model reads token ids, so a 4-D output is (batch, tokens, heads, …), not a conv map, and
    ``auto`` refuses to guess."""
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    kind = requested
    if kind == "auto" and token_ids and nd >= 4:
        raise PhasescopeError(
            f"probe {probe!r}: a token model's output of shape {_shape(shape)} is not "
            f"(N, T, d); name its reduction (options: {_OPTIONS}) or probe the module "
            "whose output is the (N, T, d) hidden state"
        )
    if kind == "auto":
        kind = {2: "features", 3: "tokens", 4: "spatial_mean", 5: "spatial_mean"}.get(nd, "")
    fits = {"features": nd == 2, "tokens": nd == 3, "spatial_mean": nd >= 3, "positions": nd >= 3}.get(kind, False)
    if not fits:
        asked = f"reduction {requested!r}" if requested != "auto" else "any reduction"
        raise PhasescopeError(
            f"probe {probe!r}: cannot read an output of shape {_shape(shape)} with {asked}; "
            f"options: {_OPTIONS} (Observatory(reduction={{{probe!r}: ...}}))"
        )
    red = Reduction(kind, source, shape[1:], selection.mode if kind == "tokens" else None)
    if red.features < 2:
        raise PhasescopeError(
            f"probe {probe!r} has {red.features} feature(s) (output {_shape(shape)}, {red.name}); a "
            "covariance spectrum needs at least 2: probe a wider module"
        )
    return red


def _shape(shape: tuple[int, ...]) -> str:
    """A shape with its batch axis written N (discovery runs one sample)."""
    return "(" + ", ".join(["N", *map(str, shape[1:])]) + ")"


def rows(h, red: Reduction, selection: TokenSelection, mask=None, plan=None, generator=None):
    """(samples, features) rows of the probe output ``h`` by ``red``; ``plan``: precomputed (rows, cols)
    of a sampled reduction, ``generator``: its seed source otherwise (see :func:`.tokens.select`)."""
    if red.kind == "features":
        return h
    if red.kind == "tokens":
        return select(h, mask, selection, plan=plan, generator=generator)
    xp = array_namespace(h)
    flat = xp.reshape(h, (h.shape[0], h.shape[1], -1))
    if red.kind == "spatial_mean":
        return xp.mean(flat, axis=2)
    sel = TokenSelection("all", selection.max_tokens, selection.seed)
    return select(xp.permute_dims(flat, (0, 2, 1)), None, sel, plan=plan, generator=generator)
