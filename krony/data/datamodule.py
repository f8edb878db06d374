"""The LightningDataModule: streamed blocks or memmap blocks, split by DDP rank and worker."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from krony.data.memmap import MemmapBlocks
from krony.data.sources import TextSource
from krony.data.stream import PackedBlocks

MODES = ("stream", "memmap")


class TextDataModule(L.LightningDataModule):
    """Batches of (batch_size, block_size + 1) GPT-2 token ids.

    Args:
        source: a `TextSource` (or its fields as a dict) for mode "stream".
        mode: "stream" (tokenise on the fly) or "memmap" (read `memmap_dir` from `prepare`).
        memmap_dir: directory with train.bin / val.bin for mode "memmap".
        block_size: model context; blocks hold one token more.
        batch_size: blocks per batch and device.
        num_workers: dataloader worker processes (each streams its own shard).
        val_documents: documents held out at the start of file 0 (stream mode).
        shuffle_buffer: blocks in the training shuffle buffer (stream mode).
        seed: seeds file order, shuffle buffer and memmap sampling.
    """

    def __init__(
        self,
        source: TextSource | dict[str, Any] | None = None,
        mode: str = "stream",
        memmap_dir: str | None = None,
        block_size: int = 1024,
        batch_size: int = 8,
        num_workers: int = 0,
        val_documents: int = 1000,
        shuffle_buffer: int = 1000,
        seed: int = 1337,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"data.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "memmap" and not memmap_dir:
            raise ValueError("data.memmap_dir is required for data.mode=memmap")
        if isinstance(source, dict):
            source = TextSource(**source)
        if mode == "stream" and source is None:
            raise ValueError("data.source is required for data.mode=stream")
        self.source, self.mode, self.memmap_dir = source, mode, memmap_dir
        self.block_size, self.batch_size, self.num_workers = block_size, batch_size, num_workers
        self.val_documents, self.shuffle_buffer, self.seed = val_documents, shuffle_buffer, seed

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return 0, 1

    def dataset(self, split: str):
        """The dataset of `split` ("train" or "val") for this process's rank."""
        if self.mode == "memmap":
            return MemmapBlocks(self.memmap_dir, self.block_size, split)
        rank, world = self._rank()
        return PackedBlocks(
            self.source, self.block_size, split=split, val_documents=self.val_documents,
            shuffle_buffer=self.shuffle_buffer, seed=self.seed, rank=rank, world_size=world,
        )

    def _loader(self, split: str) -> DataLoader:
        ds = self.dataset(split)
        kwargs: dict[str, Any] = dict(batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        if self.num_workers > 0:
            kwargs["persistent_workers"] = split == "train"
        if self.mode == "memmap" and split == "train":
            kwargs.update(shuffle=True, generator=torch.Generator().manual_seed(self.seed), drop_last=True)
        return DataLoader(ds, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")


__all__ = ["MODES", "TextDataModule"]
