"""Text data: sources (hub or local files), the packed token stream, memmaps, the data module."""

from krony.data.datamodule import TextDataModule
from krony.data.memmap import MemmapBlocks, prepare
from krony.data.sources import TextSource, sample_path
from krony.data.stream import PackedBlocks, pack

__all__ = ["MemmapBlocks", "PackedBlocks", "TextDataModule", "TextSource", "pack", "prepare", "sample_path"]
