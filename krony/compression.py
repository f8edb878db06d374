"""Compress a model's matrices into factored layers, convert back, and count parameters.

Compression is one explicit function, for any model in the family table (`krony.targets`):
find the target matrices (by default every block's FFN), build a factored layer of the chosen
structure for each (`krony.layers`), initialise it from the dense weight, and swap it in at the
same module name (biases are kept). An FFN whose layers the structure can run in one pass
(Kronecker's token-middle layout, SwiGLU included) gets its class's forward replaced by that
pass (`fuse_ffn`). Only the structure interface (`krony.layers.base.FactoredLinear`) and the
family table are used here: no family's module names.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from krony.config import CONVENTIONS, LAYER_SETS, CompressConfig, ConfigError
from krony.layers import FactoredLinear, KroneckerLinear, get_structure
from krony.layers.base import budget_of
from krony.schemes import Scheme
from krony.targets import Family, Target, dense_weight, embedding_params, find_targets, get_family, n_blocks

log = logging.getLogger(__name__)


def select_layers(layers: str | Sequence[int], n_layer: int) -> list[int]:
    """Block indices for "all", "odd" (1, 3, 5, ...: TQCompressedGPT2's choice), "even", or a list."""
    if isinstance(layers, str):
        if layers == "all":
            return list(range(n_layer))
        if layers == "odd":
            return list(range(1, n_layer, 2))
        if layers == "even":
            return list(range(0, n_layer, 2))
        raise ValueError(f"unknown layers {layers!r}; valid choices: {', '.join(LAYER_SETS)}, or a list of block indices")
    chosen = sorted({int(i) for i in layers})
    bad = [i for i in chosen if not 0 <= i < n_layer]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has blocks 0..{n_layer - 1}")
    return chosen


def compress(model: nn.Module, scheme: str | Scheme | tuple[int, int] | CompressConfig | None = None, *,
             config: CompressConfig | None = None, progress: bool = False, **fields: Any) -> nn.Module:
    """Replace the target matrices of `model` (krony's `GPT` or a transformers causal LM) by
    factored layers, in place; returns the same model.

    The what and how is one `CompressConfig` (`config=`, or its fields as keywords, e.g.
    `compress(model, structure="lowrank", ffn_fraction=0.5)`); `scheme` may be given first, as
    in `compress(gpt, "81m", init="prune")`. Keywords that are not config fields are the init's
    options (`normalize=True`, `svd="lowrank"`, `offsets=...`, `fill=0.1`). A model on the meta
    device gets the structure only. `progress` shows a bar over the matrices. How far a budget
    landed from its target is logged (INFO, `krony.compression`).
    """
    cfg = compress_config(scheme, config, fields)
    family = get_family(model, required=cfg.targets is None)
    transposed = family.transposed if family else False
    blocks = None if cfg.layers == "all" else select_layers(cfg.layers, n_blocks(model))
    targets = find_targets(model, cfg.targets, cfg.attention, blocks)
    # build every new layer first and swap them in at the end, so a failure leaves the model as it was
    per_matrix = None if cfg.budget is None else _per_matrix(model, cfg.budget, targets)
    new_layers, sized = [], []
    for t in tqdm(targets, desc=f"compress {cfg.structure}", disable=not progress, unit="matrix"):
        dense = model.get_submodule(t.name)
        if isinstance(dense, FactoredLinear):
            raise ValueError(f"{t.name} is already compressed; call krony.decompress(model) first")
        try:
            layer, target = layer_for(dense, t.role, cfg, transposed, per_matrix)
        except ValueError as e:
            raise ValueError(f"{t.name} ({t.out_features} x {t.in_features}): {e}") from None
        sized.append((t, target))
        W = dense_weight(dense, transposed)
        if not W.is_meta:
            with torch.no_grad():
                layer.init_from(W, cfg.init, **cfg.init_options)
                if dense.bias is not None:
                    layer.bias.copy_(dense.bias)
        new_layers.append((t.name, layer))
    for name, layer in new_layers:
        replace_module(model, name, layer)
    if family is not None:
        fuse_ffn(model, family)
    _log_sizing(model, cfg, sized, [layer for _, layer in new_layers])
    return model


def compress_config(scheme: Any, config: CompressConfig | None, fields: dict[str, Any]) -> CompressConfig:
    """The `CompressConfig` of a `compress` call: `config`, or built from `scheme` and the keyword
    fields; keywords that are not fields are init options."""
    if isinstance(scheme, CompressConfig):
        scheme, config = None, scheme
    if isinstance(fields.get("structure"), type):
        fields["structure"] = fields["structure"].structure
    known = CompressConfig.__dataclass_fields__
    options = {k: fields.pop(k) for k in list(fields) if k not in known}
    if config is not None:
        if fields or scheme is not None:
            raise ValueError("give the compression as config= or as keywords, not both")
        if options:
            config = CompressConfig(**{**config.__dict__, "init_options": {**config.init_options, **options}})
        return config
    fields["init_options"] = {**fields.get("init_options", {}), **options}
    try:
        return CompressConfig(scheme=scheme, **fields)
    except ConfigError as e:
        raise ValueError(str(e)) from None


def layer_for(dense: nn.Module, role: str, cfg: CompressConfig, transposed: bool = False,
              size: Any = None) -> tuple[FactoredLinear, int]:
    """An uninitialised layer of `cfg.structure` for the linear module `dense` of `role`, on its
    device and dtype, and the count it was sized to: its parameters per matrix, or with
    match="flops" the multiply-adds per token of the scheme's Kronecker layer. `size`
    overrides the config's (a parameter count or a scheme)."""
    cls = get_structure(cfg.structure)
    W = dense_weight(dense, transposed)
    out, inp = W.shape
    if size is None:
        size = cfg.scheme if cfg.ffn_fraction is None else max(1, round(cfg.ffn_fraction * out * inp))
    target = budget_of(size, role, inp, out, cfg.factors)
    if cfg.match == "flops":  # lowrank and monarch run as many multiply-adds per token as they hold weights
        size = target = KroneckerLinear.build(inp, out, size, role, device="meta", factors=cfg.factors).multiply_adds()
    layer = cls.build(inp, out, size, role, bias=getattr(dense, "bias", None) is not None, device=W.device,
                      dtype=W.dtype, factors=cfg.factors, scalars=cfg.scalars, path=cfg.path, **cfg.structure_options)
    return layer, target


def _per_matrix(model: nn.Module, budget: int, targets: list[Target]) -> int:
    """The parameters each target matrix may take for the model to have `budget` in all."""
    dense = sum(t.in_features * t.out_features for t in targets)
    return max(1, round((budget - (count_params(model) - dense)) / len(targets)))


def _log_sizing(model: nn.Module, cfg: CompressConfig, sized: list[tuple[Target, int]], layers: list[FactoredLinear]) -> None:
    """Log how far the factored layers landed from their targets: the parameters kept of the
    targeted matrices, or for match="flops" the multiply-adds per token against the Kronecker layers'."""
    if cfg.match == "flops":
        got, want = sum(layer.multiply_adds() for layer in layers), sum(t for _, t in sized)
        log.info("%s sized to %s (flops-matched): %s FFN multiply-adds per token against %s, %+.2f%%", cfg.structure,
                 cfg.scheme, f"{got:,}", f"{want:,}", 100 * (got - want) / want)
        return
    dense = sum(t.in_features * t.out_features for t, _ in sized)
    got = sum(layer.num_params() - (layer.bias.numel() if layer.bias is not None else 0) for layer in layers)
    want = sum(t for _, t in sized)
    log.info("%s: the %d factored matrices keep %s of their %s parameters (%.2f%%; asked %s, %+.2f%%); model: %s",
             cfg.structure, len(layers), f"{got:,}", f"{dense:,}", 100 * got / dense, f"{want:,}",
             100 * (got - want) / want, f"{count_params(model):,}")


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted `name` in `model` (e.g. "model.layers.0.mlp.up_proj")."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def install(model: nn.Module, layers: dict[str, FactoredLinear]) -> nn.Module:
    """Put factored `layers` ({module name: layer}) into `model` and fuse the FFNs that can be
    (how a saved compressed model is rebuilt); returns the model."""
    for name, layer in layers.items():
        replace_module(model, name, layer)
    family = get_family(model, required=False)
    if family is not None:
        fuse_ffn(model, family)
    return model


_FUSED: dict[tuple[type, Family], type] = {}
"""The fused subclass of each (FFN module class, family) made so far (`fused_class`)."""


def fused_class(base: type[nn.Module], family: Family) -> type[nn.Module]:
    """A subclass of the FFN module class `base` whose forward runs its factored layers in one
    pass (`FactoredLinear.fused_ffn`) when their structure can, and `base.forward` otherwise.

    The subclass adds no state, so an FFN changes class in place (`module.__class__`) and its
    state-dict keys stay the same; `unfuse_ffn` changes it back."""
    if (base, family) in _FUSED:
        return _FUSED[base, family]
    expand_names, contract_name = family.ffn_parts()
    act, gated, dropout = family.act, family.gated, family.dropout

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        contract = getattr(self, contract_name)
        y = None
        if isinstance(contract, FactoredLinear):
            y = contract.fused_ffn(x, [getattr(self, n) for n in expand_names], contract, getattr(self, act), gated)
        if y is None:
            return base.forward(self, x)
        return getattr(self, dropout)(y) if dropout else y

    cls = type(f"Fused{base.__name__}", (base,), {"forward": forward, "_krony_base": base,
                                                  "__doc__": f"{base.__name__} running its factored layers fused."})
    _FUSED[base, family] = cls
    return cls


def fuse_ffn(model: nn.Module, family: Family) -> None:
    """Give every FFN of `model` whose contract matrix is of a structure with a fused path its
    fused class (`fused_class`)."""
    parts = family.ffn_parts()
    if parts is None:
        return
    for block in model.get_submodule(family.blocks):
        ffn = block.get_submodule(family.ffn)
        contract = getattr(ffn, parts[1])
        fuses = isinstance(contract, FactoredLinear) and type(contract).fused_ffn is not FactoredLinear.fused_ffn
        if fuses and not hasattr(type(ffn), "_krony_base"):
            ffn.__class__ = fused_class(type(ffn), family)


def unfuse_ffn(model: nn.Module) -> None:
    """Give every fused FFN of `model` its own class back."""
    for module in model.modules():
        base = getattr(type(module), "_krony_base", None)
        if base is not None:
            module.__class__ = base


def decompress(model: nn.Module) -> nn.Module:
    """Replace every factored layer by the family's dense module (`nn.Linear`; GPT-2's `Conv1D`
    in a transformers GPT-2) with its dense weight, and every fused FFN by its own class, in
    place; returns the model, of its own class again."""
    family = get_family(model, required=False)
    for name, layer in factored_layers(model).items():
        dense = layer.to_linear()
        if family is not None and family.transposed:
            from transformers.pytorch_utils import Conv1D

            conv = Conv1D(layer.out_features, layer.in_features).to(dense.weight)
            with torch.no_grad():
                conv.weight.copy_(dense.weight.t())
                if dense.bias is not None:
                    conv.bias.copy_(dense.bias)
            dense = conv
        replace_module(model, name, dense)
    unfuse_ffn(model)
    return model


def factored_layers(model: nn.Module) -> dict[str, FactoredLinear]:
    """{module name: layer} for every factored layer (any structure) in `model`."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FactoredLinear)}


def kronecker_layers(model: nn.Module) -> dict[str, KroneckerLinear]:
    """{module name: layer} for every `KroneckerLinear` in `model`."""
    return {name: m for name, m in factored_layers(model).items() if isinstance(m, KroneckerLinear)}


def count_params(model: nn.Module, convention: str = "table1") -> int:
    """Parameters of `model` (krony's `GPT` or a transformers model) under a counting convention.

    - "table1": every unique parameter once (tied input/output embeddings once), learned
      positions, norms, biases and scalars included: the paper's Table 1.
    - "no_output_embedding": without the output embedding matrix, as KnGPT2 and
      TQCompressedGPT2 count (with tied embeddings that matrix is also the input embedding).
    - "non_embedding": without the input and output embeddings and learned positions (Kaplan et al.).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid choices: {', '.join(CONVENTIONS)}")
    inputs, output = embedding_params(model)
    excluded: set[int] = set()
    if convention in ("no_output_embedding", "non_embedding"):
        excluded |= {id(p) for p in output}
    if convention == "non_embedding":
        excluded |= {id(p) for p in inputs}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


__all__ = [
    "CONVENTIONS",
    "compress",
    "compress_config",
    "count_params",
    "decompress",
    "factored_layers",
    "fuse_ffn",
    "fused_class",
    "install",
    "kronecker_layers",
    "layer_for",
    "replace_module",
    "select_layers",
    "unfuse_ffn",
]
