"""Perplexity protocols of the paper (README: Evaluate and report) and the loaders that give them text.

- "paper": rows joined with "\\n\\n", tokenised once, non-overlapping windows of `context`
  tokens; each window's loss is the mean CE over its predicted tokens; ppl = exp(mean of the
  window losses). What the Krony-PT tables used, on WikiText-103, WikiText-2 (tokenised forms)
  and the original LAMBADA (Paperno et al.; the hub's `lambada`, lower-cased and tokenised).
- "sliding": the same token stream, windows every `stride` < context tokens, loss only on the
  tokens not scored before, token-weighted: ppl = exp(total NLL / scored tokens).
- "harness": lm-evaluation-harness itself (`krony.harness`), any of its tasks.

              tokens  t0 t1 t2 ... t1023 | t1024 ... t2047 | t2048 ...
    paper     window  [----- 1024 -----] [----- 1024 -----] [-- rest --]   scored: all but each window's first
    sliding   window  [----- 1024 -----]
                               [----- 1024 -----]      scored: the last `stride` tokens of each later window
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from krony.config import EVAL_DATASETS, EVAL_PROTOCOLS
from krony.tokenizer import EOT, gpt2_encoding

PROTOCOLS = EVAL_PROTOCOLS
DATASETS = EVAL_DATASETS

# local file layout of krony's evaluation data (README: Evaluate and report) and the hub datasets they mirror
LOCAL_FILES = {
    "wikitext103": "wikitext-103/wiki.{split}.tokens",
    "wikitext2": "wikitext-2/wiki.{split}.tokens",
    "lambada": "lambada/lambada_test_plain_text.txt",
}
HUB = {
    "wikitext103": ("wikitext", "wikitext-103-v1"),
    "wikitext2": ("wikitext", "wikitext-2-v1"),
    "lambada": ("lambada", "plain_text"),  # the original LAMBADA, as the authors' script loads it
}


@dataclass
class Rows:
    """The rows of one dataset split and where they came from."""

    rows: list[str]
    source: dict[str, Any] = field(default_factory=dict)
    """{"path", "sha256"} for a local file, {"hub", "config", "revision"} for the hub."""


# ---------------------------------------------------------------- rows, from local files or the hub


def wikitext_rows_from_file(path: str | Path) -> list[str]:
    """The rows the HF `wikitext` dataset has for this file: every line with its "\\n", and ""
    for blank lines (stored as " \\n" in the .tokens / .raw files)."""
    text = Path(path).read_text(encoding="utf-8")
    return ["" if line.strip() == "" else line for line in text.splitlines(keepends=True)]


def lambada_rows_from_file(path: str | Path) -> list[str]:
    """LAMBADA passages: one per line of the original plain-text file, or the "text" of each
    line of OpenAI's jsonl."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    return [json.loads(line)["text"] for line in lines] if str(path).endswith(".jsonl") else lines


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def local_file(data_dir: str | Path, relative: str) -> Path:
    """`data_dir/relative`, or ValueError naming the layout expected."""
    path = Path(data_dir).expanduser() / relative
    if not path.is_file():
        raise ValueError(f"data_dir={data_dir}: no {path}; expected the layout {relative}")
    return path


def load_rows(dataset: str, split: str = "test", data_dir: str | Path | None = None) -> Rows:
    """Rows of `dataset` ("wikitext103", "wikitext2", "lambada"): from `data_dir` (the layout of
    `LOCAL_FILES`) or, without it, from the Hugging Face hub (or its cache, offline)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid choices: {', '.join(DATASETS)}")
    if data_dir is not None:
        path = local_file(data_dir, LOCAL_FILES[dataset].format(split=split))
        rows = lambada_rows_from_file(path) if dataset == "lambada" else wikitext_rows_from_file(path)
        return Rows(rows, {"path": str(path), "sha256": file_sha256(path)})
    import datasets

    from krony.hub import dataset_location

    name, config = HUB[dataset]
    try:
        path, revision = dataset_location(name)  # the hub, or offline its cached snapshot
        ds = datasets.load_dataset(path, config, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same advice
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"could not load {name}/{config} from the hub ({reason}); offline, pass data_dir= with local files") from e
    return Rows(list(ds["text"]), {"hub": name, "config": config, "split": split, "revision": _revision(name, path, revision)})


def _revision(name: str, path: str, revision: str | None) -> str | None:
    """The commit of a hub dataset: the cached snapshot's folder name offline, else the hub's answer."""
    if Path(path).is_dir():
        return Path(path).name  # .../snapshots/<commit>
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name, revision=revision).sha
    except Exception:  # noqa: BLE001 - provenance is best effort; the scores do not depend on it
        return revision


def paper_text(rows: Sequence[str]) -> str:
    """The paper protocol's text: the rows joined with "\\n\\n"."""
    return "\n\n".join(rows)


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
        x = torch.full((len(batch), width), EOT, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.bool)  # targets to score
        for row, (start, end, first) in enumerate(batch):
            x[row, : end - start] = ids[start:end]
            mask[row, first - start - 1 : end - start - 1] = True  # target at p is predicted at p-1
        x, mask = x.to(device), mask.to(device)
        logits = model(x[:, :-1])[0] if width > 1 else None
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


def token_ids(rows: Sequence[str]) -> list[int]:
    """The paper protocol's token stream of `rows`."""
    return gpt2_encoding().encode_ordinary(paper_text(list(rows)))


__all__ = [
    "DATASETS",
    "HUB",
    "LOCAL_FILES",
    "PROTOCOLS",
    "Rows",
    "WindowResult",
    "file_sha256",
    "lambada_rows_from_file",
    "load_rows",
    "local_file",
    "paper_text",
    "perplexity",
    "score_windows",
    "token_ids",
    "wikitext_rows_from_file",
]
