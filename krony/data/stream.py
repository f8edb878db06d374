"""Streaming token blocks: tokenise documents (BOS where the tokenizer adds one, EOS after each),
pack into blocks of context + 1.

Work is split over `world_size * num_workers` shards (DDP rank x dataloader worker):

- when the source has a multiple of that many files, each shard reads its own files;
- otherwise every shard reads all files and keeps one document in n.

Either way no training document reaches two shards. The validation slice is the first
`val_documents` documents of file 0 (in file order, never shuffled); the training stream skips
them, so no validation text is trained on.

        documents --tokenise + EOT--> token stream --cut every block_size+1--> blocks
        [d0 d1 d2 ...]                [t t t EOT t t EOT ...]                     |
                                                                 shuffle buffer (seeded)
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from krony.data.sources import TextSource
from krony.tokenizer import TextTokenizer

log = logging.getLogger(__name__)
_WHITESPACE = re.compile(r"\s")


class DocumentStats:
    """Counts of documents the stream had to handle specially, logged as they grow (1, 10, 100, ...)."""

    KINDS = {
        "empty": "empty or blank documents skipped",
        "not_text": "non-text values skipped",
        "invalid_utf8": "documents with invalid UTF-8 (bytes replaced by U+FFFD)",
        "split": "documents over max_document_chars split into pieces",
        "long": "documents longer than one block (split over several)",
    }

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.documents = 0

    ROUTINE = ("long",)
    """Kinds that are normal in any corpus: counted, logged only at debug level."""

    def count(self, kind: str) -> None:
        self.counts[kind] += 1
        n = self.counts[kind]
        if n in (1, 10, 100) or n % 1000 == 0:
            level = logging.DEBUG if kind in self.ROUTINE else logging.WARNING
            log.log(level, "data: %d %s (of %d documents so far)", n, self.KINDS[kind], self.documents)


def clean_documents(docs: Iterator[object], stats: DocumentStats, max_chars: int) -> Iterator[str]:
    """Documents fit to tokenise: skips empty and non-text values, splits documents over
    `max_chars` characters into pieces of at most that many (at a whitespace where there is one;
    bounding tokeniser memory, and a one-document corpus is read whole), counts invalid UTF-8 repairs."""
    for doc in docs:
        stats.documents += 1
        if not isinstance(doc, str):
            stats.count("empty" if doc is None else "not_text")
            continue
        if not doc.strip():
            stats.count("empty")
            continue
        if "\ufffd" in doc:
            stats.count("invalid_utf8")
        if max_chars and len(doc) > max_chars:
            stats.count("split")
            yield from split_text(doc, max_chars)
            continue
        yield doc


def split_text(text: str, max_chars: int) -> Iterator[str]:
    """`text` in consecutive pieces of at most `max_chars` characters, each ending at the last
    whitespace within its limit when there is one (no word is cut in two)."""
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
        end = cut if cut > start else end
        yield text[start:end]
        start = end
    yield text[start:]


def val_cut(text: str, fraction: float) -> int:
    """Where the first `fraction` of `text` ends: at the first whitespace from that share on."""
    at = int(len(text) * fraction)
    match = _WHITESPACE.search(text, at)
    return match.start() if match else len(text)


def pack(token_lists: Iterator[list[int]], length: int) -> Iterator[list[int]]:
    """Concatenate token lists and cut them into consecutive, non-overlapping pieces of `length`;
    the incomplete tail is dropped."""
    buf: list[int] = []
    for ids in token_lists:
        buf.extend(ids)
        while len(buf) >= length:
            yield buf[:length]
            del buf[:length]


def shuffled(items: Iterator[list[int]], buffer_size: int, rng: random.Random) -> Iterator[list[int]]:
    """Shuffle a stream through a buffer of `buffer_size` items (no shuffle when it is <= 1)."""
    if buffer_size <= 1:
        yield from items
        return
    buf: list[list[int]] = []
    for item in items:
        if len(buf) < buffer_size:
            buf.append(item)
            continue
        j = rng.randrange(buffer_size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class PackedBlocks(IterableDataset):
    """Blocks of `block_size + 1` token ids (int64 tensors) from a `TextSource`.

    Args:
        source: where the documents come from.
        block_size: model context; each block holds block_size + 1 tokens (inputs and shifted targets).
        split: "train" (endless: epochs follow each other, reshuffled) or "val" (one pass).
        val_documents: documents at the start of file 0 held out for validation.
        shuffle_buffer: blocks in the shuffle buffer (train only; 0 or 1: no shuffle).
        seed: seeds file order and buffer; the same seed and sharding give the same blocks.
        rank, world_size: DDP position (set by the data module).
        epochs: stop after this many passes (None: endless; val always makes one pass).
        max_document_chars: documents longer than this are split into pieces (0: never), so one
            huge document cannot exhaust the tokeniser's memory.
        val_fraction: instead of whole documents, hold out the first `val_fraction` of the text of
            every document of file 0 (a corpus of one document gets a validation split); None: off.
        tokenizer: the run's tokenizer (`krony.tokenizer.tokenizer_for(teacher)`); None: GPT-2's BPE.
        resume: where a resumed run picks up, from `resume_position`: blocks each worker already
            delivered, and which worker delivers next. The skipped blocks are regenerated and
            dropped (the shuffle buffer and packing state must be rebuilt), at the pipeline's
            speed: use memmap data to resume long runs instantly.
    """

    def __init__(
        self,
        source: TextSource,
        block_size: int,
        split: str = "train",
        val_documents: int = 1000,
        shuffle_buffer: int = 1000,
        seed: int = 1337,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = None,
        resume: "ResumePosition | None" = None,
        max_document_chars: int = 1_000_000,
        val_fraction: float | None = None,
        tokenizer: TextTokenizer | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.source, self.block_size, self.split = source, block_size, split
        self.val_documents, self.shuffle_buffer, self.seed = val_documents, shuffle_buffer, seed
        self.rank, self.world_size, self.epochs = rank, world_size, epochs
        self.resume = resume
        self.max_document_chars = max_document_chars
        self.val_fraction = val_fraction
        self.tokenizer = tokenizer or TextTokenizer()
        self.stats = DocumentStats()  # of the iterating process (each dataloader worker has its own)

    def documents(self, shard: int, num_shards: int, epoch: int = 0, shuffle_files: bool = True) -> Iterator[str]:
        """The documents shard `shard` of `num_shards` reads in `epoch` (files in seeded order, or
        in source order without `shuffle_files`)."""
        if self.split == "val":
            for j, text in enumerate(self.source.iter_file(0)):
                if not self.val_fraction and j >= self.val_documents:
                    return
                if j % num_shards == shard:
                    yield text[:val_cut(text, self.val_fraction)] if self.val_fraction and isinstance(text, str) else text
            return
        files = list(range(self.source.num_files))
        if shuffle_files:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(files)
        by_file = len(files) % num_shards == 0
        mine = files[shard::num_shards] if by_file else files
        count = 0  # training documents seen so far, in the order every shard reads them
        for f in mine:
            for j, text in enumerate(self.source.iter_file(f)):
                if f == 0 and self.val_fraction:
                    text = text[val_cut(text, self.val_fraction):] if isinstance(text, str) else text
                elif f == 0 and j < self.val_documents:
                    continue
                if by_file or count % num_shards == shard:
                    yield text
                count += 1

    def blocks(self, shard: int, num_shards: int) -> Iterator[list[int]]:
        """Token blocks of one shard, over all epochs."""
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            docs = clean_documents(self.documents(shard, num_shards, epoch), self.stats, self.max_document_chars)
            packed = pack(map(self._encode, docs), self.block_size + 1)
            if self.split == "val":
                yield from packed
                return
            rng = random.Random(f"{self.seed}-{epoch}-{shard}-{num_shards}")
            n = 0
            for n, block in enumerate(shuffled(packed, self.shuffle_buffer, rng), 1):
                yield block
            if n == 0:
                raise ValueError(
                    f"shard {shard} of {num_shards} got no training block of {self.block_size + 1} tokens from "
                    f"{self.source.describe()} ({self.stats.documents} documents read, {self.val_documents} held out "
                    f"for validation): too little text for this context, rank and worker count; add text, lower "
                    f"context or data.num_workers, or lower data.val_documents"
                )
            epoch += 1

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode_document(text)
        if len(ids) > self.block_size + 1:
            self.stats.count("long")
        return ids

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        skip = 0
        if self.resume is not None:
            # worker ids are relabelled so the new worker 0 continues the stream that was due next
            worker = (worker + self.resume.next_worker) % workers
            skip = self.resume.blocks[worker]
        shard, num_shards = self.rank * workers + worker, self.world_size * workers
        for block in itertools.islice(self.blocks(shard, num_shards), skip, None):
            yield torch.tensor(block, dtype=torch.long)


@dataclass(frozen=True)
class ResumePosition:
    """Per dataloader worker, the blocks already delivered, and the worker whose batch is next."""

    blocks: tuple[int, ...]
    next_worker: int


def resume_position(batches: int, batch_size: int, num_workers: int) -> ResumePosition:
    """Where a stream stands after `batches` batches of one rank: a DataLoader takes batches
    from its workers in turn (worker i gives batches i, i + W, ...), each of `batch_size`
    consecutive blocks of that worker's stream."""
    workers = max(1, num_workers)
    per_worker = [batches // workers + (1 if w < batches % workers else 0) for w in range(workers)]
    return ResumePosition(tuple(n * batch_size for n in per_worker), batches % workers)


def stream_throughput(source: TextSource, workers: int, block_size: int = 1024, seconds: float = 10.0,
                      tokenizer: TextTokenizer | None = None) -> dict:
    """Training tokens/s of the stream through a DataLoader with `workers` workers (after start-up)."""
    ds = PackedBlocks(source, block_size, val_documents=0, shuffle_buffer=0, tokenizer=tokenizer)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=workers)
    it = iter(loader)
    next(it)  # start-up: workers spawn, tokenizer and dataset load
    tokens, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            tokens += next(it).numel()
    except (StopIteration, ValueError):
        pass
    dt = time.perf_counter() - t0
    return {"workers": workers, "tokens_per_sec": tokens / dt, "tokens_per_sec_per_worker": tokens / dt / max(1, workers)}



__all__ = ["DocumentStats", "PackedBlocks", "clean_documents", "ResumePosition", "pack", "resume_position", "shuffled",
           "split_text", "stream_throughput", "val_cut"]
