"""A Hugging Face hub cache built offline, laid out exactly as `huggingface_hub` stores downloads:

    <cache>/models--openai-community--gpt2/
        blobs/<sha256 of the file>
        refs/main                                  the commit the snapshot belongs to
        snapshots/<commit>/config.json  ->  ../../blobs/<sha256>   (relative symlinks)

and the same under `datasets--<org>--<name>` for datasets. With HF_HUB_OFFLINE=1 and HF_HOME
(or HF_HUB_CACHE) pointing at it, `hf_hub_download` and `snapshot_download` read it as if the
files had been downloaded: the rehearsal of what a user with internet gets.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

HUB_GPT2_CONFIG = {  # the hub's config.json of openai-community/gpt2
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 50256,
    "embd_pdrop": 0.1,
    "eos_token_id": 50256,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "resid_pdrop": 0.1,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}
OWT_REVISION = "79d93d786212f7344586290adb811d4ae6a1762c"  # the revision krony pins


def put_repo(cache: Path, repo_type: str, repo: str, files: dict[str, bytes], commit: str | None = None,
             ref: str | None = "main") -> Path:
    """Store `files` ({path in repo: bytes}) as one snapshot of `repo`; returns the snapshot folder."""
    commit = commit or hashlib.sha1("\n".join([repo, *sorted(files)]).encode()).hexdigest()
    base = Path(cache) / f"{repo_type}s--{repo.replace('/', '--')}"
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    if ref:
        (base / "refs").mkdir(exist_ok=True)
        (base / "refs" / ref).write_text(commit)
    snapshot = base / "snapshots" / commit
    for name, data in files.items():
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def hub_gpt2_files(config: dict, seed: int = 0) -> dict[str, bytes]:
    """config.json and model.safetensors of a random GPT-2 with `config`, stored the way the hub's
    gpt2 checkpoint is: bare GPT2Model keys (no `transformer.` prefix, no lm_head), Conv1D weights
    (in, out), the causal-mask buffers `h.{i}.attn.bias`, metadata {"format": "pt"}."""
    import torch
    from safetensors.torch import save

    from krony import GPT, GPTConfig
    from krony.hf import to_hf_state_dict

    torch.manual_seed(seed)
    n_pos = config["n_positions"]
    model = GPT(GPTConfig(block_size=n_pos, vocab_size=config["vocab_size"], n_layer=config["n_layer"],
                          n_head=config["n_head"], n_embd=config["n_embd"]))
    tensors = {k.removeprefix("transformer."): v for k, v in to_hf_state_dict(model).items()}
    mask = torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos)
    for i in range(config["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = mask.clone()  # safetensors stores no shared tensors
    return {"config.json": json.dumps(config, indent=2).encode(), "model.safetensors": save(tensors, metadata={"format": "pt"})}


def parquet(rows: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"text": rows}), buf)
    return buf.getvalue()


def dataset_readme(configs: dict[str, dict[str, str]]) -> bytes:
    """A dataset card whose YAML lists each config's data files per split, as hub parquet datasets do."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {pattern}" for split, pattern in splits.items()]
    return ("\n".join(lines) + "\n---\n").encode()


def sample_documents() -> list[str]:
    """The OpenWebText sample shipped with krony, one string per document."""
    from krony.data import sample_path

    text = Path(sample_path()).read_text(encoding="utf-8")
    return [d.strip() for d in text.split("\n\n") if d.strip()]


def put_openwebtext(cache: Path, files: int = 80) -> Path:
    """Skylion007/openwebtext at the pinned revision: README with the `plain_text` config and
    `plain_text/train-000NN-of-000MM.parquet` files with a `text` column (the sample, dealt out)."""
    docs = sample_documents()
    content = {"README.md": dataset_readme({"plain_text": {"train": "plain_text/train-*"}})}
    for i in range(files):
        content[f"plain_text/train-{i:05d}-of-{files:05d}.parquet"] = parquet(docs[i::files] or docs[:1])
    return put_repo(cache, "dataset", "Skylion007/openwebtext", content, commit=OWT_REVISION)


def wikitext_rows(docs: list[str]) -> list[str]:
    """Rows shaped like the hub's wikitext: headings, lines with their "\\n", and "" for blank lines."""
    rows = []
    for i, doc in enumerate(docs):
        rows += ["", f" = Article {i} = \n", ""]
        rows += [f" {line.strip()} \n" for line in doc.splitlines() if line.strip()]
    return rows


def put_eval_datasets(cache: Path, articles: int = 6, passages: int = 12) -> None:
    """Salesforce/wikitext (the paper protocol's configs), cimec/lambada (the original LAMBADA of
    the paper protocol, `plain_text` config: lower-cased, tokenised) and EleutherAI/lambada_openai
    (lm-eval's), small."""
    docs = sample_documents()
    rows = parquet(wikitext_rows(docs[:articles]))
    configs = ("wikitext-103-v1", "wikitext-2-v1", "wikitext-103-raw-v1", "wikitext-2-raw-v1")
    put_repo(cache, "dataset", "Salesforce/wikitext", {
        "README.md": dataset_readme({c: {"test": f"{c}/test-*"} for c in configs}),
        **{f"{c}/test-00000-of-00001.parquet": rows for c in configs},
    })
    lambada = [" ".join(d.split()[:60]) for d in docs[articles:articles + passages]]
    original = [" ".join(p.lower().replace(",", " ,").replace(".", " .").split()) for p in lambada]
    put_repo(cache, "dataset", "cimec/lambada", {
        "README.md": dataset_readme({"plain_text": {"test": "plain_text/test-*"}}),
        "plain_text/test-00000-of-00001.parquet": parquet(original),
    })
    put_repo(cache, "dataset", "EleutherAI/lambada_openai", {
        "README.md": dataset_readme({"default": {"test": "default/test/*"}}),
        "default/test/0000.parquet": parquet(lambada),
    })
