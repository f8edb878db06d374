"""The LightningModule: a thin shell over `build_student`, the losses and the optimizer.

One class serves Krony-PT, multi-factor Kronecker with scalars, the DistilGPT2 baseline and
dense GPT-2: what differs is the `model` config (kind, scheme, factors, scalars, student layers)
and whether `distill` is on. Hydra instantiates it from the run config's `module` node, its
parts as the config dataclasses of `krony.config`; `save_hyperparameters` stores them as plain
dicts (a readable config, never a pickled object), and those dicts rebuild it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from krony.compression import CONVENTIONS, count_params, kronecker_layers
from krony.config import DistillConfig, FreezeConfig, ModelConfig, NestConfig, OptimConfig, to_dict
from krony.flops import analytic_flops_per_token
from krony.hf import state_dict_problems
from krony.lm import context_length, hidden_and_logits, logits
from krony.targets import get_family
from krony.tokenizer import TextTokenizer, tokenizer_for
from krony.train.build import build_student
from krony.train.freeze import apply_freeze
from krony.train.losses import distillation_loss, lm_loss
from krony.train.nest import nested_loss, prefix_losses
from krony.train.optim import build_optimizer

log = logging.getLogger(__name__)


class LanguageModelModule(L.LightningModule):
    """Trains `self.student` on batches of (B, T + 1) token ids; optional teacher distillation.

    Args:
        model, optim, freeze, distill, nest: a `ModelConfig`, `OptimConfig`, `FreezeConfig`,
            `DistillConfig`, `NestConfig`, or their fields as a dict.
        seed: seeds random teacher weights and random inits.
        log_scalars_every: steps between logs of the Kronecker scalars.
        max_bad_steps: steps in a row with a non-finite loss or gradient after which the run
            stops (each is skipped: no update); 0 never stops.
        bad_step_checkpoint: where that stop saves a checkpoint first (None: no save).
    """

    def __init__(
        self,
        model: ModelConfig | dict[str, Any],
        optim: OptimConfig | dict[str, Any] | None = None,
        freeze: FreezeConfig | dict[str, Any] | None = None,
        distill: DistillConfig | dict[str, Any] | None = None,
        nest: NestConfig | dict[str, Any] | None = None,
        seed: int = 1337,
        log_scalars_every: int = 50,
        max_bad_steps: int = 10,
        bad_step_checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        self.model_cfg, self.optim_cfg, self.freeze_cfg, self.distill_cfg = (
            cfg if isinstance(cfg, cls) else cls(**(cfg or {}))
            for cfg, cls in ((model, ModelConfig), (optim, OptimConfig), (freeze, FreezeConfig), (distill, DistillConfig))
        )
        self.nest_cfg = nest if isinstance(nest, NestConfig) else NestConfig(**(nest or {}))
        self.nest_cfg.check_model(self.model_cfg)
        self.seed = seed
        self.save_hyperparameters(
            {"model": to_dict(self.model_cfg), "optim": to_dict(self.optim_cfg), "freeze": to_dict(self.freeze_cfg),
             "distill": to_dict(self.distill_cfg), "nest": to_dict(self.nest_cfg), "seed": seed,
             "log_scalars_every": log_scalars_every,
             "max_bad_steps": max_bad_steps, "bad_step_checkpoint": bad_step_checkpoint},
            logger=False,
        )
        self.log_scalars_every = log_scalars_every
        if max_bad_steps < 0:
            raise ValueError(f"max_bad_steps must be >= 0, got {max_bad_steps}")
        self.max_bad_steps, self.bad_step_checkpoint = max_bad_steps, bad_step_checkpoint
        self.skipped_steps = 0  # non-finite steps skipped over the run
        self.bad_in_a_row = 0
        self._bad_loss = False  # the current step's loss was not finite (on any rank)
        self.batches_trained = 0  # training batches of this rank consumed (the data position to resume at)
        self.student, teacher, self.teacher_params = build_student(self.model_cfg, seed, keep_teacher=self.distill_cfg.enabled)
        self._teacher = [teacher] if teacher is not None else []  # a list: not a submodule, so not checkpointed
        self.frozen = apply_freeze(self.student, self.freeze_cfg)
        if self.model_cfg.compile:
            self.student.compile()
        self.val_loss = MeanMetric()
        self.best_val_loss = math.inf
        self.tokens_seen = 0

    @property
    def teacher(self):
        return self._teacher[0] if self._teacher else None

    @property
    def tokenizer(self) -> TextTokenizer:
        """The run's tokenizer: the teacher's (GPT-2's BPE for GPT-2 and random GPT-2 weights)."""
        return tokenizer_for(self.model_cfg.teacher)

    # ------------------------------------------------------------------ steps

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return logits(self.student, idx)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) each
        if self.nest_cfg.enabled:
            loss, parts = nested_loss(self.student, self.nest_cfg, x, y, self.global_step, self.seed)
        elif self.teacher is None:
            loss = lm_loss(logits(self.student, x), y)
            parts = {}
        else:
            want_hidden = self.distill_cfg.alpha_cos > 0
            outputs = hidden_and_logits if want_hidden else (lambda model, idx: (None, logits(model, idx)))
            with torch.no_grad():
                t_hidden, t_logits = outputs(self.teacher, x)
            s_hidden, s_logits = outputs(self.student, x)  # hidden states only when the cosine term uses them
            out = distillation_loss(self.distill_cfg, s_logits, t_logits, y, s_hidden, t_hidden)
            loss = out.pop("loss")
            parts = {f"train/{k}": v for k, v in out.items()}
        self.tokens_seen += x.numel() * self.trainer.world_size
        self.batches_trained += 1
        if not self._all_ranks_finite(loss.detach()):
            # a finite zero tied to every trainable weight: backward runs on every rank (DDP cannot
            # skip it), then on_before_optimizer_step drops the gradients and the update
            self._bad_loss = True
            return sum(p.sum() for p in self.student.parameters() if p.requires_grad) * 0.0
        self.log_dict(
            {"train/loss": loss, "train/ppl": torch.exp(loss.detach().clamp(max=30)), **parts},
            prog_bar=True, on_step=True, on_epoch=False,
        )
        self.log("train/tokens", float(self.tokens_seen), on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    # ------------------------------------------------------------------ non-finite guard

    def _all_ranks_finite(self, value: torch.Tensor) -> bool:
        bad = (~torch.isfinite(value)).any().float()
        if self.trainer.world_size > 1:  # every rank must skip together
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        return not bool(bad)

    def _grad_scaler(self):
        """The fp16 grad scaler of `16-mixed` precision, or None."""
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        bad_loss, self._bad_loss = self._bad_loss, False
        if self._grad_scaler() is not None and not bad_loss:
            # fp16: gradients that overflow are the grad scaler's to handle (it skips the step and
            # lowers its scale), not a sign of a diverging run
            self.bad_in_a_row = 0
            return
        grads = [p.grad for p in self.student.parameters() if p.grad is not None]
        if not bad_loss and (not grads or self._all_ranks_finite(torch.stack(torch._foreach_norm(grads)))):
            self.bad_in_a_row = 0
            return
        for p in self.student.parameters():
            p.grad = None  # AdamW skips parameters without gradients: no update, no moment change
        self._bad_step("loss" if bad_loss else "gradient")

    def _bad_step(self, what: str) -> None:
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        log.warning("step %d: non-finite %s, step skipped (%d in a row)", self.global_step, what, self.bad_in_a_row)
        if self.max_bad_steps and self.bad_in_a_row >= self.max_bad_steps:
            saved = ""
            if self.bad_step_checkpoint:
                self.trainer.save_checkpoint(self.bad_step_checkpoint)
                saved = f"; checkpoint of the last good state saved to {self.bad_step_checkpoint}"
            raise FloatingPointError(
                f"training stopped at step {self.global_step}: {self.bad_in_a_row} steps in a row had a non-finite "
                f"{what}{saved}. Lower optim.lr, add warm-up (optim.warmup_steps), check the data, or raise "
                f"max_bad_steps"
            )

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        x, y = batch[:, :-1], batch[:, 1:]
        if not self.nest_cfg.enabled:
            self.val_loss.update(lm_loss(logits(self.student, x), y), weight=y.numel())
            return
        losses = prefix_losses(self.student, self.nest_cfg, x, y)  # every prefix, the largest is the full model
        self.val_loss.update(losses[self.nest_cfg.prefixes[-1]], weight=y.numel())
        for k, loss in losses.items():
            self.log(f"val/loss_k{k}", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=y.numel())

    def on_validation_epoch_end(self) -> None:
        if self.val_loss.update_count == 0:
            return
        loss = self.val_loss.compute()
        self.val_loss.reset()
        # MeanMetric.compute() already gathers all ranks: every rank logs the same global value
        self.log_dict({"val/loss": loss, "val/ppl": torch.exp(loss.clamp(max=30))}, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.best_val_loss = min(self.best_val_loss, loss.item())

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.log_scalars_every and self.global_step % self.log_scalars_every == 0:
            self.log_dict(self.scalar_values(), on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Counters and random states, so a resumed run continues exactly (tensors and plain
        types only: the checkpoint loads with weights_only=True)."""
        checkpoint["krony"] = {
            "tokens_seen": self.tokens_seen, "batches_trained": self.batches_trained,
            "skipped_steps": self.skipped_steps, "best_val_loss": self.best_val_loss,
            "rng": rng_state(),
        }
        for logger in self.trainer.loggers:  # what was logged so far reaches the disk with the checkpoint
            flush = getattr(getattr(logger, "experiment", None), "flush", None)
            if callable(flush) and self.trainer.is_global_zero:
                flush()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        problems = state_dict_problems(self.state_dict(), checkpoint.get("state_dict", {}), "configured",
                                       unexpected_ok=True)
        if problems:
            raise ValueError(f"the checkpoint does not fit the configured model (another scheme, factors or "
                             f"teacher?): {'; '.join(problems)}")
        state = checkpoint.get("krony")
        if not state:
            return
        self.tokens_seen, self.batches_trained = state["tokens_seen"], state["batches_trained"]
        self.skipped_steps, self.best_val_loss = state["skipped_steps"], state["best_val_loss"]
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------ setup

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)
        if self.logger is not None:
            self.logger.log_metrics(self.size_metrics(), step=0)

    def on_validation_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def configure_optimizers(self):
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else 10**9
        clips = bool(self.trainer.gradient_clip_val) and self._grad_scaler() is not None
        opt, sched = build_optimizer(self.student, self.optim_cfg, total, on_cuda=self.device.type == "cuda",
                                     clips_scaled_grads=clips)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ what gets logged

    def scalar_values(self) -> dict[str, float]:
        """{"scalars/h{i}.{matrix}/{k}": s_k} for every Kronecker layer with scalars (h3.c_fc, h3.up_proj)."""
        out = {}
        blocks = get_family(self.student).blocks + "."
        for name, layer in kronecker_layers(self.student).items():
            if layer.scalars is not None:
                short = "h" + name.removeprefix(blocks).replace(".mlp.", ".") if name.startswith(blocks) else name
                out.update({f"scalars/{short}/{k}": s.item() for k, s in enumerate(layer.scalars.detach())})
        return out

    def size_metrics(self) -> dict[str, float]:
        """Parameters in every counting convention (docs/method.md) and forward FLOPs per token at
        the model's full context, so runs of different structures compare on either axis."""
        params = count_params(self.student)
        return {
            "model/params": float(params),
            **{f"model/params_{c}": float(count_params(self.student, c)) for c in CONVENTIONS if c != "table1"},
            "model/compression_ratio": self.teacher_params / params,
            "model/frozen_params": float(sum(p.numel() for p in self.student.parameters() if not p.requires_grad)),
            "model/flops_per_token": float(analytic_flops_per_token(self.student, context_length(self.student),
                                                                    backward=False)),
        }

    def summary_hparams(self) -> dict[str, Any]:
        """Flat, readable hyperparameters for the TensorBoard HParams tab."""
        m = self.model_cfg
        frozen = [k for k, v in asdict(self.freeze_cfg).items() if k != "tag" and v not in (False, None)]
        return {
            "kind": m.kind,
            "teacher": str(m.teacher),
            "scheme": m.scheme if m.kind == "krony" else "-",
            "init": m.init if m.kind == "krony" else "-",
            "init_options": str(m.init_options),
            "structure": m.structure if m.kind == "krony" else "-",
            "structure_options": str(m.structure_options),
            "structure_match": m.structure_match if m.kind == "krony" and m.structure != "kronecker" else "-",
            "factors": m.factors if m.kind == "krony" else 0,
            "scalars": bool(m.scalars) if m.kind == "krony" else False,
            "layers": str(m.layers),
            "freeze": ",".join(frozen) or "none",
            "distill": self.distill_cfg.enabled,
            "nest": self.nest_cfg.schedule,
            "lr": self.optim_cfg.lr,
            "schedule": self.optim_cfg.schedule,
            "params": count_params(self.student),
        }


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA random states as tensors and plain values."""
    import random

    import numpy as np

    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *[float(v) for v in np_state[2:]]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    import random

    import numpy as np

    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["LanguageModelModule", "rng_state", "set_rng_state"]
