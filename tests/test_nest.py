"""Nested training: the prefixes each schedule trains, and a step's loss and gradients."""

import pytest
import torch

from krony import compress, kronecker_layers
from krony.config import ConfigError, ModelConfig, NestConfig
from krony.nested import active_factors, set_active_factors
from krony.train.losses import lm_loss
from krony.train.nest import nested_loss, plan, prefix_losses

LAYERS = ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]


def test_all_trains_every_prefix_largest_first():
    cfg = NestConfig(schedule="all", prefixes=[1, 2, 4], weights=[0.5, 1.0, 2.0])
    got = [(p.sizes, p.weight, p.distil) for p in plan(cfg, step=3, seed=0, layer_names=LAYERS)]
    assert got == [(4, 2.0, False), (2, 1.0, False), (1, 0.5, False)]


def test_sandwich_is_largest_smallest_and_one_middle_distilled():
    cfg = NestConfig(schedule="sandwich")
    middles = set()
    for step in range(40):
        ps = plan(cfg, step, seed=0, layer_names=LAYERS)
        assert [p.sizes for p in ps][0] == 16 and ps[-1].sizes == 1 and [p.distil for p in ps] == [False, True, True]
        middles.add(ps[1].sizes)
    assert middles == {2, 4, 8}
    assert [p.sizes for p in plan(cfg, 7, 0, LAYERS)] == [p.sizes for p in plan(cfg, 7, 0, LAYERS)]  # resumable
    mixed = plan(NestConfig(schedule="sandwich", per_layer=True), 5, 0, LAYERS)[1]
    assert mixed.label == "mixed" and set(mixed.sizes) == set(LAYERS) and set(mixed.sizes.values()) <= {2, 4, 8}


def test_sample_takes_one_prefix_and_the_largest_every_nth_step():
    cfg = NestConfig(schedule="sample", largest_every=3)
    sizes = [[p.sizes for p in plan(cfg, step, 0, LAYERS)] for step in range(30)]
    assert all(len(s) == 1 for s in sizes)
    assert all(s == [16] for s in sizes[::3]) and {s[0] for i, s in enumerate(sizes) if i % 3} <= {1, 2, 4, 8}


@pytest.fixture
def nested(tiny_model):
    return compress(tiny_model, "64x16", factors=4)  # c_fc (256, 64): B (4, 4)


def test_a_step_has_the_gradients_of_one_backward_per_prefix(nested, tokens):
    cfg = NestConfig(schedule="all", prefixes=[1, 2, 4], weights=[1.0, 0.5, 2.0])
    x, y = tokens[:, :-1], tokens[:, 1:]
    loss, parts = nested_loss(nested, cfg, x, y, step=0, seed=0)
    loss.backward()
    together = {n: p.grad.clone() for n, p in nested.named_parameters()}
    nested.zero_grad()
    for k, w in zip(cfg.prefixes, cfg.weights):
        set_active_factors(nested, k)
        (w * lm_loss(nested(x)[0], y)).backward()
    set_active_factors(nested, None)
    for n, p in nested.named_parameters():
        torch.testing.assert_close(together[n], p.grad, msg=n)
    assert set(parts) == {"train/loss_k1", "train/loss_k2", "train/loss_k4"}
    assert set(active_factors(nested).values()) == {4}  # all factors active again after the step


def test_sandwich_distils_from_the_detached_largest_prefix(nested, tokens):
    cfg = NestConfig(schedule="sandwich", prefixes=[1, 4])
    x, y = tokens[:, :-1], tokens[:, 1:]
    loss, _ = nested_loss(nested, cfg, x, y, step=0, seed=0)
    loss.backward()
    layer = kronecker_layers(nested)["transformer.h.0.mlp.c_fc"]
    # the factors past the smallest prefix get gradient only from the largest prefix's cross-entropy
    past = layer.A.grad[1:].clone()
    nested.zero_grad()
    lm_loss(nested(x)[0], y).backward()
    torch.testing.assert_close(past, layer.A.grad[1:])


def test_validation_measures_every_prefix(nested, tokens):
    losses = prefix_losses(nested, NestConfig(schedule="all", prefixes=[1, 2, 4]), tokens[:, :-1], tokens[:, 1:])
    assert list(losses) == [1, 2, 4]
    torch.testing.assert_close(losses[4], lm_loss(nested(tokens[:, :-1])[0], tokens[:, 1:]))


def test_nest_config_says_what_is_wrong():
    with pytest.raises(ConfigError, match="increasing factor counts"):
        NestConfig(schedule="all", prefixes=[4, 2])
    with pytest.raises(ConfigError, match="give 2 weights"):
        NestConfig(schedule="all", prefixes=[1, 2], weights=[1.0])
    with pytest.raises(ConfigError, match="valid choices: off, all, sandwich, sample"):
        NestConfig(schedule="sandwhich")
    model = ModelConfig(teacher=None, teacher_config={"preset": "gpt2"}, scheme="768x192", factors=8)
    with pytest.raises(ConfigError, match="the largest prefix must be the model's factors"):
        NestConfig(schedule="all").check_model(model)
    NestConfig(schedule="off").check_model(model)  # off checks nothing


def test_sandwich_step_under_bf16_autocast_at_gpt2_width():
    """A sandwich step (per-layer middle draw) of a GPT-2-width model with the 768x192 nested
    factors gives bf16-autocast gradients close to fp32 ones, on every layer's factors."""
    from krony import GPT, GPTConfig

    torch.manual_seed(4)
    model = compress(GPT(GPTConfig(block_size=32, vocab_size=512, n_layer=2, n_head=12, n_embd=768)),
                     "768x192", factors=16)
    cfg = NestConfig(schedule="sandwich", per_layer=True)
    tokens = torch.randint(0, 512, (2, 33))
    x, y = tokens[:, :-1], tokens[:, 1:]
    grads = []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = nested_loss(model, cfg, x, y, step=1, seed=0)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        grads.append({n: layer.A.grad.clone() for n, layer in kronecker_layers(model).items()})
    for name, g in grads[0].items():
        assert g.norm() > 0
        assert ((grads[1][name] - g).norm() / g.norm()).item() < 3e-2, name
