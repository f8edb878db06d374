"""Pre-emption: a signal makes a run save a checkpoint of the step in progress and stop.

This module holds the light parts (the exception, signals, SLURM requeue); the Lightning
callback that does the saving is `krony.train.callbacks.Preemption`.

Clusters warn a job before they take its node: SLURM sends SIGTERM on pre-emption and, with
`--signal`, SIGUSR1 (Lightning's convention) or SIGUSR2 (submitit's) before the time limit.
`Preemption` catches these, lets the step in progress finish, saves it as the periodic
checkpoint callback would (a `step*.ckpt` file, `last.ckpt` linked to it, old ones pruned)
and stops the run with `Preempted`. Started again, the run continues from that step: no
step is lost and none is repeated. Under SLURM (`SLURM_JOB_ID` set) the job is also put back
in the queue with `scontrol requeue`, the way Lightning's own SLURM auto-requeue does.

Dataloader workers ignore these signals (`ignore_in_worker`); the main process stops them.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import re
import signal
import subprocess

log = logging.getLogger(__name__)

SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")
"""Signals that mean "save and stop" by default (SIGINT: Ctrl-C; a second one aborts at once)."""


class Preempted(BaseException):
    """The run stopped on a signal after saving `checkpoint` at `step`. A BaseException, like
    KeyboardInterrupt: a sweep stops too instead of recording a failure and going on."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | None) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"interrupted by {signal_name} at step {step}; {where}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's code for a process ended by that signal."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGTERM))


class Aborted(Preempted):
    """A second Ctrl-C: the run stopped at once, without saving the step in progress; `checkpoint`
    is the newest one saved before."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__("SIGINT", step, checkpoint)
        where = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint saved"
        self.args = (f"aborted by a second Ctrl-C at step {step}, the step in progress not saved; {where}",)

    def __str__(self) -> str:
        return self.args[0]


def ignore_in_worker(signals: tuple[str, ...] = SIGNALS) -> None:
    """Make a dataloader worker ignore the pre-emption signals: a cluster signals every process
    of a job, and a worker killed by one would crash the main process mid-step. The main
    process stops its workers itself (and `kill_workers_at_exit` makes sure of it)."""
    for name in signals:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


_exit_hook: list[bool] = []


def kill_workers_at_exit() -> None:
    """Register (once) an exit hook that SIGKILLs the daemonic children still alive: workers
    that ignore SIGTERM would otherwise hang multiprocessing's own exit handler, which sends
    SIGTERM and waits. Registered after it, so it runs first."""
    if not _exit_hook:
        atexit.register(_kill_daemonic_children)
        _exit_hook.append(True)


def _kill_daemonic_children() -> None:
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(timeout=5)


def slurm_job_id() -> str | None:
    """The SLURM job to requeue (array jobs as <array id>_<task id>), or None outside SLURM."""
    array_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_id is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job(job_id: str) -> bool:
    """`scontrol requeue <job_id>`; True when SLURM took it."""
    if not re.fullmatch(r"[0-9_]+", job_id):
        log.warning("not requeuing: %r is not a SLURM job id", job_id)
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not requeue SLURM job %s: %s", job_id, e)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (%d): %s", job_id, result.returncode, result.stderr.strip())
        return False
    log.info("requeued SLURM job %s: it continues from the checkpoint when it starts again", job_id)
    return True


__all__ = ["Aborted", "Preempted", "SIGNALS", "ignore_in_worker", "kill_workers_at_exit", "requeue_slurm_job", "slurm_job_id"]
