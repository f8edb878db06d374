"""compress / decompress on a tiny GPT-2: exact inits rebuild the model, round trips, errors."""

import json

import pytest
import torch
from torch import nn

from krony import STRUCTURES, GPT, GPTConfig, KroneckerLinear, compress, count_params, decompress, kronecker_layers
from krony.export import layers_spec
from krony.model import MLP

# tiny_config: c_fc is (256, 64). A (128, 32) -> B (2, 2): 4 factors span every (m2, n2) slot.
A_DIMS = (128, 32)


@torch.no_grad()
@pytest.mark.parametrize("init", ["vanloan", "prune"])
def test_full_rank_inits_rebuild_the_dense_model(tiny_model, tokens, init):
    dense_logits, _ = tiny_model(tokens)
    compress(tiny_model, A_DIMS, init=init, factors=4)
    assert len(kronecker_layers(tiny_model)) == 4
    torch.testing.assert_close(tiny_model(tokens)[0], dense_logits, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_c_proj_uses_the_transposed_dims(tiny_model):
    compress(tiny_model, A_DIMS, init="random")
    mlp = tiny_model.transformer.h[0].mlp
    assert mlp.c_fc.a_dims == (128, 32) and mlp.c_fc.b_dims == (2, 2)
    assert mlp.c_proj.a_dims == (32, 128) and mlp.c_proj.b_dims == (2, 2)


@torch.no_grad()
def test_biases_and_other_weights_are_kept(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    compress(tiny_model, A_DIMS, init="vanloan")
    after = tiny_model.state_dict()
    for k, v in before.items():
        if ".mlp.c_fc.weight" in k or ".mlp.c_proj.weight" in k:
            assert k not in after
        else:
            torch.testing.assert_close(after[k], v, atol=0, rtol=0)


@torch.no_grad()
def test_decompress_matches_and_saves_in_hf_layout(tiny_model, tokens, tmp_path):
    transformers = pytest.importorskip("transformers")
    compress(tiny_model, A_DIMS, init="vanloan", factors=2, scalars=True)
    for layer in kronecker_layers(tiny_model).values():
        layer.scalars.mul_(1.5)  # make the scalars matter
    compressed_logits, _ = tiny_model(tokens)
    decompress(tiny_model)
    assert not kronecker_layers(tiny_model)
    torch.testing.assert_close(tiny_model(tokens)[0], compressed_logits, atol=1e-5, rtol=1e-5)
    tiny_model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(hf(tokens).logits, compressed_logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_compressed_model_round_trips_through_save_pretrained(tiny_model, tokens, tmp_path):
    compress(tiny_model, A_DIMS, init="vanloan", factors=3, scalars=True, layers=[1])
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "krony_gpt2"  # transformers must not mistake it for dense GPT-2
    assert set(config["krony_layers"]) == {"transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"}
    again = GPT.from_pretrained(tmp_path).eval()
    assert layers_spec(again) == layers_spec(tiny_model)
    assert count_params(again) == count_params(tiny_model)
    torch.testing.assert_close(again(tokens)[0], tiny_model(tokens)[0], atol=0, rtol=0)
    assert type(again.transformer.h[1].mlp).__name__ == "FusedMLP" and type(again.transformer.h[0].mlp) is MLP


@torch.no_grad()
def test_exports_written_before_krony_layers_still_load(tiny_model, tokens, tmp_path):
    compress(tiny_model, A_DIMS, init="vanloan", factors=2)
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["krony_kronecker"] = {name: {k: v for k, v in spec.items() if k != "structure"}
                                 for name, spec in config.pop("krony_layers").items()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.testing.assert_close(GPT.from_pretrained(tmp_path).eval()(tokens)[0], tiny_model(tokens)[0], atol=0, rtol=0)


def test_the_structure_interface_of_the_kronecker_layer():
    torch.manual_seed(0)
    dense = nn.Linear(64, 256)
    A, B = torch.randn(3, 32, 16), torch.randn(3, 8, 4)
    W = sum(torch.kron(a, b) for a, b in zip(A, B))  # exactly 3 Kronecker products
    layer = STRUCTURES["kronecker"].build(dense.in_features, dense.out_features, (32, 16), "expand", factors=3)
    layer.init_from(W, "vanloan")
    torch.testing.assert_close(layer.to_dense(), W, atol=1e-4, rtol=1e-4)
    assert layer.num_params() == 3 * (32 * 16 + 8 * 4) + 256
    assert type(layer)(**layer.spec()).A.shape == layer.A.shape
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer.to_linear()(x), layer(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="structure='butterfly': valid choices: kronecker, lowrank, monarch"):
        compress(GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=64)), "32x16", structure="butterfly")


def test_normalisation_lands_in_scalars_or_in_a(tiny_model):
    import copy

    with_scalars = compress(copy.deepcopy(tiny_model), A_DIMS, init="vanloan", scalars=True, normalize=True)
    without = compress(copy.deepcopy(tiny_model), A_DIMS, init="vanloan", scalars=False, normalize=True)
    dense_w = tiny_model.transformer.h[0].mlp.c_fc.weight
    for m in (with_scalars, without):
        layer = m.transformer.h[0].mlp.c_fc
        torch.testing.assert_close(layer.to_dense().norm(), dense_w.norm())
    assert with_scalars.transformer.h[0].mlp.c_fc.scalars.item() > 1


@pytest.mark.parametrize("layers,expected", [("odd", [1]), ("even", [0]), ([0], [0]), ("all", [0, 1])])
def test_layer_selection(tiny_model, layers, expected):
    compress(tiny_model, A_DIMS, init="random", layers=layers)
    compressed = sorted({int(name.split(".")[2]) for name in kronecker_layers(tiny_model)})
    assert compressed == expected


def test_training_step_reaches_the_factors(tiny_model, tokens):
    compress(tiny_model, A_DIMS, init="vanloan", factors=2, scalars=True)
    tiny_model.train()
    _, loss = tiny_model(tokens, tokens.roll(-1, 1))
    loss.backward()
    layer = tiny_model.transformer.h[0].mlp.c_fc
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.A, layer.B, layer.scalars))


def test_meta_model_gets_the_structure_only(tiny_config):
    with torch.device("meta"):
        model = GPT(tiny_config)
    compress(model, A_DIMS, init="vanloan")
    assert isinstance(model.transformer.h[0].mlp.c_fc, KroneckerLinear)
    assert model.transformer.h[0].mlp.c_fc.A.is_meta


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scheme="80m"), "unknown scheme '80m'"),
        (dict(scheme=(100, 32)), r"A dims \(100, 32\) do not divide"),
        (dict(init="svd"), "init='svd': not an init of kronecker; it takes vanloan, prune, random"),
        (dict(factors=0), "factors must be an integer >= 1"),
        (dict(normalise=True), r"unknown options \['normalise'\] for init 'vanloan'; valid options: \['normalize'"),
        (dict(layers="middle"), r"layers='middle': give all, odd, even or a list"),
        (dict(layers=[2]), r"layers \[2\] out of range: the model has blocks 0..1"),
        (dict(init="prune", factors=5), "at most m2\\*n2 = 4"),
    ],
)
def test_bad_input_leaves_the_model_untouched(tiny_model, kwargs, match):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        compress(tiny_model, **{"scheme": A_DIMS, **kwargs})
    assert not kronecker_layers(tiny_model)
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())


def test_compressing_twice_is_refused(tiny_model):
    compress(tiny_model, A_DIMS, init="random")
    with pytest.raises(ValueError, match="already compressed; call krony.decompress"):
        compress(tiny_model, A_DIMS, init="random")
