"""Perplexity protocols (README: Evaluate and report) and the loaders that give them text.

- "paper": rows joined with "\\n\\n", tokenised once, non-overlapping windows of `context`
  tokens; each window's loss is the mean CE over its predicted tokens; ppl = exp(mean of the
  window losses). What the Krony-PT tables used.
- "sliding": the same token stream, windows every `stride` < context tokens, loss only on the
  tokens not scored before, token-weighted: ppl = exp(total NLL / scored tokens).
- "lm-eval": per document, EOT + tokens in rolling windows (every token scored once);
  word perplexity, byte perplexity and bits per byte over the whole set (as EleutherAI's
  lm-evaluation-harness reports wikitext); LAMBADA last-word accuracy and target perplexity.

              tokens  t0 t1 t2 ... t1023 | t1024 ... t2047 | t2048 ...
    paper     window  [----- 1024 -----] [----- 1024 -----] [-- rest --]   scored: all but each window's first
    sliding   window  [----- 1024 -----]
                               [----- 1024 -----]      scored: the last `stride` tokens of each later window
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from krony.tokenizer import EOT, gpt2_encoding

PROTOCOLS = ("paper", "sliding", "lm-eval")
DATASETS = ("wikitext103", "wikitext2", "lambada")

# local file layout of ../shared/data (see its README) and the hub datasets they mirror
LOCAL_FILES = {
    ("wikitext103", "tokens"): "wikitext-103/wiki.{split}.tokens",
    ("wikitext2", "tokens"): "wikitext-2/wiki.{split}.tokens",
    ("wikitext103", "raw"): "wikitext-2-raw/wiki.{split}.raw",  # the test/valid articles are the same
    ("wikitext2", "raw"): "wikitext-2-raw/wiki.{split}.raw",
    ("lambada", "tokens"): "lambada/lambada_test.jsonl",
    ("lambada", "raw"): "lambada/lambada_test.jsonl",
}
HUB = {
    ("wikitext103", "tokens"): ("wikitext", "wikitext-103-v1"),
    ("wikitext2", "tokens"): ("wikitext", "wikitext-2-v1"),
    ("wikitext103", "raw"): ("wikitext", "wikitext-103-raw-v1"),
    ("wikitext2", "raw"): ("wikitext", "wikitext-2-raw-v1"),
    ("lambada", "tokens"): ("EleutherAI/lambada_openai", "default"),
    ("lambada", "raw"): ("EleutherAI/lambada_openai", "default"),
}


# ---------------------------------------------------------------- rows, from local files or the hub


def wikitext_rows_from_file(path: str | Path) -> list[str]:
    """The rows the HF `wikitext` dataset has for this file: every line with its "\\n", and ""
    for blank lines (stored as " \\n" in the .tokens / .raw files)."""
    text = Path(path).read_text(encoding="utf-8")
    return ["" if line.strip() == "" else line for line in text.splitlines(keepends=True)]


def lambada_rows_from_file(path: str | Path) -> list[str]:
    """The passages of the OpenAI LAMBADA jsonl (one {"text": ...} per line)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def load_rows(dataset: str, split: str = "test", data_dir: str | Path | None = None, raw: bool = False) -> list[str]:
    """Rows of `dataset` ("wikitext103", "wikitext2", "lambada"): from `data_dir` (the layout of
    ../shared/data) or, without it, from the Hugging Face hub."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid choices: {', '.join(DATASETS)}")
    key = (dataset, "raw" if raw else "tokens")
    if data_dir is not None:
        path = Path(data_dir) / LOCAL_FILES[key].format(split=split)
        if not path.exists():
            raise ValueError(f"data_dir={data_dir}: no {path}; expected the layout of {LOCAL_FILES[key]}")
        return lambada_rows_from_file(path) if dataset == "lambada" else wikitext_rows_from_file(path)
    import datasets

    from krony.hub import dataset_location

    name, config = HUB[key]
    try:
        path, revision = dataset_location(name)  # the hub, or offline its cached snapshot
        ds = datasets.load_dataset(path, config, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same advice
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"could not load {name}/{config} from the hub ({reason}); offline, pass data_dir= with local files") from e
    return list(ds["text"])


def paper_text(rows: Sequence[str]) -> str:
    """The paper protocol's text: the rows joined with "\\n\\n"."""
    return "\n\n".join(rows)


def wikitext_documents(rows: Sequence[str]) -> list[str]:
    """Split wikitext rows into articles: a new one starts at each top-level heading " = Title = "."""
    docs: list[list[str]] = []
    for row in rows:
        if re.fullmatch(r" = [^=].* = \n", row) or not docs:
            docs.append([])
        docs[-1].append(row)
    return ["".join(d) for d in docs]


_DETOK = [
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "), (" . ", ". "),
    (" ! ", "! "), (" ? ", "? "), (" , ", ", "), ("( ", "("), (" )", ")"), ("[ ", "["), (" ]", "]"),
    ("{ ", "{"), (" }", "}"), (" 's", "'s"), ("s ' ", "s' "), (" n't", "n't"), ("= = = =", "===="),
    ("= = =", "==="), ("= =", "=="), (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "),
]


def wikitext_detokenize(text: str) -> str:
    """Undo WikiText's tokenisation (" @-@ " -> "-", " , " -> ", ", ...) as lm-eval does before scoring."""
    for a, b in _DETOK:
        text = text.replace(a, b)
    text = re.sub(r'" ([^"]*?) "', r'"\1"', text)
    return text


def word_count(text: str) -> int:
    """Whitespace-separated words (the count the data README gives: 241,211 for WikiText-2 test).
    lm-eval splits with re.split(r"\\s+"), which also counts the empty strings at the ends."""
    return len(text.split())


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
    rolling: bool = False,
) -> WindowResult:
    """Score a token stream in windows of `context` tokens every `stride` tokens (batched).

    With `rolling`, windows hold context + 1 tokens every `context` (lm-eval's rolling
    windows): the model still sees `context` inputs, and every token after the first is scored."""
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    spans = _spans(len(ids), context, stride or context, rolling)
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


def _spans(n: int, context: int, stride: int, rolling: bool = False) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) per window over n tokens.

    paper (stride == context): disjoint windows of `context` tokens, each scoring all but its
    first token. sliding (stride < context): a window every `stride` tokens scoring only tokens
    not scored before, so positions 1..n-1 are each scored once. rolling: windows of context + 1
    tokens every `context` tokens, overlapping by one, so positions 1..n-1 are each scored once.
    """
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    if rolling or stride == context:
        width = context + 1 if rolling else context
        return [(start, min(start + width, n), start + 1) for start in range(0, n - 1, context)
                if min(start + width, n) - start >= 2]
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


@torch.no_grad()
def lambada_accuracy(
    model: torch.nn.Module,
    passages: Sequence[str],
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Last-word accuracy (greedy: every target token is the argmax) and target-word perplexity
    exp(-mean log p(target | context)), as lm-eval's `lambada_openai` scores them."""
    enc = gpt2_encoding()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    block = model.config.block_size
    items = []
    for text in passages:
        ctx, word = text.rsplit(" ", 1)
        c, t = enc.encode_ordinary(ctx), enc.encode_ordinary(" " + word)
        items.append(((c + t)[-(block + 1) :], len(t)))
    was_training = model.training
    model.eval()
    correct, logprobs = 0, []
    for i in tqdm(range(0, len(items), batch_size), desc="lambada", disable=not progress, unit="batch"):
        batch = items[i : i + batch_size]
        width = max(len(s) for s, _ in batch) - 1
        x = torch.full((len(batch), width), EOT, dtype=torch.long)
        for row, (seq, _) in enumerate(batch):
            x[row, : len(seq) - 1] = torch.tensor(seq[:-1])
        logp = torch.log_softmax(model(x.to(device))[0].float(), dim=-1).cpu()
        for row, (seq, n_target) in enumerate(batch):
            pos = torch.arange(len(seq) - 1 - n_target, len(seq) - 1)
            target = torch.tensor(seq[-n_target:])
            lp = logp[row, pos]  # (n_target, V)
            correct += int(torch.equal(lp.argmax(-1), target))
            logprobs.append(lp.gather(-1, target[:, None]).sum().item())
    model.train(was_training)
    return {"acc": correct / len(items), "ppl": math.exp(-sum(logprobs) / len(logprobs)), "n": len(items)}


def lm_eval_wikitext(
    model: torch.nn.Module,
    rows: Sequence[str],
    context: int = 1024,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
    max_documents: int | None = None,
) -> dict[str, float]:
    """lm-eval style: per article, EOT + detokenised text in rolling windows (each token scored
    once); word and byte perplexity and bits per byte over all articles."""
    enc = gpt2_encoding()
    nll, words, n_bytes, tokens = 0.0, 0, 0, 0
    docs = wikitext_documents(rows)[:max_documents]
    for doc in tqdm(docs, desc="documents", disable=not progress, unit="doc"):
        ids = [EOT] + enc.encode_ordinary(wikitext_detokenize(doc))
        res = score_windows(model, ids, context, context, batch_size, device, rolling=True)
        nll, tokens = nll + res.nll, tokens + res.tokens
        words += word_count(doc)
        n_bytes += len(doc.encode("utf-8"))
    return {
        "word_perplexity": math.exp(nll / words),
        "byte_perplexity": math.exp(nll / n_bytes),
        "bits_per_byte": nll / n_bytes / math.log(2),
        "documents": len(docs),
        "words": words,
        "bytes": n_bytes,
        "tokens": tokens,
    }


def token_ids(rows: Iterable[str]) -> list[int]:
    """The paper protocol's token stream of `rows`."""
    return gpt2_encoding().encode_ordinary(paper_text(list(rows)))


__all__ = [
    "DATASETS",
    "PROTOCOLS",
    "WindowResult",
    "lambada_accuracy",
    "lambada_rows_from_file",
    "lm_eval_wikitext",
    "load_rows",
    "paper_text",
    "perplexity",
    "score_windows",
    "token_ids",
    "wikitext_detokenize",
    "wikitext_documents",
    "wikitext_rows_from_file",
    "word_count",
]

