"""Training losses: next-token cross-entropy and knowledge distillation (Sanh et al., DistilBERT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from krony.config import DistillConfig


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) * T^2, averaged over tokens; logits (..., V)."""
    t = temperature
    s = F.log_softmax(student_logits.float() / t, dim=-1).flatten(0, -2)
    p = F.log_softmax(teacher_logits.float() / t, dim=-1).flatten(0, -2)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * t * t


def hidden_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student, teacher) over tokens; hidden (..., C)."""
    return (1 - F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)).mean()


def distillation_loss(
    cfg: DistillConfig,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    student_hidden: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """{"loss": weighted total, "kl": ..., "ce": ..., ["cos": ...]}."""
    parts = {"kl": soft_target_kl(student_logits, teacher_logits, cfg.temperature), "ce": lm_loss(student_logits, targets)}
    total = cfg.alpha_ce * parts["kl"] + cfg.alpha_clm * parts["ce"]
    if cfg.alpha_cos > 0:
        if student_hidden is None or teacher_hidden is None:
            raise ValueError("distill.alpha_cos > 0 needs the hidden states of student and teacher")
        parts["cos"] = hidden_cosine_loss(student_hidden, teacher_hidden)
        total = total + cfg.alpha_cos * parts["cos"]
    return {"loss": total, **parts}


__all__ = ["DistillConfig", "distillation_loss", "hidden_cosine_loss", "lm_loss", "soft_target_kl"]
