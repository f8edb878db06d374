"""One process per job: lock files that name their holder.

A job that trains holds two locks, each a small JSON file created with `O_CREAT | O_EXCL`
(atomic on local disks and on the shared filesystems of clusters: NFSv3 and later, Lustre,
GPFS, BeeGFS):

- `<log_dir>/locks/<job key>.lock`, by identity: a second start of the same job (same resolved
  config) in another directory, which default timestamped directories would otherwise allow;
- `<job directory>/job.lock`, by directory: a second job in the same fixed directory
  (`hydra.run.dir=...`), even one of another config.

Each file holds the holder's pid, host, start time, run name, directory and job key. The holder
touches its files every `HEARTBEAT_S` seconds and removes them when it ends. A lock whose holder
is gone is stale and taken over with a warning: on the same host, when no process has that pid
(or the one that has it started later: the pid was reused); from another host, when its file has
not been touched for `stale_after_s()` seconds (`KRONY_LOCK_STALE_S`, default 600). A job killed
with SIGKILL therefore blocks a second start on another node for at most that long.

Only rank 0 of a multi-process job locks (`is_rank_zero`): the other ranks are the same job.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krony.fileio import write_text

log = logging.getLogger(__name__)

LOCK_FILE = "job.lock"
LOCKS_DIR = "locks"
HEARTBEAT_S = 60.0
"""Seconds between the holder's touches of its lock files."""
DEFAULT_STALE_S = 600.0
"""A lock from another host untouched this long has no live holder (`KRONY_LOCK_STALE_S`)."""


def stale_after_s() -> float:
    try:
        return float(os.environ.get("KRONY_LOCK_STALE_S", DEFAULT_STALE_S))
    except ValueError:
        return DEFAULT_STALE_S


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its job: every rank variable a launcher set (torchrun's
    RANK, SLURM_PROCID, Lightning's LOCAL_RANK and NODE_RANK for the processes it starts) is 0."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        value = os.environ.get(key, "").strip()
        if value and value != "0":
            return False
    return True


class JobRunning(RuntimeError):
    """The job is held by a live process: "<run> is already running (pid P on H, since 13:02) in DIR"."""

    def __init__(self, holder: "Holder") -> None:
        self.holder = holder
        super().__init__(f"{holder.run_name or 'this job'} is already running ({holder.describe()}) in {holder.directory}")


def _process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces
    except (IndexError, ValueError):
        return None


def _alive(pid: int, started: int | None) -> bool:
    """Whether process `pid` of this host exists and is the one that took the lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, under another user
    now = _process_start(pid)
    return started is None or now is None or now == started


@dataclass
class Holder:
    """What a lock file says about the process holding it."""

    pid: int
    host: str
    since: float
    run_name: str
    directory: str
    key: str
    token: str
    pid_start: int | None = None
    touched: float = 0.0  # the file's mtime: the last heartbeat

    @classmethod
    def read(cls, path: Path) -> "Holder | None":
        """The holder recorded in `path`, or None when there is no such file. A file that cannot
        be parsed (a holder killed while writing it) reads as a holder that is gone."""
        try:
            text, touched = path.read_text(), path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            d = json.loads(text)
            return cls(**{k: d[k] for k in ("pid", "host", "since", "run_name", "directory", "key", "token")},
                       pid_start=d.get("pid_start"), touched=touched)
        except (ValueError, KeyError, TypeError):
            return cls(pid=-1, host="?", since=touched, run_name="?", directory=str(path.parent), key="?", token="",
                       touched=touched)

    def live(self) -> bool:
        """Whether the holding process still runs (see the module doc)."""
        if self.pid < 0:
            return time.time() - self.touched < 5.0  # being written right now, or a torn file
        if self.host == socket.gethostname():
            return _alive(self.pid, self.pid_start)
        return time.time() - self.touched < stale_after_s()

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {time.strftime('%H:%M', time.localtime(self.since))}"


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Create `path` holding `record` if no such file exists; False if one does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return True


def holder_of(path: Path) -> Holder | None:
    """The live holder of lock file `path`, or None when it is free or stale."""
    holder = Holder.read(path)
    return holder if holder is not None and holder.live() else None


def identity_lock_path(log_dir: str | Path, key: str) -> Path:
    return Path(log_dir) / LOCKS_DIR / f"{key}.lock"


def running_holder(log_dir: str | Path, key: str, directory: str | Path | None = None) -> Holder | None:
    """The live process holding this job (by identity) or `directory`, if any; reads only."""
    for path in [identity_lock_path(log_dir, key)] + ([Path(directory) / LOCK_FILE] if directory else []):
        holder = holder_of(path)
        if holder is not None:
            return holder
    return None


class JobLock:
    """The locks of one job, taken with `acquire` and given back with `release` (also at exit).

    Args:
        run_name, key: the job's run name and identity key (`krony.train.resume.job_key`).
    """

    def __init__(self, run_name: str, key: str) -> None:
        self.run_name, self.key = run_name, key
        self.token = uuid.uuid4().hex
        self.since = time.time()
        self.paths: list[Path] = []
        self.directory = ""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "since": self.since, "run_name": self.run_name,
                "directory": self.directory, "key": self.key, "token": self.token,
                "pid_start": _process_start(os.getpid())}

    def acquire(self, path: Path, directory: str | Path) -> None:
        """Take lock file `path` for this job running in `directory`, taking over a stale one;
        `JobRunning` naming the holder when a live process has it."""
        path = Path(path)
        if path in self.paths:
            return
        self.directory = str(directory)
        for _ in range(3):
            if _create(path, self._record()):
                self.paths.append(path)
                self._start_heartbeat()
                return
            holder = Holder.read(path)
            if holder is not None and holder.live():
                raise JobRunning(holder)
            if holder is not None:
                log.warning("taking over the stale lock %s of %s (%s: that process is gone)", path,
                            holder.run_name, holder.describe())
                aside = path.with_name(f"{path.name}.stale-{self.token}")
                try:
                    os.replace(path, aside)  # one of several processes taking it over wins the rename
                    aside.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
        holder = Holder.read(path)
        raise JobRunning(holder) if holder else OSError(errno.EBUSY, f"could not take the lock {path}")

    def move_to(self, directory: str | Path) -> None:
        """Record that the job runs in `directory` (decided after the identity lock was taken)."""
        self.directory = str(directory)
        for path in self.paths:  # held by this job: rewritten in place (temp file and rename)
            write_text(path, json.dumps(self._record()) + "\n")

    def release(self) -> None:
        """Remove the lock files this job still holds (never another process's)."""
        self._stop.set()
        for path in self.paths:
            holder = Holder.read(path)
            if holder is not None and holder.token == self.token:
                path.unlink(missing_ok=True)
        self.paths = []

    def _start_heartbeat(self) -> None:
        if self._beat is None:
            self._beat = threading.Thread(target=self._heartbeat, name="krony-lock-heartbeat", daemon=True)
            self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for path in list(self.paths):
                try:
                    os.utime(path)
                except OSError:
                    pass

    def __enter__(self) -> "JobLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


__all__ = ["DEFAULT_STALE_S", "HEARTBEAT_S", "Holder", "JobLock", "JobRunning", "LOCK_FILE", "holder_of",
           "identity_lock_path", "is_rank_zero", "running_holder", "stale_after_s"]
