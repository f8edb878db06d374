"""What the training, evaluation and export paths ask of a causal LM, for krony's `GPT` and any
transformers model alike: logits, the final hidden state, the context length, the width.

krony's `GPT` returns `(logits, loss)` and exposes `hidden_states`; a transformers model returns
an output object. Every caller goes through these functions instead of either convention, so a
new family needs an entry in `krony.targets.FAMILIES` and nothing here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from krony.model import GPT


def _is_gpt(model: nn.Module) -> bool:
    return isinstance(model, GPT)


def logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """idx (B, T) token ids -> next-token logits (B, T, vocab)."""
    if _is_gpt(model):
        return model(idx)[0]
    return model(input_ids=idx, use_cache=False).logits


def hidden_and_logits(model: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """idx (B, T) -> (final hidden state after the last norm (B, T, C), logits (B, T, vocab)), one forward."""
    if _is_gpt(model):
        hidden = model.hidden_states(idx)
        return hidden, model.lm_head(hidden)
    out = model(input_ids=idx, use_cache=False, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


def context_length(model: nn.Module) -> int:
    """The longest sequence the model takes (GPT's block size, a transformers model's positions)."""
    c = model.config
    for key in ("block_size", "max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(c, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell the context length of {type(model).__name__} from its config")


def width(model: nn.Module) -> int:
    """d_model: the width of the residual stream."""
    return int(model.get_input_embeddings().weight.shape[1])


class LogitsOf(nn.Module):
    """`logits(model, idx)` as a module's forward (for `torch.func.functional_call`, which swaps
    parameters of a module whose forward it calls)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> Any:
        return logits(self.model, idx)


__all__ = ["LogitsOf", "context_length", "hidden_and_logits", "logits", "width"]
