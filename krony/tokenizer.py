"""The text tokenizer of a run: GPT-2 BPE through tiktoken (offline), or the teacher's own.

`TextTokenizer` is what the data stream, memmaps, evaluation protocols and the harness use: for
a GPT-2 teacher (or random GPT-2 weights) it is GPT-2's BPE (`krony.gpt2_bpe`, offline); for any
other teacher it is that model's transformers tokenizer, with its BOS (when it adds one) and EOS
around documents. It pickles as its source alone, so dataloader workers and tokenising
processes load their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from krony.gpt2_bpe import EOT, HF_TOKENIZER_FILES, encode_document, gpt2_encoding, save_hf_tokenizer


@lru_cache(maxsize=4)
def _hf_tokenizer(source: str) -> tuple[Any, int | None, int]:
    """(transformers tokenizer, BOS id when it puts one before a text else None, EOS id) of `source`."""
    from krony.causal_lm import load_tokenizer

    tok = load_tokenizer(source)
    if tok.eos_token_id is None:
        raise ValueError(f"the tokenizer of {source} has no EOS token to end documents with; give it one "
                         f"(tokenizer.eos_token) in the model folder")
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    bos = tok.bos_token_id if len(full) > len(plain) and full[0] == tok.bos_token_id else None
    return tok, bos, int(tok.eos_token_id)


@dataclass(frozen=True)
class TextTokenizer:
    """A run's tokenizer: GPT-2's BPE (`source` None) or the transformers tokenizer of `source`
    (a hub id, a model folder or a `.gguf` file). Build it with `tokenizer_for(teacher)`."""

    source: str | None = None

    @property
    def name(self) -> str:
        return "gpt2" if self.source is None else self.source

    @property
    def vocab_size(self) -> int:
        """Token ids are below this."""
        return EOT + 1 if self.source is None else len(_hf_tokenizer(self.source)[0])  # GPT-2: EOT is its last id

    @property
    def eos(self) -> int:
        """The id that ends every document (GPT-2: <|endoftext|>)."""
        return EOT if self.source is None else _hf_tokenizer(self.source)[2]

    @property
    def bos(self) -> int | None:
        """The id that starts every document, when the tokenizer adds one (Llama), else None."""
        return None if self.source is None else _hf_tokenizer(self.source)[1]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added; special-token text is encoded as plain text."""
        if self.source is None:
            return gpt2_encoding().encode_ordinary(text)
        tok = _hf_tokenizer(self.source)[0]
        return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def encode_document(self, text: str) -> list[int]:
        """BOS (when the tokenizer adds one), the text's ids, EOS: one document of the token stream."""
        if self.source is None:
            return encode_document(text)
        _, bos, eos = _hf_tokenizer(self.source)
        return ([bos] if bos is not None else []) + self.encode(text) + [eos]

    def decode(self, ids: list[int]) -> str:
        if self.source is None:
            return gpt2_encoding().decode(ids)
        return _hf_tokenizer(self.source)[0].decode(ids)

    def hf(self) -> Any:
        """The transformers tokenizer of `source` (lm-eval's HF model and `krony.save_pretrained`
        take it); None for GPT-2's BPE, whose files `GPT.save_pretrained` writes itself."""
        return None if self.source is None else _hf_tokenizer(self.source)[0]


def tokenizer_for(model: str | os.PathLike | None) -> TextTokenizer:
    """The tokenizer a run with teacher `model` uses: GPT-2's BPE for no teacher (random GPT-2
    weights) or a GPT-2 model (`krony.causal_lm.is_gpt2`), else the model's own."""
    from krony.causal_lm import is_gpt2

    if model is None or is_gpt2(model):
        return TextTokenizer(None)
    return TextTokenizer(str(model))


__all__ = ["EOT", "HF_TOKENIZER_FILES", "TextTokenizer", "encode_document", "gpt2_encoding", "save_hf_tokenizer",
           "tokenizer_for"]
