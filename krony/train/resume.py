"""Which earlier job a run continues: job identity, status files and the last good checkpoint.

Every job writes `job.json` into its directory: a key made of the command-line overrides
that define it (the sweep's values included), and its status (running / finished / failed).
Started again with the same command, a job looks for the newest earlier directory with its
key under `logs/`: finished -> skipped; interrupted or failed with a checkpoint -> training
continues in that directory from its newest checkpoint; otherwise it starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

JOB_FILE = "job.json"
IGNORED_OVERRIDES = ("resume", "hydra.", "paths.", "trainer.enable_progress_bar")
"""Overrides that do not change what a job computes, so do not change its identity."""


def job_key(overrides: Iterable[str]) -> str:
    """A short hash of the overrides that define a job, order-independent."""
    kept = sorted(o.lstrip("+~") for o in overrides if not o.lstrip("+~").startswith(IGNORED_OVERRIDES))
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16]


def write_status(directory: str | Path, key: str, status: str, **extra) -> None:
    """Record this job's key and status in `directory/job.json` (atomic replace)."""
    path = Path(directory) / JOB_FILE
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(key=key, status=status, updated=time.strftime("%Y-%m-%d %H:%M:%S"), **extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def read_status(directory: str | Path) -> dict:
    path = Path(directory) / JOB_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in `directory/checkpoints`: `last.ckpt` (or where its link
    points), else the newest `step*.ckpt`; half-written `.tmp` files are never chosen."""
    ckpts = Path(directory) / "checkpoints"
    last = ckpts / "last.ckpt"
    if last.exists():  # false for a link whose target is gone
        return last.resolve()
    steps = sorted(ckpts.glob("step*.ckpt"))
    return steps[-1] if steps else None


@dataclass
class Previous:
    """An earlier directory of the same job and what it holds."""

    directory: Path
    status: str
    checkpoint: Path | None


def find_previous(log_dir: str | Path, key: str, exclude: str | Path | None = None) -> Previous | None:
    """The newest directory under `log_dir` (runs and sweeps) whose job has `key`."""
    exclude = Path(exclude).resolve() if exclude else None
    found = []
    for job_file in Path(log_dir).glob(f"*/*/*/{JOB_FILE}"):  # runs/<name>/<time>, sweeps/<time>/<name>
        directory = job_file.parent
        if exclude is not None and directory.resolve() == exclude:
            continue
        status = read_status(directory)
        if status.get("key") == key:
            found.append((job_file.stat().st_mtime, directory, status.get("status", "running")))
    if not found:
        return None
    _, directory, status = max(found)
    return Previous(directory, status, latest_checkpoint(directory))


__all__ = ["Previous", "find_previous", "job_key", "latest_checkpoint", "read_status", "write_status"]
