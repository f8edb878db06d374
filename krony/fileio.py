"""Files krony writes and reads: atomic writes with the user's permissions, and torch files read
without unpickling code, with one clear line when a file is damaged."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXT = re.compile(r"no space left|disk quota|file write failed", re.IGNORECASE)
"""What a full disk looks like in an error torch's C++ writer raises (it drops the errno)."""


class DiskFull(OSError):
    """Not enough disk: a write that failed for want of space (its partial file already removed),
    or a run that would not fit. `str()` is one line naming the path and the free space."""

    def __init__(self, message: str, path: str | os.PathLike, free: int | None, failed_write: bool = False) -> None:
        self.path, self.free, self.failed_write = str(path), free, failed_write
        super().__init__(errno.ENOSPC, message)

    @classmethod
    def on_write(cls, path: str | os.PathLike, free: int | None) -> "DiskFull":
        room = f"{free / 1e9:.2f} GB free" if free is not None else "free space unknown"
        return cls(f"disk full: could not write {path} ({room} in {Path(path).parent})", path, free, True)

    def __str__(self) -> str:
        return self.strerror


def nearest_existing(path: str | os.PathLike) -> Path:
    """`path`, or its nearest parent that exists (where a directory to be made would live)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem of `path` (or its nearest existing parent), None if unknown."""
    try:
        return shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return None


def is_disk_full(e: BaseException, directory: str | os.PathLike, partial_bytes: int = 0) -> bool:
    """Whether a failed write failed for want of space: ENOSPC / EDQUOT anywhere in the chain, the
    words of torch's writer for it, or a disk whose free space is what the partial file took."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE_ERRNOS or NO_SPACE_TEXT.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    free = free_bytes(directory)
    return free is not None and partial_bytes > 0 and free <= partial_bytes + (16 << 20)


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
    try:
        write(str(tmp))
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, target)
    except BaseException as e:  # a failed or interrupted write leaves no partial file (it would keep the disk full)
        partial = tmp.lstat().st_size if tmp.is_file() else 0
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, DiskFull) and is_disk_full(e, target.parent, partial):
            raise DiskFull.on_write(target, free_bytes(target.parent)) from e
        raise
    return target


def write_text(target: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of a text file."""
    return atomic_write(target, lambda tmp: Path(tmp).write_text(text))


def write_or_report(target: str | os.PathLike, text: str, stream: Any = None) -> bool:
    """`write_text`, or, when even that fails (a full disk), `text` printed to `stream` (stderr)
    with a line saying why; True when the file was written."""
    import sys

    try:
        write_text(target, text)
        return True
    except OSError as e:
        try:
            print(f"could not write {target} ({e}); its text follows:\n{text}", file=stream or sys.stderr)
        except OSError:  # stderr itself on the full disk
            pass
        return False


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


__all__ = ["DiskFull", "InvalidFile", "atomic_write", "default_mode", "describe_load_error", "free_bytes", "is_disk_full",
           "nearest_existing", "torch_load", "write_or_report", "write_text"]
