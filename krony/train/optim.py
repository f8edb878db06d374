"""AdamW with parameter groups and the learning-rate schedules (constant, cosine, warm-up-stable-decay)."""

from __future__ import annotations

import math
import torch
from torch import nn

from krony.config import SCHEDULES, OptimConfig
from krony.layers import FactoredLinear
from krony.targets import embedding_params


def named_parts(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The parameters `OptimConfig.decay_overrides` can name: wte (the input embedding, tied with
    the output one where the model ties them), wpe (learned positions, where the family has
    them) and the factored layers' scalars."""
    inputs, _ = embedding_params(model)
    scalars = [m.scalars for m in model.modules() if isinstance(m, FactoredLinear) and getattr(m, "scalars", None) is not None]
    return {"wte": inputs[:1], "wpe": inputs[1:], "scalars": scalars}


def param_groups(model: nn.Module, weight_decay: float, overrides: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups, nanoGPT's rule: decay on every parameter with two or more dimensions (dense
    weight matrices and every structure's factor matrices: Kronecker A, B; low-rank U, V; Monarch
    L, R), none on biases, norms and scalars, nor on the embeddings (input, learned positions and
    output, tied or not); then the parts named in `overrides` ({"wte": 0.01, ...}) move to a
    group with their own decay."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    embeddings |= {id(p) for group in embedding_params(model) for p in group}
    decay = {id(p): p for p in model.parameters() if p.ndim >= 2 and id(p) not in embeddings}
    special: dict[int, float] = {}
    parts = named_parts(model)
    for part, wd in (overrides or {}).items():
        special.update({id(p): wd for p in parts[part]})
    trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    groups = [
        {"params": [p for p in trainable if id(p) in decay], "weight_decay": weight_decay},
        {"params": [p for p in trainable if id(p) not in decay], "weight_decay": 0.0},
    ]
    for wd in sorted(set(special.values())):
        params = [p for p in model.parameters() if p.requires_grad and special.get(id(p)) == wd]
        if params:
            groups.append({"params": params, "weight_decay": wd})
    return groups


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate at `step` as a fraction of cfg.lr."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr / cfg.lr
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = int(round(cfg.decay_fraction * total_steps))  # wsd
    decay_start = total_steps - decay_steps
    if step < decay_start or decay_steps == 0:
        return 1.0
    progress = min(1.0, (step - decay_start) / decay_steps)
    return 1.0 - (1.0 - floor) * progress


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int, on_cuda: bool = False,
                    clips_scaled_grads: bool = False):
    """(AdamW, LambdaLR stepping once per optimizer step). The fused kernel is the default on
    CUDA, except when gradients scaled for fp16 are clipped (`clips_scaled_grads`): a fused AdamW
    unscales inside its step, after clipping would have seen scaled gradients."""
    fused = cfg.fused if cfg.fused is not None else on_cuda and not clips_scaled_grads
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.decay_overrides), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_multiplier(step, cfg, total_steps))
    return opt, sched


__all__ = ["OptimConfig", "SCHEDULES", "build_optimizer", "lr_multiplier", "named_parts", "param_groups"]
