"""Freezing parts of a model: embeddings, attention, layer norms, scalars (or scalars fixed at a value)."""

from __future__ import annotations

import torch
from torch import nn

from krony.compression import kronecker_layers
from krony.config import FreezeConfig
from krony.model import GPT


def apply_freeze(model: GPT, cfg: FreezeConfig) -> list[str]:
    """Set requires_grad=False on the chosen parts; returns the frozen parameter names."""
    frozen: list[nn.Parameter] = []
    if cfg.embeddings:
        frozen += [model.transformer.wte.weight, model.transformer.wpe.weight]
    if cfg.attention:
        frozen += [p for block in model.transformer.h for p in block.attn.parameters()]
    if cfg.layer_norms:
        frozen += [p for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
    if cfg.scalars or cfg.scalars_value is not None:
        scalars = [layer.scalars for layer in kronecker_layers(model).values() if layer.scalars is not None]
        if not scalars:
            raise ValueError(
                "freeze.scalars / freeze.scalars_value is set but the model has no Kronecker scalars: "
                "use model.scalars=true (and a compressed model)"
            )
        if cfg.scalars_value is not None:
            with torch.no_grad():
                for s in scalars:
                    s.fill_(cfg.scalars_value)
        frozen += scalars
    for p in frozen:
        p.requires_grad_(False)
    ids = {id(p) for p in frozen}
    return [name for name, p in model.named_parameters() if id(p) in ids]


__all__ = ["FreezeConfig", "apply_freeze"]
