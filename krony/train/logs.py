"""One line per message on the console of a run.

Lightning adds a console handler of its own to the `lightning` logger when it is imported; under
Hydra, which already logs every record to the console and the job's log file, each of Lightning's
lines would then be printed twice. Its advertising tips and one deprecation warning it triggers in
torch's pytree module are noise in every job; matplotlib announces its font cache.
"""

from __future__ import annotations

import logging
import warnings

TIP_PREFIX = "💡 Tip:"
QUIET_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",)
"""Warnings (regexes of their message) that say nothing a krony user can act on."""


class DropTips(logging.Filter):
    """Drops Lightning's advertising tips."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


def quiet_lightning() -> None:
    """Import Lightning with its records routed through the root logger's handlers only (when it
    has any, as under Hydra), its tips dropped, the warnings of `QUIET_WARNINGS` ignored and
    matplotlib's font-cache message unsaid. Idempotent."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import lightning  # noqa: F401  (adds its console handler, removed below)

    root_has_handlers = bool(logging.getLogger().handlers)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        logger = logging.getLogger(name)
        if root_has_handlers:
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropTips) for f in logger.filters):
            logger.addFilter(DropTips())
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


__all__ = ["DropTips", "quiet_lightning"]
