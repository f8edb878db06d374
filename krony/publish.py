"""`python -m krony publish <run dir | model dir> --repo org/name [--private] [--dry-run]`.

Writes the folder a compressed model is published as (its weights, the transformers
remote-code files, the model's tokenizer files) plus a model card (README.md: YAML metadata with
`model-index` from the run's results, the scheme, the parameter counts in every convention,
the tokens seen, the command and resolved config, how to load it), then uploads it with
`huggingface_hub`. `--dry-run` only writes the folder.

The card claims only what the run's records show (`job.json`): the teacher as `base_model` when
it came from the hub, the training data as `datasets` when it was a hub dataset, and in
`model-index` only evaluations of whole test sets. A run distilled from a random teacher (a smoke
test) is refused unless `--allow-random-teacher` is given, and its card then says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krony.compression import CONVENTIONS, count_params, factored_layers
from krony.data.sources import LOCAL_BUILDERS
from krony.fileio import write_text
from krony.causal_lm import load_model
from krony.export import save_pretrained
from krony.hub import MODEL_REPOS, looks_like_path
from krony.targets import family_words
from krony.tokenizer import tokenizer_for

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
    identity: dict[str, Any] = field(default_factory=dict)
    """The run's resolved config (job.json), flattened: where the teacher and the data came from."""


@dataclass
class Provenance:
    """What a card may claim about a model's teacher and training data."""

    base_model: str | None
    """The hub repository of the teacher, or None (a local, random or unknown teacher)."""
    teacher: str
    """The teacher in words, for the card's body."""
    random_teacher: bool
    datasets: list[str]
    """Hub datasets the model was trained on (none for local files or an unknown source)."""
    data: str
    """The training data in words."""


def provenance(source: Source) -> Provenance:
    """The teacher and the data of a run directory from its records; for a bare model folder, nothing."""
    ident = source.identity
    if not ident:
        unknown = "unknown (published from a model folder, not a run directory)"
        return Provenance(None, unknown, False, [], unknown)
    teacher = ident.get("model.teacher")
    random_teacher = teacher in (None, "None")
    if random_teacher:
        preset = ident.get("model.teacher_config.preset", "gpt2")
        base, words = None, f"random weights ({preset} widths, {ident.get('model.teacher_config.n_layer', '?')} blocks): a smoke test, not a language model"
    elif Path(str(teacher)).expanduser().exists() or looks_like_path(str(teacher)):
        base, words = None, f"a local checkpoint ({Path(str(teacher)).name})"
    else:
        base = MODEL_REPOS.get(str(teacher), str(teacher))
        words = f"[{base}](https://huggingface.co/{base})"
    mode, path = ident.get("data.mode", "stream"), str(ident.get("data.source.path", ""))
    if mode == "memmap":
        datasets, data = [], f"pre-tokenised memmaps in {Path(str(ident.get('data.memmap_dir'))).name}"
    elif path in LOCAL_BUILDERS:
        files = ident.get("data.source.data_files") or []
        files = [files] if isinstance(files, str) else list(files)
        datasets, data = [], "local files: " + ", ".join(Path(str(f)).name for f in files[:5]) + (
            f" and {len(files) - 5} more" if len(files) > 5 else "")
    elif path and not Path(path).expanduser().exists():
        revision = ident.get("data.source.revision")
        datasets, data = [path], f"the hub dataset {path}" + (f" (revision {revision})" if revision else "")
    else:
        datasets, data = [], f"a local copy of a dataset ({Path(path).name})"
    return Provenance(base, words, random_teacher, datasets, data)


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def find_source(path: str | os.PathLike) -> Source:
    """A run directory (its `export/`, results.json, summary.json, job.json, .hydra/config.yaml)
    or a model directory (config.json + weights)."""
    p = Path(path).expanduser()
    if (p / "export" / "config.json").is_file():
        config_yaml = p / ".hydra" / "config.yaml"
        job = _json(p / "job.json")
        return Source(p / "export", p, _json(p / "results.json") or _json(p / "eval-paper.json"),
                      _json(p / "summary.json"), list(job.get("overrides", [])),
                      config_yaml.read_text() if config_yaml.is_file() else "", dict(job.get("identity") or {}))
    if (p / "config.json").is_file():
        return Source(p)
    if (p / "checkpoints").is_dir():
        raise PublishError(f"{p} is a run directory without export/ (the run has not finished): publish a finished "
                           "run, or a folder written by save_pretrained")
    raise PublishError(f"{p} is neither a run directory (with export/) nor a model directory (with config.json)")


def complete(results: dict[str, Any]) -> bool:
    """Whether a results file scored whole test sets (no `max_tokens` / `max_examples` cut)."""
    return not results.get("max_tokens") and not results.get("max_examples")


def model_index(results: dict[str, Any]) -> list[Any]:
    """`model-index` entries (huggingface_hub's `EvalResult`) for the perplexities of whole test
    sets; an evaluation cut short (`max_tokens`) is no result to list there."""
    from huggingface_hub import EvalResult

    out = []
    if not complete(results):
        return out
    for key, r in (results.get("results") or {}).items():
        if key not in DATASET_NAMES or "ppl" not in r:
            continue
        hub_id, display, config = DATASET_NAMES[key]
        out.append(EvalResult(task_type="text-generation", dataset_type=hub_id, dataset_name=display,
                              dataset_config=config, dataset_split="test", metric_type="perplexity",
                              metric_name=f"perplexity ({results.get('protocol', 'paper')} protocol)",
                              metric_value=round(float(r["ppl"]), 4)))
    return out


STRUCTURE_WORDS = {"kronecker": "sums of Kronecker products, Krony-PT", "lowrank": "low-rank products",
                   "monarch": "Monarch matrices"}
"""How a model card names each structure."""


def card_text(source: Source, model, repo: str) -> str:
    """README.md of the published folder: YAML metadata and the card's body, claiming only what
    `provenance` finds in the run's records."""
    from huggingface_hub import ModelCard, ModelCardData

    layers = factored_layers(model)
    first = next(iter(layers.values()), None)
    origin = provenance(source)
    counts = {c: count_params(model, c) for c in CONVENTIONS}
    family = family_words(model)
    structure = getattr(first, "structure", "dense")  # every factored layer class names its structure
    tags = ["krony", structure, family.lower().replace("-", ""), "compression", "custom_code"] + (
        ["random-weights"] if origin.random_teacher else [])
    data = ModelCardData(
        license="mit", library_name="transformers", pipeline_tag="text-generation",
        base_model=origin.base_model, datasets=origin.datasets or None, tags=tags,
        model_name=repo.split("/")[-1], eval_results=model_index(source.results) or None,
    )
    lines = [f"# {repo.split('/')[-1]}", ""]
    if origin.random_teacher:
        lines += [f"**A test artefact, not a language model**: this model was compressed from a {family} with random "
                  "weights (a smoke run). It generates noise.", ""]
    lines += [f"{family} with its FFN matrices factored ({STRUCTURE_WORDS.get(structure, structure)}), trained with "
              "krony. The factors stay factored: the folder runs them in transformers through its remote code, "
              "never rebuilding the dense matrices.", "",
              "## Provenance", "", f"- teacher: {origin.teacher}", f"- training data: {origin.data}", ""]
    if first is not None:
        hp = source.summary.get("hparams", {})
        scheme = hp.get("scheme", "-")
        lines += ["## Compression", "",
                  "| | |", "| --- | --- |",
                  f"| scheme | `{scheme}` |",
                  f"| A, B of the first factored matrix | {tuple(first.a_dims)}, {tuple(first.b_dims)} (contract matrices: transposed) |"
                  if hasattr(first, "a_dims") else f"| structure | {structure} |",
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
        cut = "" if complete(source.results) else (
            f" **on the first {source.results.get('max_tokens') or source.results.get('max_examples'):,} "
            f"{'tokens' if source.results.get('max_tokens') else 'examples'} of each set only**: not comparable "
            "with published figures, and not listed in the metadata")
        lines += ["## Evaluation", "", f"Protocol `{source.results.get('protocol', 'paper')}` "
                  f"(context {source.results.get('context', '-')}){cut}:", "", "| dataset | perplexity | tokens | data |",
                  "| --- | ---: | ---: | --- |"]
        lines += [f"| {k} | {r['ppl']:.2f} | {r.get('tokens', 0):,} | {_data_source(r.get('source'))} |"
                  for k, r in source.results["results"].items() if "ppl" in r]
        lines += [""]
    lines += ["## Use it", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f'model = AutoModelForCausalLM.from_pretrained("{repo}", trust_remote_code=True)',
              f'tokenizer = AutoTokenizer.from_pretrained("{repo}", trust_remote_code=True)',
              "```", "",
              "`trust_remote_code=True` runs `modeling_krony.py` and `krony_layers.py` from this repository (they import only torch "
              "and transformers). With krony installed: `krony.causal_lm.load_model(...)`; lm-evaluation-harness: "
              f"`lm_eval --model hf --model_args pretrained={repo},trust_remote_code=True --tasks ...`.", ""]
    if source.config_yaml:
        lines += ["## Resolved config", "", "```yaml", source.config_yaml.rstrip(), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content


def _data_source(source: Any) -> str:
    """Where an evaluation's text came from, in a few words."""
    if not isinstance(source, dict):
        return "-"
    if "hub" in source:
        return f"{source['hub']} ({source.get('config', '-')})"
    if "path" in source:
        return f"local {Path(str(source['path'])).name} (sha256 {str(source.get('sha256', ''))[:12]})"
    return "-"


def prepare(path: str | os.PathLike, repo: str, out: str | os.PathLike | None = None,
            allow_random_teacher: bool = False) -> Path:
    """Write the folder to publish (model files + README.md) and return it. A run distilled from
    a random teacher is refused unless `allow_random_teacher`."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise PublishError(f"--repo {repo!r}: give the hub repository as org/name")
    source = find_source(path)
    if provenance(source).random_teacher and not allow_random_teacher:
        raise PublishError(f"{path} was trained from a random teacher (a smoke run): it is no language model; "
                           "publish it anyway with --allow-random-teacher (its card says so)")
    model = load_model(source.model_dir)
    folder = Path(out) if out else (source.run_dir or source.model_dir.parent) / f"publish-{repo.split('/')[-1]}"
    save_pretrained(model, folder, tokenizer=tokenizer_for(source.model_dir).hf())
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


__all__ = ["Provenance", "PublishError", "card_text", "complete", "find_source", "model_index", "prepare", "provenance",
           "upload"]
