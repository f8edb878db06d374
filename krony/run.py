"""Hydra entry point: `python -m krony.run [-m] group=option ... key=value ...`.

    python -m krony.run experiment=smoke                                   # one offline CPU run
    python -m krony.run -m decomp=67m,81m,96m init=vanloan,prune           # a sweep, one job each

Every job trains (or, with train=false, validates) one model and writes its TensorBoard
events, checkpoints and exported model into its own directory named after the run
(`81m-vanloan-r1`). A job that fails is logged with its error (`error.txt` in its directory);
the sweep goes on, and the command exits non-zero at the end with the list of failed jobs.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from krony.data.sources import sample_path
from krony.train.resume import find_previous, job_key, write_status
from krony.validate import validate

log = logging.getLogger("krony.run")

CONF_DIR = Path(os.environ.get("KRONY_CONF", Path(__file__).resolve().parents[1] / "conf"))
FAILED: list[tuple[str, str, str]] = []  # (run name, output dir, error) of this process's failed jobs


def _register_resolvers() -> None:
    """`${if:cond,a,b}` for run names; `${krony_sample:}` for the text sample shipped with krony."""
    if not OmegaConf.has_resolver("if"):
        OmegaConf.register_new_resolver("if", lambda cond, a, b: a if cond else b)
    if not OmegaConf.has_resolver("krony_sample"):
        OmegaConf.register_new_resolver("krony_sample", lambda name="openwebtext_sample.txt": sample_path(name))


_register_resolvers()


def _model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("name", None)
    return model


def build_module(cfg: DictConfig):
    """The LightningModule of a composed config."""
    from krony.train.module import LanguageModelModule

    container = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    return LanguageModelModule(
        model=_model_kwargs(cfg),
        optim={k: v for k, v in container(cfg.optim).items() if k != "name"},
        freeze={k: v for k, v in container(cfg.freeze).items() if k != "tag"},
        distill={k: v for k, v in container(cfg.distill).items() if k != "tag"},
        seed=cfg.seed,
        log_scalars_every=cfg.log_scalars_every,
        max_bad_steps=cfg.get("max_bad_steps", 10),
        bad_step_checkpoint=str(Path(cfg.paths.output_dir) / "checkpoints" / "nonfinite-stop.ckpt"),
    )


def train(cfg: DictConfig, ckpt_path: str | Path | None = None) -> dict[str, float]:
    """Run one job: build data, model, trainer; fit (or validate, or continue fitting from
    `ckpt_path`); return the final metrics."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    validate(cfg)  # one-line errors for bad values before any model is built or data read
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    if cfg.context > module.student.config.block_size:  # teachers validate() could not size offline
        raise ValueError(f"context={cfg.context} exceeds the model's block size {module.student.config.block_size}")
    log_disk_estimate(module.student, cfg)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    else:
        trainer.validate(module, datamodule=datamodule)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def log_disk_estimate(model, cfg: DictConfig) -> None:
    """Log the disk the run's checkpoints will take at most, and warn when the disk is short."""
    from krony.train.checkpoint_io import checkpoint_bytes

    keep = sum(int(c.get("save_top_k", 1)) for c in (cfg.callbacks or {}).values()
               if c is not None and str(c.get("_target_", "")).endswith("ModelCheckpoint"))
    need = checkpoint_bytes(model) * (keep + 1)  # + 1: the next one is written before the oldest goes
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    log.info("checkpoints: %d kept, about %.2f GB at most; %.1f GB free at %s", keep, need / 1e9, free / 1e9, out)
    if need > free:
        log.warning("not enough disk for the checkpoints: %.2f GB needed, %.2f GB free at %s; lower "
                    "callbacks.checkpoint_last.save_top_k or free space", need / 1e9, free / 1e9, out)


def _output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


@hydra.main(config_path=str(CONF_DIR), config_name="run", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """One job. Errors are caught and recorded so the other jobs of a sweep go on; with
    `resume` a job already finished is skipped and an interrupted one continues."""
    out = _output_dir()
    name = cfg.get("run_name", "?")
    overrides = _task_overrides()
    key = job_key(overrides)
    ckpt = None
    if cfg.get("resume", True):
        prev = find_previous(cfg.paths.log_dir, key, exclude=out)
        if prev is not None and prev.status == "finished":
            log.info("run %s already finished in %s: skipped (resume=false trains it again)", name, prev.directory)
            Path(out, "skipped.txt").write_text(f"finished earlier in {prev.directory}\n")
            return None
        if prev is not None and prev.checkpoint is not None:
            log.info("run %s continues in %s from %s", name, prev.directory, prev.checkpoint)
            Path(out, "resumed.txt").write_text(f"continued in {prev.directory} from {prev.checkpoint}\n")
            out, ckpt = str(prev.directory), prev.checkpoint
            with open_dict(cfg):
                cfg.paths.output_dir = out
    log.info("run %s in %s", name, out)
    if cfg.get("ckpt_path"):  # an explicit checkpoint wins (validate() checks it exists)
        ckpt = cfg.ckpt_path
    write_status(out, key, "running", run_name=name, overrides=overrides)
    try:
        metrics = train(cfg, ckpt_path=ckpt)
    except Exception as e:  # noqa: BLE001 - a sweep must survive any one job
        detail = traceback.format_exc()
        Path(out, "error.txt").write_text(detail)
        write_status(out, key, "failed", error=f"{type(e).__name__}: {e}")
        log.error("run %s failed: %s: %s (traceback in %s)", name, type(e).__name__, e, Path(out, "error.txt"))
        FAILED.append((name, out, f"{type(e).__name__}: {e}"))
        return None
    write_status(out, key, "finished")
    return metrics.get("val/loss")


def main() -> None:
    hydra_main()
    if FAILED:
        print(f"\n{len(FAILED)} job(s) failed:", file=sys.stderr)
        for name, out, err in FAILED:
            print(f"  {name} ({out}): {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
