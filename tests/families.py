"""Tiny random transformers models of every family in krony's table, for the tests."""

import torch

FAMILY_CONFIGS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_inner=192, n_positions=64)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                                            num_attention_heads=4, num_key_value_heads=2,
                                                            max_position_embeddings=64)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                      max_position_embeddings=64)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                      max_position_embeddings=64)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                         max_position_embeddings=64)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                                             num_attention_heads=4, max_position_embeddings=64)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(hidden_size=64, ffn_dim=192, num_hidden_layers=2, num_attention_heads=4,
                                                max_position_embeddings=64, word_embed_proj_dim=64)),
}
"""model_type -> (config class, model class, the tiny shape: d_model 64, d_ff 192, 2 blocks)."""


def tiny_model(family: str, vocab_size: int = 256, seed: int = 0, **overrides):
    """A tiny random model of `family` in eval mode (fp32)."""
    import transformers

    config_cls, model_cls, shape = FAMILY_CONFIGS[family]
    config = getattr(transformers, config_cls)(vocab_size=vocab_size, **{**shape, **overrides})
    torch.manual_seed(seed)
    return getattr(transformers, model_cls)(config).eval()
