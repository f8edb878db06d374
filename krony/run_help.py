"""`python -m krony.run --help`: the config groups, their options and every key with the comment
its YAML file gives it, read straight from `conf/` (no Hydra composition, no torch: instant).

    python -m krony.run --help                  # groups, then the keys of the default options
    python -m krony.run --help model=multifactor experiment=smoke   # the keys of those options
    python -m krony.run --help init             # every option of one group, in full
"""

from __future__ import annotations

import re
from pathlib import Path

USAGE = """\
python -m krony.run [-m] [group=option ...] [key=value ...]

Trains (or validates) one model per job; -m sweeps comma-separated values, one job per
combination. A job started again continues where it stopped; a finished one is skipped.

  python -m krony.run experiment=smoke                          offline CPU smoke run
  python -m krony.run -m decomp=67m,81m,96m init=vanloan,prune  six jobs
  python -m krony.run -m decomp=ffn50 structure=kronecker,lowrank,monarch   50% of the FFN, three structures
  python -m krony.run trainer=cpu model.teacher=/path/to/gpt2   a local teacher, on the CPU
  python -m krony.run --help init                                every option of a group
  python -m krony.run --cfg job experiment=smoke                 the composed config (Hydra)
"""

DEFAULT_LINE = re.compile(r"^\s*-\s*(?:override\s+)?([\w/]+)\s*:\s*(\"?[\w\-\.]+\"?)\s*(?:#\s*(.*))?$")


def defaults(run_yaml: Path) -> list[tuple[str, str, str]]:
    """(group, default option, comment) of the defaults list of run.yaml, in order."""
    out = []
    for line in run_yaml.read_text().splitlines():
        m = DEFAULT_LINE.match(line)
        if m and m.group(1) not in ("_self_", "hydra"):
            out.append((m.group(1), m.group(2).strip('"'), (m.group(3) or "").strip()))
    return out


def body(path: Path) -> list[str]:
    """The lines of an option file without its defaults list (the keys, with their comments)."""
    lines, in_defaults = [], False
    for line in path.read_text().splitlines():
        if line.startswith("defaults:"):
            in_defaults = True
            continue
        if in_defaults and (line.startswith(("  - ", "- ")) or not line.strip()):
            continue
        in_defaults = False
        lines.append(line)
    return lines


def options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def print_option(conf_dir: Path, group: str, option: str) -> None:
    path = conf_dir / group / f"{option}.yaml"
    lines = body(path)
    scope = "global keys" if any(line.startswith("# @package _global_") for line in lines) else f"keys under {group}."
    print(f"\n{group}={option}  ({scope}; conf/{group}/{option}.yaml)")
    for line in lines:
        if line.strip() and not line.startswith("# @package"):
            print(f"  {line}")


def print_help(conf_dir: Path, args: list[str]) -> None:
    groups = defaults(conf_dir / "run.yaml")
    names = [g for g, _, _ in groups]
    bare = [a for a in args if a in names]
    if bare:  # --help <group>: every option of it
        for group in bare:
            for option in options(conf_dir, group):
                print_option(conf_dir, group, option)
        return
    chosen = {k.lstrip("+"): v for k, _, v in (a.partition("=") for a in args if "=" in a) if k.lstrip("+") in names}
    print(USAGE)
    print("Config groups (group=option; [default]):")
    for group, default, comment in groups:
        opts = " ".join(f"[{o}]" if o == default else o for o in options(conf_dir, group))
        print(f"  {group:<11} {comment}")
        print(f"  {'':<11}   {opts}")
    print("\nKeys of the run (key=value; conf/run.yaml):")
    for line in body(conf_dir / "run.yaml"):
        if line.strip() and not line.lstrip().startswith("#"):
            print(f"  {line}")
    for group, default, _ in groups:
        option = chosen.get(group, default)
        if option in ("null", "None") or not (conf_dir / group / f"{option}.yaml").exists():
            continue
        print_option(conf_dir, group, option)


__all__ = ["print_help"]
