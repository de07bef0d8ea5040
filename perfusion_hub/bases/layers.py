"""The cross-attention layers a Perfusion edit lives in (method.md §1)."""

from __future__ import annotations

from torch import nn

from perfusion_hub.concepts import LayerSpec


def cross_attention_layers(unet: nn.Module) -> tuple[LayerSpec, ...]:
    """Every module named `*.attn2`, in module order, with its `to_v` output width."""
    return tuple(
        LayerSpec(name, int(module.to_v.out_features))
        for name, module in unet.named_modules()
        if name.rsplit(".", 1)[-1] == "attn2"
    )
