"""Callbacks: tokens/s, the HParams summary with final metrics, and the export of the best model."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from krony.checkpoint import load_state_dict_checked

log = logging.getLogger(__name__)


class Throughput(L.Callback):
    """Logs `train/tokens_per_sec`, `train/flops_per_sec` and `train/mfu` every `every_n_steps` batches.

    FLOPs per step are counted once with `torch.utils.flop_counter` on the student's real
    layers (factored Kronecker GEMMs, frozen weights without gradients) plus the teacher's
    forward when distilling. MFU divides the achieved FLOP/s of one device by its peak:
    `peak_flops` when set, else the device's table entry for the training precision (H100,
    H200, A100, L4, ...); without either (CPUs) MFU is not logged. The clock is read after a
    device synchronisation only on logging steps, so it does not slow the other steps.
    """

    def __init__(self, every_n_steps: int = 10, peak_flops: float | None = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.peak_override = peak_flops
        self.peak: float | None = None
        self.flops_per_batch: int | None = None
        self._t0: float | None = None
        self._tokens0 = 0
        self._batches0 = 0

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype

        from krony.flops import peak_flops

        dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
        self.peak = peak_flops(trainer.strategy.root_device, dtype, self.peak_override)

    def _count_flops(self, module: L.LightningModule, batch: torch.Tensor) -> int:
        from krony.flops import train_flops

        B, T = batch.shape[0], batch.shape[1] - 1  # batches are (B, T + 1): inputs and shifted targets
        flops = train_flops(module.student, B, T)
        if module.teacher is not None:
            flops += train_flops(module.teacher, B, T, backward=False)
        return flops

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.flops_per_batch is None:
            self.flops_per_batch = self._count_flops(module, batch)
        if self._t0 is not None and module.batches_trained - self._batches0 < self.every_n_steps:
            return
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        now = time.perf_counter()
        if self._t0 is not None and now > self._t0:  # the first step (start-up) only starts the clock
            dt = now - self._t0
            module.log("train/tokens_per_sec", (module.tokens_seen - self._tokens0) / dt, on_step=True, on_epoch=False)
            flops_per_sec = self.flops_per_batch * (module.batches_trained - self._batches0) / dt  # one device
            module.log("train/flops_per_sec", flops_per_sec, on_step=True, on_epoch=False)
            if self.peak:
                module.log("train/mfu", flops_per_sec / self.peak, on_step=True, on_epoch=False)
        self._t0, self._tokens0, self._batches0 = now, module.tokens_seen, module.batches_trained


class HParamsSummary(L.Callback):
    """At the end of fit (or validate), writes the run's hparams together with its final metrics,
    so TensorBoard's HParams tab compares the runs of a sweep, and the same as `summary.json` in
    `dirpath` for `python -m krony.report`."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def _write(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        best = module.best_val_loss if math.isfinite(module.best_val_loss) else metrics.get("val/loss", math.nan)
        hparams = module.summary_hparams()
        summary = {
            "hp/best_val_loss": best,
            "hp/best_val_ppl": math.exp(min(best, 30)) if math.isfinite(best) else math.nan,
            "hp/final_val_loss": metrics.get("val/loss", math.nan),
            "hp/params": float(hparams["params"]),
        }
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(hparams, summary)
            else:
                logger.log_hyperparams(hparams)
                logger.log_metrics(summary, step=trainer.global_step)
            logger.save()
        if self.dirpath:
            record = {"hparams": hparams, "metrics": {**summary, **module.size_metrics()},
                      "steps": trainer.global_step, "tokens": module.tokens_seen}
            Path(self.dirpath).mkdir(parents=True, exist_ok=True)
            (Path(self.dirpath) / "summary.json").write_text(json.dumps(record, indent=2) + "\n")

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._write(trainer, module)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":  # a validate-only run (pretrained baseline)
            self._write(trainer, module)


class ExportModel(L.Callback):
    """At the end of fit, saves the best-by-validation student (else the last) with
    `save_pretrained` into `dirpath`; `krony.GPT.from_pretrained(dirpath)` loads it."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        student = module.student
        if best and Path(best).exists():
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            weights = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
            student = copy.deepcopy(module.student).cpu()  # same structure, compressed layers included
            load_state_dict_checked(student, weights)
        student.save_pretrained(self.dirpath)


class EvaluateAtEnd(L.Callback):
    """After fit, evaluates the exported model in `model_dir` (the best by validation), or else
    the student as it ends, under a named protocol (see `krony.evaluate`); logs
    `eval/<dataset>/<metric>` to the loggers and writes `results.json` into `dirpath`.
    A failure (no data offline, say) is logged as a warning: the trained model is already saved."""

    def __init__(self, dirpath: str, datasets: list[str], protocol: str = "paper", data_dir: str | None = None,
                 context: int = 1024, stride: int = 512, batch_size: int = 8, max_tokens: int | None = None,
                 max_examples: int | None = None, model_dir: str | None = None) -> None:
        self.dirpath, self.datasets, self.protocol, self.data_dir = dirpath, list(datasets), protocol, data_dir
        self.model_dir = model_dir
        self.context, self.stride, self.batch_size = context, stride, batch_size
        self.max_tokens, self.max_examples = max_tokens, max_examples

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self.datasets:
            return
        from krony.eval import evaluate_model
        from krony.model import GPT

        model = module.student
        if self.model_dir and (Path(self.model_dir) / "config.json").exists():
            model = GPT.from_pretrained(self.model_dir).to(module.device)
        try:
            results = evaluate_model(model, self.datasets, self.protocol, self.context, self.stride, "test",
                                     self.data_dir, self.batch_size, self.max_tokens, self.max_examples, progress=True)
        except ValueError as e:
            log.warning("evaluation after training skipped: %s", e)
            return
        metrics = {f"eval/{name}/{k}": float(v) for name, r in results.items() for k, v in r.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        record = {"model": self.model_dir or "student", "protocol": self.protocol, "source": self.data_dir or "hub", "results": results}
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        (Path(self.dirpath) / "results.json").write_text(json.dumps(record, indent=2) + "\n")


__all__ = ["EvaluateAtEnd", "ExportModel", "HParamsSummary", "Throughput"]
