"""Compress a GPT's FFN matrices into factored layers, convert back, and count parameters.

Compression is one explicit function: for each selected block, take the dense `c_fc` and
`c_proj` weights, build a factored layer of the chosen structure for each (`krony.layers`),
initialise it from the dense weight, and swap it in at the same module name (biases are
kept). Attention, embeddings and norms are untouched. Only the structure interface
(`krony.layers.base.FactoredLinear`) is used here.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from krony.config import CONVENTIONS, KRONECKER_ONLY_INITS, LAYER_SETS, MATCHES, GPTConfig, check_choice
from krony.layers import FactoredLinear, KroneckerLinear, check_factors, get_structure
from krony.layers.base import per_matrix_budget
from krony.model import GPT
from krony.schemes import Scheme

FFN_MODULES = ("c_fc", "c_proj")
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


def compress(
    model: GPT,
    scheme: str | Scheme | tuple[int, int] = "81m",
    init: str | Callable[..., Any] = "vanloan",
    factors: int = 1,
    scalars: bool = False,
    layers: str | Sequence[int] = "all",
    path: str = "auto",
    progress: bool = False,
    structure: str | type[FactoredLinear] = "kronecker",
    budget: int | None = None,
    structure_options: dict[str, Any] | None = None,
    match: str = "params",
    **init_kwargs: Any,
) -> GPT:
    """Replace `c_fc` and `c_proj` of the selected blocks by factored layers, in place.

    Args:
        model: a dense GPT (on any device; on the meta device only the structure is built).
        scheme: a Table-1 name ("67m", "81m", "96m", "mf1", "mf2", "81m_alt", "gpt2"), A dims of
            `c_fc` as "m1xn1" or (m1, n1), or a `Scheme`. `c_proj` uses the transposed A dims.
        init: "vanloan", "prune", "random" (see `krony.layers.kronecker_init`) or a function with their signature.
        factors: r, the number of Kronecker products per matrix.
        scalars: learn one scalar per factor (adaptive normalisation lands in them when on).
        layers: "all", "odd", "even" or a list of block indices.
        path: forward path of the new layers ("auto" picks the cheapest).
        progress: show a progress bar over the matrices.
        structure: the factored structure (`krony.layers.STRUCTURES`): "kronecker", "lowrank" or
            "monarch". Lowrank and monarch are sized to the parameter count of `scheme` (the
            Kronecker scheme with `factors`), or of `budget`.
        budget: lowrank / monarch: the model's parameter count to aim at (Table-1 convention)
            instead of a scheme's; each structure takes the size nearest to it.
        structure_options: options of the structure's constructor, e.g. {"nblocks": 8} for monarch.
        match: lowrank / monarch sized to `scheme`: "params" (the nearest parameter count) or
            "flops" (the nearest multiply-adds per token to the scheme's Kronecker layers, which
            cost more per parameter). How far off the size lands is logged (INFO, `krony.compression`).
        init_kwargs: options of the init, e.g. `normalize=True`, `svd="lowrank"`, `offsets=...`, `fill=0.1`.

    Returns the same model object.
    """
    cls = get_structure(structure)
    factors = check_factors(factors)
    blocks = select_layers(layers, model.config.n_layer)
    # build every new layer first and swap them in at the end, so a failure leaves the model as it was
    todo = [(i, name) for i in blocks for name in FFN_MODULES]
    check_choice("match", match, MATCHES)
    if cls is not KroneckerLinear and init in KRONECKER_ONLY_INITS:
        raise ValueError(f"init {init!r} is a Kronecker init; {cls.structure} takes vanloan (its optimal projection) or random")
    if budget is not None:
        if cls is KroneckerLinear:
            raise ValueError("a Kronecker layer is sized by its scheme; budget= sizes lowrank and monarch")
        if match != "params":
            raise ValueError("budget= is a parameter count; match='flops' takes a scheme, whose Kronecker "
                             "layers' multiply-adds are the target")
        dense_weights = sum(getattr(model.transformer.h[i].mlp, name).weight.numel() for i, name in todo)
        scheme = max(1, round((budget - (count_params(model) - dense_weights)) / len(todo)))  # per matrix
    new_layers, targets = [], []
    for i, name in tqdm(todo, desc=f"compress {scheme}", disable=not progress, unit="matrix"):
        dense = getattr(model.transformer.h[i].mlp, name)
        if isinstance(dense, FactoredLinear):
            raise ValueError(f"block {i} {name} is already compressed; call krony.decompress(model) first")
        layer, target = layer_for(dense, name, cls, scheme, factors, scalars, path, match, structure_options)
        if target is not None:
            targets.append(target)
        if not dense.weight.is_meta:
            with torch.no_grad():
                layer.init_from(dense.weight, init, **init_kwargs)
                if dense.bias is not None:
                    layer.bias.copy_(dense.bias)
        new_layers.append((f"transformer.h.{i}.mlp.{name}", layer))
    for name, layer in new_layers:
        install(model, name, layer)
    if targets:
        _log_sizing(model, cls.structure, scheme if budget is None else budget, match, targets,
                    [layer for _, layer in new_layers])
    return model


def layer_for(dense: nn.Linear, module: str, structure: str | type[FactoredLinear] = "kronecker",
              scheme: str | Scheme | tuple[int, int] | int = "81m", factors: int = 1, scalars: bool = False,
              path: str = "auto", match: str = "params",
              structure_options: dict[str, Any] | None = None) -> tuple[FactoredLinear, int | None]:
    """An uninitialised layer of `structure` for the FFN matrix `dense` (`module`: "c_fc" or
    "c_proj"), on its device and dtype, and the count it was sized to (None for Kronecker, which
    its scheme sizes): the scheme's parameters per matrix (an int `scheme` is that count), or
    with match="flops" the multiply-adds per token of the scheme's Kronecker layer."""
    cls = get_structure(structure)
    if cls is KroneckerLinear:
        return cls.for_matrix(dense, scheme, module, factors=factors, scalars=scalars, path=path), None
    target = per_matrix_budget(scheme, dense.in_features, dense.out_features, module, factors)
    if match == "flops":  # lowrank and monarch run as many multiply-adds per token as they hold weights
        shape = nn.Linear(dense.in_features, dense.out_features, bias=False, device="meta")
        target = KroneckerLinear.for_matrix(shape, scheme, module, factors=factors).multiply_adds()
    return cls.for_matrix(dense, target, module, **(structure_options or {})), target


def _log_sizing(model: GPT, structure: str, budget: Any, match: str, targets: list[int],
                layers: list[FactoredLinear]) -> None:
    """Log how far a budget-sized structure landed from its target: the model's parameters against
    the same model with every layer at its target count, or for match="flops" the new layers'
    multiply-adds per token against the Kronecker layers'."""
    if match == "flops":
        got, want = sum(layer.multiply_adds() for layer in layers), sum(targets)
        log.info("%s sized to %s (flops-matched): %s FFN multiply-adds per token against %s, %+.2f%%", structure,
                 budget, f"{got:,}", f"{want:,}", 100 * (got - want) / want)
        return
    biases = sum(layer.bias.numel() for layer in layers if layer.bias is not None)
    ffn, ffn_want = sum(layer.num_params() for layer in layers) - biases, sum(targets)
    got = count_params(model)
    want = got - ffn + ffn_want
    log.info("%s sized to %s (params-matched): %s parameters against %s, %+.2f%% (the factored weights: %s "
             "against %s, %+.2f%%)", structure, budget, f"{got:,}", f"{want:,}", 100 * (got - want) / want,
             f"{ffn:,}", f"{ffn_want:,}", 100 * (ffn - ffn_want) / ffn_want)


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted `name` in `model` (e.g. "transformer.h.0.mlp.c_fc")."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def install(model: nn.Module, name: str, layer: FactoredLinear) -> None:
    """Put a factored `layer` at `name` (an MLP's c_fc or c_proj); the MLP becomes the structure's
    fusing subclass (`mlp_class`) when it has one."""
    replace_module(model, name, layer)
    mlp_name = name.rpartition(".")[0]
    mlp = model.get_submodule(mlp_name)
    if layer.mlp_class is not None and not isinstance(mlp, layer.mlp_class):
        replace_module(model, mlp_name, layer.mlp_class(mlp))


def decompress(model: GPT) -> GPT:
    """Replace every factored layer by an `nn.Linear` with its dense weight, in place; returns the model."""
    for name, layer in factored_layers(model).items():
        replace_module(model, name, layer.to_linear())
    return model


def factored_layers(model: nn.Module) -> dict[str, FactoredLinear]:
    """{module name: layer} for every factored layer (any structure) in `model`."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FactoredLinear)}


def kronecker_layers(model: nn.Module) -> dict[str, KroneckerLinear]:
    """{module name: layer} for every `KroneckerLinear` in `model`."""
    return {name: m for name, m in factored_layers(model).items() if isinstance(m, KroneckerLinear)}


def count_params(model: GPT, convention: str = "table1") -> int:
    """Parameters of `model` under a counting convention.

    - "table1": every unique parameter once (tied wte/lm_head once), `wpe`, norms, biases and
      scalars included: the paper's Table 1.
    - "no_output_embedding": without the output embedding matrix, as KnGPT2 and
      TQCompressedGPT2 count (with tied embeddings that matrix is also `wte`).
    - "non_embedding": without `wte`, `wpe` and `lm_head` (Kaplan et al.).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid choices: {', '.join(CONVENTIONS)}")
    excluded: set[int] = set()
    if convention in ("no_output_embedding", "non_embedding"):
        excluded.add(id(model.lm_head.weight))
    if convention == "non_embedding":
        excluded |= {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


def model_size(
    scheme: str | Scheme | tuple[int, int] | int | None = None,
    factors: int = 1,
    scalars: bool = False,
    config: GPTConfig | None = None,
    layers: str | Sequence[int] = "all",
    convention: str = "table1",
    structure: str = "kronecker",
    match: str = "params",
    **structure_options: Any,
) -> int:
    """Parameter count of a (compressed) model, built on the meta device: no memory, no init.
    `structure` other than kronecker is sized to `scheme`'s budget by `match` (see `compress`)."""
    with torch.device("meta"):
        model = GPT(config or GPTConfig())
    if scheme is not None:
        compress(model, scheme, init="random", factors=factors, scalars=scalars, layers=layers, structure=structure,
                 structure_options=structure_options or None, match=match)
    return count_params(model, convention)


__all__ = [
    "CONVENTIONS",
    "FFN_MODULES",
    "compress",
    "count_params",
    "decompress",
    "factored_layers",
    "install",
    "kronecker_layers",
    "layer_for",
    "model_size",
    "replace_module",
    "select_layers",
]
