"""The evaluation protocols (docs/evaluation.md) and `evaluate_model`, which runs one of them.

- "paper": rows joined with "\\n\\n", tokenised once, non-overlapping windows of `context`
  tokens; each window's loss is the mean CE over its predicted tokens; ppl = exp(mean of the
  window losses). What the Krony-PT tables used, on WikiText-103, WikiText-2 (tokenised forms)
  and the original LAMBADA (Paperno et al.; the hub's `lambada`, lower-cased and tokenised).
- "sliding": the same token stream, windows every `stride` < context tokens, loss only on the
  tokens not scored before, token-weighted: ppl = exp(total NLL / scored tokens).
- "harness": lm-evaluation-harness itself (`krony.eval.harness`), any of its tasks.

              tokens  t0 t1 t2 ... t1023 | t1024 ... t2047 | t2048 ...
    paper     window  [----- 1024 -----] [----- 1024 -----] [-- rest --]   scored: all but each window's first
    sliding   window  [----- 1024 -----]
                               [----- 1024 -----]      scored: the last `stride` tokens of each later window
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from krony.compression import count_params
from krony.config import EVAL_PROTOCOLS, HARNESS_TASKS
from krony.eval.data import DATASETS, load_rows, token_ids
from krony.lm import context_length, logits as lm_logits
from krony.tokenizer import TextTokenizer

PROTOCOLS = EVAL_PROTOCOLS


# ---------------------------------------------------------------- scoring


@dataclass
class WindowResult:
    """Sums over the scored tokens of a token stream."""

    windows: int
    tokens: int
    nll: float
    """Total negative log-likelihood (nats) of the scored tokens."""
    mean_window_loss: float
    """Mean over windows of each window's mean loss (the paper protocol)."""

    @property
    def token_ppl(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def paper_ppl(self) -> float:
        return math.exp(self.mean_window_loss)


@torch.no_grad()
def score_windows(
    model: torch.nn.Module,
    token_ids: Sequence[int] | torch.Tensor,
    context: int = 1024,
    stride: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> WindowResult:
    """Score a token stream in windows of `context` tokens every `stride` tokens (batched)."""
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    spans = _spans(len(ids), context, stride or context)
    was_training = model.training
    model.eval()
    nll, tokens, window_losses = 0.0, 0, []
    for i in tqdm(range(0, len(spans), batch_size), desc="windows", disable=not progress, unit="batch"):
        batch = spans[i : i + batch_size]
        width = max(end - start for start, end, _ in batch)
        x = torch.zeros(len(batch), width, dtype=torch.long)  # right padding: never attended to, never scored
        mask = torch.zeros(len(batch), width, dtype=torch.bool)  # targets to score
        for row, (start, end, first) in enumerate(batch):
            x[row, : end - start] = ids[start:end]
            mask[row, first - start - 1 : end - start - 1] = True  # target at p is predicted at p-1
        x, mask = x.to(device), mask.to(device)
        logits = lm_logits(model, x[:, :-1]) if width > 1 else None
        if logits is None:
            continue
        losses = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")  # (B, width-1)
        m = mask[:, :-1]
        per_window = (losses * m).sum(1)
        counts = m.sum(1)
        nll += per_window.sum().item()
        tokens += int(counts.sum().item())
        window_losses += (per_window / counts.clamp(min=1)).tolist()
    model.train(was_training)
    return WindowResult(len(spans), tokens, nll, sum(window_losses) / max(1, len(window_losses)))


def _spans(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) per window over n tokens.

    paper (stride == context): disjoint windows of `context` tokens, each scoring all but its
    first token. sliding (stride < context): a window every `stride` tokens scoring only tokens
    not scored before, so positions 1..n-1 are each scored once.
    """
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    if stride == context:
        return [(start, min(start + context, n), start + 1) for start in range(0, n - 1, context)
                if min(start + context, n) - start >= 2]
    spans, scored, start = [], 1, 0
    while scored < n:
        end = min(start + context, n)
        spans.append((start, end, scored))
        scored, start = end, start + stride
    return spans


def perplexity(
    model: torch.nn.Module,
    token_ids: Sequence[int] | torch.Tensor,
    context: int = 1024,
    stride: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> float:
    """Perplexity of a token stream: the paper protocol when stride == context (exp of the mean
    window loss), the sliding protocol when stride < context (exp of the token-weighted loss)."""
    stride = stride or context
    res = score_windows(model, token_ids, context, stride, batch_size, device, progress)
    return res.paper_ppl if stride == context else res.token_ppl


def check_request(protocol: str, datasets: list[str] | None = None) -> None:
    """ValueError for an unknown protocol, or datasets the paper and sliding protocols do not know."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid choices: {', '.join(PROTOCOLS)}")
    bad = [d for d in datasets or [] if d not in DATASETS]
    if protocol != "harness" and bad:
        raise ValueError(f"unknown datasets {bad}; valid choices: {', '.join(DATASETS)} (lm-eval tasks need protocol=harness)")


def evaluate_model(
    model: torch.nn.Module,
    datasets: list[str] | None = None,
    protocol: str = "paper",
    context: int = 1024,
    stride: int = 1024,
    split: str = "test",
    data_dir: str | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    max_examples: int | None = None,
    progress: bool = True,
    tasks: list[str] | None = None,
    tokenizer: TextTokenizer | None = None,
) -> dict[str, dict[str, Any]]:
    """{dataset or task: metrics, with "source"} under `protocol` (see the module docstring).

    paper / sliding score `datasets` (perplexity, windows, tokens, rows); harness runs the lm-eval
    `tasks` (`krony.eval.harness.evaluate`; `max_examples` is its `limit`). `tokenizer`: the
    model's (`krony.tokenizer.tokenizer_for`); None: GPT-2's BPE."""
    check_request(protocol, datasets)
    if protocol == "harness":
        try:
            from krony.eval.harness import evaluate as harness_evaluate
        except ModuleNotFoundError as e:
            raise ValueError(f"protocol=harness needs lm-evaluation-harness ({e}): pip install -e '.[eval]'") from None

        return harness_evaluate(model, tasks or HARNESS_TASKS, data_dir, batch_size, max_examples, progress=progress,
                                tokenizer=tokenizer)
    datasets = list(DATASETS) if datasets is None else datasets
    context = min(context, context_length(model))
    out: dict[str, dict[str, Any]] = {}
    for name in datasets:
        loaded = load_rows(name, split, data_dir)
        ids = token_ids(loaded.rows, tokenizer)
        ids = ids[:max_tokens] if max_tokens else ids
        res = score_windows(model, ids, context, stride if protocol == "sliding" else context, batch_size, progress=progress)
        ppl = res.paper_ppl if protocol == "paper" else res.token_ppl
        out[name] = {"ppl": ppl, "tokens": len(ids), "scored_tokens": res.tokens, "windows": res.windows,
                     "rows": len(loaded.rows), "source": loaded.source}
    return out


def record(model: torch.nn.Module, name: str, protocol: str, results: dict[str, dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """What results files hold: the model, its size, the protocol and its settings, the results."""
    return {"model": name, "params": count_params(model), "protocol": protocol, **settings, "results": results}


def markdown_row(model_name: str, params: int, results: dict[str, dict[str, Any]]) -> str:
    cells = [model_name, f"{params:,}"]
    for name, r in results.items():
        if "ppl" in r:
            cells.append(f"{name} ppl {r['ppl']:.2f}")
        if "word_perplexity" in r:
            cells.append(f"{name} word ppl {r['word_perplexity']:.2f}, bpb {r['bits_per_byte']:.4f}")
        if "perplexity" in r:
            cells.append(f"{name} ppl {r['perplexity']:.2f}")
        for k in ("acc_norm", "acc"):
            if k in r:
                cells.append(f"{name} {k} {r[k]:.2%}")
                break
    return "| " + " | ".join(cells) + " |"


__all__ = [
    "PROTOCOLS",
    "WindowResult",
    "check_request",
    "evaluate_model",
    "markdown_row",
    "perplexity",
    "record",
    "score_windows",
]
