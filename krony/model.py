"""GPT-2 in plain PyTorch, with the Hugging Face parameter names.

Module names equal the HF checkpoint's (`transformer.wte`, `transformer.h.{i}.attn.c_attn`,
`transformer.h.{i}.mlp.c_fc`, ...). This file knows nothing of compression, like nanoGPT's
`model.py`: `krony.compress` swaps factored layers (`krony.layers`) in at the same module
names from outside, so state-dict keys stay readable. Weights are in `nn.Linear` layout
(out, in); HF's Conv1D weights are transposed on the way in and out (see `krony.hf`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from krony.config import GPTConfig
from krony.targets import KRONY_GPT


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        mask, causal = None, True
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)  # (B, nh, past + T, hs)
            if past:  # new queries see every cached key and the new ones causally
                causal = False
                if T > 1:
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """c_fc -> GELU -> c_proj. The GELU is GPT-2's "gelu_new" (tanh approximation) or, with
    `config.activation="gelu"`, the exact erf form. Compression replaces c_fc and c_proj (and
    may give the MLP a subclass that runs them fused, `krony.compression.fuse_ffn`)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc: nn.Module = nn.Linear(config.n_embd, config.ffn_dim)
        self.c_proj: nn.Module = nn.Linear(config.ffn_dim, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.act = ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's "gelu_new": GELU with the tanh approximation."""
    return F.gelu(x, approximate="tanh")


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    """GELU with the exact erf (`nn.GELU()`'s default, what the authors' nanoGPT fork ran)."""
    return F.gelu(x)


ACTIVATIONS = {"gelu_new": gelu, "gelu": gelu_exact}
"""FFN activations by their HF `activation_function` names (`krony.config.ACTIVATIONS`)."""


def set_activation(model: "GPT", name: str) -> None:
    """Switch every FFN of `model` to the activation `name` ("gelu_new" | "gelu"), in place."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    model.config.activation = name
    for m in model.modules():
        if isinstance(m, MLP):
            m.act = ACTIVATIONS[name]


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: "KVCache | None" = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Keys and values of one attention layer for incremental decoding, preallocated to `max_len`."""

    def __init__(self, batch: int, n_head: int, head_dim: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        shape = (batch, n_head, max_len, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) after what is cached; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; {end} requested")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class GPT(nn.Module):
    """GPT-2 language model: `forward(idx, targets=None) -> (logits, loss)`."""

    model_type = KRONY_GPT
    """Its family in `krony.targets.FAMILIES` (transformers models give `config.model_type`)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections into the residual stream
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def hidden_states(self, idx: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> final hidden states after `ln_f`, (B, T, C).

        With `caches` (one `KVCache` per block, see `new_caches`), idx continues the cached
        sequence: positions start after it and the caches grow by T.
        """
        B, T = idx.shape
        start = caches[0].length if caches else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds the model's context of {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, caches[i] if caches else None)
        return self.transformer.ln_f(x)

    def new_caches(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        """Empty KV caches for every block, for `batch` sequences of up to `max_len` tokens."""
        c = self.config
        p = self.transformer.wte.weight
        return [KVCache(batch, c.n_head, c.n_embd // c.n_head, max_len or c.block_size, p.device, p.dtype)
                for _ in range(c.n_layer)]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue idx (B, T) by `max_new_tokens` sampled tokens -> (B, T + max_new_tokens).

        temperature 0 is greedy decoding; `top_k` keeps the k most likely tokens. With
        `use_cache` each step feeds only the newest token and reuses the keys and values of
        the earlier ones; the total length must fit the context (`block_size`).
        """
        total = idx.shape[1] + max_new_tokens
        if use_cache and total > self.config.block_size:
            raise ValueError(f"prompt + new tokens = {total} exceeds the context of {self.config.block_size}; "
                             "shorten the prompt or generate with use_cache=False (crops the context)")
        caches = self.new_caches(idx.shape[0], total) if use_cache else None
        step_input = idx
        for _ in range(max_new_tokens):
            if not use_cache:
                step_input = idx[:, -self.config.block_size :]
            logits = self.lm_head(self.hidden_states(step_input, caches)[:, -1])  # (B, vocab)
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits.float() / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            step_input = nxt
        return idx

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab); loss is the mean CE against `targets`
        (B, T), where target -100 is ignored, or None without targets."""
        logits = self.lm_head(self.hidden_states(idx))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **config_overrides: Any) -> "GPT":
        """Load a hub name ("gpt2", "distilgpt2", "org/name"), a local directory or a weights file.

        Dense HF GPT-2 checkpoints and krony's own compressed exports both load;
        `config_overrides` (e.g. `dropout=0.1`) replace fields of the stored config.
        """
        from krony.hf import load_model

        return load_model(cls, name_or_path, **config_overrides)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `model.safetensors` + `config.json`; a dense model in the HF GPT-2 layout."""
        from krony.hf import save_model

        return save_model(self, directory)
