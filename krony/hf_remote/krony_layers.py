"""The factored layers of a krony export, for transformers' remote code (`modeling_krony.py`).

Written by krony into every compressed export; it imports only torch, so the folder loads
where krony is not installed. Each class computes x @ W^T + b without building W and keeps
the factor named in its docstring under `weight` (the dense weight's key), so a loader that
expects a dense matrix stops on its shape. config.json names each layer's class
(`krony_layers`), from krony's structure registry.
"""

import torch
from torch import nn


class KroneckerLinear(nn.Module):
    """y = x W^T + b with W = sum_i s_i kron(A_i, B_i); A (r, m1, n1), B (r, m2, n2).

    A token x of n1*n2 features is read as X (n1, n2) and y = sum_i s_i A_i X B_i^T, (m1, m2).
    A is stored as `weight` (under the dense weight's key): the family's plain class then stops
    on its shape instead of loading this folder with random FFN weights.
    """

    def __init__(self, in_features, out_features, a_dims, factors=1, scalars=False, bias=True):
        super().__init__()
        m1, n1 = int(a_dims[0]), int(a_dims[1])
        if out_features % m1 or in_features % n1:
            raise ValueError(f"A dims ({m1}, {n1}) do not divide a ({out_features}, {in_features}) matrix")
        m2, n2 = out_features // m1, in_features // n1
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(factors, m1, n1))  # A
        self.B = nn.Parameter(torch.zeros(factors, m2, n2))
        self.scalars = nn.Parameter(torch.ones(factors)) if scalars else None
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        r, m1, n1 = self.weight.shape
        _, m2, n2 = self.B.shape
        A = self.weight if self.scalars is None else self.weight * self.scalars.view(r, 1, 1)
        X = x.reshape(*x.shape[:-1], n1, n2)  # (..., n1, n2)
        Y = torch.einsum("rij,...jl,rkl->...ik", A.to(x.dtype), X, self.B.to(x.dtype))  # (..., m1, m2)
        y = Y.reshape(*x.shape[:-1], m1 * m2)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self):
        r, m1, n1 = self.weight.shape
        return f"A=({m1}, {n1}), B={tuple(self.B.shape[1:])}, factors={r}, scalars={self.scalars is not None}"


class LowRankLinear(nn.Module):
    """y = x Vᵀ Uᵀ + b, U (out, r) stored as `weight`, V (r, in)."""

    def __init__(self, in_features, out_features, rank, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, rank))  # U
        self.V = nn.Parameter(torch.zeros(rank, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        y = (x @ self.V.to(x.dtype).mT) @ self.weight.to(x.dtype).mT
        return y if self.bias is None else y + self.bias.to(y.dtype)


class MonarchLinear(nn.Module):
    """Two block-diagonal factors with a permutation between them (Dao et al. 2022): R (m, m·b, in/m)
    stored as `weight`, L (m, out/m, m·b); every (out/m, in/m) block of W has rank b."""

    def __init__(self, in_features, out_features, nblocks, block_rank, bias=True):
        super().__init__()
        m, b = nblocks, block_rank
        self.in_features, self.out_features, self.nblocks, self.block_rank = in_features, out_features, m, b
        self.weight = nn.Parameter(torch.zeros(m, m * b, in_features // m))  # R
        self.L = nn.Parameter(torch.zeros(m, out_features // m, m * b))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        m, b = self.nblocks, self.block_rank
        lead = x.shape[:-1]
        t = torch.bmm(x.reshape(-1, m, self.in_features // m).transpose(0, 1), self.weight.to(x.dtype).mT)
        t = t.reshape(m, -1, m, b).permute(2, 1, 0, 3).reshape(m, -1, m * b)  # the permutation between blocks
        y = torch.bmm(t, self.L.to(t.dtype).mT).transpose(0, 1).reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)


LAYERS = {name: obj for name, obj in list(globals().items()) if isinstance(obj, type) and issubclass(obj, nn.Module)}
"""Every layer class above by name (config.json's `krony_layers` names one per module)."""
