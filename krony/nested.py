"""Nested (Matryoshka) Kronecker models: one set of factors, every size (docs/method.md, "Nested factors").

A sum of r Kronecker products initialised by Van Loan is ordered by singular value, so its first
k factors are the best k-term approximation of the dense weight: dropping the last factors is
the natural way to make a smaller model from a larger one. The scheme `768x192` (B 4x4) holds
up to 16 factors, and 16 rebuild GPT-2 exactly.

- `set_active_factors(model, k)`: the layers of a loaded model use their first k factors (one k
  for all, or per block or per matrix); the forward path follows the cost model for that k.
- `extract(model, k)`: a standalone copy holding only those factors, which saves, exports and
  counts as its own size.

Training every prefix at once: `krony.train.nest` (`nest=` in runs); per-layer sizes for a
budget: `krony.mixnmatch`.
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from krony.compression import kronecker_layers, replace_module
from krony.layers.kronecker import KroneckerLinear, check_active_factors
from krony.targets import get_family

Sizes = int | None | Mapping[int | str, int]
"""One k for every Kronecker layer; None for all factors; or {block index or module name: k}
(a block index sets both of its matrices; layers not named keep their setting)."""


def _per_layer(model: nn.Module, k: Sizes) -> dict[str, int | None]:
    """{module name: k} for every Kronecker layer `k` names."""
    layers = kronecker_layers(model)
    if not layers:
        raise ValueError("the model has no Kronecker layers: compress it first (krony.compress)")
    blocks = get_family(model).blocks
    if k is None or isinstance(k, int):
        return {name: k for name in layers}
    out: dict[str, int | None] = {}
    for key, v in k.items():
        if isinstance(key, int):
            names = [n for n in layers if n.startswith(f"{blocks}.{key}.")]
        else:
            names = [n for n in layers if n == key or n.endswith("." + key)]
        if not names:
            raise ValueError(f"{key!r} names no Kronecker layer; give a block index or a module name such as "
                             f"{next(iter(layers))!r}")
        out.update({n: v for n in names})
    return out


def set_active_factors(model: nn.Module, k: Sizes) -> nn.Module:
    """Let the Kronecker layers of `model` use their first `k` factors (see `Sizes`), in place;
    returns the model. Raises before changing anything when a k is out of a layer's range."""
    layers = kronecker_layers(model)
    chosen = _per_layer(model, k)
    for name, v in chosen.items():
        if v is not None:
            check_active_factors(v, layers[name].factors, name)
    for name, v in chosen.items():
        layers[name].active_factors = v
    return model


def active_factors(model: nn.Module) -> dict[str, int]:
    """{module name: active factors} of every Kronecker layer."""
    return {name: layer.active_factors for name, layer in kronecker_layers(model).items()}


@torch.no_grad()
def extract(model: nn.Module, k: Sizes = None) -> nn.Module:
    """A standalone copy of `model` whose Kronecker layers hold only their first k factors (`k`
    as in `set_active_factors`; None: each layer's active factors). The copy counts, saves and
    exports as that size, with every factor active; `model` is unchanged."""
    layers = kronecker_layers(model)
    sizes = active_factors(model)
    if k is not None:
        sizes.update({n: layers[n].factors if v is None else v for n, v in _per_layer(model, k).items()})
    for name, v in sizes.items():
        check_active_factors(v, layers[name].factors, name)
    small = copy.deepcopy(model)
    for name, layer in kronecker_layers(small).items():
        v = sizes[name]
        new = KroneckerLinear(layer.in_features, layer.out_features, layer.a_dims, v, scalars=layer.scalars is not None,
                              bias=layer.bias is not None, path=layer.path, device=layer.A.device, dtype=layer.A.dtype)
        new.load_factors(layer.A[:v], layer.B[:v], None if layer.scalars is None else layer.scalars[:v])
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
        replace_module(small, name, new)
    return small


__all__ = ["Sizes", "active_factors", "extract", "set_active_factors"]
