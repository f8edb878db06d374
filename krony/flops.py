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
from krony.lm import LogitsOf, width
from krony.targets import n_blocks


def train_flops(model: nn.Module, batch: int, seq_len: int, backward: bool = True) -> int:
    """FLOPs of forward + backward (or forward only) of `model` (krony's `GPT` or a transformers
    causal LM) on a (batch, seq_len) batch, with the next-token loss.

    Runs on meta copies of the parameters (no memory, no change to the model), so it works
    for any model size on any machine. Matrix products and attention are counted;
    elementwise work (GELU, LayerNorm, the outer products of factor dims of 1) is not. A model
    whose forward reads tensor values (transformers' mask checks call `.item()`, which meta
    tensors cannot answer) is counted on one real sequence instead, times `batch` (every
    operation is per sequence).
    """
    try:
        return _count(LogitsOf(model), batch, seq_len, backward, meta=True)
    except RuntimeError as e:
        if "meta" not in str(e):
            raise
        return batch * _count(LogitsOf(model), 1, seq_len, backward, meta=False)


def _count(wrapped: nn.Module, batch: int, seq_len: int, backward: bool, meta: bool) -> int:
    """FLOPs of the next-token loss of `wrapped` on zeros (meta: on meta copies of its tensors; else
    on the model itself in eval mode, gradients taken with `autograd.grad`, so no `.grad` changes)."""
    counter = FlopCounterMode(display=False)
    device = "meta" if meta else next(wrapped.parameters()).device
    idx = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    was_training = wrapped.training
    try:
        with counter:
            if meta:
                params = {k: torch.empty_like(v, device="meta").requires_grad_(v.requires_grad)
                          for k, v in wrapped.named_parameters()}
                buffers = {k: torch.empty_like(v, device="meta") for k, v in wrapped.named_buffers()}
                logits = functional_call(wrapped, {**params, **buffers}, (idx,), tie_weights=True)
                trainable = [p for p in params.values() if p.requires_grad]
            else:
                wrapped.eval()  # no dropout: the run's random numbers are not drawn from
                logits = wrapped(idx)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), idx.flatten())
            if backward and loss.requires_grad:  # frozen parameters cost no weight gradients
                torch.autograd.grad(loss, trainable, allow_unused=True)
    finally:
        wrapped.train(was_training)
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
    passes = 3 if backward else 1  # the backward pass costs twice the forward
    return passes * (2 * madds + 4 * n_blocks(model) * width(model) * seq_len)


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
