"""The evaluation text: the datasets of the paper and sliding protocols, from local files or
the hub, with their sources (docs/evaluation.md).

- WikiText-103 and WikiText-2 in their tokenised form (`wiki.{split}.tokens`; hub
  `wikitext`, `wikitext-103-v1` / `wikitext-2-v1`).
- The original LAMBADA (Paperno et al.; `lambada_test_plain_text.txt`, hub `lambada`,
  `plain_text`), as the authors' script loads it.

Every `Rows` carries its source: the local path and sha256, or the hub id, config, split and
revision, so a result says exactly what it was computed on.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from krony.config import EVAL_DATASETS
from krony.tokenizer import TextTokenizer

DATASETS = EVAL_DATASETS

# local file layout of krony's evaluation data and the hub datasets they mirror (docs/evaluation.md)
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
    return hub_rows(*HUB[dataset], split)


def hub_rows(name: str, config: str, split: str) -> Rows:
    """The "text" rows of a hub dataset's config and split, from the hub or, offline, its cached
    snapshot; one `ValueError` line for any failure."""
    import datasets

    from krony.hub import dataset_location

    try:
        path, revision = dataset_location(name)  # the hub, or offline its cached snapshot
        ds = datasets.load_dataset(path, config, split=split, revision=revision)
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same advice
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"could not load {name}/{config} from the hub ({reason}); offline, pass data_dir= with local files") from e
    return Rows(list(ds["text"]), {"hub": name, "config": config, "split": split, "revision": _revision(name, path, revision)})


FETCH = {  # file of krony's evaluation layout -> (hub dataset, config, format)
    "wikitext-103/wiki.{split}.tokens": ("wikitext", "wikitext-103-v1", "wikitext"),
    "wikitext-2/wiki.{split}.tokens": ("wikitext", "wikitext-2-v1", "wikitext"),
    "wikitext-2-raw/wiki.{split}.raw": ("wikitext", "wikitext-2-raw-v1", "wikitext"),  # lm-eval's wikitext task
    "lambada/lambada_test_plain_text.txt": ("lambada", "plain_text", "lines"),  # the paper protocol's LAMBADA
    "lambada/lambada_test.jsonl": ("EleutherAI/lambada_openai", "default", "jsonl"),  # lm-eval's lambada_openai
}
"""The files `fetch_eval` writes and the hub data each holds (LAMBADA has only a test split)."""


def rows_as_file(rows: Sequence[str], fmt: str) -> str:
    """The text of a local file whose rows (`wikitext_rows_from_file`, `lambada_rows_from_file`)
    are `rows`: WikiText's blank lines stored as " \\n", LAMBADA one passage per line or as jsonl."""
    if fmt == "wikitext":
        return "".join(row if row else " \n" for row in rows)
    if fmt == "jsonl":
        return "".join(json.dumps({"text": row}) + "\n" for row in rows)
    return "".join(row.replace("\n", " ") + "\n" for row in rows)


def fetch_eval(out_dir: str | Path, splits: Sequence[str] = ("test",), progress: Any = print) -> list[Path]:
    """Write krony's evaluation data (`LOCAL_FILES` and the harness's files) into `out_dir` from the
    hub (offline: its cache) with `datasets`, each file atomically; a user then passes
    `data_dir=<out_dir>`. Returns the files written."""
    from krony.fileio import write_text

    written = []
    for layout, (name, config, fmt) in FETCH.items():
        for split in (["test"] if "{split}" not in layout else list(splits)):
            target = Path(out_dir) / layout.format(split={"validation": "valid"}.get(split, split))
            rows = hub_rows(name, config, split).rows
            write_text(target, rows_as_file(rows, fmt))
            written.append(target)
            progress(f"{target}: {len(rows):,} rows from {name}/{config} ({split}), sha256 {file_sha256(target)[:16]}")
    return written


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


def token_ids(rows: Sequence[str], tokenizer: TextTokenizer | None = None) -> list[int]:
    """The paper protocol's token stream of `rows`, in the model's tokenizer (None: GPT-2's BPE)."""
    return (tokenizer or TextTokenizer()).encode(paper_text(list(rows)))


__all__ = [
    "DATASETS",
    "HUB",
    "LOCAL_FILES",
    "FETCH",
    "Rows",
    "fetch_eval",
    "file_sha256",
    "hub_rows",
    "lambada_rows_from_file",
    "load_rows",
    "local_file",
    "paper_text",
    "rows_as_file",
    "token_ids",
    "wikitext_rows_from_file",
]
