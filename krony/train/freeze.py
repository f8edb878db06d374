"""Freezing parts of a model: embeddings, attention, layer norms, scalars (or scalars fixed at a value)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from krony.compress import kronecker_layers
from krony.model import GPT


@dataclass
class FreezeConfig:
    """What stays fixed during training (all off: train every weight)."""

    embeddings: bool = False
    """Freeze `wte` (and so the tied `lm_head`) and `wpe`."""
    attention: bool = False
    """Freeze every attention `c_attn` and `c_proj`."""
    layer_norms: bool = False
    """Freeze every LayerNorm (ln_1, ln_2, ln_f)."""
    scalars: bool = False
    """Freeze the Kronecker scalars s_i."""
    scalars_value: float | None = None
    """Set every scalar to this value and freeze it (the paper observed they settle near 4)."""


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
