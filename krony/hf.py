"""Loading and saving GPT models: HF GPT-2 state dicts, hub names, local files and directories.

Layout on disk (a directory): `config.json` + `model.safetensors`.

- Dense models are written exactly as Hugging Face writes GPT-2 (`model_type: gpt2`, keys
  `transformer.*`, Conv1D weights stored (in, out), tied `lm_head` left out), so
  `transformers.GPT2LMHeadModel.from_pretrained(dir)` loads them.
- Compressed models use the same keys and layout for their dense parts and keep each factored
  layer's tensors under its module name, as every family's export does (`krony.export`:
  `model_type: krony_gpt2`, `krony_layers`, the remote code), so
  `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` runs the factored model
  without krony. Without `trust_remote_code` the Auto classes refuse the folder and name the
  flag; a plain `GPT2LMHeadModel` stops on a factor's shape rather than loading random FFN weights.

HF's GPT-2 uses Conv1D, whose weight is the transpose of `nn.Linear`'s; exactly these four
weights are transposed between the layouts: `attn.c_attn`, `attn.c_proj`, `mlp.c_fc`,
`mlp.c_proj` (when dense). The causal-mask buffers `attn.bias` / `attn.masked_bias` of old
checkpoints are skipped.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from krony.compression import install
from krony.config import GPTConfig
from krony.export import LAYERS_KEY, compressed_config, layers_from_spec, stored_state_dict, write_folder
from krony.fileio import InvalidFile, describe_load_error, torch_load
from krony.hub import WEIGHT_FILES, looks_like_path, model_files
from krony.targets import GPT2_TYPES

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
"""HF Conv1D weights, stored (in, out): transposed to and from our (out, in)."""
SKIPPED = (".attn.bias", ".attn.masked_bias")
"""Causal-mask buffers in old HF checkpoints; not parameters."""

LEGACY_KRONECKER_KEY = "krony_kronecker"
"""The key exports before krony_layers used (Kronecker layers only); still read."""


# ---------------------------------------------------------------- state dict conversion


def from_hf_state_dict(sd: dict[str, torch.Tensor], stored: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """HF GPT-2 keys and layout (`GPT2LMHeadModel` or bare `GPT2Model`) -> ours.

    Adds the `transformer.` prefix where missing, transposes the Conv1D weights, drops the
    causal-mask buffers. `stored` maps each factored module to the factor its file keeps under
    `<module>.weight` (`to_hf_state_dict`): that tensor gets its own name back, untransposed.
    """
    stored = stored or {}
    out = {}
    for key, value in sd.items():
        if key.endswith(SKIPPED):
            continue
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key
        module, _, leaf = key.rpartition(".")
        if module in stored:
            key = f"{module}.{stored[module]}" if leaf == "weight" else key
        elif key.endswith(TRANSPOSED) and value.ndim == 2:
            value = value.t()
        out[key] = value
    return out


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict -> HF GPT-2 layout: Conv1D weights transposed, tied `lm_head` left out,
    and each factored layer's `stored_as_weight` factor (Kronecker: A) under the dense
    weight's key, `<module>.weight` (`krony.export.stored_state_dict`; `from_hf_state_dict`
    undoes it). Tensors are contiguous copies, ready for safetensors.
    """
    state = {key: value.t() if key.endswith(TRANSPOSED) else value for key, value in model.state_dict().items()
             if not (key == "lm_head.weight" and model.config.tie_embeddings)}
    return stored_state_dict(model, state)


def state_dict_problems(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], label: str = "model",
                        unexpected_ok: bool = False) -> list[str]:
    """What keeps `sd` from loading where `expected` is: missing keys, unexpected keys (unless
    `unexpected_ok`), and shape mismatches written "key: checkpoint (..) vs <label> (..)"."""
    missing = sorted(set(expected) - set(sd))
    unexpected = [] if unexpected_ok else sorted(set(sd) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs {label} {tuple(expected[k].shape)}"
        for k in sorted(set(sd) & set(expected))
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_short_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_short_list(mismatched)}")
    return problems


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """`load_state_dict` that raises a ValueError listing missing and unexpected keys and shape mismatches."""
    expected = model.state_dict()
    if getattr(getattr(model, "config", None), "tie_embeddings", False):  # krony's GPT stores no lm_head.weight
        expected.pop("lm_head.weight", None)
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    problems = state_dict_problems(expected, sd)
    if problems:
        raise ValueError("state dict does not fit the model: " + "; ".join(problems))
    model.load_state_dict(sd, strict=False)


def _short_list(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# ---------------------------------------------------------------- configs


def hf_config_dict(model: nn.Module) -> dict[str, Any]:
    """config.json for `model`: HF GPT-2 fields, plus the factored layers of a compressed model."""
    c = model.config
    d: dict[str, Any] = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": c.n_inner,
        "activation_function": c.activation,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_eps,
        "initializer_range": 0.02,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": c.tie_embeddings,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    return compressed_config(d, model)


def saved_layers(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The factored layers recorded in a config.json dict (either key), each with its structure."""
    legacy = {name: {"structure": "kronecker", **spec} for name, spec in cfg.get(LEGACY_KRONECKER_KEY, {}).items()}
    return {**legacy, **cfg.get(LAYERS_KEY, {})}


def config_from_hf(d: dict[str, Any], **overrides: Any) -> GPTConfig:
    """GPTConfig from an HF GPT-2 config.json dict. Dropout is a training choice: it is not
    read from the file (default 0.0) and is set through `overrides`."""
    if d.get("model_type") not in GPT2_TYPES:
        raise ValueError(f"config.json has model_type {d.get('model_type')!r}; only GPT-2 checkpoints are supported")
    act = {"gelu_pytorch_tanh": "gelu_new"}.get(d.get("activation_function", "gelu_new"), d.get("activation_function"))
    if act not in ("gelu_new", "gelu"):
        raise ValueError(f"activation_function {act!r} is not supported; GPT-2 uses gelu_new (krony also runs gelu)")
    base = dict(
        block_size=d["n_positions"],
        vocab_size=d["vocab_size"],
        n_layer=d["n_layer"],
        n_head=d["n_head"],
        n_embd=d["n_embd"],
        n_inner=d.get("n_inner"),
        layer_norm_eps=d.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=d.get("tie_word_embeddings", True),
        activation=act,
    )
    return GPTConfig(**{**base, **overrides})


def config_from_state_dict(sd: dict[str, torch.Tensor], **overrides: Any) -> GPTConfig:
    """Infer a GPT-2 config from our-layout weights when no config.json is at hand (head dim 64)."""
    try:
        vocab, n_embd = sd["transformer.wte.weight"].shape
        block_size = sd["transformer.wpe.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"cannot infer a GPT-2 config: the weights have no {e.args[0]}; add a config.json") from None
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    fc = sd.get("transformer.h.0.mlp.c_fc.weight")
    base = dict(
        block_size=block_size,
        vocab_size=vocab,
        n_layer=max(layers) + 1 if layers else 0,
        n_head=max(1, n_embd // 64),
        n_embd=n_embd,
        n_inner=None if fc is None or fc.shape[0] == 4 * n_embd else fc.shape[0],
        tie_embeddings="lm_head.weight" not in sd,
    )
    return GPTConfig(**{**base, **overrides})


# ---------------------------------------------------------------- files


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, a sharded index, or a torch file (loaded with weights_only=True);
    a damaged or foreign file raises `InvalidFile` ("<path> is not a valid weights file: ...")."""
    from safetensors.torch import load_file

    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidFile(path, "weights index", describe_load_error(e)) from None
        return {k: v for shard in shards for k, v in read_weights(path.parent / shard).items()}
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise InvalidFile(path, "weights file", describe_load_error(e)) from None
    sd = torch_load(path, "weights file")
    if not isinstance(sd, dict):
        raise InvalidFile(path, "weights file", f"it holds a {type(sd).__name__}, not a state dict")
    return sd.get("state_dict", sd)


def check_weights(path: Path) -> None:
    """Make sure `path` (a weights file or a model directory) can be read, without reading the
    tensors: the safetensors header and its coverage of the file, or a torch file's index, and
    config.json. `InvalidFile` ("<path> is not a valid ...") otherwise."""
    from safetensors import safe_open

    if Path(path).suffix.lower() == ".gguf":  # transformers reads it (dequantised): check its magic only
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise InvalidFile(Path(path), "GGUF file", "it does not start with the GGUF magic bytes")
        return
    weights, cfg_path = _resolve_local(Path(path))
    if cfg_path is not None:
        read_config(cfg_path)
    if weights.name.endswith(".index.json"):
        return
    if weights.suffix == ".safetensors":
        try:
            with safe_open(str(weights), "pt"):
                pass
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise InvalidFile(weights, "weights file", describe_load_error(e)) from None
    else:
        torch_load(weights, "weights file", mmap=True)


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict; `InvalidFile` if it is not JSON."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidFile(path, "config.json", describe_load_error(e)) from None
    if not isinstance(d, dict):
        raise InvalidFile(path, "config.json", f"it holds a JSON {type(d).__name__}, not an object")
    return d


def _resolve_local(path: Path) -> tuple[Path, Path | None]:
    """(weights file, config.json or None) for a local directory or weights file."""
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).exists():
                cfg = path / "config.json"
                return path / name, cfg if cfg.exists() else None
        raise ValueError(f"no weights in directory {path}: expected one of {', '.join(WEIGHT_FILES)}")
    cfg = path.parent / "config.json"
    return path, cfg if cfg.exists() else None


def load_model(model_cls: type[nn.Module], name_or_path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """A `model_cls` (krony's `GPT`, whose `from_pretrained` calls this) from a local directory or
    weights file, or else a hub name."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        weights, cfg_path = _resolve_local(path)
    elif looks_like_path(str(name_or_path)):
        raise ValueError(f"no such file or directory: {path}")
    else:
        weights, cfg_path = model_files(str(name_or_path))
    cfg_dict = read_config(cfg_path) if cfg_path else {}
    layers = layers_from_spec(saved_layers(cfg_dict))
    sd = from_hf_state_dict(read_weights(weights), {name: layer.stored_as_weight for name, layer in layers.items()})
    config = config_from_hf(cfg_dict, **overrides) if cfg_dict else config_from_state_dict(sd, **overrides)
    model = model_cls(config)
    if not cfg_dict:
        _check_dense_weights(model, sd, weights)
    install(model, layers)
    load_state_dict_checked(model, sd)
    return model


def _check_dense_weights(model: nn.Module, sd: dict[str, torch.Tensor], weights: Path) -> None:
    """Without config.json only a dense GPT-2 can be read: a compressed model's weights (factors,
    scalars, another shape at c_fc.weight) need the layers config.json records."""
    expected = model.state_dict()
    foreign = [k for k, v in sd.items() if k not in expected or tuple(v.shape) != tuple(expected[k].shape)]
    if foreign:
        raise ValueError(f"config.json is missing beside {weights}: its weights are not a dense GPT-2 ({_short_list(foreign, 3)} "
                         f"do not fit one), so they are a compressed model whose factored layers only config.json "
                         f"records; copy config.json from the folder the model was saved in (save_pretrained writes both)")


def save_model(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors into `directory` (created), atomic per file, and
    GPT-2's tokenizer files (`krony.gpt2_bpe.save_hf_tokenizer`); a compressed model also gets
    the remote code transformers loads it with (`krony.export`)."""
    from krony.gpt2_bpe import save_hf_tokenizer

    out = write_folder(directory, to_hf_state_dict(model), hf_config_dict(model), ("GPT2Config", "GPT2LMHeadModel"))
    save_hf_tokenizer(out)
    return out


__all__ = [
    "TRANSPOSED",
    "config_from_hf",
    "config_from_state_dict",
    "from_hf_state_dict",
    "hf_config_dict",
    "saved_layers",
    "load_model",
    "load_state_dict_checked",
    "check_weights",
    "read_config",
    "read_weights",
    "save_model",
    "to_hf_state_dict",
]
