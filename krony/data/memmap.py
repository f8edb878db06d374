"""Pre-tokenised uint16 memmaps (nanoGPT style) for the fastest feeding of a GPU.

`prepare` tokenises a `TextSource` once, in parallel, into `train.bin` and `val.bin` (GPT-2 ids
fit uint16), using the same validation slice as the stream. `MemmapBlocks` then serves the
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
from krony.tokenizer import encode_document

DTYPE = np.uint16


def _write_split(docs, path: Path, workers: int, desc: str) -> int:
    """Tokenise `docs` with `workers` processes into `path` (atomic); returns the token count."""
    total = 0

    def write(tmp: str) -> None:
        nonlocal total
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(open(tmp, "wb"))
            bar = stack.enter_context(tqdm(desc=desc, unit="doc"))
            if workers > 1:
                pool = stack.enter_context(mp.get_context("spawn").Pool(workers))
                token_lists = pool.imap(encode_document, docs, chunksize=64)
            else:
                token_lists = map(encode_document, docs)
            for ids in token_lists:
                np.asarray(ids, dtype=DTYPE).tofile(f)
                total += len(ids)
                bar.update()

    atomic_write(path, write)
    return total


def prepare(source: TextSource, out_dir: str | os.PathLike, val_documents: int = 1000, workers: int = 0) -> dict:
    """Write `train.bin`, `val.bin` and `meta.json` into `out_dir` from `source`.

    The validation slice is the stream's (first `val_documents` documents of file 0); training
    documents follow in file order. `workers` processes tokenise (0: one per CPU).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    meta = {"source": {k: v for k, v in vars(source).items() if not k.startswith("_")}, "val_documents": val_documents}
    for split in ("val", "train"):
        stream = PackedBlocks(source, block_size=1, split=split, val_documents=val_documents, seed=0)
        docs = clean_documents(stream.documents(0, 1, shuffle_files=False), stream.stats, stream.max_document_chars)
        meta[f"{split}_tokens"] = _write_split(docs, out / f"{split}.bin", workers, f"prepare {split}")
        meta[f"{split}_document_issues"] = dict(stream.stats.counts)
    write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


class MemmapBlocks(Dataset):
    """Block i is tokens [i*(block_size+1), (i+1)*(block_size+1)) of `{dir}/{split}.bin`."""

    def __init__(self, directory: str | os.PathLike, block_size: int, split: str = "train") -> None:
        path = Path(directory) / f"{split}.bin"
        if not path.exists():
            raise ValueError(f"no {path}: run `python -m krony.data prepare --out {directory}` first")
        self.path, self.block_size = path, block_size
        self.n_blocks = (path.stat().st_size // np.dtype(DTYPE).itemsize) // (block_size + 1)
        if self.n_blocks == 0:
            raise ValueError(f"{path} holds fewer than {block_size + 1} tokens")
        self._data = None

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._data is None:  # opened lazily so each dataloader worker maps the file itself
            self._data = np.memmap(self.path, dtype=DTYPE, mode="r")
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


__all__ = ["EndlessShuffle", "MemmapBlocks", "prepare"]
