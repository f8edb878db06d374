"""Freezing parts of a model: embeddings, attention, layer norms, scalars (or scalars fixed at a value).

The parts are found the same way for every family: the embeddings through `get_input_embeddings`
and the family's learned positions, attention as the modules holding the family's attention
projections (`krony.targets`), norms as every module whose class name ends in "Norm" (LayerNorm,
RMSNorm, LlamaRMSNorm, ...)."""

from __future__ import annotations

import torch
from torch import nn

from krony.compression import kronecker_layers
from krony.config import FreezeConfig
from krony.targets import embedding_params, get_family


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of every block: the parent of the family's attention projections."""
    family = get_family(model)
    parents = sorted({name.rsplit(".", 1)[0] for name in family.attention if "." in name})
    return [block.get_submodule(p) for block in model.get_submodule(family.blocks) for p in parents]


def norm_modules(model: nn.Module) -> list[nn.Module]:
    """Every normalisation layer (a class name ending in "Norm")."""
    return [m for m in model.modules() if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("Norm")]


def apply_freeze(model: nn.Module, cfg: FreezeConfig) -> list[str]:
    """Set requires_grad=False on the chosen parts; returns the frozen parameter names."""
    frozen: list[nn.Parameter] = []
    if cfg.embeddings:
        frozen += embedding_params(model)[0]  # the input embedding (and so a tied head) and learned positions
    if cfg.attention:
        frozen += [p for m in attention_modules(model) for p in m.parameters()]
    if cfg.layer_norms:
        frozen += [p for m in norm_modules(model) for p in m.parameters(recurse=False)]
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
