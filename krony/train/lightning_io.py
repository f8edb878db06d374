"""Lightning checkpoint files written atomically and read without unpickling code."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from krony.fileio import atomic_write, torch_load


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to `<name>.tmp` in the same directory, flushes it to disk, then renames it over
    `<name>`: a kill at any moment leaves either the previous file or the new one, never a
    torn one. Loads with `weights_only=True`: a checkpoint cannot run code when read, and a
    damaged one stops the run with "<path> is not a valid checkpoint: ..."."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_write(path, lambda tmp: _save(checkpoint, tmp), fsync=True)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return torch_load(path, "checkpoint", map_location=map_location or "cpu")


def _save(checkpoint: dict[str, Any], path: str) -> None:
    """`torch.save` through a file this function opens and closes, so that a failed write (a full
    disk) releases the file at once: torch's own writer would keep it open, and its space taken,
    for as long as the exception lives."""
    with open(path, "wb") as f:
        torch.save(checkpoint, f)


def checkpoint_bytes(model: torch.nn.Module, optimizer_state: bool = True) -> int:
    """About what one training checkpoint of `model` takes: the weights plus, with
    `optimizer_state`, AdamW's two fp32 moments per trainable parameter (hyperparameters and
    loop state are negligible)."""
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    weights = sum(p.numel() * p.element_size() for p in params)
    moments = sum(2 * 4 * p.numel() for p in params if p.requires_grad) if optimizer_state else 0
    return weights + moments


__all__ = ["AtomicCheckpointIO", "checkpoint_bytes"]
