"""Callbacks: tokens/s, the HParams summary with final metrics, the export of the best model, the
evaluation after training, and saving the step in progress on a pre-emption signal."""

from __future__ import annotations

import copy
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from krony.export import save_pretrained
from krony.hf import load_state_dict_checked
from krony.fileio import torch_load, write_text
from krony.train.preempt import SIGNALS, Aborted, Preempted, requeue_slurm_job, slurm_job_id
from krony.train.resume import latest_checkpoint

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


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint`, keeping its `save_top_k` newest files after a resume too.

    Lightning never deletes the checkpoint a run was resumed from (in case the new run fails
    before saving one), so every resume left one file more than `save_top_k`. Here that file
    goes like any other once it falls out of the top k: by then a newer checkpoint has been
    written and renamed into place (`AtomicCheckpointIO`), so a crash loses nothing.
    """

    def _should_remove_checkpoint(self, trainer: L.Trainer, previous: str, current: str) -> bool:
        if previous != current and trainer.ckpt_path is not None and self.dirpath \
                and Path(previous).resolve() == Path(trainer.ckpt_path).resolve() \
                and Path(previous).resolve().parent == Path(self.dirpath).resolve():
            return True
        return super()._should_remove_checkpoint(trainer, previous, current)


class StepRichProgressBar(RichProgressBar):
    """Lightning's rich bar, described as "train" (not "Epoch 0/-2": a stream has no epochs)."""

    def _get_train_description(self, current_epoch: int) -> str:
        return "train"


class StepTQDMProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, described as "train"."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("train")


def progress_bar(enabled: bool = True) -> L.Callback | None:
    """The training progress bar: steps done of `trainer.max_steps`; rich when it is installed.
    None when disabled (`trainer.enable_progress_bar=false`)."""
    if not enabled:
        return None
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    return StepRichProgressBar() if _RICH_AVAILABLE else StepTQDMProgressBar()


TB_FIRST = ("run", "scheme", "structure", "init", "factors", "scalars")
"""Hparams the TensorBoard HParams tab shows first (it sorts columns by name: they get "0_", "1_", ... prefixes)."""


def tensorboard_hparams(hparams: dict[str, Any], run_name: str | None) -> dict[str, Any]:
    """`hparams` for the HParams tab: the run name as a column, and `TB_FIRST` in that order first
    (the tab orders columns by whether they differ between runs, then by name)."""
    hp = {"run": run_name or "-", **hparams}
    first = {f"{i}_{k}": hp[k] for i, k in enumerate(TB_FIRST) if k in hp}
    return {**first, **{k: v for k, v in hp.items() if k not in TB_FIRST}}


class HParamsSummary(L.Callback):
    """At the end of fit (or validate), writes the run's hparams together with its final metrics,
    so TensorBoard's HParams tab compares the runs of a sweep (run name, scheme, structure, init,
    factors, scalars first), and the same as `summary.json` in `dirpath` for `python -m krony.report`."""

    def __init__(self, dirpath: str | None = None, run_name: str | None = None) -> None:
        self.dirpath = dirpath
        self.run_name = run_name

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
                logger.log_hyperparams(tensorboard_hparams(hparams, self.run_name), summary)
            else:
                logger.log_hyperparams(hparams)
                logger.log_metrics(summary, step=trainer.global_step)
            logger.save()
        if self.dirpath:
            record = {"hparams": hparams, "metrics": {**summary, **module.size_metrics()},
                      "steps": trainer.global_step, "tokens": module.tokens_seen}
            if self.run_name:
                record["run_name"] = self.run_name
            Path(self.dirpath).mkdir(parents=True, exist_ok=True)
            write_text(Path(self.dirpath) / "summary.json", json.dumps(record, indent=2) + "\n")

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._write(trainer, module)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":  # a validate-only run (pretrained baseline)
            self._write(trainer, module)


class ExportModel(L.Callback):
    """At the end of fit, saves the best-by-validation student (else the last) with
    `krony.save_pretrained` into `dirpath`, with the run's tokenizer; `krony.causal_lm.load_model`
    (or transformers with `trust_remote_code=True`, without krony) loads it."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        student = module.student
        if best and Path(best).exists():
            state = torch_load(best, "checkpoint")["state_dict"]
            weights = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
            student = copy.deepcopy(module.student).cpu()  # same structure, compressed layers included
            load_state_dict_checked(student, weights)
        save_pretrained(student, self.dirpath, tokenizer=module.tokenizer.hf())


class EvaluateAtEnd(L.Callback):
    """After fit (or a validate-only run), evaluates the exported model in `model_dir` (the best
    by validation), or else the student as it ends, under a named protocol (see `krony.eval.protocols`): `datasets` for the
    paper and sliding protocols, lm-eval `tasks` for the harness; logs `eval/<dataset>/<metric>`
    to the loggers and writes `results.json` into `dirpath`.
    A failure (no data offline, say) is logged as a warning: the trained model is already saved."""

    def __init__(self, dirpath: str, datasets: list[str], protocol: str = "paper", data_dir: str | None = None,
                 context: int = 1024, stride: int = 512, batch_size: int = 8, max_tokens: int | None = None,
                 max_examples: int | None = None, model_dir: str | None = None, tasks: list[str] | None = None) -> None:
        self.dirpath, self.datasets, self.protocol, self.data_dir = dirpath, list(datasets), protocol, data_dir
        self.tasks = list(tasks) if tasks is not None else None
        self.model_dir = model_dir
        self.context, self.stride, self.batch_size = context, stride, batch_size
        self.max_tokens, self.max_examples = max_tokens, max_examples

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._evaluate(trainer, module)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":  # a validate-only run (model=distilgpt2_pretrained, train=false)
            self._evaluate(trainer, module)

    def _evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not (self.tasks if self.protocol == "harness" else self.datasets):
            return
        from krony.causal_lm import load_model
        from krony.eval.protocols import evaluate_model, record

        model = module.student
        if self.model_dir and (Path(self.model_dir) / "config.json").exists():
            model = load_model(self.model_dir).to(module.device)
        try:
            results = evaluate_model(model, self.datasets, self.protocol, self.context, self.stride, "test",
                                     self.data_dir, self.batch_size, self.max_tokens, self.max_examples, progress=True,
                                     tasks=self.tasks, tokenizer=module.tokenizer)
        except ValueError as e:
            log.warning("evaluation after training skipped: %s", e)
            return
        metrics = {f"eval/{name}/{k}": float(v) for name, r in results.items() for k, v in r.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        rec = record(model, self.model_dir or "student", self.protocol, results, context=self.context,
                     max_tokens=self.max_tokens, max_examples=self.max_examples)
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        write_text(Path(self.dirpath) / "results.json", json.dumps(rec, indent=2) + "\n")


class Preemption(L.Callback):
    """Save a checkpoint at the end of the step in progress when one of `signals` arrives, then
    stop with `Preempted` (see `krony.train.preempt`).

    Args:
        signals: signal names to catch ("SIGTERM", "SIGUSR1", "SIGUSR2").
        requeue: "auto" requeues the job when it runs under SLURM; "never" does not.
    """

    def __init__(self, signals: list[str] | tuple[str, ...] = SIGNALS, requeue: str = "auto") -> None:
        unknown = [s for s in signals if not isinstance(getattr(signal, str(s), None), signal.Signals)]
        if unknown:
            raise ValueError(f"unknown signals {unknown}; use names such as {', '.join(SIGNALS)}")
        if requeue not in ("auto", "never"):
            raise ValueError(f"requeue must be 'auto' or 'never', got {requeue!r}")
        self.signals = tuple(str(s) for s in signals)
        self.requeue = requeue
        self.received: str | None = None  # name of the first signal caught
        self.saved_step: int | None = None  # step of the checkpoint saved for it
        self.checkpoint: str | None = None
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    # ------------------------------------------------------------------ signals

    def _catch(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT":
            if self.received == "SIGINT":  # the second Ctrl-C: stop now, the step in progress is lost
                trainer = self._trainer
                step = trainer.global_step if trainer is not None else 0
                raise Aborted(step, self.checkpoint or _last_checkpoint(trainer))
            log.warning("Ctrl-C: saving the step in progress, then stopping (press Ctrl-C again to abort at once)")
        self.received = self.received or name

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._catch)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # ------------------------------------------------------------------ save, then stop

    def _signalled(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Whether any rank caught a signal (ranks agree, so they save and stop together)."""
        flag = self.received is not None
        if trainer.world_size > 1:
            flag = bool(trainer.strategy.reduce(torch.tensor(float(flag), device=pl_module.device), reduce_op="max"))
            if flag and self.received is None:
                self.received = "a signal on another rank"
        return flag

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._signalled(trainer, pl_module) and self.saved_step != trainer.global_step:
            self._save(trainer)

    def _stop_if_saved(self, trainer: L.Trainer) -> None:
        if self.saved_step is not None:
            raise Preempted(self.received or "a signal", self.saved_step, self.checkpoint)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._stop_if_saved(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":  # no validation run between the save and the stop
            self._stop_if_saved(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            # Lightning stops at the end of a step on SIGTERM; if the signal came after this
            # callback's turn in that step (during validation, say), save that step now
            self.received = self.received or "SIGTERM"
            if self.saved_step != trainer.global_step and trainer.world_size == 1:
                self._save(trainer)
        stopped = isinstance(exception, (Preempted, SIGTERMException)) and not isinstance(exception, Aborted)
        if stopped and self.received != "SIGINT" and self.requeue == "auto" and trainer.is_global_zero:  # Ctrl-C: the user's stop
            job = slurm_job_id()
            if job is not None:
                requeue_slurm_job(job)

    def _save(self, trainer: L.Trainer) -> None:
        """Save this step as the periodic checkpoint callback would (through its own methods, so
        the file is named, linked and pruned like the others), or to checkpoints/last.ckpt."""
        periodic = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.save_last and c.dirpath]
        if periodic:
            cb = periodic[0]
            if cb._last_global_step_saved != trainer.global_step:  # not saved at this step already
                candidates = cb._monitor_candidates(trainer)
                cb._save_topk_checkpoint(trainer, candidates)
                cb._save_last_checkpoint(trainer, candidates)
            path = Path(cb.last_model_path).resolve() if cb.last_model_path else None
        else:
            path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            trainer.save_checkpoint(path)
        self.saved_step, self.checkpoint = trainer.global_step, str(path) if path else None
        log.warning("%s received: saved step %d to %s; stopping", self.received, trainer.global_step, path)


def _last_checkpoint(trainer: L.Trainer | None) -> str | None:
    """The newest complete checkpoint of the run (`krony.train.resume.latest_checkpoint`)."""
    found = latest_checkpoint(trainer.default_root_dir) if trainer is not None else None
    return str(found) if found else None


__all__ = ["EvaluateAtEnd", "ExportModel", "HParamsSummary", "PeriodicCheckpoint", "Preemption", "StepRichProgressBar",
           "StepTQDMProgressBar", "Throughput", "progress_bar"]
