"""Save any compressed model as a folder transformers loads without krony, and load it back.

A folder holds `config.json` + `model.safetensors` (+ the tokenizer's files when one is
given). A compressed model's config is its family's (transformers' `config.to_dict()`; GPT-2's
fields for krony's `GPT`) with:

- `model_type: krony_<family>`, `architectures: [KronyForCausalLM]` and an `auto_map` to the
  remote-code files written beside it (`krony/hf_remote/`: `modeling_krony.py`, with the
  family's classes filled in, and `krony_layers.py`), so
  `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` runs the factored model
  with krony not installed;
- `krony_layers`: {module name: {"class", "structure", **constructor arguments}} from the
  structure registry (`krony.structures.REGISTRY`).

Each factored layer keeps its `stored_as_weight` factor under `<module>.weight`, so the
family's plain class stops on its shape instead of loading random weights. A model loaded
from a GGUF file saves too: its weights are dequantised floats, written by krony (transformers'
own `save_pretrained` refuses a GGUF-quantised model).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from krony.compression import factored_layers
from krony.fileio import atomic_write, write_text
from krony.structures import REGISTRY
from krony.targets import EXPORT_PREFIX as PREFIX
from krony.targets import KRONY_GPT, family_name

REMOTE_CODE = Path(__file__).parent / "hf_remote"
"""transformers remote-code files copied into compressed exports (they import only torch and transformers)."""
LAYERS_KEY = "krony_layers"
"""config.json key of the factored layers: {module name: {"class", "structure", **spec}}."""
_BASE_LINE = re.compile(r"^from transformers import .* as BaseConfig, .* as BaseModel  # krony: base classes$", re.M)
_TYPE_LINE = re.compile(r'^MODEL_TYPE = ".*"  # krony: base model type$', re.M)


def layers_spec(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: {"class", "structure", **spec}} for every factored layer in `model`."""
    return {name: {"class": REGISTRY[m.structure].cls, "structure": m.structure, **m.spec()}
            for name, m in factored_layers(model).items()}


def compressed_config(config: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """`config` (the family's config.json dict) marked as a krony export of `model`'s layers;
    unchanged for a dense model."""
    layers = layers_spec(model)
    if not layers:
        return config
    base = config["model_type"].removeprefix(PREFIX)
    return {**config, "model_type": PREFIX + base, "architectures": ["KronyForCausalLM"],
            "auto_map": {"AutoConfig": "modeling_krony.KronyConfig", "AutoModelForCausalLM": "modeling_krony.KronyForCausalLM"},
            LAYERS_KEY: layers}


def remote_code(base_config: str, base_model: str, model_type: str) -> str:
    """`modeling_krony.py` for a family whose transformers classes are `base_config` / `base_model`."""
    source = (REMOTE_CODE / "modeling_krony.py").read_text()
    source = _BASE_LINE.sub(f"from transformers import {base_config} as BaseConfig, {base_model} as BaseModel  "
                            "# krony: base classes", source)
    return _TYPE_LINE.sub(f'MODEL_TYPE = "{model_type}"  # krony: base model type', source)


def stored_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The tensors to save: `state` (default `model.state_dict()`), each factored layer's
    `stored_as_weight` factor under `<module>.weight`, a tensor shared with an earlier key
    (tied embeddings) left out; contiguous copies, ready for safetensors."""
    state = model.state_dict() if state is None else state
    renamed = {f"{name}.{layer.stored_as_weight}": f"{name}.weight" for name, layer in factored_layers(model).items()}
    out, seen = {}, set()
    for key, value in state.items():
        ident = (value.data_ptr(), value.shape, value.stride()) if value.numel() else None
        if ident is not None and ident in seen:
            continue
        seen.add(ident)
        out[renamed.get(key, key)] = value.detach().contiguous().clone()
    return out


def layers_from_spec(layers: dict[str, dict[str, Any]]) -> dict[str, nn.Module]:
    """The factored layers a config's `krony_layers` records, built empty: the inverse of `layers_spec`."""
    from krony.layers import get_structure

    return {name: get_structure(spec["structure"])(**{k: v for k, v in spec.items() if k not in ("class", "structure")})
            for name, spec in layers.items()}


def restored_state_dict(sd: dict[str, torch.Tensor], layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Undo `stored_state_dict`'s renaming for the factored `layers` ({module name: layer})."""
    stored = {f"{name}.weight": f"{name}.{layer.stored_as_weight}" for name, layer in layers.items()}
    return {stored.get(k, k): v for k, v in sd.items()}


def write_folder(directory: str | os.PathLike, state: dict[str, torch.Tensor], config: dict[str, Any],
                 base_classes: tuple[str, str]) -> Path:
    """Write model.safetensors and config.json (atomic per file), and for a compressed config the
    remote code with the family's `base_classes` (config class, model class) filled in."""
    from safetensors.torch import save_file

    out = Path(directory)
    atomic_write(out / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    write_text(out / "config.json", json.dumps(config, indent=2, default=str) + "\n")
    if LAYERS_KEY in config:
        write_text(out / "modeling_krony.py", remote_code(*base_classes, config["model_type"]))
        write_text(out / "krony_layers.py", (REMOTE_CODE / "krony_layers.py").read_text())
    return out


def save_pretrained(model: nn.Module, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Save `model` (krony's `GPT` or a transformers causal LM, compressed or dense) into
    `directory`; a compressed one loads in transformers without krony (module docstring).
    `tokenizer`: a transformers tokenizer to save beside it (krony's `GPT` always gets GPT-2's)."""
    if family_name(model) == KRONY_GPT:  # krony's GPT writes the HF GPT-2 layout itself
        return model.save_pretrained(directory)
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path"):  # a GGUF file's: the weights saved are floats
        config.pop(key, None)
    config["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    config = compressed_config(config, model)
    out = write_folder(directory, stored_state_dict(model), config, (type(model.config).__name__, type(model).__name__))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


__all__ = ["LAYERS_KEY", "REMOTE_CODE", "compressed_config", "layers_from_spec", "layers_spec", "remote_code",
           "restored_state_dict",
           "save_pretrained", "stored_state_dict", "write_folder"]
