"""Checks of a composed run config before any model is built or data is read.

Each problem is one line naming the config key, the bad value and what would be valid, so a
sweep of days does not die an hour in on a typo. `validate(cfg)` raises `ConfigError` with
the first problem found; `problems(cfg)` lists them all. Nothing here imports torch or
Lightning, so a bad config is reported within a second or two of the command; the checks
that need the machine, the hub or torch come next, in `krony.preflight`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from krony.config import (
    EVAL_DATASETS,
    EVAL_PROTOCOLS,
    INIT_METHODS,
    KINDS,
    LAYER_SETS,
    SCHEDULES,
    FreezeConfig,
    GPTConfig,
    ModelConfig,
)
from krony.hub import WEIGHT_FILES, looks_like_path

log = logging.getLogger("krony.validate")


class ConfigError(ValueError):
    """A config value that cannot work: `key`, `value` and a one-line `hint` of what is valid."""

    def __init__(self, key: str, value: Any, hint: str) -> None:
        self.key, self.value, self.hint = key, value, hint
        super().__init__(f"{key}={value!r}: {hint}")


def _dims_of_hf_config(path: Path) -> dict[str, int]:
    try:
        d = json.loads(path.read_text())
        n_embd = int(d["n_embd"])
        return {"n_embd": n_embd, "n_inner": int(d.get("n_inner") or 4 * n_embd),
                "block_size": int(d["n_positions"]), "n_layer": int(d["n_layer"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError("model.teacher", str(path.parent), f"{path} is not a valid GPT-2 config.json: {e}") from None


def _teacher_dims(model: dict[str, Any]) -> dict[str, int] | None:
    """n_embd, n_inner, block_size, n_layer of the teacher without loading weights; None if unknown."""
    teacher = model.get("teacher")
    if teacher is None:
        overrides = dict(model.get("teacher_config") or {})
        try:
            cfg = GPTConfig.from_preset(overrides.pop("preset", "gpt2"), **overrides)
        except (ValueError, TypeError) as e:
            raise ConfigError("model.teacher_config", model.get("teacher_config"), str(e)) from None
        return {"n_embd": cfg.n_embd, "n_inner": cfg.ffn_dim, "block_size": cfg.block_size, "n_layer": cfg.n_layer}
    path = Path(str(teacher)).expanduser()
    if path.exists():
        cfg_file = path / "config.json" if path.is_dir() else path.parent / "config.json"
        return _dims_of_hf_config(cfg_file) if cfg_file.exists() else None
    from krony.hub import cached_model_files  # a hub teacher: its cached config, else the preset's sizes

    cached = cached_model_files(str(teacher))
    if cached is not None:
        return _dims_of_hf_config(cached[1])
    key = str(teacher).split("/")[-1].lower()
    try:
        cfg = GPTConfig.from_preset(key)
    except ValueError:
        return None
    return {"n_embd": cfg.n_embd, "n_inner": cfg.ffn_dim, "block_size": cfg.block_size, "n_layer": cfg.n_layer}


def _check_teacher(model: dict[str, Any]) -> None:
    teacher = model.get("teacher")
    if teacher is None:
        return
    path = Path(str(teacher)).expanduser()
    if path.exists():
        if path.is_dir() and not any((path / f).exists() for f in WEIGHT_FILES):
            raise ConfigError("model.teacher", teacher, f"the directory has no weights ({', '.join(WEIGHT_FILES)})")
        return
    if looks_like_path(str(teacher)):
        raise ConfigError("model.teacher", teacher, "no such file or directory; give a saved model directory, "
                          "a weights file or a hub name such as gpt2")


def _check_layers(layers: Any, n_layer: int | None) -> None:
    hint = f"give {', '.join(LAYER_SETS)} or a list of block indices such as [0, 2, 4]"
    if isinstance(layers, str):
        if layers not in LAYER_SETS:
            raise ConfigError("model.layers", layers, hint)
        return
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ConfigError("model.layers", layers, hint)
    if n_layer is not None and not all(0 <= i < n_layer for i in layers):
        raise ConfigError("model.layers", list(layers), f"block indices must be 0 to {n_layer - 1}: the teacher has {n_layer} blocks")


def _check_model(model: dict[str, Any], context: Any) -> None:
    from krony.schemes import get_scheme

    known = {f.name for f in fields(ModelConfig)}
    for key in model:
        if key not in known:
            raise ConfigError(f"model.{key}", model[key], f"unknown key; valid keys: {', '.join(sorted(known))}")
    kind = model.get("kind", "krony")
    if kind not in KINDS:
        raise ConfigError("model.kind", kind, f"valid choices: {', '.join(KINDS)}")
    if not isinstance(context, int) or isinstance(context, bool):
        raise ConfigError("context", context, "sequence length must be an integer, e.g. 1024")
    _check_teacher(model)
    if kind == "krony":  # the checks that need no teacher sizes first
        try:
            scheme = get_scheme(model.get("scheme", "81m"))
        except ValueError as e:
            raise ConfigError("decomp.name", model.get("scheme"), str(e).split("; ", 1)[-1]) from None
        init = model.get("init", "vanloan")
        if init not in INIT_METHODS:
            raise ConfigError("init.method", init, f"valid choices: {', '.join(INIT_METHODS)}")
        factors = model.get("factors", 1)
        if not isinstance(factors, int) or isinstance(factors, bool) or factors < 1:
            raise ConfigError("model.factors", factors, "the number of Kronecker factors must be an integer >= 1")
        if isinstance(model.get("layers", "all"), str):
            _check_layers(model.get("layers", "all"), None)
    dims = _teacher_dims(model)
    if context < 1 or (dims and context > dims["block_size"]):
        limit = f"1 to {dims['block_size']}, the teacher's context" if dims else ">= 1"
        raise ConfigError("context", context, f"sequence length must be {limit}")
    if kind != "krony":
        return
    _check_layers(model.get("layers", "all"), dims["n_layer"] if dims else None)
    if dims is None:
        return
    for module in ("c_fc", "c_proj"):
        try:
            m2, n2 = scheme.b_dims_for(module, dims["n_embd"], dims["n_inner"])
        except ValueError as e:
            raise ConfigError("decomp.name", model.get("scheme"), f"{module}: {e}") from None
        if init == "prune":
            _check_prune(model, module, m2, n2, factors)


def _check_prune(model: dict[str, Any], module: str, m2: int, n2: int, factors: int) -> None:
    offsets = dict(model.get("init_options") or {}).get("offsets")
    if factors > m2 * n2:
        raise ConfigError("model.factors", factors, f"prune init gives at most m2*n2 = {m2 * n2} factors "
                          f"for B ({m2}, {n2}) of {module}; use init=vanloan or fewer factors")
    if offsets is None:
        return
    if len(offsets) != factors or len({tuple(o) for o in offsets}) != factors:
        raise ConfigError("init.options.offsets", offsets, f"need {factors} distinct (p, q) pairs, one per factor")
    for p, q in offsets:
        if not (0 <= p < m2 and 0 <= q < n2):
            raise ConfigError("init.options.offsets", offsets, f"({p}, {q}) is outside B ({m2}, {n2}) of "
                              f"{module}: need 0 <= p < {m2}, 0 <= q < {n2}")


def _check_optim(optim: dict[str, Any]) -> None:
    for key in ("lr", "min_lr"):
        value = optim.get(key)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"optim.{key}", value, "the learning rate must be a finite number > 0, e.g. 6e-5")
    if optim.get("schedule", "constant") not in SCHEDULES:
        raise ConfigError("optim.schedule", optim.get("schedule"), f"valid choices: {', '.join(SCHEDULES)}")


def _check_trainer(trainer: dict[str, Any], optim: dict[str, Any]) -> None:
    precision = str(trainer.get("precision", "32-true"))
    if optim.get("fused") is True and precision in ("16-mixed", "16") and (trainer.get("gradient_clip_val") or 0) > 0:
        raise ConfigError("optim.fused", True, "a fused AdamW unscales fp16 gradients inside its step, so they "
                          "cannot be clipped first; with trainer.precision=16-mixed set optim.fused=null (or "
                          "false), or trainer.gradient_clip_val=0")


def _check_freeze(freeze: dict[str, Any], model: dict[str, Any]) -> None:
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
    from krony.data.sources import LOCAL_BUILDERS, MODES, TextSource

    mode = data.get("mode", "stream")
    if mode not in MODES:
        raise ConfigError("data.mode", mode, f"valid choices: {', '.join(MODES)}")
    for key, low in (("batch_size", 1), ("block_size", 1), ("num_workers", 0)):
        value = data.get(key, low)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"data.{key}", value, f"must be an integer >= {low}")
    if mode == "memmap":
        directory = Path(str(data.get("memmap_dir"))).expanduser()
        if not (directory / "train.bin").exists():
            raise ConfigError("data.memmap_dir", str(directory), "no train.bin there; run "
                              f"`python -m krony.data prepare --out {directory}` first")
        return
    source = data.get("source") or {}
    if source.get("path") in LOCAL_BUILDERS:
        try:
            TextSource(**{k: v for k, v in source.items() if k != "_target_"}).check_files()
        except ValueError as e:
            raise ConfigError("data.source.data_files", source.get("data_files"), str(e).split(": ", 1)[-1]) from None


def _check_eval(callbacks: dict[str, Any]) -> None:
    """The evaluation after training: a known protocol, its datasets, and lm-eval installed for the harness."""
    spec = callbacks.get("eval") or {}
    protocol = spec.get("protocol", "paper")
    if protocol not in EVAL_PROTOCOLS:
        raise ConfigError("callbacks.eval.protocol", protocol, f"valid choices: {', '.join(EVAL_PROTOCOLS)}")
    if protocol == "harness":
        import importlib.util

        if spec.get("tasks") and importlib.util.find_spec("lm_eval") is None:
            raise ConfigError("callbacks.eval.protocol", protocol, "lm-evaluation-harness is not installed: "
                              "pip install -e '.[eval]' (or callbacks.eval.protocol=paper)")
        return
    bad = [d for d in spec.get("datasets") or [] if d not in EVAL_DATASETS]
    if bad:
        raise ConfigError("callbacks.eval.datasets", bad, f"valid choices: {', '.join(EVAL_DATASETS)} "
                          "(lm-eval tasks go in callbacks.eval.tasks with callbacks.eval.protocol=harness)")


def _check_ckpt(ckpt_path: str | None) -> None:
    if ckpt_path and not Path(str(ckpt_path)).expanduser().is_file():
        raise ConfigError("ckpt_path", ckpt_path, "no such checkpoint file; give a .ckpt from a run's "
                          "checkpoints/ directory, or null to let resume find the last one")


def sections(cfg: DictConfig) -> dict[str, Any]:
    """The parts of a composed run config the checks read, resolved to plain containers."""
    container = OmegaConf.to_container(cfg, resolve=True)
    part = lambda name, drop: {k: v for k, v in (container.get(name) or {}).items() if k != drop}  # noqa: E731
    return {
        "model": part("model", "name"),
        "optim": part("optim", "name"),
        "freeze": part("freeze", "tag"),
        "data": part("data", "_target_"),
        "trainer": part("trainer", "_target_"),
        "callbacks": container.get("callbacks") or {},
        "context": container.get("context", 1024),
        "ckpt_path": container.get("ckpt_path"),
    }


CHECKS: list[Callable[[dict[str, Any]], None]] = [
    lambda s: _check_ckpt(s["ckpt_path"]),
    lambda s: _check_model(s["model"], s["context"]),
    lambda s: _check_optim(s["optim"]),
    lambda s: _check_trainer(s["trainer"], s["optim"]),
    lambda s: _check_freeze(s["freeze"], s["model"]),
    lambda s: _check_data(s["data"]),
    lambda s: _check_eval(s["callbacks"]),
]


def problems(cfg: DictConfig) -> list[ConfigError]:
    """Every check's first problem (one per area: checkpoint, model, optim, trainer, freeze, data, evaluation)."""
    parts = sections(cfg)
    found = []
    for check in CHECKS:
        try:
            check(parts)
        except ConfigError as e:
            found.append(e)
    return found


def raise_first(found: list[ConfigError]) -> None:
    """Raise the first problem; log the others, so one start shows every problem it found."""
    for extra in found[1:]:
        log.error("also: %s", extra)
    if found:
        raise found[0]


def validate(cfg: DictConfig) -> None:
    """Raise `ConfigError` for the first problem of a composed run config (the others are
    logged); cheap, reads no data."""
    raise_first(problems(cfg))


__all__ = ["ConfigError", "problems", "raise_first", "sections", "validate"]
