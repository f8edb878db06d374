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


class TokensPerSecond(L.Callback):
    """Logs `train/tokens_per_sec`: tokens of all ranks per second of wall time between steps."""

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = every_n_steps
        self._t0: float | None = None
        self._tokens0 = 0

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._t0 is None:  # the first step includes start-up: start the clock after it
            self._t0, self._tokens0 = now, module.tokens_seen
            return
        if trainer.global_step % self.every_n_steps == 0 and now > self._t0:
            rate = (module.tokens_seen - self._tokens0) / (now - self._t0)
            module.log("train/tokens_per_sec", rate, on_step=True, on_epoch=False)
            self._t0, self._tokens0 = now, module.tokens_seen


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


__all__ = ["EvaluateAtEnd", "ExportModel", "HParamsSummary", "TokensPerSecond"]
