"""The LightningDataModule: streamed blocks or memmap blocks, split by DDP rank and worker."""

from __future__ import annotations

import functools
import itertools
import os
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from krony.data.memmap import EndlessShuffle, MemmapBlocks
from krony.data.sources import TextSource, check_data
from krony.data.stream import PackedBlocks, resume_position
from krony.tokenizer import tokenizer_for
from krony.train.preempt import ignore_in_worker, kill_workers_at_exit


def init_worker(worker_id: int, rank: int = 0) -> None:
    """Dataloader worker start: ignore pre-emption signals (the main process saves and stops the
    workers), and seed the worker as Lightning does when `seed_everything(workers=True)` ran."""
    ignore_in_worker()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank)


class TextDataModule(L.LightningDataModule):
    """Batches of (batch_size, block_size + 1) token ids of the run's tokenizer.

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
        max_document_chars: documents longer than this are split into pieces (stream mode; 0: never).
        val_fraction: hold out this share of the text of every document of file 0 instead of
            `val_documents` whole documents (stream mode; a corpus of one document); None: off.
        tokenizer: the model whose tokenizer the text gets (the teacher: a hub id, folder or
            `.gguf` file); None or a GPT-2 model: GPT-2's BPE (`krony.tokenizer.tokenizer_for`).
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
        max_document_chars: int = 1_000_000,
        val_fraction: float | None = None,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        check_data(mode, memmap_dir, source, block_size, batch_size, num_workers, val_fraction)
        if isinstance(source, dict):
            source = TextSource(**source)
        self.source, self.mode, self.memmap_dir = source, mode, memmap_dir
        self.block_size, self.batch_size, self.num_workers = block_size, batch_size, num_workers
        self.val_documents, self.shuffle_buffer, self.seed = val_documents, shuffle_buffer, seed
        self.max_document_chars = max_document_chars
        self.val_fraction = val_fraction
        self.tokenizer = tokenizer_for(tokenizer)
        self.batches_done = 0  # training batches of this rank already trained on (set when resuming)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return 0, 1

    def dataset(self, split: str):
        """The dataset of `split` ("train" or "val") for this process's rank."""
        if self.mode == "memmap":
            return MemmapBlocks(self.memmap_dir, self.block_size, split, self.tokenizer)
        rank, world = self._rank()
        resume = None
        if split == "train" and self.batches_done:
            resume = resume_position(self.batches_done, self.batch_size, self.num_workers)
        return PackedBlocks(
            self.source, self.block_size, split=split, val_documents=self.val_documents,
            shuffle_buffer=self.shuffle_buffer, seed=self.seed, rank=rank, world_size=world, resume=resume,
            max_document_chars=self.max_document_chars, val_fraction=self.val_fraction, tokenizer=self.tokenizer,
        )

    def _loader(self, split: str) -> DataLoader:
        ds = self.dataset(split)
        kwargs: dict[str, Any] = dict(batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        # a loader of its own generator never draws from the global RNG (dropout's), so a resumed
        # run's random numbers continue exactly where the checkpoint left them
        kwargs["generator"] = torch.Generator().manual_seed(self.seed)
        if self.num_workers > 0:
            kwargs["persistent_workers"] = split == "train"
            kwargs["worker_init_fn"] = functools.partial(init_worker, rank=self._rank()[0])
            kill_workers_at_exit()
        if self.mode == "memmap" and split == "train":
            rank, world = self._rank()
            start = self.batches_done * world * self.batch_size  # ranks take batch-sized turns along one order
            kwargs["sampler"] = RankSlice(EndlessShuffle(len(ds), self.seed, start), rank, world, self.batch_size)
        return DataLoader(ds, **kwargs)

    # ------------------------------------------------------------------ resuming

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: how far this rank's training stream has been trained on."""
        module = self.trainer.lightning_module if getattr(self, "trainer", None) else None
        return {"batches_done": getattr(module, "batches_trained", self.batches_done), "batch_size": self.batch_size,
                "num_workers": self.num_workers, "world_size": self._rank()[1], "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the training stream after the batches a checkpoint had trained on; refuses a
        changed batch size, worker count, world size or mode (the position would not be exact)."""
        now = {"batch_size": self.batch_size, "num_workers": self.num_workers, "world_size": self._rank()[1],
               "mode": self.mode}
        changed = [f"{k} {state[k]} -> {v}" for k, v in now.items() if k in state and state[k] != v]
        if changed:
            raise ValueError(
                f"cannot resume the data stream exactly: {', '.join(changed)} since the checkpoint; set "
                "data.batch_size / data.num_workers / devices back, or start afresh with resume=false"
            )
        self.batches_done = int(state.get("batches_done", 0))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")


class RankSlice(torch.utils.data.Sampler[int]):
    """Rank `rank` of `world`'s share of an index stream: batch-sized slices, ranks in turn."""

    def __init__(self, indices, rank: int, world: int, batch_size: int) -> None:
        self.indices, self.rank, self.world, self.batch_size = indices, rank, world, batch_size

    def __iter__(self):
        it = iter(self.indices)
        while True:
            chunks = [list(itertools.islice(it, self.batch_size)) for _ in range(self.world)]
            if len(chunks[-1]) < self.batch_size:
                return
            yield from chunks[self.rank]


__all__ = ["RankSlice", "TextDataModule"]
