"""`python -m krony.eval model=... [protocol=...] [datasets=... | tasks=...] [data_dir=...]`: evaluate a model.

    python -m krony.eval model=gpt2                                        # paper protocol, hub datasets
    python -m krony.eval model=logs/runs/81m-vanloan-r1/<time> data_dir=../shared/data
    python -m krony.eval model=distilgpt2 protocol=sliding stride=512 datasets=[wikitext2]
    python -m krony.eval model=gpt2 protocol=harness tasks=[wikitext,lambada_openai,hellaswag]
    python -m krony.eval model=<run dir> protocol=harness data_dir=../shared/data   # offline wikitext + lambada_openai

Writes `eval-<protocol>.json` (into the run directory when `model` is one, else the working
directory, or `output=`): the end-of-training `results.json` of a run is never overwritten.
Prints a markdown row. `python -m krony.eval --help` lists the keys.
"""

from __future__ import annotations

import json
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from krony.config import HARNESS_TASKS
from krony.eval.data import DATASETS
from krony.eval.protocols import check_request, evaluate_model, markdown_row, record
from krony.causal_lm import resolve_model, resolved_folder
from krony.lm import context_length
from krony.tokenizer import tokenizer_for
from krony.fileio import write_text


@dataclass
class EvalConfig:
    """Arguments of `python -m krony.eval`, given as key=value."""

    model: str = "gpt2"
    """Hub name, model directory, weights file, or a run directory (its export/ is loaded)."""
    protocol: str = "paper"
    """paper | sliding (krony's windows over `datasets`) | harness (lm-evaluation-harness over `tasks`)."""
    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    """paper / sliding: any of wikitext103, wikitext2, lambada (the original LAMBADA)."""
    tasks: list[str] = field(default_factory=lambda: list(HARNESS_TASKS))
    """harness: lm-eval task names (wikitext, lambada_openai, hellaswag, ...)."""
    context: int = 1024
    """paper / sliding: window length in tokens (capped at the model's block size)."""
    stride: int = 512
    """Sliding protocol: tokens between windows."""
    split: str = "test"
    """paper / sliding: test | valid (wikitext); LAMBADA has test only."""
    data_dir: str | None = None
    """Local files in the layout of krony's evaluation data (docs/evaluation.md); None: the Hugging Face hub."""
    batch_size: int = 8
    """Windows (or lm-eval requests) per forward pass."""
    device: str = "auto"
    """auto (cuda if available) | cpu | cuda."""
    max_tokens: int | None = None
    """paper / sliding: score only the first N tokens (quick checks); None: all."""
    max_examples: int | None = None
    """harness: only the first N documents of each task (lm-eval's limit); None: all."""
    output: str | None = None
    """Results path; None: eval-<protocol>.json in the run directory for a run directory, else in ./."""


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
    """Evaluate, write eval-<protocol>.json, print a markdown row; returns the record."""
    check_request(cfg.protocol, list(cfg.datasets))  # before the model loads
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, run_dir = resolve_model(cfg.model)
    model.to(device)
    tokenizer = tokenizer_for(resolved_folder(cfg.model))
    results = evaluate_model(model, list(cfg.datasets), cfg.protocol, cfg.context, cfg.stride, cfg.split,
                             cfg.data_dir, cfg.batch_size, cfg.max_tokens, cfg.max_examples, tasks=list(cfg.tasks),
                             tokenizer=tokenizer)
    settings: dict[str, Any] = {"max_examples": cfg.max_examples}
    if cfg.protocol != "harness":
        settings.update(context=min(cfg.context, context_length(model)), split=cfg.split, max_tokens=cfg.max_tokens,
                        stride=cfg.stride if cfg.protocol == "sliding" else cfg.context)
    rec = record(model, cfg.model, cfg.protocol, results, **settings)
    output = Path(cfg.output) if cfg.output else (run_dir or Path(".")) / f"eval-{cfg.protocol}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text(output, json.dumps(rec, indent=2) + "\n")
    print(markdown_row(cfg.model, rec["params"], results))
    print(f"results: {output}")
    return rec


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
