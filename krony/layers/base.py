"""The interface every factored structure offers, so `krony.compress` and `krony.decompress`
need nothing else (docs/method.md, "Structures").

A structure is an `nn.Module` that stands in for one `nn.Linear` (weight (out, in), optional
bias) and offers:

- `for_matrix(dense, scheme, module, **options)`: construct it, empty, for one FFN matrix of a
  model, sized by a scheme (a name or dims; what a scheme means is the structure's business;
  the default sizes a structure to the scheme's parameter count through its `size_for`);
- `init_from(W, method, **options)`: set its factors from a dense weight W (out, in);
- `to_dense()`: the weight it represents, (out, in);
- `multiply_adds()`: its cost per token, in multiply-adds, on the path its forward takes;
- `num_params()`: its parameter count (bias included);
- `spec()`: the keyword arguments that rebuild it (saved in config.json);
- `mlp_class`: the MLP subclass that runs a pair of these fused (None: the plain MLP);
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


def per_matrix_budget(scheme: Any, in_features: int, out_features: int, module: str, factors: int = 1) -> int:
    """Parameters one FFN matrix may take: an int is the count itself; a scheme (name or dims) gives
    its Kronecker count with `factors` for this matrix (`c_fc` is (n_inner, n_embd), `c_proj` the transpose)."""
    if isinstance(scheme, int) and not isinstance(scheme, bool):
        if scheme < 1:
            raise ValueError(f"a parameter budget must be >= 1 per matrix, got {scheme}")
        return scheme
    from krony.schemes import get_scheme

    n_embd, n_inner = (in_features, out_features) if module == "c_fc" else (out_features, in_features)
    return get_scheme(scheme).params_per_matrix(factors, n_embd, n_inner)


class FactoredLinear(nn.Module):
    """Base class of the factored stand-ins for `nn.Linear` (see the module docstring)."""

    structure: ClassVar[str] = ""
    """The structure's name in `krony.layers.STRUCTURES` and in saved configs."""
    mlp_class: ClassVar[type[nn.Module] | None] = None
    """An MLP subclass that fuses a c_fc/c_proj pair of this structure; None: the plain MLP."""
    stored_as_weight: ClassVar[str] = ""
    """The parameter saved files keep under the dense weight's key (`<module>.weight`), so a
    loader that expects a dense matrix stops on its shape (`krony.hf.to_hf_state_dict`)."""
    in_features: int
    out_features: int
    bias: nn.Parameter | None

    @classmethod
    def for_matrix(cls, dense: nn.Linear, scheme: Any, module: str, factors: int = 1, scalars: bool = False,
                   path: str = "auto", **size_options: Any) -> "FactoredLinear":
        """An uninitialised layer for the FFN matrix `dense` (`module` is "c_fc" or "c_proj"),
        on its device and dtype, sized by `scheme`.

        This default serves the structures sized to a budget: `size_for(in, out, params,
        **size_options)` gives the constructor's size for the parameter count of `scheme`
        (`per_matrix_budget`); `scalars` and `path` are Kronecker's and unused here. Kronecker,
        whose scheme sets its dims, overrides it."""
        target = per_matrix_budget(scheme, dense.in_features, dense.out_features, module, factors)
        W = dense.weight
        return cls(dense.in_features, dense.out_features, bias=dense.bias is not None, device=W.device, dtype=W.dtype,
                   **cls.size_for(dense.in_features, dense.out_features, target, **size_options))

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


__all__ = ["FactoredLinear", "check_factors", "per_matrix_budget", "random_std"]
