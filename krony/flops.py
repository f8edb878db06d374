"""FLOPs of a training step and the device's peak, for MFU (docs/performance.md).

MFU = (training FLOPs per token x tokens per second) / peak FLOPs of the device. The
FLOPs are counted by `torch.utils.flop_counter` on the meta device, so a Kronecker layer
counts the GEMMs it really runs, not the dense ones it replaces; `analytic_flops_per_token`
is the closed form 6N + 12 L d T (N the weights multiplied per token; PaLM's MFU formula) as a check.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from krony.layers import FactoredLinear


def train_flops(model: nn.Module, batch: int, seq_len: int, backward: bool = True) -> int:
    """FLOPs of forward + backward (or forward only) of `model` (a `krony.GPT`) on a (batch, seq_len) batch.

    Runs on meta copies of the parameters (no memory, no change to the model), so it works
    for any model size on any machine. Matrix products and attention are counted;
    elementwise work (GELU, LayerNorm, the outer products of factor dims of 1) is not.
    """
    params = {k: torch.empty_like(v, device="meta").requires_grad_(v.requires_grad)
              for k, v in model.named_parameters()}
    buffers = {k: torch.empty_like(v, device="meta") for k, v in model.named_buffers()}
    idx = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        _, loss = functional_call(model, {**params, **buffers}, (idx, idx), tie_weights=True)
        if backward and loss.requires_grad:  # frozen parameters cost no weight gradients
            loss.backward()
    return int(counter.get_total_flops())


def analytic_flops_per_token(model: nn.Module, seq_len: int, backward: bool = True) -> int:
    """6N + 12 L d T per token: N multiply-adds per token of the weight matrices (factored
    layers by their chosen path, the tied head counted once as d x vocab), plus attention over
    `seq_len` tokens. `backward=False`: the forward alone (inference), 2N + 4 L d T."""
    madds = 0
    for m in model.modules():
        if isinstance(m, FactoredLinear):
            madds += m.multiply_adds()
        elif isinstance(m, nn.Linear):
            madds += m.in_features * m.out_features
    c = model.config
    passes = 3 if backward else 1  # the backward pass costs twice the forward
    return passes * (2 * madds + 4 * c.n_layer * c.n_embd * seq_len)


def peak_flops(device: torch.device | str, dtype: torch.dtype | str = torch.bfloat16,
               override: float | None = None) -> float | None:
    """Peak FLOP/s of one device: `override` when given, else Lightning's table of accelerators
    (H100, H200, A100, L4, A10G, RTX, TPU, ...) for `dtype`; None for CPUs and unknown devices."""
    if override is not None:
        if override <= 0:
            raise ValueError(f"peak_flops must be > 0 FLOP/s, got {override}")
        return float(override)
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(torch.device(device), dtype)
    return float(flops) if flops else None


__all__ = ["analytic_flops_per_token", "peak_flops", "train_flops"]
