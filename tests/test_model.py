"""GPT-2 in plain PyTorch: parity with transformers, loading and saving, errors."""

import json

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save, save_file

from hubcache import put_repo
from krony import GPT, GPTConfig
from krony.hf import from_hf_state_dict, load_state_dict_checked, to_hf_state_dict

transformers = pytest.importorskip("transformers")


def hf_model(config: GPTConfig, seed: int = 0):
    torch.manual_seed(seed)
    hc = transformers.GPT2Config(
        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, vocab_size=config.vocab_size,
        n_positions=config.block_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(hc).eval()


@torch.no_grad()
def test_against_hf_hf_to_krony(tiny_config, tokens):
    hf = hf_model(tiny_config)
    model = GPT(tiny_config).eval()
    load_state_dict_checked(model, from_hf_state_dict(hf.state_dict()))
    logits, _ = model(tokens)
    torch.testing.assert_close(logits, hf(tokens).logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_against_hf_krony_to_hf(tiny_model, tokens, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(hf(tokens).logits, tiny_model(tokens)[0], atol=1e-5, rtol=1e-5)
    # the tie survives the round trip: HF's head is its embedding
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()


@torch.no_grad()
def test_exact_gelu_matches_hfs_gelu_and_round_trips(tiny_model, tokens, tmp_path):
    """activation="gelu" (the authors' nn.GELU()) is HF's activation_function "gelu"."""
    from krony.model import set_activation

    tanh_logits = tiny_model(tokens)[0]
    set_activation(tiny_model, "gelu")
    erf_logits = tiny_model(tokens)[0]
    assert not torch.allclose(tanh_logits, erf_logits, atol=1e-6)
    tiny_model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == "gelu"
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(hf(tokens).logits, erf_logits, atol=1e-5, rtol=1e-5)
    reloaded = GPT.from_pretrained(tmp_path).eval()
    assert reloaded.config.activation == "gelu"
    torch.testing.assert_close(reloaded(tokens)[0], erf_logits)
    with pytest.raises(ValueError, match="activation=.relu.: valid choices: gelu_new, gelu"):
        GPTConfig(activation="relu")


@torch.no_grad()
def test_against_hf_loss(tiny_config, tokens):
    hf = hf_model(tiny_config)
    model = GPT(tiny_config).eval()
    load_state_dict_checked(model, from_hf_state_dict(hf.state_dict()))
    targets = tokens.roll(-1, dims=1)
    _, loss = model(tokens, targets)
    logits = hf(tokens).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_only_the_four_conv1d_weights_are_transposed(tiny_model):
    sd = to_hf_state_dict(tiny_model)
    ours = tiny_model.state_dict()
    transposed = sorted(k.split("h.0.")[1] for k in sd if k.startswith("transformer.h.0.") and not torch.equal(sd[k], ours[k]))
    assert transposed == ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"]
    assert "lm_head.weight" not in sd  # tied: stored once, as wte


def test_tied_embeddings_and_shapes(tiny_model, tokens):
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight
    logits, loss = tiny_model(tokens)
    assert logits.shape == (*tokens.shape, tiny_model.config.vocab_size) and loss is None


def test_dropout_only_in_training(tiny_config, tokens):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**tiny_config.to_dict(), "dropout": 0.5}))
    model.train()
    a, b = model(tokens)[0], model(tokens)[0]
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(tokens)[0], model(tokens)[0])


def test_presets():
    assert GPTConfig.from_preset("distilgpt2").n_layer == 6
    assert GPTConfig.from_preset("gpt2-xl").n_embd == 1600
    assert GPTConfig.from_preset("openai-community/gpt2-medium").n_layer == 24
    with pytest.raises(ValueError, match="unknown preset 'gpt3'; valid choices: gpt2, gpt2-medium"):
        GPTConfig.from_preset("gpt3")
    with pytest.raises(ValueError, match="must divide n_embd"):
        GPTConfig(n_head=5)


def test_sequence_longer_than_context(tiny_model, tiny_config):
    with pytest.raises(ValueError, match="exceeds the model's context of 32"):
        tiny_model(torch.zeros(1, tiny_config.block_size + 1, dtype=torch.long))


def test_save_and_reload_directory_and_file(tiny_model, tokens, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_positions"] == 32
    for source in (tmp_path / "m", tmp_path / "m" / "model.safetensors", str(tmp_path / "m")):
        again = GPT.from_pretrained(source).eval()
        torch.testing.assert_close(again(tokens)[0], tiny_model(tokens)[0], atol=0, rtol=0)
    assert GPT.from_pretrained(tmp_path / "m", dropout=0.1).config.dropout == 0.1


def test_weights_file_without_config_infers_it(tiny_model, tokens, tmp_path):
    cfg = GPTConfig(block_size=32, vocab_size=101, n_layer=2, n_head=1, n_embd=64)  # head dim 64, as GPT-2
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    save_file(to_hf_state_dict(model), tmp_path / "w.safetensors")
    again = GPT.from_pretrained(tmp_path / "w.safetensors").eval()
    assert again.config == cfg
    torch.testing.assert_close(again(tokens)[0], model(tokens)[0])


def test_torch_file_loads_with_weights_only(tiny_model, tokens, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(to_hf_state_dict(tiny_model), tmp_path / "pytorch_model.bin")
    again = GPT.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(tokens)[0], tiny_model(tokens)[0])


def test_hub_name_loads_through_huggingface_hub(tiny_config, tokens, tmp_path, monkeypatch):
    """`from_pretrained("gpt2")` resolves to the hub repo and reads the bare GPT2Model layout of the
    published checkpoint (no `transformer.` prefix, `attn.bias` mask buffers), here from a cache."""
    hf = hf_model(tiny_config, seed=3)
    bare = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(tiny_config.n_layer):
        bare[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    put_repo(tmp_path, "model", "openai-community/gpt2", {
        "config.json": json.dumps(hf.config.to_dict()).encode(),
        "model.safetensors": save(bare, metadata={"format": "pt"}),
    })
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = GPT.from_pretrained("gpt2").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], hf(tokens).logits, atol=1e-5, rtol=1e-5)


def test_hub_name_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="could not reach the Hugging Face hub for 'distilgpt2'.*local copy"):
        GPT.from_pretrained("distilgpt2")


def test_missing_path():
    with pytest.raises(ValueError, match="no such file or directory"):
        GPT.from_pretrained("./does/not/exist")


def test_directory_without_weights(tmp_path):
    with pytest.raises(ValueError, match="no weights in directory"):
        GPT.from_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_listed(tiny_model, tiny_config):
    sd = from_hf_state_dict(to_hf_state_dict(tiny_model))
    del sd["transformer.h.1.ln_2.bias"]
    sd["transformer.h.1.mlp.extra.weight"] = torch.zeros(1)
    sd["transformer.wpe.weight"] = torch.zeros(16, 64)
    with pytest.raises(ValueError) as err:
        load_state_dict_checked(GPT(tiny_config), sd)
    msg = str(err.value)
    assert "missing keys (1): transformer.h.1.ln_2.bias" in msg
    assert "unexpected keys (1): transformer.h.1.mlp.extra.weight" in msg
    assert "transformer.wpe.weight: checkpoint (16, 64) vs model (32, 64)" in msg


def test_non_gpt2_config_is_refused(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="only GPT-2 checkpoints"):
        GPT.from_pretrained(tmp_path)


def test_generation_with_kv_cache_equals_without(tiny_model, tokens):
    prompt = tokens[:2, :5]
    with_cache = tiny_model.generate(prompt, 12, temperature=0.0)
    without = tiny_model.generate(prompt, 12, temperature=0.0, use_cache=False)
    assert with_cache.shape == (2, 17)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, :5], prompt)


def test_kv_cache_chunks_match_one_pass(tiny_model, tokens):
    caches = tiny_model.new_caches(3)
    parts = [tiny_model.hidden_states(tokens[:, a:b], caches) for a, b in ((0, 7), (7, 8), (8, 20))]
    torch.testing.assert_close(torch.cat(parts, dim=1), tiny_model.hidden_states(tokens[:, :20]), atol=1e-5, rtol=1e-5)
    assert caches[0].length == 20


def test_generation_past_the_context_is_refused_with_the_fix(tiny_model, tokens):
    with pytest.raises(ValueError, match="exceeds the context of 32.*use_cache=False"):
        tiny_model.generate(tokens[:1, :30], 5)
    out = tiny_model.generate(tokens[:1, :30], 5, use_cache=False, temperature=0.0)  # crops instead
    assert out.shape == (1, 35)


def test_sampling_is_seeded_and_top_k_restricts(tiny_model, tokens):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = tiny_model.generate(tokens[:1, :4], 8, top_k=5, generator=g1)
    b = tiny_model.generate(tokens[:1, :4], 8, top_k=5, generator=g2)
    assert torch.equal(a, b)
    top1 = tiny_model.generate(tokens[:1, :4], 8, top_k=1, generator=g1)
    assert torch.equal(top1, tiny_model.generate(tokens[:1, :4], 8, temperature=0.0))


def test_compressed_generation_and_fused_mlp(tiny_model, tokens):
    from krony import compress
    from krony.layers.kronecker import fusable

    model = compress(tiny_model, "16x8", init="vanloan")
    assert all(fusable(b.mlp.c_fc, b.mlp.c_proj) for b in model.transformer.h)
    assert torch.equal(model.generate(tokens[:2, :4], 6, temperature=0.0),
                       model.generate(tokens[:2, :4], 6, temperature=0.0, use_cache=False))
