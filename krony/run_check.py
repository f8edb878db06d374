"""What `python -m krony.run` checks before Hydra starts, so that a mistake is one line and leaves
no directory behind:

- every `group=option` names an option that exists (`init=vanlon` -> did you mean vanloan?);
- every `key=value` names a key of the composed config (`model.factor=2` -> did you mean
  model.factors?), before Hydra's own message about `+key=value`;
- the directory the command writes into can be written (a read-only `KRONY_ROOT`);
- a single run's config passes `krony.validate` and `krony.preflight` (the GPU, the hub, the
  data), and its job is not already running in another process (`krony.train.lock`).

A sweep's jobs are checked one by one when they start, as before: one job whose dims do not
divide does not stop the others. Nothing here imports torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from krony.suggest import suggest

HYDRA_INFO_FLAGS = ("cfg", "info", "hydra_help", "shell_completion", "resolve")
"""Hydra flags that print something instead of running: no job starts, nothing to check."""

PREFLIGHTED: set[str] = set()
"""Job keys whose preflight already ran in this process (a run does not check the hub twice)."""


class CommandError(ValueError):
    """A problem with the command as typed, found before any job starts: one line."""


def parse(argv: Sequence[str]) -> tuple[Any, list[Any]]:
    """(Hydra's parsed flags, the parsed overrides) of a `python -m krony.run` command line."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = get_args_parser().parse_args(list(argv))
    return args, OverridesParser.create().parse_overrides(args.overrides)


def _values(override: Any) -> list[Any]:
    """The values an override sets: each of a comma sweep, else its one value."""
    if override.is_delete():
        return []
    if override.is_sweep_override():
        return list(override.sweep_string_iterator()) if override.is_discrete_sweep() else []
    return [override.value()]


def group_options(conf_dir: Path, group: str) -> list[str] | None:
    """The options of config group `group` (its YAML files), or None when it is no group of krony's."""
    directory = Path(conf_dir) / group
    if not directory.is_dir():
        return None
    return sorted(p.stem for p in directory.glob("*.yaml"))


def check_groups(conf_dir: Path, overrides: list[Any]) -> None:
    """`CommandError` for a `group=option` whose option does not exist (any value of a sweep)."""
    for o in overrides:
        group = o.key_or_group
        options = group_options(conf_dir, group)
        if options is None or group.startswith("hydra"):  # Hydra's own groups are Hydra's to check
            continue
        for value in _values(o):
            if value is None or str(value) in options:
                continue
            raise CommandError(f"{group}={value}: no such option{suggest(str(value), options)}; the options of "
                               f"{group} are {', '.join(options)} (python -m krony.run --help {group})")


def _node_keys(node: Any) -> list[str]:
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def check_keys(cfg: DictConfig, overrides: list[Any]) -> None:
    """`CommandError` for a `key=value` (not `+key=value`) whose key is not in the composed config,
    with the closest key at that level."""
    for o in overrides:
        if o.is_add() or o.is_force_add() or o.is_delete() or "/" in o.key_or_group or o.package is not None:
            continue  # new keys, deletions (Hydra names a missing one) and packaged overrides are Hydra's
        node: Any = cfg
        parts = o.key_or_group.split(".")
        for depth, part in enumerate(parts):
            if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            keys = _node_keys(node)
            if part in keys:
                node = node._get_node(part)
                continue
            where = ".".join(parts[:depth])
            shown = ", ".join(sorted(keys)[:30]) if keys else "none (it is not a mapping)"
            close = suggest(part, keys)
            if close:
                close = close.replace("did you mean ", "did you mean " + (where + "." if where else ""))
            raise CommandError(f"{o.input_line}: unknown key{close}; the keys under "
                               f"{where or 'the top level'} are {shown} (+{o.key_or_group}=... adds a new one)")


def compose_job(conf_dir: Path, overrides: list[str], output_dir: str | Path | None = None) -> DictConfig:
    """The run config of one job as `python -m krony.run` composes it, with Hydra's node, its
    output directory (`hydra.run.dir`, or `output_dir`) resolved and `HydraConfig` set (so
    `${hydra:...}` resolves)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(str(conf_dir), version_base="1.3", job_name="run"):
        cfg = compose("run", overrides=list(overrides), return_hydra_config=True)
    run_dir = output_dir or Path(OmegaConf.select(cfg, "hydra.run.dir")).absolute()  # needs no ${hydra:...}
    with open_dict(cfg):
        cfg.hydra.job.num = 0
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def writable_problem(directory: str | Path) -> str | None:
    """Why files cannot be created in `directory` (made when missing), or None: the nearest
    existing folder is tried with a temporary file, which also catches read-only mounts."""
    from krony.fileio import nearest_existing

    existing = nearest_existing(directory)
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"cannot write in {existing} ({e.strerror or e})"
    return None


def check_writable(cfg: DictConfig, multirun: bool) -> None:
    """`CommandError` naming the setting to change when the job's directory cannot be written."""
    target = OmegaConf.select(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    problem = writable_problem(target)
    if problem is None:
        return
    root = os.environ.get("KRONY_ROOT")
    if root and str(Path(target).absolute()).startswith(str(Path(root).expanduser().absolute())):
        setting = f"KRONY_ROOT={root}"
    else:
        setting = f"the run directory {target}"
    raise CommandError(f"{setting}: {problem}; point KRONY_ROOT (or paths.root_dir=...) at a writable directory, "
                       f"or set hydra.run.dir=...")


def check_command(conf_dir: Path, argv: Sequence[str]) -> None:
    """Every check of the module doc on the command `argv`; `CommandError`, `ConfigError` or
    `JobRunning` for the first problem. A command Hydra answers itself (--cfg, --info, a sweep
    over ranges) is left to Hydra."""
    from hydra.errors import HydraException

    try:
        args, overrides = parse(argv)
    except (HydraException, SystemExit):
        return  # a syntax error: Hydra's parser says where, in its own words
    if any(getattr(args, flag, None) for flag in HYDRA_INFO_FLAGS):
        return
    check_groups(conf_dir, overrides)
    sweeps = [o for o in overrides if o.is_sweep_override()]
    # compose with the groups and the added keys (one value of each sweep), then check every key against it
    first = [o.input_line if not o.is_sweep_override() else f"{o.get_key_element()}={_first(o)}" for o in overrides]
    is_group = [group_options(conf_dir, o.key_or_group) is not None or "/" in o.key_or_group for o in overrides]
    base_lines = [line for o, line, g in zip(overrides, first, is_group)
                  if g or o.is_add() or o.is_force_add() or o.is_delete()]
    try:
        base = compose_job(conf_dir, base_lines)
    except HydraException as e:
        raise CommandError(_first_line(e)) from None
    check_keys(base, [o for o, g in zip(overrides, is_group) if not g])
    if any(_first(o) is None for o in sweeps):
        return  # a range or interval sweep: Hydra expands it
    try:
        cfg = compose_job(conf_dir, first)
    except HydraException as e:
        raise CommandError(_first_line(e)) from None
    multirun = bool(args.multirun) or bool(sweeps)
    check_writable(cfg, multirun)
    if multirun:
        return
    check_single_run(cfg)


def check_single_run(cfg: DictConfig) -> None:
    """A single run: its config, the machine and the data (`validate`, `preflight`), and no live
    process holding the same job."""
    from krony.preflight import preflight
    from krony.train.lock import JobRunning, running_holder
    from krony.train.resume import job_identity, job_key
    from krony.validate import validate

    validate(cfg)
    key = job_key(job_identity(OmegaConf.to_container(cfg, resolve=True)))
    holder = running_holder(cfg.paths.log_dir, key, cfg.paths.output_dir)
    if holder is not None:
        raise JobRunning(holder)
    preflight(cfg)
    PREFLIGHTED.add(key)


def _first(override: Any) -> Any:
    if not override.is_discrete_sweep():
        return None
    return next(iter(override.sweep_string_iterator()), None)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["CommandError", "PREFLIGHTED", "check_command", "check_groups", "check_keys", "check_single_run",
           "compose_job", "group_options", "parse", "writable_problem"]
