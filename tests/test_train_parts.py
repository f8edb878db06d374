"""Optimizer groups, schedules, freezing and student building, on tiny models."""

import pytest
import torch

from krony import GPT, GPTConfig, compress, count_params
from krony.compression import factored_layers
from krony.config import ModelConfig
from krony.layers import STRUCTURES
from krony.train.build import build_student, distil_student
from krony.train.freeze import FreezeConfig, apply_freeze
from krony.train.optim import OptimConfig, lr_multiplier, param_groups

A_DIMS = (128, 32)


def test_param_groups_decay_only_weights_and_factors(tiny_model):
    compress(tiny_model, A_DIMS, init="random", factors=2, scalars=True)
    decay, no_decay = param_groups(tiny_model, 0.1)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith((".weight", ".A", ".B")) for n in decayed)
    assert "transformer.h.0.mlp.c_fc.A" in decayed and "transformer.h.0.attn.c_attn.weight" in decayed
    undecayed = {names[id(p)] for p in no_decay["params"]}
    for n in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
              "transformer.h.0.mlp.c_fc.scalars", "transformer.h.0.mlp.c_fc.bias", "transformer.ln_f.bias"):
        assert n in undecayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(tiny_model.parameters()))


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_every_structures_factor_matrices_are_decayed(tiny_model, structure):
    """nanoGPT's rule over every registered structure: each parameter of two or more dimensions
    except embeddings is decayed, so the equal-budget baselines train with Kronecker's recipe."""
    compress(tiny_model, A_DIMS, init="random", structure=structure)
    decay, no_decay = param_groups(tiny_model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    for name, layer in factored_layers(tiny_model).items():
        factors = [n for n, p in layer.named_parameters() if p.ndim >= 2]
        assert len(factors) == 2 and all(id(layer.get_parameter(n)) in decayed for n in factors), (name, factors)
        assert layer.bias is None or id(layer.bias) not in decayed
    assert id(tiny_model.transformer.wte.weight) not in decayed and id(tiny_model.transformer.wpe.weight) not in decayed


def test_a_transformers_models_embeddings_are_not_decayed():
    from families import tiny_model as family_model

    model = compress(family_model("llama", tie_word_embeddings=False), ffn_fraction=0.5, structure="lowrank")
    decay, _ = param_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.model.embed_tokens.weight) not in decayed and id(model.lm_head.weight) not in decayed
    assert id(model.model.layers[0].mlp.up_proj.U) in decayed and id(model.model.layers[0].self_attn.q_proj.weight) in decayed


def test_the_authors_decay_overrides(tiny_model):
    """code=authors: weight decay 0.01 on wte (tied with lm_head) and the scalars, 0.1 on wpe."""
    compress(tiny_model, A_DIMS, init="random", factors=2, scalars=True)
    groups = param_groups(tiny_model, 0.1, {"wte": 0.01, "scalars": 0.01, "wpe": 0.1})
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    by_decay = {}
    for g in groups:
        by_decay.setdefault(g["weight_decay"], set()).update(names[id(p)] for p in g["params"])
    assert {"transformer.wte.weight", "transformer.h.0.mlp.c_fc.scalars", "transformer.h.1.mlp.c_proj.scalars"} <= by_decay[0.01]
    assert "transformer.wpe.weight" in by_decay[0.1] and "transformer.h.0.mlp.c_fc.A" in by_decay[0.1]
    assert "transformer.wpe.weight" not in by_decay[0.0] and "transformer.ln_f.bias" in by_decay[0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(tiny_model.parameters()))  # each once
    with pytest.raises(ValueError, match="decay_overrides.lm_head='lm_head': valid choices: wte, wpe, scalars"):
        OptimConfig(decay_overrides={"lm_head": 0.1})


def test_frozen_parameters_are_left_out(tiny_model):
    apply_freeze(tiny_model, FreezeConfig(embeddings=True))
    groups = param_groups(tiny_model, 0.1)
    wte = tiny_model.transformer.wte.weight
    assert all(p is not wte for g in groups for p in g["params"])


@pytest.mark.parametrize(
    "cfg,expected",
    [
        (OptimConfig(lr=1.0, min_lr=0.1, schedule="constant"), [1.0, 1.0, 1.0]),
        (OptimConfig(lr=1.0, min_lr=0.1, schedule="cosine", warmup_steps=0), [1.0, 0.55, 0.1]),
        (OptimConfig(lr=1.0, min_lr=0.1, schedule="wsd", decay_fraction=0.5), [1.0, 1.0, 0.1]),
    ],
)
def test_schedules(cfg, expected):
    assert [round(lr_multiplier(s, cfg, 100), 6) for s in (0, 50, 100)] == expected


def test_warmup():
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10)
    assert lr_multiplier(0, cfg, 100) == pytest.approx(0.1)
    assert lr_multiplier(9, cfg, 100) == pytest.approx(1.0)
    assert lr_multiplier(10, cfg, 100) == pytest.approx(1.0)


def test_wsd_decays_linearly():
    cfg = OptimConfig(lr=1.0, min_lr=0.0, schedule="wsd", decay_fraction=0.2)
    assert lr_multiplier(79, cfg, 100) == 1.0
    assert lr_multiplier(90, cfg, 100) == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs,match", [(dict(lr=0), "lr=0: the learning rate must be a finite number > 0"), (dict(schedule="step"), "constant, cosine, wsd")])
def test_optim_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimConfig(**kwargs)


def test_freezing(tiny_model):
    compress(tiny_model, A_DIMS, init="random", factors=2, scalars=True)
    frozen = apply_freeze(tiny_model, FreezeConfig(attention=True, layer_norms=True, scalars_value=4.0))
    assert "transformer.h.1.attn.c_attn.weight" in frozen and "transformer.ln_f.weight" in frozen
    layer = tiny_model.transformer.h[0].mlp.c_fc
    assert not layer.scalars.requires_grad and torch.all(layer.scalars == 4.0)
    assert layer.A.requires_grad and tiny_model.transformer.wte.weight.requires_grad


def test_freezing_scalars_needs_scalars(tiny_model):
    with pytest.raises(ValueError, match="has no Kronecker scalars"):
        apply_freeze(tiny_model, FreezeConfig(scalars=True))


def test_distil_student_copies_the_chosen_blocks(tiny_config):
    torch.manual_seed(0)
    teacher = GPT(tiny_config.__class__(**{**tiny_config.to_dict(), "n_layer": 4}))
    student = distil_student(teacher, [1, 3])
    assert student.config.n_layer == 2
    torch.testing.assert_close(student.transformer.h[1].mlp.c_fc.weight, teacher.transformer.h[3].mlp.c_fc.weight)
    torch.testing.assert_close(student.transformer.wte.weight, teacher.transformer.wte.weight)
    with pytest.raises(ValueError, match="the teacher has blocks 0..3"):
        distil_student(teacher, [0, 4])


def test_distilgpt2_student_has_the_published_size():
    with torch.device("meta"):
        student = distil_student(GPT(GPTConfig()), [0, 2, 4, 7, 9, 11])
    assert count_params(student) == 81_912_576


def test_build_student_random_teacher_and_distillation(tiny_config):
    cfg = ModelConfig(kind="krony", teacher=None, teacher_config={"preset": "gpt2", **{k: v for k, v in tiny_config.to_dict().items()}},
                      scheme="128x32", init="vanloan", factors=4)
    student, teacher, teacher_params = build_student(cfg, seed=0, keep_teacher=True)
    assert teacher is not None and not any(p.requires_grad for p in teacher.parameters())
    assert teacher_params == count_params(teacher) == count_params(student) - 4 * (4 * (128 * 32 + 2 * 2) - 256 * 64)
    idx = torch.randint(0, tiny_config.vocab_size, (1, 8))
    torch.testing.assert_close(student.eval()(idx)[0], teacher(idx)[0], atol=1e-4, rtol=1e-4)  # full-rank VL


def test_model_config_errors():
    with pytest.raises(ValueError, match="kind=.lora.: valid choices: krony, distil, dense"):
        ModelConfig(kind="lora")
    with pytest.raises(ValueError, match="set model.teacher_config"):
        ModelConfig(teacher=None)


def test_untied_head_is_a_trainable_copy(tiny_config):
    cfg = ModelConfig(kind="krony", teacher=None, teacher_config={"preset": "gpt2", **tiny_config.to_dict()},
                      scheme="128x32", init="vanloan", layers="odd", untie_head=True)
    student, _, _ = build_student(cfg)
    assert student.lm_head.weight is not student.transformer.wte.weight
    torch.testing.assert_close(student.lm_head.weight, student.transformer.wte.weight)
    assert count_params(student) - count_params(student, "no_output_embedding") == 101 * 64
