"""One FFN pair (expand then contract matrix) per Table-1 scheme and structure against the dense `nn.Linear` pair.

Forward + backward of the two linear maps of one block at `tokens` tokens, with the
activation left out (it costs both sides the same); a factored pair runs as the model runs it
(`kron_ffn` where a Kronecker pair is fusable). Low-rank and Monarch pairs are sized to the
scheme's budget as `krony.compress` sizes them. The bound is the dense multiply-adds over the
pair's: what the pair would reach if it ran at the dense GEMM's rate.
"""

from __future__ import annotations

import torch
from torch import nn

from krony.bench.timing import interleaved
from krony.compression import layer_for
from krony.config import CompressConfig
from krony.layers.kronecker import KroneckerLinear, fusable, kron_ffn
from krony.schemes import NAMED


def ffn_pair(scheme: str | None, n_embd: int = 768, n_inner: int = 3072, factors: int = 1,
             device: str = "cpu", dtype: torch.dtype = torch.float32, structure: str = "kronecker",
             match: str = "params") -> tuple[nn.Module, nn.Module]:
    """(expand, contract): `nn.Linear`s for scheme None, else layers of `structure` at the scheme
    (Kronecker: its dims; lowrank / monarch: its budget by `match`)."""
    kw = {"device": device, "dtype": dtype}
    fc, proj = nn.Linear(n_embd, n_inner, **kw), nn.Linear(n_inner, n_embd, **kw)
    if scheme is None:
        return fc, proj
    cfg = CompressConfig(structure=structure, scheme=scheme, factors=factors, match=match)
    return tuple(layer_for(dense, role, cfg)[0] for dense, role in ((fc, "expand"), (proj, "contract")))


def pair_step(fc: nn.Module, proj: nn.Module, x: torch.Tensor, compile: bool = False):
    """A closure running forward + backward of proj(fc(x)) (torch.compile'd with `compile`)."""
    grad = torch.ones(x.shape[:-1] + (proj.out_features,), device=x.device, dtype=x.dtype)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return kron_ffn(x, fc, proj) if fusable(fc, proj) else proj(fc(x))

    fwd = torch.compile(forward) if compile else forward

    def step() -> None:
        fwd(x).backward(grad)

    return step


def size_of(layer: nn.Module) -> str:
    """The layer's size in its own terms: A dims, rank, or blocks and block rank."""
    if isinstance(layer, KroneckerLinear):
        return f"A={layer.a_dims[0]}x{layer.a_dims[1]}"
    return ", ".join(f"{k}={v}" for k, v in layer.spec().items() if k not in ("in_features", "out_features", "bias"))


def bench_layers(schemes: list[str] | None = None, tokens: int = 1024, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, factors: int = 1, rounds: int = 7,
                 compile: bool = False, structures: tuple[str, ...] = ("kronecker",),
                 match: str = "params") -> list[dict]:
    """One row per scheme and structure: milliseconds of the pair beside the dense pair (timed in
    turns), speedup, FLOP-ratio bound, the pair's parameters and Kronecker's forward paths."""
    names = schemes or [s.key for s in NAMED if s.name != "gpt2"]
    x = torch.randn(tokens, 768, device=device, dtype=dtype, requires_grad=True)
    dense_fc, dense_proj = ffn_pair(None, device=device, dtype=dtype)
    dense_step = pair_step(dense_fc, dense_proj, x, compile)
    dense_madds = dense_fc.in_features * dense_fc.out_features + dense_proj.in_features * dense_proj.out_features
    rows = []
    for name in names:
        for structure in structures:
            fc, proj = ffn_pair(name, factors=factors, device=device, dtype=dtype, structure=structure, match=match)
            t = interleaved({"dense": dense_step, "factored": pair_step(fc, proj, x, compile)}, device, rounds=rounds,
                            warmup=3 if compile else 2)
            madds = fc.multiply_adds() + proj.multiply_adds()
            rows.append({
                "scheme": name, "structure": structure, "size": size_of(fc), "factors": factors, "tokens": tokens,
                "compile": compile, "params": fc.num_params() + proj.num_params(),
                "path_fc": getattr(fc, "chosen_path", None), "path_proj": getattr(proj, "chosen_path", None),
                "dense_ms": 1e3 * t["dense"], "factored_ms": 1e3 * t["factored"],
                "speedup": t["dense"] / t["factored"], "bound": dense_madds / madds,
                "of_bound": (t["dense"] / t["factored"]) / (dense_madds / madds),
            })
    return rows
