"""Build the student (and the teacher, when distilling) from a model config: load, compress, freeze."""

from __future__ import annotations

import copy

import torch
from torch import nn

from krony.compression import compress, count_params
from krony.config import GPTConfig, ModelConfig
from krony.fileio import InvalidFile
from krony.model import GPT, CausalSelfAttention, set_activation
from krony.targets import family_words

DROPOUT_KEYS = ("dropout", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                "activation_dropout")
"""transformers config fields that hold a dropout probability (set with the modules, so exports agree)."""


def load_teacher(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    """The dense checkpoint: loaded from `cfg.teacher` (krony's `GPT` for GPT-2, the transformers
    class of any other family: `krony.causal_lm.load_model`), or random GPT-2 weights from
    `cfg.teacher_config`."""
    if cfg.teacher is not None:
        from krony.causal_lm import load_model

        try:
            return load_model(cfg.teacher)
        except InvalidFile:
            raise
        except ValueError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"model.teacher={cfg.teacher!r}: {reason} Or run offline with experiment=smoke.") from e
    overrides = dict(cfg.teacher_config or {})
    preset = overrides.pop("preset", "gpt2")
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset(preset, **overrides))


def distil_student(teacher: nn.Module, layers: list[int]) -> GPT:
    """A shallower GPT initialised from the teacher's embeddings, `ln_f` and the chosen blocks."""
    if not isinstance(teacher, GPT):
        raise ValueError(f"model.kind=distil copies blocks of a GPT-2 teacher, not of a {family_words(teacher)} "
                         f"model: compress it with model=krony instead")
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


def untie_head(model: nn.Module) -> None:
    """Replace the tied output embedding by a trainable copy of the input embedding, in place."""
    for key in ("tie_embeddings", "tie_word_embeddings"):
        if hasattr(model.config, key):
            setattr(model.config, key, False)
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone())


def set_dropout(model: nn.Module, p: float) -> None:
    """Change every dropout probability of `model` in place: `nn.Dropout` modules, attention
    dropout (krony's `CausalSelfAttention`, transformers' `attention_dropout` attributes) and the
    config's dropout fields."""
    for key in DROPOUT_KEYS:
        if isinstance(getattr(model.config, key, None), float):
            setattr(model.config, key, p)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(m, CausalSelfAttention):
            m.dropout = p
        elif isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = p


def build_student(cfg: ModelConfig, seed: int = 0, keep_teacher: bool = False) -> tuple[nn.Module, nn.Module | None, int]:
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
        if not isinstance(student, GPT):
            raise ValueError(f"model.activation={cfg.activation} switches GPT-2's GELU; a {family_words(student)} "
                             f"model keeps its own activation: leave model.activation null")
        set_activation(student, cfg.activation)
    if cfg.untie_head:
        untie_head(student)
    student.train()
    if keep_teacher:
        teacher.requires_grad_(False)
        return student, teacher, teacher_params
    return student, None, teacher_params


__all__ = ["build_student", "distil_student", "load_teacher", "set_dropout", "untie_head"]
