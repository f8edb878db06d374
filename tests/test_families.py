"""Every family of krony's table through compress, decompress, counting and export: tiny random
transformers models (d_model 64, d_ff 192, 2 blocks), every registered structure."""

import copy

import pytest
import torch

from families import FAMILY_CONFIGS, tiny_model
from krony.compression import compress, count_params, decompress, factored_layers, unfuse_ffn
from krony.layers import STRUCTURES
from krony.schemes import choose_dims, max_rank
from krony.targets import FAMILIES, find_targets

pytest.importorskip("transformers")
IDX = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_every_family_compresses_to_half_its_ffn_and_decompresses_to_its_dense_class(family, structure):
    model = tiny_model(family)
    table = FAMILIES[family]
    dense_types = {t.name: type(model.get_submodule(t.name)) for t in find_targets(model)}
    assert len(dense_types) == 2 * len(table.expand + table.contract)
    ffn = sum(t.in_features * t.out_features for t in find_targets(model))
    before = count_params(model)
    compress(model, structure=structure, ffn_fraction=0.5)
    layers = factored_layers(model)
    assert set(layers) == set(dense_types)
    kept = sum(m.num_params() - (m.bias.numel() if m.bias is not None else 0) for m in layers.values())
    assert abs(kept / ffn - 0.5) <= 0.02 * 0.5  # within 2% of the fraction asked
    assert count_params(model) == before - ffn + kept  # biases are kept as they were
    with torch.no_grad():
        logits = model(IDX).logits
    assert torch.isfinite(logits).all()
    decompress(model)
    assert {t.name: type(model.get_submodule(t.name)) for t in find_targets(model)} == dense_types
    assert not any(hasattr(type(m), "_krony_base") for m in model.modules())  # the FFNs have their own class again
    with torch.no_grad():
        torch.testing.assert_close(model(IDX).logits, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma", "gpt_neox", "gpt2"])
def test_the_fused_kronecker_ffn_equals_the_layers_run_one_after_the_other(family):
    model = compress(tiny_model(family), ffn_fraction=0.25, factors=2, scalars=True, init="random")
    ffn = model.get_submodule(f"{FAMILIES[family].blocks}.0.{FAMILIES[family].ffn}")
    assert type(ffn).__name__.startswith("Fused")
    with torch.no_grad():
        fused = model(IDX).logits
        unfuse_ffn(model)
        torch.testing.assert_close(model(IDX).logits, fused, atol=1e-5, rtol=1e-5)


def test_the_prune_init_at_half_the_ffn_keeps_every_other_neuron_of_a_swiglu_model():
    model = tiny_model("llama")
    pruned = copy.deepcopy(model)
    for block in pruned.model.layers:  # the dense model with the odd hidden neurons removed
        mlp = block.mlp
        for name in ("gate_proj", "up_proj"):
            dense = getattr(mlp, name)
            lin = torch.nn.Linear(64, 96, bias=False)
            lin.weight.data = dense.weight.data[0::2].clone()
            setattr(mlp, name, lin)
        lin = torch.nn.Linear(96, 64, bias=False)
        lin.weight.data = mlp.down_proj.weight.data[:, 0::2].clone()
        mlp.down_proj = lin
    compress(model, ffn_fraction=0.5, init="prune")
    assert model.model.layers[0].mlp.up_proj.b_dims == (2, 1) and model.model.layers[0].mlp.down_proj.b_dims == (1, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(IDX).logits, pruned(IDX).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_counts_under_each_convention_for_tied_and_untied_heads(tied):
    model = tiny_model("llama", tie_word_embeddings=tied)
    emb = 256 * 64
    total = sum(p.numel() for p in model.parameters())  # unique parameters
    assert count_params(model) == total == model.num_parameters()
    assert count_params(model, "no_output_embedding") == total - emb
    assert count_params(model, "non_embedding") == total - (emb if tied else 2 * emb)
    gpt2 = tiny_model("gpt2")  # learned positions count as embedding
    assert count_params(gpt2, "non_embedding") == count_params(gpt2) - 256 * 64 - 64 * 64


def test_user_targets_by_name_or_regex_and_attention_opt_in():
    model = compress(tiny_model("llama"), ffn_fraction=0.5, targets=["down_proj"])
    assert sorted(factored_layers(model)) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    model = compress(tiny_model("llama"), ffn_fraction=0.5, targets=r"model\.layers\.1\.mlp\.(gate|up)_proj")
    assert sorted(factored_layers(model)) == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    model = compress(tiny_model("llama"), ffn_fraction=0.5, attention=True, structure="lowrank", layers=[0])
    assert len(factored_layers(model)) == 3 + 4 and "model.layers.0.self_attn.k_proj" in factored_layers(model)
    with pytest.raises(ValueError, match="no matrix of the model matches"):
        compress(tiny_model("llama"), ffn_fraction=0.5, targets=["c_fc"])
    with pytest.raises(ValueError, match="a scheme sizes the FFN matrices only"):
        compress(tiny_model("llama"), scheme="96x64", attention=True)


def test_a_family_outside_the_table_needs_targets():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)

    with pytest.raises(ValueError, match="no module table for model type 'Toy'.*targets="):
        compress(Toy(), ffn_fraction=0.5)
    toy = compress(Toy(), ffn_fraction=0.5, targets=["up", "down"])
    assert toy.up.a_dims == (16, 8) and toy.down.a_dims == (8, 16)  # roles from the shapes: the pair fuses


def test_a_scheme_gives_the_expand_dims_and_the_contract_matrix_takes_them_transposed():
    model = compress(tiny_model("qwen2"), "96x32")
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.a_dims == mlp.up_proj.a_dims == (96, 32) and mlp.down_proj.a_dims == (32, 96)
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.gate_proj \(192 x 64\).*do not divide"):
        compress(tiny_model("qwen2"), "81m")


@pytest.mark.parametrize("shape", [(1536, 576), (3072, 768), (576, 1536), (8192, 2048)])
@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.125])
def test_the_dims_chooser_lands_within_two_percent_at_the_largest_rank(shape, fraction):
    out, inp = shape
    target = fraction * out * inp
    m1, n1 = choose_dims(out, inp, target)
    got = m1 * n1 + (out // m1) * (inp // n1)
    assert abs(got - target) <= 0.02 * target
    best = max(max_rank(out, inp, (a, b)) for a in range(1, out + 1) if out % a == 0 for b in range(1, inp + 1)
               if inp % b == 0 and abs(a * b + (out // a) * (inp // b) - target) <= 0.02 * target)
    assert max_rank(out, inp, (m1, n1)) == best
    assert choose_dims(inp, out, target) == (n1, m1)  # the contract partner gets the transposed dims


def test_the_chooser_names_the_nearest_budgets_when_none_is_close():
    assert choose_dims(3072, 768, 0.5 * 3072 * 768) == (1536, 768)  # 96m
    assert choose_dims(3072, 768, 0.25 * 3072 * 768) == (768, 768)  # 81m
    with pytest.raises(ValueError, match=r"keep 33.0% of it within 2%; nearest: .*%.*structure=lowrank"):
        choose_dims(7, 5, 0.33 * 35)


EXPORTS = [(family, structure) for family in ("llama", "gemma", "gpt_neox", "opt", "gpt2") for structure in STRUCTURES]


def test_exports_of_every_family_and_structure_load_in_transformers_without_krony(tmp_path):
    """Remote code with the family's own class: logits within 1e-4 relative in fp32, greedy decoding
    with the KV cache as krony's model gives it, a text-generation pipeline, and krony's count."""
    from no_krony import transformers_view

    from krony.causal_lm import load_causal_lm
    from krony.export import save_pretrained
    from krony.tokenizer import save_hf_tokenizer

    exports, models = [], []
    for i, (family, structure) in enumerate(EXPORTS):
        model = compress(tiny_model(family, vocab_size=50257, seed=i), structure=structure, ffn_fraction=0.5,
                         factors=2 if structure == "kronecker" else 1)
        idx = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            ref = {"idx": idx, "logits": model(idx).logits, "prompt": idx[:1, :5], "new": 6, "pad": 0}
            ref["greedy"] = model.generate(ref["prompt"], max_new_tokens=6, do_sample=False, pad_token_id=0).tolist()
        folder = save_pretrained(model, tmp_path / f"{family}-{structure}")
        save_hf_tokenizer(folder)
        again = load_causal_lm(folder)  # krony's own loader: krony's layers back, the same logits
        assert type(again) is type(model) and set(factored_layers(again)) == set(factored_layers(model))
        with torch.no_grad():
            torch.testing.assert_close(again(idx).logits, ref["logits"], atol=0, rtol=0)
        exports.append((folder, ref))
        models.append(model)
    for (family, structure), model, (_, ref), seen in zip(EXPORTS, models, exports, transformers_view(exports, tmp_path)):
        assert seen["class"] == "KronyForCausalLM", family
        assert seen["rel_diff"] < 1e-4, (family, structure, seen["rel_diff"])
        assert seen["params"] == count_params(model), (family, structure)
        assert seen["greedy"] == ref["greedy"], (family, structure)
        assert seen["factored"] == sorted(factored_layers(model)), (family, structure)
        assert seen["text"].startswith("Hello world")


def test_load_model_runs_gpt2_as_krony_gpt_and_any_other_family_in_its_transformers_class(tmp_path):
    from krony import GPT, GPTConfig
    from krony.causal_lm import load_model

    GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=64, block_size=16)).save_pretrained(tmp_path / "gpt")
    tiny_model("qwen2").save_pretrained(tmp_path / "qwen2")
    assert type(load_model(tmp_path / "gpt")) is GPT
    assert type(load_model(tmp_path / "qwen2")).__name__ == "Qwen2ForCausalLM"
    with pytest.raises(ValueError, match="no such file or directory"):
        load_model(tmp_path / "nowhere")
