"""Nested (Matryoshka) Kronecker factors: the 768x192 shape whose 16 factors rebuild GPT-2, every
prefix the best approximation with that many terms, elastic inference and extraction."""

import pytest
import torch

from krony import GPT, GPTConfig, compress, count_params, extract, kronecker_layers, model_size, set_active_factors
from krony.layers.kronecker import KroneckerLinear
from krony.layers.kronecker_init import rearranged
from krony.nested import active_factors

SIZES = {1: 71_356_032, 2: 74_895_360, 4: 81_974_016, 8: 96_131_328, 16: 124_445_952}


def test_768x192_sizes_for_every_prefix():
    assert {k: model_size("768x192", factors=k) for k in SIZES} == SIZES


def test_sixteen_factors_rebuild_gpt2_exactly():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2))  # GPT-2 small widths, two blocks: 4 of the 24 matrices, same shapes
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith(("c_fc", "c_proj"))}
    compress(model, "768x192", init="vanloan", factors=16)
    for name, layer in kronecker_layers(model).items():
        assert (layer.m2, layer.n2) == (4, 4)  # c_fc: A (768, 192); c_proj: A (192, 768)
        torch.testing.assert_close(layer.to_dense(), dense[name], atol=2e-6, rtol=0)


def test_every_prefix_is_the_best_approximation_with_that_many_terms():
    torch.manual_seed(1)
    W = torch.randn(3072, 768, dtype=torch.float64) * 0.02  # c_fc at GPT-2 width
    layer = KroneckerLinear(768, 3072, (768, 192), factors=16, dtype=torch.float64)
    layer.init_from(W, "vanloan")
    s = torch.linalg.svdvals(rearranged(W, (768, 192)))
    for k in (1, 2, 4, 8, 15, 16):
        layer.active_factors = k
        err = (W - layer.to_dense()).norm()
        # Eckart-Young on the rearranged matrix: no k-term Kronecker sum does better
        assert err.item() == pytest.approx(s[k:].norm().item(), rel=1e-9, abs=1e-12)
        alone = KroneckerLinear(768, 3072, (768, 192), factors=k, dtype=torch.float64)
        alone.init_from(W, "vanloan")
        torch.testing.assert_close(layer.to_dense(), alone.to_dense())  # the prefix is Van Loan at k


@pytest.fixture
def nested_model():
    torch.manual_seed(2)
    model = GPT(GPTConfig(block_size=32, vocab_size=101, n_layer=2, n_head=4, n_embd=64))
    return compress(model, "64x16", factors=16, scalars=True).eval()  # c_fc (256, 64): B (4, 4)


def test_active_factors_equal_the_extracted_model(nested_model, tokens):
    full = nested_model(tokens)[0]
    for k in (1, 3, 8):
        set_active_factors(nested_model, k)
        small = extract(nested_model)
        assert all(layer.factors == k for layer in kronecker_layers(small).values())
        torch.testing.assert_close(nested_model(tokens)[0], small(tokens)[0])
        assert count_params(small) == count_params(nested_model) - 4 * (16 - k) * (64 * 16 + 16 + 1)
    set_active_factors(nested_model, None)
    torch.testing.assert_close(nested_model(tokens)[0], full)
    assert set(active_factors(nested_model).values()) == {16}


def test_per_block_and_per_matrix_sizes(nested_model, tokens):
    set_active_factors(nested_model, {0: 2, "transformer.h.1.mlp.c_proj": 5})
    assert active_factors(nested_model) == {"transformer.h.0.mlp.c_fc": 2, "transformer.h.0.mlp.c_proj": 2,
                                            "transformer.h.1.mlp.c_fc": 16, "transformer.h.1.mlp.c_proj": 5}
    small = extract(nested_model)
    assert [layer.factors for layer in kronecker_layers(small).values()] == [2, 2, 16, 5]
    torch.testing.assert_close(nested_model(tokens)[0], small(tokens)[0])
    # extract with sizes leaves the model's own setting alone
    assert [layer.factors for layer in kronecker_layers(extract(nested_model, 4)).values()] == [4] * 4
    assert active_factors(nested_model)["transformer.h.1.mlp.c_proj"] == 5


def test_bad_sizes_say_what_is_wrong_and_change_nothing(nested_model):
    set_active_factors(nested_model, 4)
    with pytest.raises(ValueError, match=r"transformer.h.1.mlp.c_fc: the factors to use must be an integer in 1..16"):
        set_active_factors(nested_model, {0: 2, 1: 17})
    assert set(active_factors(nested_model).values()) == {4}
    with pytest.raises(ValueError, match="names no Kronecker layer"):
        set_active_factors(nested_model, {5: 2})
    with pytest.raises(ValueError, match="no Kronecker layers"):
        set_active_factors(GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16)), 2)


def test_the_path_follows_the_cost_model_for_the_active_factors():
    layer = KroneckerLinear(768, 3072, (768, 192), factors=16, device="meta")
    paths = {}
    for k in (1, 3, 4, 16):
        layer.active_factors = k
        paths[k] = layer.chosen_path
        assert layer.multiply_adds() == min({"b_first": k * 592_896, "a_first": k * 602_112, "dense": 2_359_296}.values())
    assert paths == {1: "b_first", 3: "b_first", 4: "dense", 16: "dense"}  # from 4 factors W costs less


def test_extracted_model_saves_and_loads_as_its_size(nested_model, tokens, tmp_path):
    small = extract(nested_model, 2)
    small.save_pretrained(tmp_path / "k2")
    loaded = GPT.from_pretrained(tmp_path / "k2")
    assert count_params(loaded) == count_params(small)
    torch.testing.assert_close(loaded(tokens)[0], small(tokens)[0])


def test_prefix_training_under_bf16_autocast_at_gpt2_width():
    torch.manual_seed(3)
    layer = KroneckerLinear(768, 3072, (768, 192), factors=16)
    x = torch.randn(64, 768)
    for k in (2, 8):  # a factored and a materialised path
        layer.active_factors = k
        grads = []
        for bf16 in (False, True):
            layer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                layer(x).float().square().mean().backward()
            grads.append(layer.A.grad.clone())
        assert grads[0][k:].abs().max() == 0  # factors past the prefix get no gradient
        assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < 3e-2
