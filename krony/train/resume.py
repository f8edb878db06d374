"""Which earlier job a run continues: job identity, status files and the last good checkpoint.

A job's identity is its resolved config, less the keys that do not change what it computes
(where files go, logging, progress bars, checkpoint cadence: `NOT_IDENTITY`). Every job writes
`job.json` into its directory: that identity, a short hash of it (`key`) and its status
(running / finished / failed / interrupted). Started again, a job

- looks first in its own directory (a fixed `hydra.run.dir` or `paths.output_dir`, a requeued
  cluster job): same key -> skip if finished, else continue from the newest checkpoint there;
  another key with checkpoints -> refused, naming what changed;
- else looks for the newest directory with its key under `logs/`: finished -> skipped;
  interrupted or failed with a checkpoint -> training continues in that directory;
- else starts afresh; an earlier run of the same name with another config is named in one line.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krony.fileio import write_text

JOB_FILE = "job.json"
NOT_IDENTITY = (
    "paths", "hydra", "logger", "callbacks", "resume", "ckpt_path", "run_name", "log_scalars_every", "module",
    "check_disk",
    "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.enable_model_summary",
    "trainer.default_root_dir",
)
"""Config keys (and everything under them) that do not change what a job computes."""


def canonical_scheme(value: Any) -> Any:
    """A scheme as its canonical key (`81M` and `768x768` -> `81m`, `FFN50.0` -> `ffn50`); a value that
    is no scheme as it is."""
    from krony.schemes import FFN_PREFIX, get_scheme, parse_fraction

    try:
        fraction = parse_fraction(value)
        return f"{FFN_PREFIX}{100 * fraction:g}" if fraction is not None else get_scheme(str(value)).key
    except ValueError:
        return value


def canonical_teacher(value: Any) -> Any:
    """A teacher as one spelling: a hub short name as its repository (`gpt2` ->
    `openai-community/gpt2`), a local path as its absolute path."""
    from krony.hub import MODEL_REPOS

    if not isinstance(value, str):
        return value
    if value in MODEL_REPOS:
        return MODEL_REPOS[value]
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


CANONICAL = {"decomp": canonical_scheme, "model.scheme": canonical_scheme, "model.teacher": canonical_teacher}
"""Identity keys whose values have several spellings of one meaning, and the function that picks one."""


def job_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as {dotted key: value}, less `NOT_IDENTITY`, with the values of
    `CANONICAL` in their canonical spelling (`decomp=81M` is the job of `decomp=81m`)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            flat[prefix] = node

    walk(config, "")
    return {k: CANONICAL[k](v) if k in CANONICAL else v for k, v in sorted(flat.items())
            if not any(k == x or k.startswith(x + ".") for x in NOT_IDENTITY)}


def job_key(identity: dict[str, Any]) -> str:
    """A short hash of a job identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_changes(old: dict[str, Any] | None, new: dict[str, Any], limit: int = 5) -> str:
    """What differs between two identities, as "key old -> new, ..." (at most `limit` keys)."""
    if not old:
        return "its config was not recorded"
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))
    shown = ", ".join(f"{k} {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys[:limit])
    return "changed: " + shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def write_status(directory: str | Path, key: str, status: str, **extra: Any) -> None:
    """Record this job's key and status in `directory/job.json` (atomic replace)."""
    path = Path(directory) / JOB_FILE
    record = read_status(directory)
    record.update(key=key, status=status, updated=time.strftime("%Y-%m-%d %H:%M:%S"), **extra)
    write_text(path, json.dumps(record, indent=2, default=str) + "\n")


def read_status(directory: str | Path) -> dict[str, Any]:
    try:
        record = json.loads((Path(directory) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


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
    """An earlier directory of a job and what it holds."""

    directory: Path
    record: dict[str, Any]

    @property
    def status(self) -> str:
        return self.record.get("status", "running")

    @property
    def checkpoint(self) -> Path | None:
        return latest_checkpoint(self.directory)


def _earlier_jobs(log_dir: str | Path, exclude: Path) -> list[Previous]:
    """The job directories under `log_dir` (runs and sweeps) but `exclude`, newest first."""
    found = []
    for job_file in Path(log_dir).glob(f"*/*/*/{JOB_FILE}"):  # runs/<name>/<time>, sweeps/<time>/<name>
        directory = job_file.parent.resolve()  # absolute: checkpoint callbacks compare their dirpath on resume
        if directory != exclude:
            found.append((job_file.stat().st_mtime, Previous(directory, read_status(directory))))
    return [p for _, p in sorted(found, key=lambda tp: tp[0], reverse=True)]


@dataclass
class Plan:
    """What a job started again does: "fresh", "continue" (from `checkpoint`, in `directory`) or
    "skip" (finished in `directory`); `note` is one line for the log."""

    action: str
    directory: Path
    checkpoint: Path | None = None
    note: str = ""


def plan_job(output_dir: str | Path, log_dir: str | Path, identity: dict[str, Any], run_name: str) -> Plan:
    """Where and how the job of `identity` runs, given what earlier runs left (see the module doc).
    Raises ValueError when `output_dir` holds checkpoints of another config."""
    out, key = Path(output_dir).resolve(), job_key(identity)
    own = read_status(out)
    if own:  # this very directory held a job: a fixed run directory, or a requeued job
        if own.get("key") == key:
            return _continue(Previous(out, own), out)
        changes = config_changes(own.get("identity"), identity)
        if latest_checkpoint(out) is not None:
            raise ValueError(
                f"{out} holds checkpoints of a run with another config ({changes}); it is not resumed. "
                f"Use another directory (hydra.run.dir=... or paths.output_dir=...), or resume=false to "
                f"train afresh there (its checkpoints are moved aside)"
            )
        return Plan("fresh", out, note=f"{out} held a run of another config without checkpoints ({changes}): training afresh")
    earlier = _earlier_jobs(log_dir, out)
    same = next((p for p in earlier if p.record.get("key") == key), None)
    if same is not None:
        return _continue(same, out)
    other = next((p for p in earlier if p.record.get("run_name") == run_name), None)
    if other is not None:
        changes = config_changes(other.record.get("identity"), identity)
        return Plan("fresh", out, note=f"an earlier run of {run_name} in {other.directory} had another config "
                                       f"({changes}): not resumed, training afresh")
    return Plan("fresh", out)


def _continue(prev: Previous, out: Path) -> Plan:
    if prev.status == "finished":
        return Plan("skip", prev.directory)
    checkpoint = prev.checkpoint
    if checkpoint is None:  # stopped before its first checkpoint: nothing to continue from
        return Plan("fresh", out)
    return Plan("continue", prev.directory, checkpoint)


POINTERS = {"skipped.txt": "finished earlier in ", "resumed.txt": "continued in ", "running.txt": "running in "}
"""Files a job directory gets when its run lives elsewhere (skipped, continued there, or running
there in another process), and the words before that directory; `krony.report` follows them."""


def write_pointer(out: Path, name: str, directory: Path, checkpoint: str | Path | None = None) -> None:
    """`out/<name>` (a key of `POINTERS`) saying where the run is: "finished earlier in <dir>" or
    "continued in <dir> from <checkpoint>"."""
    tail = f" from {checkpoint}" if checkpoint is not None else ""
    write_text(Path(out) / name, f"{POINTERS[name]}{directory}{tail}\n")


def read_pointer(path: Path) -> Path | None:
    """The directory a `write_pointer` file points to, or None for any other file."""
    prefix = POINTERS.get(path.name)
    text = path.read_text().splitlines()
    if prefix is None or not text or not text[0].startswith(prefix):
        return None
    target = text[0][len(prefix):]
    return Path(target.rsplit(" from ", 1)[0] if path.name == "resumed.txt" else target)


__all__ = [
    "JOB_FILE", "NOT_IDENTITY", "POINTERS", "Plan", "Previous", "config_changes", "job_identity", "job_key",
    "latest_checkpoint", "plan_job", "read_pointer", "read_status", "write_pointer", "write_status",
]
