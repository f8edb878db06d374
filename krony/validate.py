"""Checks of a composed run config before any model is built or data is read.

Each problem is one line naming the config key, the bad value and what would be valid, so a
sweep of days does not die an hour in on a typo. `validate(cfg)` raises `ConfigError` with
the first problem found; `problems(cfg)` lists them all.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that cannot work: `key`, `value` and a one-line `hint` of what is valid."""

    def __init__(self, key: str, value: Any, hint: str) -> None:
        self.key, self.value, self.hint = key, value, hint
        super().__init__(f"{key}={value!r}: {hint}")


def _teacher_dims(model: dict[str, Any]) -> dict[str, int] | None:
    """n_embd, n_inner, block_size of the teacher without loading weights; None if unknown offline."""
    from krony.checkpoint import config_from_hf
    from krony.model import PRESETS, GPTConfig

    teacher = model.get("teacher")
    if teacher is None:
        overrides = dict(model.get("teacher_config") or {})
        cfg = GPTConfig.from_preset(overrides.pop("preset", "gpt2"), **overrides)
    else:
        path = Path(str(teacher)).expanduser()
        cfg_file = path / "config.json" if path.is_dir() else path.parent / "config.json"
        if path.exists() and cfg_file.exists():
            cfg = config_from_hf(json.loads(cfg_file.read_text()))
        elif str(teacher).split("/")[-1].lower() in PRESETS:
            cfg = GPTConfig.from_preset(str(teacher))
        else:
            return None
    return {"n_embd": cfg.n_embd, "n_inner": cfg.ffn_dim, "block_size": cfg.block_size}


def _check_teacher(model: dict[str, Any]) -> None:
    from krony.checkpoint import WEIGHT_FILES, _looks_like_path

    teacher = model.get("teacher")
    if teacher is None:
        return
    path = Path(str(teacher)).expanduser()
    if path.exists():
        if path.is_dir() and not any((path / f).exists() for f in WEIGHT_FILES):
            raise ConfigError("model.teacher", teacher, f"the directory has no weights ({', '.join(WEIGHT_FILES)})")
        return
    if _looks_like_path(str(teacher)):
        raise ConfigError("model.teacher", teacher, "no such file or directory; give a saved model directory, "
                          "a weights file or a hub name such as gpt2")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        from krony.checkpoint import HUB_REPOS

        repo = HUB_REPOS.get(str(teacher), str(teacher))
        if not isinstance(try_to_load_from_cache(repo, "model.safetensors"), str):
            raise ConfigError("model.teacher", teacher, "HF_HUB_OFFLINE is set and no local copy is cached; "
                              "use a local directory (model.teacher=/path) or experiment=smoke")


def _check_model(model: dict[str, Any], context: int) -> None:
    from krony.inits import INITS
    from krony.schemes import get_scheme
    from krony.train.build import KINDS, ModelConfig

    known = {f.name for f in fields(ModelConfig)}
    for key in model:
        if key not in known:
            raise ConfigError(f"model.{key}", model[key], f"unknown key; valid keys: {', '.join(sorted(known))}")
    kind = model.get("kind", "krony")
    if kind not in KINDS:
        raise ConfigError("model.kind", kind, f"valid choices: {', '.join(KINDS)}")
    _check_teacher(model)
    dims = _teacher_dims(model)
    if context < 1 or (dims and context > dims["block_size"]):
        limit = f"1 to {dims['block_size']}, the teacher's context" if dims else ">= 1"
        raise ConfigError("context", context, f"sequence length must be {limit}")
    if kind != "krony":
        return
    try:
        scheme = get_scheme(model.get("scheme", "81m"))
    except ValueError as e:
        raise ConfigError("decomp.name", model.get("scheme"), str(e).split("; ", 1)[-1]) from None
    init = model.get("init", "vanloan")
    if init not in INITS:
        raise ConfigError("init.method", init, f"valid choices: {', '.join(INITS)}")
    factors = model.get("factors", 1)
    if not isinstance(factors, int) or factors < 1:
        raise ConfigError("model.factors", factors, "the number of Kronecker factors must be an integer >= 1")
    if dims is None:
        return
    for module in ("c_fc", "c_proj"):
        try:
            m2, n2 = scheme.b_dims_for(module, dims["n_embd"], dims["n_inner"])
        except ValueError as e:
            raise ConfigError("decomp.name", model.get("scheme"), f"{module}: {e}") from None
        if init == "prune":
            options = dict(model.get("init_options") or {})
            offsets = options.get("offsets")
            if factors > m2 * n2:
                raise ConfigError("model.factors", factors, f"prune init gives at most m2*n2 = {m2 * n2} factors "
                                  f"for B ({m2}, {n2}) of {module}; use init=vanloan or fewer factors")
            if offsets is not None:
                if len(offsets) != factors or len({tuple(o) for o in offsets}) != factors:
                    raise ConfigError("init.options.offsets", offsets, f"need {factors} distinct (p, q) pairs, one per factor")
                for p, q in offsets:
                    if not (0 <= p < m2 and 0 <= q < n2):
                        raise ConfigError("init.options.offsets", offsets, f"({p}, {q}) is outside B ({m2}, {n2}) of "
                                          f"{module}: need 0 <= p < {m2}, 0 <= q < {n2}")


def _check_optim(optim: dict[str, Any]) -> None:
    from krony.train.optim import SCHEDULES

    for key in ("lr", "min_lr"):
        value = optim.get(key)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"optim.{key}", value, "the learning rate must be a finite number > 0, e.g. 6e-5")
    if optim.get("schedule", "constant") not in SCHEDULES:
        raise ConfigError("optim.schedule", optim.get("schedule"), f"valid choices: {', '.join(SCHEDULES)}")


def _check_freeze(freeze: dict[str, Any], model: dict[str, Any]) -> None:
    from krony.train.freeze import FreezeConfig

    known = [f.name for f in fields(FreezeConfig)]
    for key, value in freeze.items():
        if key not in known:
            raise ConfigError(f"freeze.{key}", value, f"no such part to freeze; valid parts: {', '.join(known)}")
    if (freeze.get("scalars") or freeze.get("scalars_value") is not None) and not (
        model.get("kind", "krony") == "krony" and model.get("scalars")
    ):
        raise ConfigError("freeze.scalars", freeze.get("scalars_value") or freeze.get("scalars"),
                          "the model has no Kronecker scalars to freeze; set model.scalars=true on a krony model")


def _check_data(data: dict[str, Any]) -> None:
    from krony.data.datamodule import MODES
    from krony.data.sources import TextSource

    mode = data.get("mode", "stream")
    if mode not in MODES:
        raise ConfigError("data.mode", mode, f"valid choices: {', '.join(MODES)}")
    if mode == "memmap":
        directory = Path(str(data.get("memmap_dir"))).expanduser()
        if not (directory / "train.bin").exists():
            raise ConfigError("data.memmap_dir", str(directory), "no train.bin there; run "
                              f"`python -m krony.data prepare --out {directory}` first")
        return
    source = data.get("source") or {}
    if source.get("path") in ("text", "json", "parquet"):
        try:
            TextSource(**{k: v for k, v in source.items() if k != "_target_"}).local_files()
        except ValueError as e:
            raise ConfigError("data.source.data_files", source.get("data_files"), str(e).split(": ", 1)[-1]) from None
    for key in ("batch_size", "block_size"):
        if key in data and (not isinstance(data[key], int) or data[key] < 1):
            raise ConfigError(f"data.{key}", data[key], "must be an integer >= 1")


def _sections(cfg: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True)
    model = {k: v for k, v in (container.get("model") or {}).items() if k != "name"}
    return {
        "model": model,
        "optim": {k: v for k, v in (container.get("optim") or {}).items() if k != "name"},
        "freeze": {k: v for k, v in (container.get("freeze") or {}).items() if k != "tag"},
        "data": {k: v for k, v in (container.get("data") or {}).items() if k != "_target_"},
        "context": container.get("context", 1024),
        "ckpt_path": container.get("ckpt_path"),
    }


def _check_ckpt(ckpt_path: str | None) -> None:
    if ckpt_path and not Path(str(ckpt_path)).expanduser().is_file():
        raise ConfigError("ckpt_path", ckpt_path, "no such checkpoint file; give a .ckpt from a run's "
                          "checkpoints/ directory, or null to let resume find the last one")


CHECKS: list[Callable[[dict[str, Any]], None]] = [
    lambda s: _check_ckpt(s["ckpt_path"]),
    lambda s: _check_model(s["model"], s["context"]),
    lambda s: _check_optim(s["optim"]),
    lambda s: _check_freeze(s["freeze"], s["model"]),
    lambda s: _check_data(s["data"]),
]


def problems(cfg: DictConfig) -> list[ConfigError]:
    """Every check's first problem (one per area: checkpoint, model, optim, freeze, data)."""
    sections = _sections(cfg)
    found = []
    for check in CHECKS:
        try:
            check(sections)
        except ConfigError as e:
            found.append(e)
    return found


def validate(cfg: DictConfig) -> None:
    """Raise `ConfigError` for the first problem of a composed run config; cheap, reads no data."""
    found = problems(cfg)
    if found:
        raise found[0]


__all__ = ["ConfigError", "problems", "validate"]
