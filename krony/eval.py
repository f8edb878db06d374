"""`python -m krony.eval model=... [datasets=...] [protocol=...] [data_dir=...]`: perplexity of a checkpoint.

    python -m krony.eval model=gpt2                                        # hub model, hub datasets
    python -m krony.eval model=logs/runs/81m-vanloan-r1/<time> data_dir=../shared/data
    python -m krony.eval model=distilgpt2 protocol=sliding stride=512 datasets=[wikitext2]
    python -m krony.eval model=gpt2 protocol=lm-eval datasets=[wikitext2,lambada]

Writes results.json (into the run directory when `model` is one, else the working directory,
or `output=`) and prints a markdown row. `python -m krony.eval --help` lists the keys.
"""

from __future__ import annotations

import json
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from krony.compression import count_params
from krony.evaluate import DATASETS, PROTOCOLS, lambada_accuracy, lm_eval_wikitext, load_rows, score_windows, token_ids
from krony.model import GPT


def resolve_model(name_or_path: str) -> tuple[GPT, Path | None]:
    """(model, run directory or None): a run directory loads its `export/`, anything else goes to
    `GPT.from_pretrained` (hub name, model directory, weights file)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not (path / "config.json").exists() and (path / "export" / "config.json").exists():
        return GPT.from_pretrained(path / "export"), path
    if path.is_dir() and not (path / "config.json").exists() and (path / "checkpoints").exists():
        raise ValueError(f"{path} is a run directory without export/ (the run has not finished): evaluate a finished run "
                         f"or a directory with config.json + model.safetensors")
    return GPT.from_pretrained(name_or_path), None


def evaluate_model(
    model: GPT,
    datasets: list[str],
    protocol: str = "paper",
    context: int = 1024,
    stride: int = 1024,
    split: str = "test",
    data_dir: str | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    max_examples: int | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """{dataset: metrics} under `protocol` (see `krony.evaluate`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid choices: {', '.join(PROTOCOLS)}")
    bad = [d for d in datasets if d not in DATASETS]
    if bad:
        raise ValueError(f"unknown datasets {bad}; valid choices: {', '.join(DATASETS)}")
    context = min(context, model.config.block_size)
    out: dict[str, dict[str, Any]] = {}
    for name in datasets:
        rows = load_rows(name, split, data_dir, raw=protocol == "lm-eval")
        passages = rows[:max_examples] if name == "lambada" and max_examples else rows
        if protocol == "lm-eval":
            if name == "lambada":
                out[name] = lambada_accuracy(model, passages, batch_size, progress=progress)
            else:
                out[name] = lm_eval_wikitext(model, rows, context, batch_size, progress=progress, max_documents=max_examples)
            continue
        ids = token_ids(rows)[:max_tokens] if max_tokens else token_ids(rows)
        res = score_windows(model, ids, context, stride if protocol == "sliding" else context, batch_size, progress=progress)
        ppl = res.paper_ppl if protocol == "paper" else res.token_ppl
        out[name] = {"ppl": ppl, "tokens": len(ids), "windows": res.windows, "scored_tokens": res.tokens}
        if name == "lambada":
            out[name].update({f"last_word_{k}": v for k, v in lambada_accuracy(model, passages, batch_size, progress=progress).items()})
    return out


def markdown_row(model_name: str, params: int, results: dict[str, dict[str, Any]]) -> str:
    cells = [model_name, f"{params:,}"]
    for name, r in results.items():
        if "ppl" in r:
            cells.append(f"{name} ppl {r['ppl']:.2f}")
        if "word_perplexity" in r:
            cells.append(f"{name} word ppl {r['word_perplexity']:.2f}, bpb {r['bits_per_byte']:.4f}")
        for k in ("acc", "last_word_acc"):
            if k in r:
                cells.append(f"{name} acc {r[k]:.2%}")
    return "| " + " | ".join(cells) + " |"


@dataclass
class EvalConfig:
    """Arguments of `python -m krony.eval`, given as key=value."""

    model: str = "gpt2"
    """Hub name, model directory, weights file, or a run directory (its export/ is loaded)."""
    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    """Any of wikitext103, wikitext2, lambada."""
    protocol: str = "paper"
    """paper | sliding | lm-eval."""
    context: int = 1024
    """Window length in tokens (capped at the model's block size)."""
    stride: int = 512
    """Sliding protocol: tokens between windows."""
    split: str = "test"
    """test | valid (wikitext); LAMBADA has test only."""
    data_dir: str | None = None
    """Local files in the layout of shared/data; None: the Hugging Face hub."""
    batch_size: int = 8
    """Windows per forward pass."""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda."""
    max_tokens: int | None = None
    """paper/sliding: score only the first N tokens (quick checks); None: all."""
    max_examples: int | None = None
    """LAMBADA accuracy and lm-eval: only the first N passages / articles (quick checks); None: all."""
    output: str | None = None
    """results.json path; None: <run dir>/results.json for a run directory, else ./results.json."""


def parse_args(argv: list[str]) -> EvalConfig:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        for f in fields(EvalConfig):
            print(f"  {f.name}={f.default if f.default is not MISSING else f.default_factory()}")
        sys.exit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"arguments are key=value; got {bad}; keys: {', '.join(f.name for f in fields(EvalConfig))}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.from_dotlist(argv))
    except Exception as e:  # noqa: BLE001 - OmegaConf's errors name the key
        keys = ", ".join(f.name for f in fields(EvalConfig))
        raise ValueError(f"{str(e).splitlines()[0]}; valid keys: {keys}") from None
    return OmegaConf.to_object(cfg)


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate, write results.json, print a markdown row; returns the record."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, run_dir = resolve_model(cfg.model)
    model.to(device)
    results = evaluate_model(model, list(cfg.datasets), cfg.protocol, cfg.context, cfg.stride, cfg.split,
                             cfg.data_dir, cfg.batch_size, cfg.max_tokens, cfg.max_examples)
    params = count_params(model)
    record = {"model": cfg.model, "params": params, "protocol": cfg.protocol, "context": min(cfg.context, model.config.block_size),
              "stride": cfg.stride if cfg.protocol == "sliding" else cfg.context, "split": cfg.split,
              "source": cfg.data_dir or "hub", "max_tokens": cfg.max_tokens, "max_examples": cfg.max_examples,
              "results": results}
    output = Path(cfg.output) if cfg.output else (run_dir or Path(".")) / "results.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(markdown_row(cfg.model, params, results))
    print(f"results: {output}")
    return record


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
