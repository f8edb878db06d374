"""Data pipeline tokens/s: the streaming `PackedBlocks` per dataloader worker, and memmap blocks."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from krony.data.memmap import MemmapBlocks, prepare
from krony.data.sources import TextSource, sample_path
from krony.data.stream import stream_throughput


def memmap_throughput(directory: str | Path, block_size: int = 1024, workers: int = 0,
                      seconds: float = 5.0, batch_size: int = 8) -> dict:
    """Training tokens/s reading shuffled blocks of a prepared memmap through a DataLoader."""
    ds = MemmapBlocks(directory, block_size)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=2**40)  # never runs out
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers)
    it = iter(loader)
    next(it)  # start-up excluded, as for the stream
    tokens, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tokens += next(it).numel()
    dt = time.perf_counter() - t0
    return {"source": "memmap", "workers": workers, "tokens_per_sec": tokens / dt,
            "tokens_per_sec_per_worker": tokens / dt / max(1, workers)}


def bench_data(files: list[str] | None = None, workers: list[int] = (0, 1, 2), block_size: int = 1024,
               seconds: float = 5.0) -> list[dict]:
    """Stream and memmap tokens/s for each worker count, on `files` (default: the shipped sample)."""
    files = files or [sample_path()]
    source = TextSource(path="text", name=None, revision=None, data_files=files, expected_files=None)
    rows = [{"source": "stream", **stream_throughput(source, w, block_size, seconds)} for w in workers]
    with tempfile.TemporaryDirectory() as tmp:
        prepare(source, tmp, val_documents=1, workers=1)
        rows += [memmap_throughput(tmp, block_size, w, seconds) for w in workers]
    return rows
