"""`python -m krony publish <run dir | model dir> --repo org/name [--private] [--dry-run]`.

Writes the folder a compressed model is published as (its weights, the transformers
remote-code files, GPT-2's tokenizer files) plus a model card (README.md: YAML metadata with
`model-index` from the run's results, the scheme, the parameter counts in every convention,
the tokens seen, the command and resolved config, how to load it), then uploads it with
`huggingface_hub`. `--dry-run` only writes the folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krony.compression import CONVENTIONS, count_params, factored_layers
from krony.fileio import write_text
from krony.hf import load_model
from krony.hub import MODEL_REPOS

DATASET_NAMES = {"wikitext103": ("wikitext", "WikiText-103", "wikitext-103-v1"),
                 "wikitext2": ("wikitext", "WikiText-2", "wikitext-2-v1"),
                 "lambada": ("lambada", "LAMBADA", "plain_text")}
"""Paper-protocol datasets -> (hub id, display name, config) for `model-index`."""


class PublishError(ValueError):
    """Publishing cannot go on: one line saying what was wrong and what to do."""


@dataclass
class Source:
    """What is published: the model folder and, for a run directory, the run's records."""

    model_dir: Path
    run_dir: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    config_yaml: str = ""


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def find_source(path: str | os.PathLike) -> Source:
    """A run directory (its `export/`, results.json, summary.json, job.json, .hydra/config.yaml)
    or a model directory (config.json + weights)."""
    p = Path(path).expanduser()
    if (p / "export" / "config.json").is_file():
        config_yaml = p / ".hydra" / "config.yaml"
        return Source(p / "export", p, _json(p / "results.json") or _json(p / "eval-paper.json"),
                      _json(p / "summary.json"), list(_json(p / "job.json").get("overrides", [])),
                      config_yaml.read_text() if config_yaml.is_file() else "")
    if (p / "config.json").is_file():
        return Source(p)
    if (p / "checkpoints").is_dir():
        raise PublishError(f"{p} is a run directory without export/ (the run has not finished): publish a finished "
                           "run, or a folder written by save_pretrained")
    raise PublishError(f"{p} is neither a run directory (with export/) nor a model directory (with config.json)")


def model_index(results: dict[str, Any]) -> list[Any]:
    """`model-index` entries (huggingface_hub's `EvalResult`) for the paper-protocol perplexities."""
    from huggingface_hub import EvalResult

    out = []
    for key, r in (results.get("results") or {}).items():
        if key not in DATASET_NAMES or "ppl" not in r:
            continue
        hub_id, display, config = DATASET_NAMES[key]
        out.append(EvalResult(task_type="text-generation", dataset_type=hub_id, dataset_name=display,
                              dataset_config=config, dataset_split="test", metric_type="perplexity",
                              metric_name=f"perplexity ({results.get('protocol', 'paper')} protocol)",
                              metric_value=round(float(r["ppl"]), 4)))
    return out


def card_text(source: Source, model, repo: str) -> str:
    """README.md of the published folder: YAML metadata and the card's body."""
    from huggingface_hub import ModelCard, ModelCardData

    layers = factored_layers(model)
    first = next(iter(layers.values()), None)
    teacher = str(source.summary.get("hparams", {}).get("teacher") or "gpt2")
    base = MODEL_REPOS.get(teacher, teacher)
    if base.count("/") != 1 or base.startswith((".", "/", "~")) or Path(teacher).exists():
        # a local or random teacher: name GPT-2, what krony compresses
        base = "openai-community/gpt2"
    counts = {c: count_params(model, c) for c in CONVENTIONS}
    data = ModelCardData(
        license="mit", library_name="transformers", pipeline_tag="text-generation",
        base_model=base,
        datasets=["Skylion007/openwebtext"], tags=["krony", "kronecker", "gpt2", "compression", "custom_code"],
        model_name=repo.split("/")[-1], eval_results=model_index(source.results) or None,
    )
    lines = [f"# {repo.split('/')[-1]}", "",
             "GPT-2 with its FFN matrices compressed to sums of Kronecker products (Krony-PT), trained with "
             "krony. The factors stay factored: the folder runs them in transformers through its remote code, "
             "never rebuilding the dense matrices.", ""]
    if first is not None:
        hp = source.summary.get("hparams", {})
        scheme = hp.get("scheme", "-")
        lines += ["## Compression", "",
                  "| | |", "| --- | --- |",
                  f"| scheme | `{scheme}` |",
                  f"| A, B of c_fc | {tuple(first.a_dims)}, {tuple(first.b_dims)} (c_proj: transposed) |"
                  if hasattr(first, "a_dims") else f"| structure | {first.structure} |",
                  f"| factors per matrix | {getattr(first, 'factors', '-')} |",
                  f"| learned scalars | {getattr(first, 'scalars', None) is not None} |",
                  f"| init | {hp.get('init', '-')} |",
                  f"| factored matrices | {len(layers)} |", ""]
    lines += ["## Parameters", "", "| convention | parameters |", "| --- | ---: |"]
    lines += [f"| `{c}` | {n:,} |" for c, n in counts.items()]
    lines += ["", "`table1` counts every unique parameter once (tied embeddings once, `wpe`, norms, biases and "
              "scalars included), as the Krony-PT paper's Table 1; `no_output_embedding` leaves out the output "
              "embedding matrix; `non_embedding` leaves out `wte`, `wpe` and `lm_head`.", ""]
    if source.summary:
        lines += ["## Training", "", f"- tokens seen: {int(source.summary.get('tokens', 0)):,}",
                  f"- optimizer steps: {int(source.summary.get('steps', 0)):,}"]
        if source.overrides:
            lines += [f"- command: `python -m krony.run {' '.join(source.overrides)}`"]
        lines += [""]
    if source.results.get("results"):
        lines += ["## Evaluation", "", f"Protocol `{source.results.get('protocol', 'paper')}` "
                  f"(context {source.results.get('context', '-')}):", "", "| dataset | perplexity | tokens |",
                  "| --- | ---: | ---: |"]
        lines += [f"| {k} | {r['ppl']:.2f} | {r.get('tokens', 0):,} |"
                  for k, r in source.results["results"].items() if "ppl" in r]
        lines += [""]
    lines += ["## Use it", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f'model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)',
              f'tokenizer = AutoTokenizer.from_pretrained("{repo}", trust_remote_code=True)',
              "```", "",
              "`trust_remote_code=True` runs `modeling_krony_gpt2.py` from this repository (it imports only torch "
              "and transformers). With krony installed: `krony.GPT.from_pretrained(...)`; lm-evaluation-harness: "
              f"`lm_eval --model hf --model_args pretrained={repo},trust_remote_code=True --tasks ...`.", ""]
    if source.config_yaml:
        lines += ["## Resolved config", "", "```yaml", source.config_yaml.rstrip(), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content


def prepare(path: str | os.PathLike, repo: str, out: str | os.PathLike | None = None) -> Path:
    """Write the folder to publish (model files + README.md) and return it."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise PublishError(f"--repo {repo!r}: give the hub repository as org/name")
    source = find_source(path)
    model = load_model(source.model_dir)
    folder = Path(out) if out else (source.run_dir or source.model_dir.parent) / f"publish-{repo.split('/')[-1]}"
    model.save_pretrained(folder)
    write_text(folder / "README.md", card_text(source, model, repo))
    return folder


def upload(folder: Path, repo: str, private: bool = False, token: str | None = None) -> str:
    """Create `repo` (if needed) and upload `folder`; returns the repository's URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from krony import hub

    if not hub.use_hub():
        raise PublishError(f"{hub.why_offline()}: publishing needs the hub (the folder is ready at {folder})")
    token = token or get_token()
    if not token:
        raise PublishError(f"no Hugging Face token: run `hf auth login` or set HF_TOKEN (the folder is ready at {folder})")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message="Upload a Krony-PT model with krony")
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            raise PublishError(f"the token cannot write to {repo} (HTTP {status}): use a token with write access "
                               f"to that namespace (`hf auth login`)") from None
        raise PublishError(f"the hub refused the upload to {repo}: {str(e).splitlines()[0]}") from None
    return f"https://huggingface.co/{repo}"


__all__ = ["PublishError", "card_text", "find_source", "model_index", "prepare", "upload"]
