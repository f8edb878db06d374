"""Checks of a composed run config before any model is built or data is read.

Single values are checked where they are defined: the config dataclasses of `krony.config`
(`model`, `optim`, `freeze`, `distill`, built here from their nodes with `from_config`, so a
wrong key, type or value names its key) and `krony.data.sources.check_data`. What is left here
is what needs two places at once or the machine's files: the scheme's dims against the
teacher's matrices, the init's limits for those dims, the blocks against the teacher's depth,
the context against its positions, frozen scalars against the model, files that must exist,
and the evaluation after training. Each problem is one line naming the key, the bad value and
what would be valid. `validate(cfg)` raises `ConfigError` with the first problem found;
`problems(cfg)` lists them all. Nothing here imports torch or Lightning, so a bad config is
reported within a second or two of the command; the checks that need the GPU or the hub come
next, in `krony.preflight`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from krony.config import (
    EVAL_DATASETS,
    EVAL_PROTOCOLS,
    ConfigError,
    GPTConfig,
    ModelConfig,
    check_choice,
    from_config,
)
from krony.hub import WEIGHT_FILES, looks_like_path
from krony.targets import GPT2_TYPES

log = logging.getLogger("krony.validate")

TYPED = ("model", "optim", "freeze", "distill", "nest")
"""Run-config nodes whose `_target_` is a config dataclass of `krony.config`."""


CONFIG_KEYS = {
    "n_embd": ("n_embd", "hidden_size", "d_model"),
    "n_inner": ("n_inner", "intermediate_size", "ffn_dim"),
    "block_size": ("n_positions", "max_position_embeddings"),
    "n_layer": ("n_layer", "num_hidden_layers"),
}
"""The teacher dims validation needs, and the config.json keys each family spells them with."""
GGUF_KEYS = {"n_embd": "embedding_length", "n_inner": "feed_forward_length", "block_size": "context_length",
             "n_layer": "block_count"}
"""The same dims in a GGUF file's metadata (`<architecture>.<key>`)."""


def _dims_of_hf_config(path: Path) -> dict[str, int]:
    """The dims of a config.json of any family (GPT-2's n_embd, Llama's hidden_size, OPT's ffn_dim, ...)."""
    try:
        d = json.loads(path.read_text())
        dims = {}
        for name, keys in CONFIG_KEYS.items():
            value = next((d[k] for k in keys if d.get(k) is not None), None)
            if value is None and name == "n_inner":  # GPT-2's null n_inner: 4 x n_embd
                value = 4 * dims["n_embd"]
            dims[name] = int(value)
        return {**dims, "model_type": str(d.get("model_type", "gpt2"))}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError("model.teacher", str(path.parent), f"{path} is not a model config.json krony can read: "
                          f"{e!r}") from None


def _dims_of_gguf(path: Path) -> dict[str, int] | None:
    """The dims of a `.gguf` file from its metadata (None without the `gguf` package or the keys)."""
    return _gguf_dims(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _gguf_dims(path: str, mtime_ns: int) -> dict[str, int] | None:
    """`_dims_of_gguf`, read once per file version (the reader parses every tensor's header: seconds)."""
    try:
        from gguf import GGUFReader
    except ModuleNotFoundError:
        return None
    try:
        reader = GGUFReader(path)
        arch = reader.fields["general.architecture"].contents()
        dims = {name: int(reader.fields[f"{arch}.{key}"].contents()) for name, key in GGUF_KEYS.items()}
        return {**dims, "model_type": str(arch)}
    except (KeyError, ValueError, OSError):
        return None


def _teacher_dims(teacher: str | None, teacher_config: dict[str, Any] | None) -> dict[str, int] | None:
    """n_embd, n_inner, block_size, n_layer (and model_type) of the teacher without loading weights; None if unknown."""
    if teacher is None:
        overrides = dict(teacher_config or {})
        try:
            cfg = GPTConfig.from_preset(overrides.pop("preset", "gpt2"), **overrides)
        except (ValueError, TypeError) as e:
            raise ConfigError("model.teacher_config", teacher_config, str(e)) from None
        return {"n_embd": cfg.n_embd, "n_inner": cfg.ffn_dim, "block_size": cfg.block_size, "n_layer": cfg.n_layer}
    path = Path(str(teacher)).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _dims_of_gguf(path)
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


def _check_teacher(teacher: str | None) -> None:
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


def _check_model(model: ModelConfig, context: Any) -> None:
    """The model against its teacher: context, blocks, the scheme's dims and the init's limits."""
    from krony.schemes import check_dims, check_init, check_offsets, choose_dims, get_scheme, parse_fraction

    if not isinstance(context, int) or isinstance(context, bool):
        raise ConfigError("context", context, "sequence length must be an integer, e.g. 1024")
    _check_teacher(model.teacher)
    dims = _teacher_dims(model.teacher, model.teacher_config)
    if context < 1 or (dims and context > dims["block_size"]):
        limit = f"1 to {dims['block_size']}, the teacher's context" if dims else ">= 1"
        raise ConfigError("context", context, f"sequence length must be {limit}")
    gpt2 = dims is None or dims.get("model_type", "gpt2") in GPT2_TYPES
    if not gpt2 and model.kind == "distil":
        raise ConfigError("model", "distilgpt2", f"copies blocks of a GPT-2 teacher; {model.teacher} is a "
                          f"{dims['model_type']} model: compress it with model=krony")
    if not gpt2 and model.activation is not None:
        raise ConfigError("model.activation", model.activation, f"switches GPT-2's GELU; {model.teacher} is a "
                          f"{dims['model_type']} model and keeps its own activation: leave it null")
    if model.kind != "krony" or dims is None:
        return
    if not isinstance(model.layers, str) and not all(i < dims["n_layer"] for i in model.layers):
        raise ConfigError("model.layers", list(model.layers),
                          f"block indices must be 0 to {dims['n_layer'] - 1}: the teacher has {dims['n_layer']} blocks")
    fraction = parse_fraction(model.scheme)
    for role in ("expand", "contract"):
        out, inp = (dims["n_inner"], dims["n_embd"]) if role == "expand" else (dims["n_embd"], dims["n_inner"])
        if model.structure == "monarch":
            m = int(model.structure_options.get("nblocks", 4))
            if dims["n_embd"] % m or dims["n_inner"] % m:
                raise ConfigError("structure.options.nblocks", m, f"must divide both FFN dims ({dims['n_embd']}, "
                                  f"{dims['n_inner']})")
        if fraction is not None and model.structure != "kronecker":
            continue  # sized by its own rank: any fraction fits
        try:
            a_dims = (choose_dims(out, inp, fraction * out * inp, model.factors) if fraction is not None
                      else get_scheme(model.scheme).a_dims_for(role))
            b_dims = check_dims(out, inp, a_dims, f"{role} weight")
        except ValueError as e:
            raise ConfigError("decomp", model.scheme, f"the FFN's {role} matrices: {e}") from None
        if model.structure != "kronecker":
            continue  # the scheme is only the budget there: its inits' limits do not apply
        try:
            check_init(model.init, a_dims, b_dims, model.factors, what=f"the {role} matrices")
        except ValueError as e:
            raise ConfigError("model.factors", model.factors, f"{e}; use another init or fewer factors") from None
        offsets = model.init_options.get("offsets") if model.init == "prune" else None
        try:
            if offsets is not None:
                check_offsets(offsets, model.factors, b_dims, f"the {role} matrices")
        except ValueError as e:
            raise ConfigError("init.options.offsets", offsets, str(e)) from None


def _check_trainer(trainer: dict[str, Any], optim: dict[str, Any]) -> None:
    precision = str(trainer.get("precision", "32-true"))
    if optim.get("fused") is True and precision in ("16-mixed", "16") and (trainer.get("gradient_clip_val") or 0) > 0:
        raise ConfigError("optim.fused", True, "a fused AdamW unscales fp16 gradients inside its step, so they "
                          "cannot be clipped first; with trainer.precision=16-mixed set optim.fused=null (or "
                          "false), or trainer.gradient_clip_val=0")


def _check_data(data: dict[str, Any]) -> None:
    """The data module's arguments (`check_data`), and the files a local source or memmap needs."""
    from krony.data.sources import LOCAL_BUILDERS, TextSource, check_data

    check_data(**{k: data.get(k) for k in ("mode", "memmap_dir", "source", "block_size", "batch_size", "num_workers",
                                           "val_fraction") if k in data})
    if data.get("mode", "stream") == "memmap":
        directory = Path(str(data.get("memmap_dir"))).expanduser()
        if not (directory / "train.bin").exists():
            raise ConfigError("data.memmap_dir", str(directory), "no train.bin there; run "
                              f"`python -m krony.data prepare --out {directory}` first")
        return
    source = data.get("source") or {}
    if source.get("path") in LOCAL_BUILDERS:
        local = TextSource(**{k: v for k, v in source.items() if k != "_target_"})
        try:
            local.check_files()
        except ValueError as e:
            raise ConfigError("data.source.data_files", source.get("data_files"), str(e).split(": ", 1)[-1]) from None
        local.check_split(int(data.get("val_documents") or 0), data.get("val_fraction"))


def _check_eval(callbacks: dict[str, Any]) -> None:
    """The evaluation after training: a known protocol, its datasets, and lm-eval installed for the harness."""
    spec = callbacks.get("eval") or {}
    protocol = spec.get("protocol", "paper")
    check_choice("callbacks.eval.protocol", protocol, EVAL_PROTOCOLS)
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
    """The parts of a composed run config the checks read, resolved to plain containers; the
    typed nodes (`TYPED`) also built as their dataclasses, under "<name>_cfg" (a `ConfigError`
    there instead when one does not build)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    part = lambda name: {k: v for k, v in (container.get(name) or {}).items() if k != "_target_"}  # noqa: E731
    out: dict[str, Any] = {name: part(name) for name in ("model", "optim", "data", "trainer")}
    out.update(callbacks=container.get("callbacks") or {}, context=container.get("context", 1024),
               ckpt_path=container.get("ckpt_path"))
    for name in TYPED:
        out[f"{name}_cfg"] = _typed(cfg, container, name)
    return out


def _typed(cfg: DictConfig, container: dict[str, Any], name: str) -> Any:
    """The node `name` built as the dataclass its `_target_` names, or the `ConfigError` that stopped it."""
    from hydra.utils import get_class

    node = container.get(name) or {}
    try:
        cls = get_class(node.get("_target_", f"krony.config.{name.capitalize()}Config"))
        raw = OmegaConf.to_container(cfg[name], resolve=False)
        return from_config(cls, node, name, raw)
    except ConfigError as e:
        return e


def _check_freeze(parts: dict[str, Any]) -> None:
    """Frozen scalars against the model, once both built (a model that did not build is its own problem)."""
    model = parts["model_cfg"]
    freeze = _built(parts, "freeze")
    if not isinstance(model, ConfigError):
        freeze.check_model(model)


def _check_nest(parts: dict[str, Any]) -> None:
    """Nesting against the model (Kronecker, the largest prefix's factors) and distillation."""
    nest = _built(parts, "nest")
    if not nest.enabled:
        return
    model, distill = parts["model_cfg"], parts["distill_cfg"]
    if not isinstance(model, ConfigError):
        nest.check_model(model)
    if not isinstance(distill, ConfigError) and distill.enabled:
        raise ConfigError("nest.schedule", nest.schedule, "trains the prefixes on the next tokens (sandwich: on the "
                          "largest prefix's predictions), not from the teacher: use distill=off")


def _built(parts: dict[str, Any], name: str) -> Any:
    """A typed section, raising its `ConfigError` when it did not build."""
    value = parts[f"{name}_cfg"]
    if isinstance(value, ConfigError):
        raise value
    return value


CHECKS: list[Callable[[dict[str, Any]], None]] = [
    lambda s: _check_ckpt(s["ckpt_path"]),
    lambda s: _check_model(_built(s, "model"), s["context"]),
    lambda s: _built(s, "optim"),
    lambda s: _check_trainer(s["trainer"], s["optim"]),
    _check_freeze,
    lambda s: _built(s, "distill"),
    _check_nest,
    lambda s: _check_data(s["data"]),
    lambda s: _check_eval(s["callbacks"]),
]


def problems(cfg: DictConfig) -> list[ConfigError]:
    """Every check's first problem (one per area: checkpoint, model, optim, trainer, freeze,
    distill, data, evaluation)."""
    parts = sections(cfg)
    found: list[ConfigError] = []
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


VALIDATED: set[str] = set()
"""Fingerprints of the resolved configs `validate` passed in this process: the command's own
check, the job and its training each ask, and a config is checked once."""


def validate(cfg: DictConfig) -> None:
    """Raise `ConfigError` for the first problem of a composed run config (the others are
    logged); cheap, reads no data; a config already passed in this process is not checked again."""
    try:
        fingerprint = hashlib.sha256(OmegaConf.to_yaml(cfg, resolve=True).encode()).hexdigest()
    except Exception:  # noqa: BLE001 - a config that does not resolve: the checks below say why
        fingerprint = None
    if fingerprint in VALIDATED:
        return
    raise_first(problems(cfg))
    if fingerprint is not None:
        VALIDATED.add(fingerprint)


__all__ = ["ConfigError", "problems", "raise_first", "sections", "validate"]
