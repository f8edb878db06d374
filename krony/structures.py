"""The one registry of factored structures, as data (no torch import, so config checks stay instant).

Each entry names the layer class (`krony.layers` imports it from here), the inits it takes,
and the class of the same name in `krony/hf_remote/krony_layers.py` that exports run without
krony. Configs, `krony.layers.STRUCTURES`, the remote code and the tests all read this table:
a new structure is one line here, its layer class and its remote class.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StructureSpec:
    """One factored structure."""

    name: str
    """Its name in configs and saved files."""
    module: str
    """The module defining its layer class."""
    cls: str
    """The layer class, in `module` and in the exports' `krony_layers.py`."""
    inits: tuple[str, ...]
    """The init names it takes (`vanloan` is every structure's Frobenius-optimal projection)."""


REGISTRY: dict[str, StructureSpec] = {s.name: s for s in (
    StructureSpec("kronecker", "krony.layers.kronecker", "KroneckerLinear", ("vanloan", "prune", "random")),
    StructureSpec("lowrank", "krony.layers.lowrank", "LowRankLinear", ("vanloan", "random")),
    StructureSpec("monarch", "krony.layers.monarch", "MonarchLinear", ("vanloan", "random")),
)}
"""Every structure by name."""

STRUCTURE_NAMES: tuple[str, ...] = tuple(REGISTRY)


__all__ = ["REGISTRY", "STRUCTURE_NAMES", "StructureSpec"]
