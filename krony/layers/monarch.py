"""Monarch factored linear layer (Dao et al. 2022): two block-diagonal matrices with a fixed
permutation between them (docs/method.md, "Structures").

With m blocks and block rank b, a weight W (out, in) is seen as an m x m grid of blocks of
(out/m, in/m); Monarch makes every block W[j, i] a rank-b matrix, sum_c L[j][:, (i, c)] R[i][(j, c), :]:

    x (in)  -> m blocks of in/m -> R: block-diagonal, block i (m·b, in/m)  -> (m, m·b)
            -> permute (i, j) -> L: block-diagonal, block j (out/m, m·b)   -> (m, out/m) -> y (out)

Parameters and multiply-adds per token are both m·b·(in + out). b = in/m = out/m... up to
min(in, out)/m gives back any W. The `project` init (alias `vanloan`) is the closed-form
Frobenius projection: the top-b SVD of every block, so a W that is itself Monarch comes back exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from krony.layers.base import FactoredLinear, check_factors, random_std
from krony.structures import REGISTRY

OPTIMAL = ("project", "vanloan")
"""Names of the optimal init; `vanloan` so that a sweep's `init=vanloan` means the best start of every structure."""


class MonarchLinear(FactoredLinear):
    """y = Monarch(L, R) x + b: `R` (m, m·b, in/m), `L` (m, out/m, m·b), `bias` (out,)."""

    structure = "monarch"
    inits = REGISTRY["monarch"].inits
    stored_as_weight = "R"

    def __init__(self, in_features: int, out_features: int, nblocks: int = 4, block_rank: int = 1, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        m, b = check_factors(nblocks, "nblocks"), check_factors(block_rank, "block_rank")
        if in_features % m or out_features % m:
            raise ValueError(f"nblocks={m} must divide both dims of the ({out_features}, {in_features}) matrix")
        self.in_features, self.out_features, self.nblocks, self.block_rank = in_features, out_features, m, b
        kw = {"device": device, "dtype": dtype}
        self.R = nn.Parameter(torch.empty(m, m * b, in_features // m, **kw))
        self.L = nn.Parameter(torch.empty(m, out_features // m, m * b, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        if not self.R.is_meta:
            self.init_from(None, "random")

    @staticmethod
    def size_for(in_features: int, out_features: int, params: float, nblocks: int = 4) -> dict[str, int]:
        """The block rank whose m·b·(in + out) is nearest `params` (at least 1), for m = `nblocks`."""
        return {"nblocks": nblocks, "block_rank": max(1, round(params / (nblocks * (in_features + out_features))))}

    def _blocks(self, W: torch.Tensor) -> torch.Tensor:
        """W (out, in) -> its grid of blocks (m_out j, m_in i, out/m, in/m)."""
        m = self.nblocks
        return W.reshape(m, self.out_features // m, m, self.in_features // m).transpose(1, 2)

    @torch.no_grad()
    def init_from(self, W: torch.Tensor | None, method: str = "project", normalize: bool = False,
                  std: float = 0.02, svd: str = "exact", niter: int = 10) -> None:
        """`project` (alias `vanloan`): the top-b SVD of each block, the Frobenius-optimal Monarch
        approximation; `normalize` scales it to ‖W‖_F; `random`: entries of the product with std `std`.
        `svd` and `niter` are the options `init=vanloan` carries: the block SVDs are always exact."""
        m, b = self.nblocks, self.block_rank
        if method == "random":  # each entry of a block is a sum of b products of N(0, σ²) draws
            sigma = random_std(std, b)
            self.R.normal_(0.0, sigma)
            self.L.normal_(0.0, sigma)
            return
        if method not in OPTIMAL:
            raise ValueError(f"unknown init {method!r} for monarch; valid choices: {', '.join(OPTIMAL)}, random")
        blocks = self._blocks(W.detach().double())  # (j, i, s, p)
        U, S, Vh = torch.linalg.svd(blocks, full_matrices=False)  # batched over the m x m blocks
        k = min(b, S.shape[-1])
        root = S[..., :k].sqrt()
        left = torch.zeros(m, m, blocks.shape[2], b, dtype=torch.float64, device=W.device)  # (j, i, s, c)
        right = torch.zeros(m, m, b, blocks.shape[3], dtype=torch.float64, device=W.device)  # (j, i, c, p)
        left[..., :k] = U[..., :k] * root[..., None, :]
        right[..., :k, :] = root[..., None] * Vh[..., :k, :]
        L = left.permute(0, 2, 1, 3).reshape(m, self.out_features // m, m * b)  # block j: columns (i, c)
        R = right.permute(1, 0, 2, 3).reshape(m, m * b, self.in_features // m)  # block i: rows (j, c)
        if normalize:
            approx = self._dense(L, R).norm()
            if approx > 0:
                L = L * (W.detach().double().norm() / approx)
        self.L.copy_(L)
        self.R.copy_(R)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, b = self.nblocks, self.block_rank
        lead = x.shape[:-1]
        xb = x.reshape(-1, m, self.in_features // m).transpose(0, 1)  # (m_i, N, in/m)
        t = torch.bmm(xb, self.R.mT.to(x.dtype))  # (m_i, N, m_j·b)
        t = t.reshape(m, -1, m, b).permute(2, 1, 0, 3).reshape(m, -1, m * b)  # (m_j, N, m_i·b): the permutation
        y = torch.bmm(t, self.L.mT.to(t.dtype))  # (m_j, N, out/m)
        y = y.transpose(0, 1).reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _dense(self, L: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        m, b = self.nblocks, self.block_rank
        s, p = self.out_features // m, self.in_features // m
        left = L.reshape(m, s, m, b)  # (j, s, i, c)
        right = R.reshape(m, m, b, p)  # (i, j, c, p)
        return torch.einsum("jsic,ijcp->jsip", left, right).reshape(self.out_features, self.in_features)

    def to_dense(self) -> torch.Tensor:
        return self._dense(self.L, self.R)

    def multiply_adds(self) -> int:
        return self.nblocks * self.block_rank * (self.in_features + self.out_features)

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "nblocks": self.nblocks,
                "block_rank": self.block_rank, "bias": self.bias is not None}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}, "
                f"block_rank={self.block_rank}, bias={self.bias is not None}")


__all__ = ["MonarchLinear"]
