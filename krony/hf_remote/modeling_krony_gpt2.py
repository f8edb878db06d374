"""A GPT-2 whose FFN matrices are factored: sums of Kronecker products (Krony-PT), low-rank or
Monarch, for transformers' remote code: `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`.

Written by krony into every compressed export; it imports only torch and transformers, so the
folder loads where krony is not installed. The model is transformers' own `GPT2LMHeadModel`
(attention, KV cache, masks, generation, pipelines) with each factored `c_fc` / `c_proj`
replaced by its structure's layer, which computes x @ W^T + b without building W. Everything
else keeps GPT-2's layout and keys.
"""

import torch
from torch import nn
from transformers import GPT2LMHeadModel

from .configuration_krony_gpt2 import KronyGPT2Config


class KroneckerLinear(nn.Module):
    """y = x W^T + b with W = sum_i s_i kron(A_i, B_i); A (r, m1, n1), B (r, m2, n2).

    A token x of n1*n2 features is read as X (n1, n2) and y = sum_i s_i A_i X B_i^T, (m1, m2).
    A is stored as `weight` (under the dense weight's key): plain `GPT2LMHeadModel` then stops
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


STRUCTURES = {"kronecker": KroneckerLinear, "lowrank": LowRankLinear, "monarch": MonarchLinear}


class KronyGPT2LMHeadModel(GPT2LMHeadModel):
    """GPT-2 with the factored layers of `config.krony_layers` in place of its dense FFN matrices."""

    config: KronyGPT2Config
    config_class = KronyGPT2Config

    def __init__(self, config):
        super().__init__(config)
        for name, spec in config.krony_layers.items():
            spec = dict(spec)
            structure = spec.pop("structure", "kronecker")
            if structure not in STRUCTURES:
                raise ValueError(f"{name}: structure {structure!r} is not supported by this file; "
                                 f"known: {', '.join(STRUCTURES)}")
            parent, _, child = name.rpartition(".")
            setattr(self.get_submodule(parent), child, STRUCTURES[structure](**spec))

    def _init_weights(self, module):
        if isinstance(module, tuple(STRUCTURES.values())):  # overwritten by the checkpoint; a valid start otherwise
            for p in module.parameters():
                if p is not module.bias:
                    nn.init.normal_(p, std=0.02 ** 0.5)
            return
        super()._init_weights(module)
