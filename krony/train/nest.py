"""Nested (Matryoshka) training: which prefixes of the Kronecker factors a step trains, and their loss.

Each step runs a forward per prefix on the same batch and returns the weighted sum of their
losses, so the one backward and the one optimizer step train every prefix at once (the
gradients equal a backward per prefix; the prefixes' activations are held together, so memory
grows with the prefixes a step takes: 3 for sandwich). Schedules (`NestConfig.schedule`):

- all: every prefix, cross-entropy each, weighted by λ_k.
- sandwich: the largest prefix (cross-entropy), the smallest and one random middle prefix, these
  two learning the largest's predictions (KL to its detached softmax, "in-place distillation"
  of slimmable networks).
- sample: one prefix a step, drawn at random, the largest every `largest_every`-th step.

`per_layer` draws the middle (sampled) prefix for each layer separately. The draws come from a
generator seeded by the run's seed and the step, so a resumed run draws the same prefixes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from krony.compression import kronecker_layers
from krony.config import NestConfig
from krony.nested import Sizes, set_active_factors
from krony.lm import logits as lm_logits
from krony.train.losses import lm_loss, soft_target_kl


@dataclass
class Prefix:
    """One forward of a nested step."""

    sizes: Sizes
    """k for every layer, or {module name: k}."""
    weight: float
    """λ of its loss."""
    distil: bool
    """Learn the largest prefix's predictions (sandwich) instead of the next tokens."""
    label: str
    """Names its logged loss: "k4", or "mixed" for a per-layer draw."""


def plan(cfg: NestConfig, step: int, seed: int, layer_names: list[str]) -> list[Prefix]:
    """The prefixes step `step` trains, largest first when it is among them."""
    ks = cfg.prefixes
    rng = random.Random(seed * 1_000_003 + step)
    largest = Prefix(ks[-1], cfg.weight(ks[-1]), False, f"k{ks[-1]}")

    def drawn(choices: list[int], distil: bool) -> Prefix:
        if cfg.per_layer:
            sizes = {name: rng.choice(choices) for name in layer_names}
            return Prefix(sizes, 1.0, distil, "mixed")
        k = rng.choice(choices)
        return Prefix(k, cfg.weight(k), distil, f"k{k}")

    if cfg.schedule == "all":
        return [largest] + [Prefix(k, cfg.weight(k), False, f"k{k}") for k in reversed(ks[:-1])]
    if cfg.schedule == "sandwich":
        out = [largest]
        if len(ks) > 2:
            out.append(drawn(ks[1:-1], True))
        if len(ks) > 1:
            out.append(Prefix(ks[0], cfg.weight(ks[0]), True, f"k{ks[0]}"))
        return out
    if cfg.schedule == "sample":
        return [largest] if step % cfg.largest_every == 0 else [drawn(ks[:-1] or ks, False)]
    raise ValueError(f"nested training is off (schedule {cfg.schedule!r})")


def nested_loss(student, cfg: NestConfig, x: torch.Tensor, y: torch.Tensor, step: int,
                seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted sum of the step's prefix losses, {"train/loss_<label>": cross-entropy of each}).
    Leaves every layer with all its factors active."""
    prefixes = plan(cfg, step, seed, list(kronecker_layers(student)))
    total, parts, reference = None, {}, None
    try:
        for p in prefixes:
            set_active_factors(student, p.sizes)
            logits = lm_logits(student, x)  # (B, T, V)
            if p.distil and reference is not None:
                loss = soft_target_kl(logits, reference, cfg.temperature)
                with torch.no_grad():  # logged only: no graph over the (B, T, V) log-softmax
                    ce = lm_loss(logits, y)
            else:
                loss = ce = lm_loss(logits, y)
            if reference is None:
                reference = logits.detach()
            total = p.weight * loss if total is None else total + p.weight * loss
            parts[f"train/loss_{p.label}"] = ce.detach()
    finally:
        set_active_factors(student, None)
    return total, parts


@torch.no_grad()
def prefix_losses(student, cfg: NestConfig, x: torch.Tensor, y: torch.Tensor) -> dict[int, torch.Tensor]:
    """{k: next-token loss with the first k factors} for every prefix (validation)."""
    out = {}
    try:
        for k in cfg.prefixes:
            set_active_factors(student, k)
            out[k] = lm_loss(lm_logits(student, x), y)
    finally:
        set_active_factors(student, None)
    return out


__all__ = ["Prefix", "nested_loss", "plan", "prefix_losses"]
