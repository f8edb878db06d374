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


def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE trained in a second on the text sample shipped with krony, that puts BOS
    "<s>" before every text as Llama's does (EOS "</s>"): a tokenizer that is neither GPT-2's
    nor its vocabulary, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from krony.data.sources import sample_path

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([sample_path()], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def save_tiny_teacher(directory, family: str = "llama", seed: int = 0):
    """A tiny random `family` model and `tiny_tokenizer` saved with `save_pretrained` into
    `directory` (a teacher folder as a hub snapshot holds one); returns the directory."""
    tok = tiny_tokenizer()
    model = tiny_model(family, vocab_size=len(tok), seed=seed, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory
