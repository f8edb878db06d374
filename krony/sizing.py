"""Parameter counts of compressed GPT-2 models without building them in memory: `model_size`
builds krony's `GPT` on the meta device (no memory, no init), compresses it, counts it."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from krony.compression import compress, count_params
from krony.config import GPTConfig
from krony.model import GPT
from krony.schemes import Scheme


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
                 structure_options=structure_options, match=match)
    return count_params(model, convention)


__all__ = ["model_size"]
