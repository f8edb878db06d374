"""The interface every factored structure offers, so `krony.compress` and `krony.decompress`
need nothing else (docs/method.md, "Structures").

A structure is an `nn.Module` that stands in for one `nn.Linear` (weight (out, in), optional
bias) and offers:

- `build(in, out, size, role, **options)`: construct it, empty, for one matrix of a model,
  sized by a parameter count or a scheme (what a scheme means is the structure's business;
  the default sizes a structure to the count through its `size_for`);
- `init_from(W, method, **options)`: set its factors from a dense weight W (out, in);
- `to_dense()`: the weight it represents, (out, in);
- `multiply_adds()`: its cost per token, in multiply-adds, on the path its forward takes;
- `num_params()`: its parameter count (bias included);
- `spec()`: the keyword arguments that rebuild it (saved in config.json);
- `fused_ffn(x, expand, contract, act, gated)`: the FFN run in one pass when the structure can
  (None: the FFN runs its layers one after the other);
- `stored_as_weight`: which of its parameters saved files keep under `<module>.weight`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from krony.config import check_factors


def random_std(std: float, terms: int) -> float:
    """Std of each factor's entries so that a sum of `terms` products of two independent normal
    draws (a Kronecker sum's entry, a low-rank or Monarch product's) has standard deviation `std`."""
    return math.sqrt(std / math.sqrt(terms))


def budget_of(size: Any, role: str, in_features: int, out_features: int, factors: int = 1) -> int:
    """Parameters one matrix may take: an int `size` is the count itself; a scheme (name, dims
    or `Scheme`) gives its Kronecker count with `factors` for this matrix and `role`."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            raise ValueError(f"a parameter budget must be >= 1 per matrix, got {size}")
        return size
    from krony.schemes import get_scheme

    return get_scheme(size).params_for(role, out_features, in_features, factors)


class FactoredLinear(nn.Module):
    """Base class of the factored stand-ins for `nn.Linear` (see the module docstring)."""

    structure: ClassVar[str] = ""
    """The structure's name in `krony.layers.STRUCTURES` and in saved configs."""
    inits: ClassVar[tuple[str, ...]] = ()
    """The inits it takes, from the registry (`krony.structures.REGISTRY`)."""
    stored_as_weight: ClassVar[str] = ""
    """The parameter saved files keep under the dense weight's key (`<module>.weight`), so a
    loader that expects a dense matrix stops on its shape (`krony.hf.to_hf_state_dict`)."""
    in_features: int
    out_features: int
    bias: nn.Parameter | None

    @classmethod
    def build(cls, in_features: int, out_features: int, size: Any, role: str, bias: bool = True,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None, factors: int = 1,
              scalars: bool = False, path: str = "auto", **size_options: Any) -> "FactoredLinear":
        """An uninitialised layer for an (out, in) matrix of `role` (`krony.targets.ROLES`), sized
        by `size`: a parameter count, or a scheme (name, dims or `Scheme`) whose Kronecker count
        for this matrix is the budget.

        This default serves the structures sized to a budget: `size_for(in, out, params,
        **size_options)` gives the constructor's size; `factors` only sizes a scheme's budget,
        `scalars` and `path` are Kronecker's and unused here. Kronecker overrides it."""
        target = budget_of(size, role, in_features, out_features, factors)
        return cls(in_features, out_features, bias=bias, device=device, dtype=dtype,
                   **cls.size_for(in_features, out_features, target, **size_options))

    @staticmethod
    def size_for(in_features: int, out_features: int, params: float, **size_options: Any) -> dict[str, int]:
        """Constructor arguments giving the size nearest `params` parameters (budget-sized structures)."""
        raise NotImplementedError

    def init_from(self, W: torch.Tensor, method: str = "random", **options: Any) -> None:
        """Set the factors from a dense weight W (out, in) with the init `method`."""
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """The weight this layer represents, (out_features, in_features)."""
        raise NotImplementedError

    def multiply_adds(self) -> int:
        """Multiply-adds per token of the forward path the layer takes (a FLOP is 2 of them)."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """Keyword arguments of the constructor that rebuild this layer (without its values)."""
        raise NotImplementedError

    @staticmethod
    def fused_ffn(x: torch.Tensor, expand: list[nn.Module], contract: nn.Module, act: Any,
                  gated: bool) -> torch.Tensor | None:
        """contract(act(e0(x)) [* e1(x)]) in one pass for a FFN of these layers (`gated`: SwiGLU),
        or None when this structure has no fused path for them (the FFN then runs as usual)."""
        return None

    def num_params(self) -> int:
        """Parameters of the layer, bias included."""
        return sum(p.numel() for p in self.parameters())

    def to_linear(self) -> nn.Linear:
        """An `nn.Linear` with the same weight and bias (a copy, detached from this layer)."""
        ref = next(self.parameters())
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.to_dense())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin


__all__ = ["FactoredLinear", "budget_of", "check_factors", "random_std"]
