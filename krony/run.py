"""Hydra entry point: `python -m krony.run [-m] group=option ... key=value ...`.

    python -m krony.run experiment=smoke                                   # one offline CPU run
    python -m krony.run -m decomp=67m,81m,96m init=vanloan,prune           # a sweep, one job each
    python -m krony.run --help                                             # groups, options and keys

Every job trains (or, with train=false, validates) one model and writes its TensorBoard
events, checkpoints and exported model into its own directory named after the run
(`81m-vanloan-r1`). A job that fails is logged with its error (`error.txt` in its directory);
the sweep goes on, and the command exits non-zero at the end with the list of failed jobs.
A job started again continues where it stopped (`krony.train.resume`); a pre-empted one
(SIGTERM, SIGUSR1, SIGUSR2, Ctrl-C) saves its step first (`krony.train.preempt`); a job another
process is training is refused or, in a sweep, skipped (`krony.train.lock`). Before Hydra starts,
`krony.run_check` checks the command itself: a typo, a bad value or an unwritable directory is
one line (exit 2), with no run directory left behind.

Only light modules are imported at the top: `--help` and a bad config answer in a second or
two, before torch and Lightning load.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from krony.data.sources import sample_path
from krony.fileio import DiskFull, write_or_report
from krony.run_check import PREFLIGHTED, check_command
from krony.train.lock import LOCK_FILE, JobLock, JobRunning, holder_of, identity_lock_path, is_rank_zero
from krony.train.resume import canonical_scheme, job_identity, job_key, plan_job, write_pointer, write_status
from krony.validate import validate

log = logging.getLogger("krony.run")

CONF_DIR = Path(os.environ.get("KRONY_CONF", Path(__file__).resolve().parents[1] / "conf"))
FAILED: list[tuple[str, str, str]] = []  # (run name, output dir, error) of this process's failed jobs
RUNNING: list[str] = []  # the line of a single run that another process is running


def scheme_key(value: Any) -> str:
    """The canonical name of a scheme for run names (`81M` and `768x768` -> `81m`); a value that is
    no scheme passes through as typed (validation then reports it against `decomp`)."""
    return str(canonical_scheme(value))


def _register_resolvers() -> None:
    """`${if:cond,a,b}`, `${krony_scheme:...}` and `${krony_match_tag:...}` for run names;
    `${krony_sample:}` for the text sample shipped with krony."""
    if not OmegaConf.has_resolver("if"):
        OmegaConf.register_new_resolver("if", lambda cond, a, b: a if cond else b)
    if not OmegaConf.has_resolver("krony_match_tag"):  # run-name tag of a FLOP-matched structure
        OmegaConf.register_new_resolver("krony_match_tag", lambda match: "" if match == "params" else f"-{match}")
    if not OmegaConf.has_resolver("krony_scheme"):
        OmegaConf.register_new_resolver("krony_scheme", scheme_key)
    if not OmegaConf.has_resolver("krony_sample"):
        OmegaConf.register_new_resolver("krony_sample", lambda name="openwebtext_sample.txt": sample_path(name))


_register_resolvers()


def build_module(cfg: DictConfig):
    """The LightningModule of a composed config: `cfg.module`, instantiated (its parts are the
    `model`, `optim`, `freeze` and `distill` dataclasses their `_target_` names)."""
    from hydra.utils import instantiate

    return instantiate(cfg.module)


def train(cfg: DictConfig, ckpt_path: str | Path | None = None, preflighted: bool = False) -> dict[str, float]:
    """Run one job: check the config and the machine (`preflighted`: the command's own check,
    `krony.run_check`, did the machine's already), build data, model, trainer; fit (or validate,
    or continue fitting from `ckpt_path`); return the final metrics. A pre-emption signal ends it
    with `Preempted` after saving the step in progress."""
    from krony.fileio import InvalidFile
    from krony.preflight import check_checkpoint, preflight

    validate(cfg)  # one-line errors for bad values before anything heavy is imported or built
    if not preflighted:
        preflight(cfg)  # the GPU, the hub, the dataset, the checkpoint: one line each, before any heavy work
    try:
        check_checkpoint(ckpt_path)
    except InvalidFile as e:  # the checkpoint resume found
        raise InvalidFile(e.path, e.what, f"{e.reason}; continue from another one with ckpt_path=..., or train "
                          f"afresh with resume=false") from None

    from krony.train.logs import quiet_lightning

    quiet_lightning()
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from krony.lm import context_length
    from krony.train.callbacks import Preemption
    from krony.train.preempt import Preempted

    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    datamodule = instantiate(cfg.data, tokenizer=cfg.model.teacher)  # the teacher's tokenizer (GPT-2's BPE for GPT-2)
    module = build_module(cfg)
    limit = context_length(module.student)
    if cfg.context > limit:  # teachers validate() could not size offline
        raise ValueError(f"context={cfg.context} exceeds the model's context {limit}")
    callbacks = [c for c in (instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None) if c is not None]
    check_disk(module.student, callbacks, cfg.paths.output_dir, refuse=cfg.get("check_disk", True))
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    try:
        if cfg.train:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        else:
            trainer.validate(module, datamodule=datamodule)
    except SIGTERMException:  # Lightning's own stop on SIGTERM, after Preemption saved the step
        saver = next((c for c in callbacks if isinstance(c, Preemption)), None)
        step = saver.saved_step if saver and saver.saved_step is not None else trainer.global_step
        raise Preempted("SIGTERM", step, saver.checkpoint if saver else None) from None
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def check_disk(model, callbacks: list, output_dir: str | Path, refuse: bool = True) -> None:
    """Log the disk the run's checkpoints will take at most (each checkpoint callback keeps its
    `save_top_k` files and writes the next before the oldest goes); when it exceeds the free space,
    raise `DiskFull` (or, with `refuse=False`, the `check_disk=false` setting, only warn)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from krony.train.lightning_io import checkpoint_bytes

    need, held = 0, 0
    for c in callbacks:
        if isinstance(c, ModelCheckpoint) and c.save_top_k != 0:
            one = checkpoint_bytes(model, optimizer_state=not c.save_weights_only)
            need += one * (max(c.save_top_k, 1) + 1)  # + 1: the next one is written before the oldest goes
            if c.dirpath and Path(c.dirpath).is_dir():  # a resumed run's checkpoints: already on the disk
                held += sum(f.stat().st_size for f in Path(c.dirpath).glob("*.ckpt") if not f.is_symlink())
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    log.info("checkpoints take about %.2f GB at most; %.1f GB free at %s", need / 1e9, free / 1e9, out)
    if need - held <= free:
        return
    message = (f"not enough disk: the checkpoints need {(need - held) / 1e9:.2f} GB more, {free / 1e9:.2f} GB free "
               f"in {out}; free space, lower callbacks.checkpoint_last.save_top_k, or start anyway with "
               f"check_disk=false")
    if refuse:
        raise DiskFull(message, out, free)
    log.warning("%s", message)


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def _set_aside(directory: Path) -> None:
    """resume=false in a directory that holds checkpoints: move them aside, never mix two runs."""
    ckpts = directory / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        aside = directory / f"checkpoints.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        ckpts.rename(aside)
        log.warning("resume=false: the earlier checkpoints of %s were moved to %s (delete them when not needed)",
                    directory, aside)


@hydra.main(config_path=str(CONF_DIR), config_name="run", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    """One job. Errors are caught and recorded so the other jobs of a sweep go on; with
    `resume` a job already finished is skipped and an interrupted one continues; a job another
    process is running is refused (a single run) or skipped (a sweep)."""
    from krony.train.preempt import Aborted, Preempted

    out = Path(cfg.paths.output_dir)
    name = cfg.get("run_name", "?")
    key = None  # known once the config is valid; job.json is written only from then on
    lock: JobLock | None = None
    try:
        validate(cfg)
        identity = job_identity(OmegaConf.to_container(cfg, resolve=True))
        key = job_key(identity)
        if is_rank_zero():  # the other ranks of a multi-process job are this job
            lock = JobLock(name, key)
            lock.acquire(identity_lock_path(cfg.paths.log_dir, key), out)  # this job in any directory
            lock.acquire(out / LOCK_FILE, out)  # any job in this (fixed) directory
        ckpt = None
        if cfg.get("resume", True):
            plan = plan_job(out, cfg.paths.log_dir, identity, name)
            if plan.note:
                log.warning(plan.note)
            if plan.action == "skip":
                log.info("run %s already finished in %s: skipped (resume=false trains it again)", name, plan.directory)
                if plan.directory.resolve() != out.resolve():
                    write_pointer(out, "skipped.txt", plan.directory)
                return None
            if plan.action == "continue":
                log.info("run %s continues in %s from %s", name, plan.directory, plan.checkpoint)
                if plan.directory.resolve() != out.resolve():
                    write_pointer(out, "resumed.txt", plan.directory, plan.checkpoint)
                out, ckpt = plan.directory, plan.checkpoint
                with open_dict(cfg):
                    cfg.paths.output_dir = str(out)
        if lock is not None:
            lock.acquire(out / LOCK_FILE, out)  # continuing in an earlier directory: lock that one too
            lock.move_to(out)
        if not cfg.get("resume", True):
            _set_aside(out)
        log.info("run %s in %s", name, out)
        if cfg.get("ckpt_path"):  # an explicit checkpoint wins (validate() checks it exists)
            ckpt = cfg.ckpt_path
        write_status(out, key, "running", run_name=name, identity=identity, overrides=_task_overrides())
        metrics = train(cfg, ckpt_path=ckpt, preflighted=key in PREFLIGHTED)
    except JobRunning as e:
        _running_elsewhere(out, name, e)
        return None
    except (Preempted, Aborted) as stop:
        _record(out, key, "interrupted", signal=stop.signal_name, step=stop.step, checkpoint=stop.checkpoint)
        log.warning("run %s %s: start the same command again to continue%s", name, stop,
                    " from there" if stop.checkpoint else " from its last checkpoint")
        raise SystemExit(stop.exit_code) from None
    except KeyboardInterrupt:  # Ctrl-C before training started (or after it ended)
        _record(out, key, "interrupted", signal="SIGINT")
        log.warning("run %s interrupted by Ctrl-C before a step was saved: start the same command again to "
                    "continue from its last checkpoint", name)
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001 - a sweep must survive any one job
        _fail(out, key, name, e)
        return None
    finally:
        if lock is not None:
            lock.release()
    _record(out, key, "finished")
    return metrics.get("val/loss")


def _held_by_another(out: Path) -> bool:
    """Whether another live process holds directory `out` (its files are not this job's to write)."""
    holder = holder_of(out / LOCK_FILE)
    return holder is not None and holder.pid != os.getpid()


def _record(out: Path, key: str | None, status: str, **extra: Any) -> None:
    """`write_status`, or a line on stderr when even that cannot be written (a full disk)."""
    if key is None or _held_by_another(out):
        return
    try:
        write_status(out, key, status, **extra)
    except OSError as e:
        _say(f"could not mark {out / 'job.json'} {status}: {e}")


def _say(line: str) -> None:
    """A line on stderr, if even that can be written (stderr redirected to the full disk)."""
    try:
        print(line, file=sys.stderr)
    except OSError:
        pass


def _fail(out: Path, key: str | None, name: str, e: Exception) -> None:
    """Record a failed job: error.txt with the traceback (else stderr), job.json `failed`, one line."""
    message = f"{type(e).__name__}: {e}"
    if isinstance(e, DiskFull):  # its line names the path and the free space already
        message = str(e) + ("; the files written before it are kept: free space, then start the same command again "
                            "to continue" if e.failed_write else "")
    if not _held_by_another(out):
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        write_or_report(out / "error.txt", traceback.format_exc())
    _record(out, key, "failed", error=message)
    log.error("run %s failed: %s (traceback in %s)", name, message, out / "error.txt")
    FAILED.append((name, str(out), message))


def _running_elsewhere(out: Path, name: str, e: JobRunning) -> None:
    """A job another live process holds: a pointer to where it runs (like a finished job's
    skipped.txt); a sweep skips it, a single run ends with the line (`main`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if Path(e.holder.directory).resolve() != out.resolve():
        write_pointer(out, "running.txt", Path(e.holder.directory))
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        log.warning("%s: skipped", e)
    else:
        RUNNING.append(str(e))


def main() -> None:
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        import signal

        from krony.run_help import print_help

        if hasattr(signal, "SIGPIPE"):  # `--help | head` ends quietly
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        print_help(CONF_DIR, [a for a in sys.argv[1:] if a not in ("--help", "-h")])
        return
    if is_rank_zero():  # the other ranks of a multi-process job run the command rank 0 checked
        try:
            check_command(CONF_DIR, sys.argv[1:])
        except (ValueError, DiskFull) as e:  # CommandError, ConfigError, InvalidFile: one line each
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except JobRunning as e:
            print(str(e), file=sys.stderr)
            sys.exit(1)
    hydra_main()
    if FAILED:
        print(f"\n{len(FAILED)} job(s) failed:", file=sys.stderr)
        for name, out, err in FAILED:
            print(f"  {name} ({out}): {err}", file=sys.stderr)
        sys.exit(1)
    if RUNNING:  # a single run another process holds; a sweep skips such jobs as it skips finished ones
        print(RUNNING[0], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
