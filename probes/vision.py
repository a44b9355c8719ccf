"""Probe presets for vision networks and plain stacks, found structurally like the transformer ones.

==========================  ==============================================================  ==========
family                      ``probes="auto"``                                               ``blocks``
==========================  ==============================================================  ==========
ResNet (torchvision, timm)  ``stem`` (after the max-pool), ``layer1`` … ``layer4``,          every
                            ``avgpool`` (torchvision) / ``global_pool`` (timm)              residual
                                                                                            block
other timm CNNs             the stages timm lists in ``model.feature_info``, and the        the same
                            pooled features (``global_pool`` or ``head.global_pool``)       stages
ViT (torchvision, timm)     the transformer presets (:mod:`.presets`): ``block.{i}`` for each encoder
                            layer and ``final_norm`` (``encoder.ln`` / ``norm``), read at the class token
``nn.Sequential``           every child but dropout, identity and flatten layers, by its index
==========================  ======================================================================

Conv maps are read channels-first by the spatial mean (:mod:`.shapes`); :func:`default_tokens` picks
the token a ViT classifies from (its class token, or the mean where it pools without one).
"""

from __future__ import annotations

from dataclasses import dataclass

from phasescope.errors import PhasescopeError

RESNET_CHILDREN = ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4")
POOLS = ("avgpool", "global_pool", "head.global_pool")
HF_CLASS_TOKEN_MODELS = ("vit", "deit", "beit", "dinov2", "vit_mae", "vit_msn")
SKIPPED_IN_STACKS = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity", "Flatten")


@dataclass(frozen=True)
class VisionLayout:
    """Probe name -> module name for ``auto`` and ``blocks`` of one vision family."""

    family: str
    auto: dict[str, str]
    blocks: dict[str, str]

    def select(self, keyword: str, model_name: str) -> dict[str, str]:
        chosen = {
            "auto": self.auto,
            "blocks": self.blocks,
            "residual": self.blocks,
            "all": {**self.auto, **self.blocks},
        }.get(keyword, {})
        if not chosen:
            raise PhasescopeError(
                f"probe preset {keyword!r} found no modules in {model_name} ({self.family}); "
                "use 'auto' or 'blocks', or name modules (see model.named_modules())"
            )
        return dict(chosen)


def _pool(named) -> str | None:
    return next((p for p in POOLS if p in named), None)


def _is_timm(model) -> bool:
    return type(model).__module__.startswith("timm.")


def vision_layout(model) -> VisionLayout | None:
    """The layout of a ResNet or a timm CNN — the model itself or the first such submodule (a
    LightningModule's ``self.model``), module names prefixed accordingly — or of a plain
    ``nn.Sequential`` model. None for anything else: transformers, ViTs included, go through
    :func:`.presets.find_layout`."""
    import torch.nn as nn

    for prefix, mod in model.named_modules():
        found = _cnn_layout(mod)
        if found is not None:
            if not prefix:
                return found
            return VisionLayout(
                f"{found.family} at {prefix}",
                *({k: f"{prefix}.{m}" for k, m in names.items()} for names in (found.auto, found.blocks)),
            )
    if isinstance(model, nn.Sequential) and len(model) > 0:
        kept = {n: n for n, m in model.named_children() if type(m).__name__ not in SKIPPED_IN_STACKS}
        if kept:
            return VisionLayout("nn.Sequential", kept, kept)
    return None


def _cnn_layout(model) -> VisionLayout | None:
    named = dict(model.named_modules())
    children = dict(model.named_children())
    if all(c in children for c in RESNET_CHILDREN) and _pool(named):
        auto = {"stem": "maxpool", **{f"layer{i}": f"layer{i}" for i in range(1, 5)}}
        pool = _pool(named)
        auto[pool] = pool
        blocks = {
            f"layer{i}.{j}": f"layer{i}.{j}" for i in range(1, 5) for j, _ in children[f"layer{i}"].named_children()
        }
        return VisionLayout("timm ResNet" if _is_timm(model) else "ResNet", auto, blocks)
    info = getattr(model, "feature_info", None)
    if _is_timm(model) and info and not _vit_like(model):
        stages = {}
        for item in info:
            mod = item.get("module") if isinstance(item, dict) else None
            if mod and mod in named:
                stages[mod] = mod
        pool = _pool(named)
        if stages:
            return VisionLayout(f"timm {type(model).__name__}", {**stages, **({pool: pool} if pool else {})}, stages)
    return None


def _vit_like(model) -> bool:
    """A transformer over patches (timm ViT/DeiT/BEiT…): a root ``blocks`` list and a token axis."""
    return (
        hasattr(model, "blocks")
        and (hasattr(model, "cls_token") or hasattr(model, "patch_embed"))
        and not hasattr(model, "stages")
    )


def default_tokens(model) -> str:
    """The token a model's representation is read at: the class token of a ViT (torchvision
    ``class_token``, timm ``cls_token``), the mean for a ViT that pools without one, else the last
    (causal language models; Li et al. 2025 read the last token)."""
    if getattr(getattr(model, "config", None), "model_type", None) in HF_CLASS_TOKEN_MODELS:
        return "first"
    for m in (model, *model.children()):  # the model itself, or one it wraps (a LightningModule's self.net)
        if _vit_like(m) and getattr(m, "global_pool", None) == "avg":
            return "mean"
        if getattr(m, "class_token", None) is not None or getattr(m, "cls_token", None) is not None:
            return "first"
    return "last"
