"""Which modules to look at: resolve probe selectors once against ``model.named_modules()``.

A selector is one of
- a preset keyword (``"auto"``, ``"blocks"``, ``"attn"``, ``"mlp"``, ``"final_norm"``, ``"all"``;
  see :mod:`phasescope.probes.presets`),
- an exact module name (``"transformer.h.0.mlp"``),
- a glob (``"transformer.h.*.attn"``; ``*`` matches dots too, as in :func:`fnmatch.fnmatchcase`),
- a regular expression prefixed with ``re:`` (``"re:.*\\.mlp$"``, full match),
- a predicate ``(name, module) -> bool``,
or a list of those, or a dict ``{probe_name: selector}`` to choose the stored names yourself.
Unknown selectors raise :class:`~phasescope.errors.PhasescopeError` listing the closest valid names
(:func:`difflib.get_close_matches`), as TransformerLens does for hook names.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phasescope.errors import PhasescopeError

from .presets import PRESET_KEYWORDS, ModuleLayout, find_layout, preset_probes, short_name
from .vision import vision_layout

Selector = str | Callable[[str, Any], bool]
ProbesSpec = Selector | list | tuple | dict | None


@dataclass(frozen=True)
class Probe:
    """One resolved probe: the stored short ``name`` and the module it reads."""

    name: str
    module_name: str
    module: Any


def _match(selector: Selector, named: dict[str, Any]) -> list[str]:
    if callable(selector):
        return [n for n, m in named.items() if n and selector(n, m)]
    if not isinstance(selector, str):
        raise PhasescopeError(
            f"probe selector must be a string or a predicate (name, module) -> bool, got {selector!r}"
        )
    if selector.startswith("re:"):
        try:
            rx = re.compile(selector[3:])
        except re.error as exc:
            raise PhasescopeError(f"probe selector {selector!r} is not a valid regular expression: {exc}") from None
        return [n for n in named if n and rx.fullmatch(n)]
    if any(c in selector for c in "*?["):
        return [n for n in named if n and fnmatch.fnmatchcase(n, selector)]
    return [selector] if selector in named and selector else []


def _unknown(selector: Selector, named: dict[str, Any]) -> PhasescopeError:
    pattern = selector[3:] if isinstance(selector, str) and selector.startswith("re:") else str(selector)
    close = difflib.get_close_matches(pattern, [n for n in named if n], n=5, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "no close names"
    return PhasescopeError(
        f"probe selector {selector!r} matches no module ({hint}); use names from model.named_modules(), "
        f"a glob, 're:<regex>', or a preset ({', '.join(PRESET_KEYWORDS)})"
    )


def resolve_probes(model, probes: ProbesSpec = "auto") -> list[Probe]:
    """Resolve ``probes`` to an ordered, de-duplicated list of :class:`Probe` (done once, at attach time)."""
    named = dict(model.named_modules())
    layout: ModuleLayout | None = None
    if vision_layout(model) is None:  # a ResNet's layer1 is no transformer block list
        with contextlib.suppress(PhasescopeError):
            layout = find_layout(model)
    pairs: list[tuple[str, str]] = []  # (probe name, module name)

    def add_selector(sel: Selector, name: str | None = None) -> None:
        if isinstance(sel, str) and sel in PRESET_KEYWORDS and sel not in named:
            items = list(preset_probes(model, sel).items())
            if name is not None and len(items) > 1:
                raise PhasescopeError(
                    f"probe {name!r} maps to preset {sel!r}, which selects several modules; "
                    "name single modules in a dict"
                )
            pairs.extend((name or n, m) for n, m in items)
            return
        found = _match(sel, named)
        if not found:
            raise _unknown(sel, named)
        if name is not None:
            if len(found) > 1:
                raise PhasescopeError(
                    f"probe {name!r} selector {sel!r} matches {len(found)} modules "
                    f"({', '.join(found[:4])}, …); a named probe needs exactly one"
                )
            pairs.append((name, found[0]))
        else:
            pairs.extend((short_name(m, layout), m) for m in found)

    if probes is None:
        probes = "auto"
    if isinstance(probes, dict):
        for name, sel in probes.items():
            add_selector(sel, str(name))
    elif isinstance(probes, (list, tuple)):
        if not probes:
            raise PhasescopeError("probes is an empty list; pass 'auto' or at least one module selector")
        for sel in probes:
            add_selector(sel)
    else:
        add_selector(probes)

    seen_modules: set[str] = set()
    seen_names: dict[str, str] = {}
    out: list[Probe] = []
    for name, mod_name in pairs:
        if mod_name in seen_modules:
            continue
        if name in seen_names:
            raise PhasescopeError(f"probe name {name!r} is used for both {seen_names[name]} and {mod_name}")
        seen_modules.add(mod_name)
        seen_names[name] = mod_name
        out.append(Probe(name, mod_name, named[mod_name]))
    return out


def describe_probes(probes: list[Probe]) -> dict[str, str]:
    """``{probe name: module name}`` for the run metadata (``probes_spec``)."""
    return {p.name: p.module_name for p in probes}
