"""Where to look in common architectures: the decoder-block list, attention, MLP and final norm.

Presets are found structurally (as TransformerLens resolves hook names once from ``named_modules()``):
the block list is the longest ``nn.ModuleList`` whose children have a known block class name or an
attention child; inside each block the attention and MLP children have family-specific names; the
final norm is a sibling of the block list. This covers the Hugging Face families

==================  =========================  ===================  ======================  ==================
family              blocks                     attention            MLP                     final norm
==================  =========================  ===================  ======================  ==================
GPT-2               ``transformer.h.{i}``      ``attn``             ``mlp``                 ``transformer.ln_f``
GPT-NeoX / Pythia   ``gpt_neox.layers.{i}``    ``attention``        ``mlp``                 ``final_layer_norm``
Llama/Qwen/Mistral  ``model.layers.{i}``       ``self_attn``        ``mlp``                 ``model.norm``
OLMo / OLMo-2       ``model.layers.{i}``       ``self_attn``        ``mlp``                 ``model.norm``
BERT / RoBERTa      ``encoder.layer.{i}``      ``attention``        ``output.dense``        (none: post-LN)
torchvision ViT     ``encoder.layers.{name}``  ``self_attention``   ``mlp``                 ``encoder.ln``
timm ViT            ``blocks.{i}``             ``attn``             ``mlp``                 ``norm``
==================  =========================  ===================  ======================  ==================

and any model that follows the same conventions (with or without the ``…ForCausalLM`` wrapper).
ResNets, timm CNNs and plain ``nn.Sequential`` stacks have their own presets (:mod:`.vision`).
Short probe names: ``block.{i}`` (residual stream after block i), ``attn.{i}``, ``mlp.{i}``,
``final_norm``.
"""

from __future__ import annotations

from dataclasses import dataclass

from phasescope.errors import PhasescopeError

from .vision import vision_layout

ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention", "mixer")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "output.dense")
FINAL_NORM_NAMES = ("ln_f", "final_layer_norm", "norm", "final_norm", "ln_final", "norm_f", "ln")
PRESET_KEYWORDS = ("auto", "blocks", "residual", "attn", "mlp", "final_norm", "all")


@dataclass(frozen=True)
class ModuleLayout:
    """Module names of one architecture's probe points (``None`` where absent)."""

    blocks: tuple[str, ...]
    attn: tuple[str | None, ...]
    mlp: tuple[str | None, ...]
    final_norm: str | None

    @property
    def block_prefix(self) -> str:
        """The block list's name, e.g. ``transformer.h`` (used to shorten names to ``block.{i}``)."""
        return self.blocks[0].rsplit(".", 1)[0] if self.blocks else ""


def _block_list(named: dict, container) -> tuple[int, str] | None:
    """(length, name) of the longest ``container`` whose first child looks like a transformer block."""
    best: tuple[int, str] | None = None
    for name, mod in named.items():
        if not isinstance(mod, container) or len(mod) == 0:
            continue
        first = next(iter(mod.children()))
        child_names = {n for n, _ in first.named_children()}
        looks_like_block = (
            bool(child_names & set(ATTN_NAMES))
            or "layer" in type(first).__name__.lower()
            or "block" in type(first).__name__.lower()
        )
        if looks_like_block and (best is None or len(mod) > best[0]):
            best = (len(mod), name)
    return best


def find_layout(model) -> ModuleLayout:
    """Locate the decoder/encoder block list, attention, MLP and final norm of ``model``: the longest
    block-like ``nn.ModuleList`` (Hugging Face), else the longest block-like ``nn.Sequential``
    (torchvision's ``encoder.layers``, timm's ``blocks``)."""
    import torch.nn as nn

    named = dict(model.named_modules())
    best = _block_list(named, nn.ModuleList) or _block_list(named, nn.Sequential)
    if best is None:
        raise PhasescopeError(
            f"cannot find a transformer block list in {type(model).__name__}; pass probes as module "
            "names or globs (see model.named_modules())"
        )
    prefix = best[1]
    blocks = tuple(f"{prefix}.{n}" for n, _ in named[prefix].named_children())

    def child(block: str, options: tuple[str, ...]) -> str | None:
        for opt in options:
            if f"{block}.{opt}" in named:
                return f"{block}.{opt}"
        return None

    attn = tuple(child(b, ATTN_NAMES) for b in blocks)
    mlp = tuple(child(b, MLP_NAMES) for b in blocks)
    parent = prefix.rsplit(".", 1)[0] if "." in prefix else ""
    final = None
    for opt in FINAL_NORM_NAMES:
        cand = f"{parent}.{opt}" if parent else opt
        if cand in named:
            final = cand
            break
    return ModuleLayout(blocks, attn, mlp, final)


def preset_probes(model, keyword: str) -> dict[str, str]:
    """Short probe name -> module name for a preset keyword.

    ``auto`` = residual stream after every block + final norm (Li et al. 2025 read the last one);
    ``blocks``/``residual`` = block outputs only; ``attn``; ``mlp``; ``final_norm``; ``all`` = everything.
    """
    if keyword not in PRESET_KEYWORDS:
        raise PhasescopeError(f"unknown probe preset {keyword!r}; choose one of {', '.join(PRESET_KEYWORDS)}")
    vision = vision_layout(model)
    if vision is not None:
        return vision.select(keyword, type(model).__name__)
    lay = find_layout(model)
    out: dict[str, str] = {}
    if keyword in ("auto", "blocks", "residual", "all"):
        out.update({f"block.{i}": b for i, b in enumerate(lay.blocks)})
    if keyword in ("attn", "all"):
        out.update({f"attn.{i}": a for i, a in enumerate(lay.attn) if a is not None})
    if keyword in ("mlp", "all"):
        out.update({f"mlp.{i}": m for i, m in enumerate(lay.mlp) if m is not None})
    if keyword in ("auto", "final_norm", "all") and lay.final_norm is not None:
        out["final_norm"] = lay.final_norm
    if not out:
        raise PhasescopeError(f"probe preset {keyword!r} found no modules in {type(model).__name__}")
    return out


def short_name(module_name: str, layout: ModuleLayout | None) -> str:
    """``transformer.h.3.mlp.c_fc`` -> ``block.3.mlp.c_fc``; other names are kept as they are."""
    if layout is not None and layout.block_prefix:
        for i, block in enumerate(layout.blocks):
            if module_name == block or module_name.startswith(block + "."):
                return f"block.{i}{module_name[len(block) :]}"
        if module_name == layout.final_norm:
            return "final_norm"
    return module_name
