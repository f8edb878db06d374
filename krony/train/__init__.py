"""Training: model building, freezing, losses, optimizer, the LightningModule and its callbacks."""

from krony.train.build import ModelConfig, build_student
from krony.train.freeze import FreezeConfig, apply_freeze
from krony.train.losses import DistillConfig, distillation_loss
from krony.train.module import LanguageModelModule
from krony.train.optim import OptimConfig, build_optimizer

__all__ = [
    "DistillConfig",
    "FreezeConfig",
    "LanguageModelModule",
    "ModelConfig",
    "OptimConfig",
    "apply_freeze",
    "build_optimizer",
    "build_student",
    "distillation_loss",
]
