"""One FFN pair (c_fc then c_proj) per Table-1 scheme against the dense `nn.Linear` pair.

Forward + backward of the two linear maps of one block at `tokens` tokens, with the
activation left out (it costs both sides the same); the Kronecker pair runs as the model
runs it (`kron_ffn` where the pair is fusable). The bound is the dense multiply-adds over
the scheme's: what the pair would reach if it ran at the dense GEMM's rate.
"""

from __future__ import annotations

import torch
from torch import nn

from krony.bench.timing import interleaved
from krony.layers.kronecker import KroneckerLinear, fusable, kron_ffn
from krony.schemes import NAMED, get_scheme


def ffn_pair(scheme: str | None, n_embd: int = 768, n_inner: int = 3072, factors: int = 1,
             device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module]:
    """(c_fc, c_proj): `nn.Linear`s for scheme None, else `KroneckerLinear`s of the scheme's dims."""
    kw = {"device": device, "dtype": dtype}
    if scheme is None:
        return nn.Linear(n_embd, n_inner, **kw), nn.Linear(n_inner, n_embd, **kw)
    s = get_scheme(scheme)
    return (KroneckerLinear(n_embd, n_inner, s.a_dims_for("c_fc"), factors, **kw),
            KroneckerLinear(n_inner, n_embd, s.a_dims_for("c_proj"), factors, **kw))


def pair_step(fc: nn.Module, proj: nn.Module, x: torch.Tensor, compile: bool = False):
    """A closure running forward + backward of proj(fc(x)) (torch.compile'd with `compile`)."""
    grad = torch.ones(x.shape[:-1] + (proj.out_features,), device=x.device, dtype=x.dtype)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return kron_ffn(x, fc, proj) if fusable(fc, proj) else proj(fc(x))

    fwd = torch.compile(forward) if compile else forward

    def step() -> None:
        fwd(x).backward(grad)

    return step


def bench_layers(schemes: list[str] | None = None, tokens: int = 1024, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, factors: int = 1, rounds: int = 7,
                 compile: bool = False) -> list[dict]:
    """One row per scheme: milliseconds of both pairs, speedup, FLOP-ratio bound, paths."""
    names = schemes or [s.key for s in NAMED if s.name != "gpt2"]
    x = torch.randn(tokens, 768, device=device, dtype=dtype, requires_grad=True)
    dense_fc, dense_proj = ffn_pair(None, device=device, dtype=dtype)
    dense_step = pair_step(dense_fc, dense_proj, x, compile)
    rows = []
    for name in names:
        fc, proj = ffn_pair(name, factors=factors, device=device, dtype=dtype)
        t = interleaved({"dense": dense_step, "kron": pair_step(fc, proj, x, compile)}, device, rounds=rounds,
                        warmup=3 if compile else 2)
        dense_madds = fc.in_features * fc.out_features + proj.in_features * proj.out_features
        madds = fc.multiply_adds() + proj.multiply_adds()
        rows.append({
            "scheme": name, "factors": factors, "tokens": tokens, "compile": compile,
            "path_fc": fc.chosen_path, "path_proj": proj.chosen_path,
            "dense_ms": 1e3 * t["dense"], "kron_ms": 1e3 * t["kron"],
            "speedup": t["dense"] / t["kron"], "bound": dense_madds / madds,
            "of_bound": (t["dense"] / t["kron"]) / (dense_madds / madds),
        })
    return rows
