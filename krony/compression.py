"""Compress a GPT's FFN matrices into Kronecker sums, convert back, and count parameters.

Compression is one explicit function: for each selected block, take the dense `c_fc` and
`c_proj` weights, initialise factors from them, and swap in `KroneckerLinear` layers at
the same module names (biases are kept). Attention, embeddings and norms are untouched.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from krony.config import LAYER_SETS, GPTConfig
from krony.inits import InitFn, get_init
from krony.kronecker import KroneckerLinear
from krony.model import GPT
from krony.schemes import Scheme, get_scheme

FFN_MODULES = ("c_fc", "c_proj")
CONVENTIONS = ("table1", "no_output_embedding", "non_embedding")


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


def _check_init_kwargs(fn: InitFn, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    valid = [p for p in params if p not in ("W", "a_dims", "factors")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown options {unknown} for init {getattr(fn, '__name__', fn)!r}; valid options: {valid}")


def compress(
    model: GPT,
    scheme: str | Scheme | tuple[int, int] = "81m",
    init: str | InitFn = "vanloan",
    factors: int = 1,
    scalars: bool = False,
    layers: str | Sequence[int] = "all",
    path: str = "auto",
    progress: bool = False,
    **init_kwargs: Any,
) -> GPT:
    """Replace `c_fc` and `c_proj` of the selected blocks by `KroneckerLinear` layers, in place.

    Args:
        model: a dense GPT (on any device; on the meta device only the structure is built).
        scheme: a Table-1 name ("67m", "81m", "96m", "mf1", "mf2", "81m_alt", "gpt2"), A dims of
            `c_fc` as "m1xn1" or (m1, n1), or a `Scheme`. `c_proj` uses the transposed A dims.
        init: "vanloan", "prune", "random" (see `krony.inits`) or a function with their signature.
        factors: r, the number of Kronecker products per matrix.
        scalars: learn one scalar per factor (adaptive normalisation lands in them when on).
        layers: "all", "odd", "even" or a list of block indices.
        path: forward path of the new layers ("auto" picks the cheapest).
        progress: show a progress bar over the matrices.
        init_kwargs: options of the init, e.g. `normalize=True`, `svd="lowrank"`, `offsets=...`, `fill=0.1`.

    Returns the same model object.
    """
    sch = get_scheme(scheme)
    init_fn = get_init(init)
    _check_init_kwargs(init_fn, init_kwargs)
    if int(factors) != factors or factors < 1:
        raise ValueError(f"factors must be an integer >= 1, got {factors!r}")
    blocks = select_layers(layers, model.config.n_layer)
    # build every new layer first and swap them in at the end, so a failure leaves the model as it was
    todo = [(i, name) for i in blocks for name in FFN_MODULES]
    new_layers = []
    for i, name in tqdm(todo, desc=f"compress {sch.key}", disable=not progress, unit="matrix"):
        dense = getattr(model.transformer.h[i].mlp, name)
        if isinstance(dense, KroneckerLinear):
            raise ValueError(f"block {i} {name} is already compressed; call krony.decompress(model) first")
        a_dims = sch.a_dims_for(name)
        W = dense.weight  # (out, in)
        layer = KroneckerLinear(
            dense.in_features, dense.out_features, a_dims, factors=factors, scalars=scalars,
            bias=dense.bias is not None, path=path, device=W.device, dtype=W.dtype,
        )
        if not W.is_meta:
            with torch.no_grad():
                layer.load_factors(*init_fn(W, a_dims, factors, **init_kwargs))
                if dense.bias is not None:
                    layer.bias.copy_(dense.bias)
        new_layers.append((i, name, layer))
    for i, name, layer in new_layers:
        setattr(model.transformer.h[i].mlp, name, layer)
    return model


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted `name` in `model` (e.g. "transformer.h.0.mlp.c_fc")."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def decompress(model: GPT) -> GPT:
    """Replace every `KroneckerLinear` by an `nn.Linear` with its dense weight, in place; returns the model."""
    for name, layer in kronecker_layers(model).items():
        replace_module(model, name, layer.to_linear())
    return model


def kronecker_layers(model: nn.Module) -> dict[str, KroneckerLinear]:
    """{module name: layer} for every `KroneckerLinear` in `model`."""
    return {name: m for name, m in model.named_modules() if isinstance(m, KroneckerLinear)}


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
    scheme: str | Scheme | tuple[int, int] | None = None,
    factors: int = 1,
    scalars: bool = False,
    config: GPTConfig | None = None,
    layers: str | Sequence[int] = "all",
    convention: str = "table1",
) -> int:
    """Parameter count of a (compressed) model, built on the meta device: no memory, no init."""
    with torch.device("meta"):
        model = GPT(config or GPTConfig())
    if scheme is not None:
        compress(model, scheme, init="random", factors=factors, scalars=scalars, layers=layers)
    return count_params(model, convention)


__all__ = [
    "CONVENTIONS",
    "FFN_MODULES",
    "compress",
    "count_params",
    "decompress",
    "kronecker_layers",
    "model_size",
    "replace_module",
    "select_layers",
]
