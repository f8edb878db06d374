"""Whole-model throughput: training tokens/s, generation tokens/s with a KV cache, step memory, MFU.

`bench_models`: every model is built with random weights (speed does not depend on them) from
the same dense GPT-2, compressed by a Table-1 scheme where named. `bench_causal_lm`: any causal
LM krony loads (a hub id, folder or `.gguf` file), dense against each structure at FFN
fractions, in fp32 and bf16 autocast, with the FLOP bound (dense FLOPs over the model's) beside
each speed-up. Either way all models are timed in turns in one process, so their ratios share
the machine's conditions.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from krony.bench.timing import interleaved, peak_rss_bytes, peak_rss_reset, sync
from krony.compression import compress, count_params
from krony.config import GPTConfig
from krony.flops import peak_flops, train_flops
from krony.lm import logits
from krony.model import GPT
from krony.train.losses import lm_loss

MODELS: dict[str, dict] = {
    "gpt2": {},  # dense GPT-2
    "67m": {"scheme": "67m"},
    "81m": {"scheme": "81m"},
    "96m": {"scheme": "96m"},
    "mf2x4": {"scheme": "mf2", "factors": 4, "scalars": True},  # multi-factor: 4 factors with scalars
}
"""The models `python -m krony.bench model` compares, by name: compress() arguments."""


def build_model(name: str, config: GPTConfig, device: str = "cpu") -> GPT:
    """A random dense GPT-2 of `config`, compressed as `MODELS[name]` says (random factors)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(MODELS)}")
    torch.manual_seed(0)
    model = GPT(config)
    if MODELS[name]:
        compress(model, init="random", **MODELS[name])
    return model.to(device)


def autocast(device: str, dtype: torch.dtype):
    """bf16/fp16 autocast on the device, or nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def train_step_fn(model: nn.Module, batch: int, seq_len: int, device: str, dtype: torch.dtype) -> Callable[[], None]:
    """One AdamW step (fused on CUDA) on a random batch: forward, backward, update."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            fused=torch.device(device).type == "cuda")
    vocab = model.get_input_embeddings().weight.shape[0]
    idx = torch.randint(0, vocab, (batch, seq_len + 1), device=device)
    x, y = idx[:, :-1], idx[:, 1:]
    model.train()

    def step() -> None:
        with autocast(device, dtype):
            loss = lm_loss(logits(model, x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def generate_fn(model: GPT, batch: int, prompt: int, new_tokens: int, device: str, dtype: torch.dtype) -> Callable[[], None]:
    """Greedy generation of `new_tokens` after a random prompt, with the KV cache."""
    idx = torch.randint(0, model.config.vocab_size, (batch, prompt), device=device)

    def gen() -> None:
        model.eval()
        with autocast(device, dtype):
            model.generate(idx, new_tokens, temperature=0.0)

    return gen


def step_memory(fn: Callable[[], None], device: str) -> float | None:
    """Peak memory one call of `fn` adds over what is held before it, in MiB (None if unknown)."""
    sync(device)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = peak_rss_bytes() if peak_rss_reset() else None
    fn()
    after = peak_rss_bytes()
    if before is None or after is None:
        return None
    # the kernel syncs its per-thread RSS counters lazily: a step that adds almost nothing can read
    # a fraction of a MiB below the level after the reset
    return max(0.0, (after - before) / 2**20)


def largest_batch(name: str, config: GPTConfig, seq_len: int, device: str, dtype: torch.dtype, limit: int = 1024) -> int:
    """The largest power-of-two batch whose training step fits in GPU memory (CUDA only)."""
    best, b = 0, 1
    while b <= limit:
        try:
            model = build_model(name, config, device)
            train_step_fn(model, b, seq_len, device, dtype)()
            sync(device)
            best, b = b, b * 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            model = None
            torch.cuda.empty_cache()
    return best


def bench_models(names: list[str], config: GPTConfig, batch: int = 2, seq_len: int = 256,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, rounds: int = 5,
                 gen_batch: int = 1, prompt: int = 32, new_tokens: int = 64, compile: bool = False,
                 peak: float | None = None, find_max_batch: bool = False) -> list[dict]:
    """One row per model: params, training and generation tokens/s, their ratios to the first
    model, step memory, FLOPs per token and (with a known peak) MFU."""
    models = {n: build_model(n, config, device) for n in names}
    rows = {n: {"model": n, "params": count_params(m), "batch": batch, "seq_len": seq_len} for n, m in models.items()}
    peak_fl = peak_flops(device, dtype, peak)
    runners = {n: (torch.compile(m) if compile else m) for n, m in models.items()}
    train = {n: train_step_fn(runners[n], batch, seq_len, device, dtype) for n in names}
    for n in names:
        rows[n]["train_step_mib"] = step_memory(train[n], device)
    t = interleaved(train, device, rounds=rounds, warmup=3 if compile else 1)
    for n in names:
        r = rows[n]
        r["train_tokens_per_sec"] = batch * seq_len / t[n]
        r["flops_per_token"] = train_flops(models[n], batch, seq_len) / (batch * seq_len)
        r["flops_per_sec"] = r["flops_per_token"] * r["train_tokens_per_sec"]
        r["mfu"] = r["flops_per_sec"] / peak_fl if peak_fl else None
    gen = {n: generate_fn(models[n], gen_batch, prompt, new_tokens, device, dtype) for n in names}
    t = interleaved(gen, device, rounds=rounds, warmup=1)
    base = names[0]
    for n in names:
        rows[n]["gen_tokens_per_sec"] = gen_batch * new_tokens / t[n]
    for n in names:
        rows[n]["train_speedup"] = rows[n]["train_tokens_per_sec"] / rows[base]["train_tokens_per_sec"]
        rows[n]["gen_speedup"] = rows[n]["gen_tokens_per_sec"] / rows[base]["gen_tokens_per_sec"]
        if find_max_batch and torch.device(device).type == "cuda":
            rows[n]["max_batch"] = largest_batch(n, config, seq_len, device, dtype)
    return [rows[n] for n in names]


def bench_causal_lm(spec: str, structures: list[str], fractions: list[float], dtypes: list[torch.dtype],
                    batch: int = 1, seq_len: int = 256, device: str = "cpu", rounds: int = 3) -> list[dict]:
    """One row per (model, dtype): the dense model of `spec` and each structure at each FFN
    fraction (random factors: speed does not depend on them), training tokens/s, the speed-up
    over dense in the same dtype, FLOPs per token and the FLOP bound (dense FLOPs / the model's:
    the speed-up a FLOP-bound machine would give)."""
    import copy

    from krony.causal_lm import load_model
    from krony.compression import compress

    dense = load_model(spec).to(device)
    models = {"dense": dense}
    for fraction in fractions:
        for structure in structures:
            torch.manual_seed(0)
            models[f"{structure}-ffn{fraction * 100:g}"] = compress(copy.deepcopy(dense), structure=structure,
                                                                    ffn_fraction=fraction, init="random")
    flops = {n: train_flops(m, batch, seq_len) / (batch * seq_len) for n, m in models.items()}
    rows = []
    for dtype in dtypes:
        steps = {n: train_step_fn(m, batch, seq_len, device, dtype) for n, m in models.items()}
        t = interleaved(steps, device, rounds=rounds, warmup=1)
        for n, m in models.items():
            rows.append({"model": n, "dtype": str(dtype).removeprefix("torch."), "params": count_params(m),
                         "batch": batch, "seq_len": seq_len, "train_tokens_per_sec": batch * seq_len / t[n],
                         "train_speedup": t["dense"] / t[n], "flops_per_token": flops[n],
                         "flop_bound": flops["dense"] / flops[n]})
        for m in models.values():  # the optimizer states go with the step functions
            m.zero_grad(set_to_none=True)
        steps = None
    return rows
