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
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from krony.data.sources import sample_path

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
    )


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one job: build data, model, trainer; fit (or validate); return the final metrics."""
    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    if cfg.context > module.student.config.block_size:
        raise ValueError(f"context={cfg.context} exceeds the model's block size {module.student.config.block_size}")
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    if cfg.train:
        trainer.fit(module, datamodule=datamodule)
    else:
        trainer.validate(module, datamodule=datamodule)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def _output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir


@hydra.main(config_path=str(CONF_DIR), config_name="run", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """One job. Errors are caught and recorded so the other jobs of a sweep go on."""
    out = _output_dir()
    name = cfg.get("run_name", "?")
    log.info("run %s in %s", name, out)
    try:
        metrics = train(cfg)
    except Exception as e:  # noqa: BLE001 - a sweep must survive any one job
        detail = traceback.format_exc()
        Path(out, "error.txt").write_text(detail)
        log.error("run %s failed: %s: %s (traceback in %s)", name, type(e).__name__, e, Path(out, "error.txt"))
        FAILED.append((name, out, f"{type(e).__name__}: {e}"))
        return None
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
