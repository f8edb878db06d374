"""Load any transformers causal LM as a teacher or a compressed model: a hub id, a saved
directory (dense, or a krony export of any family) or a `.gguf` file.

A GGUF file loads dequantised to float (transformers needs the packages `gguf` and
`accelerate`); the model then forgets the quantizer, so it trains and saves as a float model.
A krony export of a transformers family (`model_type: krony_<family>`) is rebuilt with krony's
own layers, so it trains, nests and saves again; transformers without krony loads the same
folder through its remote code (`krony.export`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from krony.export import LAYERS_KEY, PREFIX, layers_from_spec, restored_state_dict
from krony.targets import GPT2_TYPES

GGUF = ".gguf"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
"""A bare weights file: a GPT-2 state dict (`krony.GPT.from_pretrained`)."""


def is_gpt2_preset(name: str) -> bool:
    """Whether `name` is a GPT-2 size krony builds itself (gpt2, distilgpt2, gpt2-medium, ...)."""
    from krony.config import PRESETS

    return str(name).split("/")[-1].lower() in PRESETS


def is_gpt2(spec: str | os.PathLike) -> bool:
    """Whether krony runs `spec` as its own `GPT`: a GPT-2 preset name, a GPT-2 folder, a weights
    file or a folder of weights without config.json (GPT-2's is inferred)."""
    d = _read_local_config(spec)
    bare = Path(spec).expanduser().is_dir() and d is None
    return (is_gpt2_preset(str(spec)) or str(spec).endswith(WEIGHT_SUFFIXES) or bare
            or (d or {}).get("model_type") in GPT2_TYPES)


def load_model(spec: str | os.PathLike) -> nn.Module:
    """Any model krony compresses: GPT-2 (`is_gpt2`) as krony's own `GPT`, everything else as a
    transformers causal LM (`load_causal_lm`)."""
    from krony.model import GPT

    return GPT.from_pretrained(spec) if is_gpt2(spec) else load_causal_lm(spec)


def resolved_folder(name_or_path: str) -> str:
    """What `resolve_model` loads for `name_or_path`: a run directory's `export/`, else the name
    itself (its tokenizer is the model's: `krony.tokenizer.tokenizer_for`)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not (path / "config.json").exists() and (path / "export" / "config.json").exists():
        return str(path / "export")
    if path.is_dir() and not (path / "config.json").exists() and (path / "checkpoints").exists():
        raise ValueError(f"{path} is a run directory without export/ (the run has not finished): evaluate a finished run "
                         f"or a directory with config.json + model.safetensors")
    return str(name_or_path)


def resolve_model(name_or_path: str) -> tuple[nn.Module, Path | None]:
    """(model, run directory or None): a run directory loads its `export/`, anything else goes to
    `load_model` (GPT-2 as krony's `GPT`, other families through transformers:
    hub name, model directory, weights file, `.gguf` file)."""
    folder = resolved_folder(name_or_path)
    run_dir = Path(name_or_path).expanduser() if folder != str(name_or_path) else None
    return load_model(folder), run_dir


def split_gguf(spec: str | os.PathLike) -> tuple[Path, str] | None:
    """(folder, file name) of a `.gguf` path, else None."""
    path = Path(spec).expanduser()
    return (path.parent, path.name) if path.suffix.lower() == GGUF else None


def _forget_quantizer(model: nn.Module) -> nn.Module:
    """A GGUF model's weights are dequantised floats: drop what marks it quantised."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            del model.__dict__[attr]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def _pretrained(auto: Any, spec: str | os.PathLike, **kwargs: Any) -> Any:
    """`auto.from_pretrained` (AutoConfig, AutoTokenizer, AutoModelForCausalLM) of a hub id, a
    directory or a `.gguf` file (read from its folder by name)."""
    gguf = split_gguf(spec)
    if gguf is not None:
        _check_file(gguf)
        return auto.from_pretrained(gguf[0], gguf_file=gguf[1], **kwargs)
    _check_local(spec)
    return auto.from_pretrained(str(spec), **kwargs)


def _export_config(spec: str | os.PathLike) -> dict[str, Any] | None:
    """The config.json of a krony export of a transformers family (it lists `krony_layers`), else None."""
    d = _read_local_config(spec)
    return d if d is not None and d.get(LAYERS_KEY) else None


def load_config(spec: str | os.PathLike) -> Any:
    """The transformers config of a hub id, directory or `.gguf` file, without the weights."""
    from transformers import AutoConfig

    d = _export_config(spec)
    return _base_config(d) if d is not None else _pretrained(AutoConfig, spec)


def load_tokenizer(spec: str | os.PathLike) -> Any:
    """The tokenizer of a hub id, directory or `.gguf` file."""
    from transformers import AutoTokenizer

    d = _export_config(spec)  # a krony export: its family's config, not the remote code's
    return _pretrained(AutoTokenizer, spec, **({} if d is None else {"config": _base_config(d)}))


def load_causal_lm(spec: str | os.PathLike, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A transformers causal LM (in `dtype`) from a hub id, a directory or a `.gguf` file; a krony
    export comes back with krony's factored layers."""
    from transformers import AutoModelForCausalLM

    d = _export_config(spec)
    if d is not None:
        return load_export(Path(spec), d, dtype)
    try:
        model = _pretrained(AutoModelForCausalLM, spec, dtype=dtype)
    except OSError as e:  # transformers' word for a repository it cannot find or reach
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"could not load the model {spec!r}: {reason}") from e
    return (model if split_gguf(spec) is None else _forget_quantizer(model)).eval()


def _check_local(spec: str | os.PathLike) -> None:
    """ValueError for a path that does not exist (rather than a hub lookup of it)."""
    from krony.hub import looks_like_path

    if looks_like_path(str(spec)) and not Path(spec).expanduser().exists():
        raise ValueError(f"no such file or directory: {spec}")


def _check_file(gguf: tuple[Path, str]) -> None:
    if not (gguf[0] / gguf[1]).is_file():
        raise ValueError(f"no such GGUF file: {gguf[0] / gguf[1]}")


def _read_local_config(spec: str | os.PathLike) -> dict[str, Any] | None:
    from krony.hf import read_config

    path = Path(spec).expanduser() / "config.json"
    return read_config(path) if path.is_file() else None


def _base_config(d: dict[str, Any]) -> Any:
    """The family's own config class for a krony export's config.json dict (krony keys dropped)."""
    from transformers import AutoConfig

    base = str(d["model_type"]).removeprefix(PREFIX)
    fields = {k: v for k, v in d.items() if k not in (LAYERS_KEY, "auto_map", "architectures", "model_type")}
    return AutoConfig.for_model(base, **fields)


def load_export(folder: Path, d: dict[str, Any], dtype: torch.dtype = torch.float32) -> nn.Module:
    """A krony export of a transformers family, in its family's class with krony's layers."""
    from transformers import AutoModelForCausalLM

    from krony.compression import install
    from krony.hf import read_weights, state_dict_problems
    from krony.hub import WEIGHT_FILES

    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).exists()), None)
    if weights is None:
        raise ValueError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")
    model = AutoModelForCausalLM.from_config(_base_config(d))
    layers = layers_from_spec(d[LAYERS_KEY])
    install(model, layers)
    sd = restored_state_dict(read_weights(weights), layers)
    head = model.get_output_embeddings()
    tied = {n for n, p in model.named_parameters(remove_duplicate=False)
            if head is not None and p is head.weight and n not in sd}  # the model ties it itself
    problems = state_dict_problems({k: v for k, v in model.state_dict().items() if k not in tied}, sd)
    if problems:
        raise ValueError(f"{weights} does not fit its config.json: " + "; ".join(problems))
    model.load_state_dict(sd, strict=False)
    return model.to(dtype).eval()


__all__ = ["GGUF", "GPT2_TYPES", "is_gpt2", "is_gpt2_preset", "load_model", "load_causal_lm", "load_config", "load_export", "load_tokenizer", "resolve_model", "resolved_folder", "split_gguf"]
