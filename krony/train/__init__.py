"""Training: model building, freezing, losses, optimizer, the LightningModule and its callbacks.
Names are imported on first use (the module pulls in Lightning)."""

from krony._lazy import lazy_exports

_EXPORTS = {
    "DistillConfig": "krony.config", "FreezeConfig": "krony.config", "ModelConfig": "krony.config",
    "OptimConfig": "krony.config",
    "build_student": "krony.train.build",
    "apply_freeze": "krony.train.freeze",
    "distillation_loss": "krony.train.losses",
    "LanguageModelModule": "krony.train.module",
    "build_optimizer": "krony.train.optim",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
