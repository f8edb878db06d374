"""Factored stand-ins for `nn.Linear`, one module per structure, all behind one interface
(`krony.layers.base.FactoredLinear`): construct for a matrix from a scheme, init from a dense
W, `to_dense()`, cost per token, parameter count, a spec to rebuild it.

- `base`: the interface and the one check of a factor count.
- `kronecker`: sum_i s_i kron(A_i, B_i), its forward paths and cost model, the fused MLP.
- `kronecker_init`: Van Loan, pruning and random inits of the Kronecker factors.
- `lowrank`: W = U V, rank r, the truncated-SVD init.
- `monarch`: two block-diagonal factors with a permutation (Dao et al. 2022), the block-SVD projection.

A new structure subclasses `FactoredLinear` and gets a line in the registry
(`krony.structures.REGISTRY`), which `STRUCTURES` below, the configs and the exported remote
code read; `krony.compress` and the Hugging Face files (`krony.hf`) then handle it.
"""

from __future__ import annotations

import importlib

from krony.layers.base import FactoredLinear, check_factors
from krony.layers.kronecker import KroneckerLinear
from krony.layers.lowrank import LowRankLinear
from krony.layers.monarch import MonarchLinear
from krony.structures import REGISTRY

STRUCTURES: dict[str, type[FactoredLinear]] = {
    name: getattr(importlib.import_module(spec.module), spec.cls) for name, spec in REGISTRY.items()}
"""Every structure's layer class by the name configs and saved models use (the registry's)."""


def get_structure(name: str | type[FactoredLinear]) -> type[FactoredLinear]:
    """A structure class by name (`STRUCTURES`), or the class itself."""
    if isinstance(name, type) and issubclass(name, FactoredLinear):
        return name
    if name not in STRUCTURES:
        raise ValueError(f"unknown structure {name!r}; valid choices: {', '.join(STRUCTURES)}")
    return STRUCTURES[name]


__all__ = ["STRUCTURES", "FactoredLinear", "KroneckerLinear", "LowRankLinear", "MonarchLinear", "check_factors",
           "get_structure"]
