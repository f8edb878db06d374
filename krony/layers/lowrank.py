"""Low-rank factored linear layer: W = U V with U (out, r), V (r, in) (docs/method.md, "Structures").

The forward is two thin matmuls, x -> x V^T -> (x V^T) U^T, r·(in + out) multiply-adds per
token. The `svd` init keeps the top r singular triplets of W (U = u·√σ, V = √σ·vᵀ), the
Frobenius-optimal rank-r approximation: its error is the norm of the singular values left out.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from krony.layers.base import FactoredLinear, check_factors, random_std
from krony.structures import REGISTRY


OPTIMAL = ("svd", "vanloan")
"""Names of the optimal init; `vanloan` so that a sweep's `init=vanloan` means the best start of every structure."""


class LowRankLinear(FactoredLinear):
    """y = x Vᵀ Uᵀ + b: `U` (out, r), `V` (r, in), `bias` (out,)."""

    structure = "lowrank"
    inits = REGISTRY["lowrank"].inits
    stored_as_weight = "U"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.rank = check_factors(rank, "rank")
        self.in_features, self.out_features = in_features, out_features
        kw = {"device": device, "dtype": dtype}
        self.U = nn.Parameter(torch.empty(out_features, self.rank, **kw))
        self.V = nn.Parameter(torch.empty(self.rank, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        if not self.U.is_meta:
            self.init_from(None, "random")

    @staticmethod
    def size_for(in_features: int, out_features: int, params: float) -> dict[str, int]:
        """The rank whose r·(in + out) is nearest `params` (at least 1)."""
        return {"rank": max(1, round(params / (in_features + out_features)))}

    @torch.no_grad()
    def init_from(self, W: torch.Tensor | None, method: str = "svd", normalize: bool = False, svd: str = "exact",
                  niter: int = 10, std: float = 0.02) -> None:
        """`svd` (alias `vanloan`, the optimal init of every structure): the top r singular triplets
        (`svd="exact"` in float64, `"lowrank"` randomised as `torch.svd_lowrank`), `normalize` scales
        so that ‖UV‖_F = ‖W‖_F; `random`: normal factors, entries of UV with std `std`."""
        if method == "random":  # each entry of U V has std `std`: a sum of r products of N(0, σ²) draws
            sigma = random_std(std, self.rank)
            self.U.normal_(0.0, sigma)
            self.V.normal_(0.0, sigma)
            return
        if method not in OPTIMAL:
            raise ValueError(f"unknown init {method!r} for lowrank; valid choices: {', '.join(OPTIMAL)}, random")
        Wd = W.detach().double()
        if svd == "exact":
            U, S, Vh = torch.linalg.svd(Wd, full_matrices=False)
            U, S, Vh = U[:, : self.rank], S[: self.rank], Vh[: self.rank]
        elif svd == "lowrank":
            U, S, V = (t.double() for t in torch.svd_lowrank(Wd.float(), q=self.rank, niter=niter))
            Vh = V.mT
        else:
            raise ValueError(f"unknown svd {svd!r}; valid choices: exact, lowrank")
        U, Vh = U * S.sqrt(), S.sqrt()[:, None] * Vh
        if normalize and (U @ Vh).norm() > 0:
            U = U * (Wd.norm() / (U @ Vh).norm())
        self.U.copy_(U)
        self.V.copy_(Vh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.V), self.U, self.bias)  # (..., in) -> (..., r) -> (..., out)

    def to_dense(self) -> torch.Tensor:
        return self.U @ self.V

    def multiply_adds(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.bias is not None}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


__all__ = ["LowRankLinear"]
