"""Text data: sources (hub or local files), the packed token stream, memmaps, the data module.
Names are imported on first use (the data module pulls in Lightning)."""

from krony._lazy import lazy_exports

_EXPORTS = {
    "TextDataModule": "krony.data.datamodule",
    "MemmapBlocks": "krony.data.memmap", "prepare": "krony.data.memmap",
    "TextSource": "krony.data.sources", "sample_path": "krony.data.sources",
    "PackedBlocks": "krony.data.stream", "pack": "krony.data.stream",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
