"""Build the student (and the teacher, when distilling) from a model config: load, compress, freeze."""

from __future__ import annotations

import copy

import torch
from torch import nn

from krony.compression import compress, count_params
from krony.config import GPTConfig, ModelConfig
from krony.fileio import InvalidFile
from krony.model import GPT, CausalSelfAttention, set_activation


def load_teacher(cfg: ModelConfig, seed: int = 0) -> GPT:
    """The dense checkpoint: loaded from `cfg.teacher`, or random weights from `cfg.teacher_config`."""
    if cfg.teacher is not None:
        try:
            return GPT.from_pretrained(cfg.teacher)
        except InvalidFile:
            raise
        except ValueError as e:
            raise ValueError(f"model.teacher={cfg.teacher!r}: {e} Or run offline with experiment=smoke.") from e
    overrides = dict(cfg.teacher_config or {})
    preset = overrides.pop("preset", "gpt2")
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset(preset, **overrides))


def distil_student(teacher: GPT, layers: list[int]) -> GPT:
    """A shallower GPT initialised from the teacher's embeddings, `ln_f` and the chosen blocks."""
    bad = [i for i in layers if not 0 <= i < teacher.config.n_layer]
    if bad or not layers:
        raise ValueError(f"model.student_layers {layers}: the teacher has blocks 0..{teacher.config.n_layer - 1}")
    config = GPTConfig(**{**teacher.config.to_dict(), "n_layer": len(layers)})
    student = GPT(config)
    sd = {k: v for k, v in teacher.state_dict().items() if not k.startswith("transformer.h.")}
    for new, old in enumerate(layers):
        prefix = f"transformer.h.{old}."
        sd.update({f"transformer.h.{new}." + k[len(prefix):]: v for k, v in teacher.state_dict().items() if k.startswith(prefix)})
    student.load_state_dict(sd)
    return student


def untie_head(model: GPT) -> None:
    """Replace the tied lm_head weight by a trainable copy of wte, in place."""
    model.config.tie_embeddings = False
    model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())


def set_dropout(model: GPT, p: float) -> None:
    """Change every dropout probability of `model` in place."""
    model.config.dropout = p
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(m, CausalSelfAttention):
            m.dropout = p


def build_student(cfg: ModelConfig, seed: int = 0, keep_teacher: bool = False) -> tuple[GPT, GPT | None, int]:
    """(student, teacher if `keep_teacher` else None, teacher parameter count)."""
    teacher = load_teacher(cfg, seed).eval()
    teacher_params = count_params(teacher)
    if cfg.kind == "distil":
        student = distil_student(teacher, cfg.student_layers)
    else:
        student = copy.deepcopy(teacher) if keep_teacher else teacher
        if cfg.kind == "krony":
            compress(student, config=cfg.compress_config(), progress=True)
    set_dropout(student, cfg.dropout)
    if cfg.activation is not None:
        set_activation(student, cfg.activation)
    if cfg.untie_head:
        untie_head(student)
    student.train()
    if keep_teacher:
        teacher.requires_grad_(False)
        return student, teacher, teacher_params
    return student, None, teacher_params


__all__ = ["build_student", "distil_student", "load_teacher", "set_dropout", "untie_head"]
