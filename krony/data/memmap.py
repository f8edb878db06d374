"""Pre-tokenised memmaps (nanoGPT style) for the fastest feeding of a GPU.

`prepare` tokenises a `TextSource` once, in parallel, with the run's tokenizer into `train.bin`
and `val.bin` (uint16 when every id fits, as GPT-2's do; uint32 for vocabularies over 65,536),
using the same validation slice as the stream; `meta.json` records the tokenizer and dtype. `MemmapBlocks` then serves the
same blocks of block_size + 1 tokens the stream would build, as a map-style dataset that
Lightning's distributed sampler shards by rank.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from krony.data.sources import TextSource
from krony.data.stream import PackedBlocks, clean_documents
from krony.fileio import atomic_write, write_text
from krony.tokenizer import TextTokenizer

DTYPE = np.uint16
"""The dtype of memmaps written before meta.json recorded one (GPT-2 ids)."""


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below `vocab_size`."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def read_meta(directory: str | os.PathLike) -> dict:
    """`meta.json` of a prepared directory ({} for one without it)."""
    path = Path(directory) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_split(docs, path: Path, workers: int, desc: str, tokenizer: TextTokenizer, dtype: np.dtype) -> int:
    """Tokenise `docs` with `workers` processes into `path` (atomic); returns the token count."""
    total = 0

    def write(tmp: str) -> None:
        nonlocal total
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(open(tmp, "wb"))
            bar = stack.enter_context(tqdm(desc=desc, unit="doc"))
            if workers > 1:
                pool = stack.enter_context(mp.get_context("spawn").Pool(workers))
                token_lists = pool.imap(tokenizer.encode_document, docs, chunksize=64)
            else:
                token_lists = map(tokenizer.encode_document, docs)
            for ids in token_lists:
                np.asarray(ids, dtype=dtype).tofile(f)
                total += len(ids)
                bar.update()

    atomic_write(path, write)
    return total


def prepare(source: TextSource, out_dir: str | os.PathLike, val_documents: int = 1000, workers: int = 0,
            tokenizer: TextTokenizer | None = None) -> dict:
    """Write `train.bin`, `val.bin` and `meta.json` into `out_dir` from `source`.

    The validation slice is the stream's (first `val_documents` documents of file 0); training
    documents follow in file order. `workers` processes tokenise (0: one per CPU) with
    `tokenizer` (None: GPT-2's BPE).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    tokenizer = tokenizer or TextTokenizer()
    dtype = dtype_for(tokenizer.vocab_size)
    meta = {"source": {k: v for k, v in vars(source).items() if not k.startswith("_")}, "val_documents": val_documents,
            "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "dtype": dtype.name}
    for split in ("val", "train"):
        stream = PackedBlocks(source, block_size=1, split=split, val_documents=val_documents, seed=0)
        docs = clean_documents(stream.documents(0, 1, shuffle_files=False), stream.stats, stream.max_document_chars)
        meta[f"{split}_tokens"] = _write_split(docs, out / f"{split}.bin", workers, f"prepare {split}", tokenizer, dtype)
        meta[f"{split}_document_issues"] = dict(stream.stats.counts)
    write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


class MemmapBlocks(Dataset):
    """Block i is tokens [i*(block_size+1), (i+1)*(block_size+1)) of `{dir}/{split}.bin`.

    `tokenizer`: the run's; a directory prepared with a tokenizer of another vocabulary is refused."""

    def __init__(self, directory: str | os.PathLike, block_size: int, split: str = "train",
                 tokenizer: TextTokenizer | None = None) -> None:
        path = Path(directory) / f"{split}.bin"
        if not path.exists():
            raise ValueError(f"no {path}: run `python -m krony.data prepare --out {directory}` first")
        meta = read_meta(directory)
        tokenizer = tokenizer or TextTokenizer()
        prepared = meta.get("vocab_size", TextTokenizer().vocab_size)  # directories prepared before meta recorded it: GPT-2's
        if prepared != tokenizer.vocab_size:
            raise ValueError(f"{directory} was prepared with the tokenizer of {meta.get('tokenizer', 'gpt2')} "
                             f"({prepared:,} tokens) but this run tokenises with {tokenizer.name} "
                             f"({tokenizer.vocab_size:,}): prepare it again with --tokenizer {tokenizer.name}")
        self.path, self.block_size = path, block_size
        self.dtype = np.dtype(meta.get("dtype", np.dtype(DTYPE).name))
        self.n_blocks = (path.stat().st_size // self.dtype.itemsize) // (block_size + 1)
        if self.n_blocks == 0:
            raise ValueError(f"{path} holds fewer than {block_size + 1} tokens")
        self._data = None

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._data is None:  # opened lazily so each dataloader worker maps the file itself
            self._data = np.memmap(self.path, dtype=self.dtype, mode="r")
        n = self.block_size + 1
        return torch.from_numpy(self._data[i * n : (i + 1) * n].astype(np.int64))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}


class EndlessShuffle(torch.utils.data.Sampler[int]):
    """Block indices of endless epochs, each a fresh permutation seeded by (seed, epoch), starting
    `start` indices in: a resumed run continues exactly where the interrupted one stopped."""

    def __init__(self, n: int, seed: int, start: int = 0) -> None:
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self):
        epoch, offset = divmod(self.start, self.n)
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            yield from torch.randperm(self.n, generator=g)[offset:].tolist()
            epoch, offset = epoch + 1, 0


__all__ = ["EndlessShuffle", "MemmapBlocks", "dtype_for", "prepare", "read_meta"]
