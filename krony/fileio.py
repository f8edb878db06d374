"""Files krony writes and reads: atomic writes with the user's permissions, and torch files read
without unpickling code, with one clear line when a file is damaged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def default_mode() -> int:
    """The mode a new file gets from the user's umask (0o644 for the usual umask 022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(target: str | os.PathLike, write: Callable[[str], Any], fsync: bool = False) -> Path:
    """Write `target` through `write(tmp_path)` into `<target>.tmp` beside it, then rename it over
    `target`: a kill at any moment leaves the old file or the new one, never a torn one. With
    `fsync` the data reaches the disk before the rename (checkpoints). The file gets the mode of
    the user's umask, whatever the writing library chose (safetensors writes 0600)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    write(str(tmp))
    if fsync:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.chmod(tmp, default_mode())
    os.replace(tmp, target)
    return target


def write_text(target: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of a text file."""
    return atomic_write(target, lambda tmp: Path(tmp).write_text(text))


class InvalidFile(ValueError):
    """A checkpoint or weights file that cannot be read: "<path> is not a valid <what>: <reason>"."""

    def __init__(self, path: str | os.PathLike, what: str, reason: str) -> None:
        self.path, self.what, self.reason = str(path), what, reason
        super().__init__(f"{path} is not a valid {what}: {reason}")


def describe_load_error(e: BaseException) -> str:
    """A one-line reason for a failed read. torch's own message for a file with pickled objects
    recommends `weights_only=False`, which would run code from the file: krony never does that."""
    text = str(e).strip()
    if type(e).__name__ == "UnpicklingError" or "weights_only" in text:
        return "it holds pickled Python objects besides tensors (or is damaged); krony reads only tensors"
    first = text.splitlines()[0] if text else type(e).__name__
    return (first[:200] + "...") if len(first) > 200 else first


def torch_load(path: str | os.PathLike, what: str = "checkpoint", **kwargs: Any) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a damaged or foreign file raises
    `InvalidFile` naming the path."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if kwargs.get("mmap") and not zipfile.is_zipfile(path):  # mmap needs torch's zip format
        raise InvalidFile(path, what, "not a torch file (no zip archive: damaged, cut short, or another format)")
    import torch

    try:
        return torch.load(path, map_location=kwargs.pop("map_location", "cpu"), weights_only=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - every failure to read becomes the same one-line error
        raise InvalidFile(path, what, describe_load_error(e)) from None


__all__ = ["InvalidFile", "atomic_write", "default_mode", "describe_load_error", "torch_load", "write_text"]
