"""The Hugging Face hub: short names, the local cache, and one quick check that the hub answers.

With internet, `gpt2` and OpenWebText come straight from the hub (and land in the cache of
`huggingface_hub`). Where the hub cannot be used, because `HF_HUB_OFFLINE=1` is set, or the
machine has no network (a cluster's compute node), which krony finds out with one request of at
most `KRONY_HUB_TIMEOUT` seconds (default 5) instead of the libraries' minute of retries,
everything is read from that cache:

- models from `models--<org>--<name>/snapshots/...`, under the canonical repo id
  (`openai-community/gpt2`) or the short name transformers caches it under (`models--gpt2`);
- datasets from the cached snapshot of their pinned revision, the folder
  `hf download --repo-type dataset <repo> --revision <commit>` leaves there.

Nothing here imports torch; `huggingface_hub` is imported only when a file is needed.
"""

from __future__ import annotations

import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
"""Short model names and the hub repositories they resolve to."""
DATASET_REPOS = {"wikitext": "Salesforce/wikitext", "lambada": "cimec/lambada"}
"""Short dataset names and their canonical repositories (the hub redirects the short ones)."""
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
"""Weights files a model directory may hold, in the order they are looked for."""
TRUE = ("1", "true", "yes", "on")

_reachability: dict[str, str | None] = {}  # endpoint -> None (answers) or why not; asked once per process


def looks_like_path(s: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else that does not exist is a missing path."""
    return s.startswith((".", "/", "~")) or s.count("/") > 1 or s.endswith((".safetensors", ".bin", ".pt", ".ckpt", ".json"))


def offline() -> bool:
    """Whether this process must not reach the hub (`HF_HUB_OFFLINE`, or `go_offline` was called)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or _hub_constants().ENDPOINT


def cache_dir() -> str:
    return str(_hub_constants().HF_HUB_CACHE)


def _hub_constants():
    from huggingface_hub import constants

    return constants


def unreachable_reason(timeout: float | None = None) -> str | None:
    """None when the hub answers one HEAD request within `timeout` seconds (any HTTP status
    counts), else why it did not. Asked once per process and endpoint."""
    url = endpoint()
    if url not in _reachability:
        timeout = float(os.environ.get("KRONY_HUB_TIMEOUT", "5")) if timeout is None else timeout
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            reason = None
        except urllib.error.HTTPError:
            reason = None  # the hub answered
        except (urllib.error.URLError, OSError, ValueError) as e:
            cause = getattr(e, "reason", e)
            reason = f"{url} could not be reached: {cause} (timeout {timeout:g} s)"
        _reachability[url] = reason
    return _reachability[url]


def go_offline(reason: str) -> None:
    """Switch this process (and the processes it starts) to the cache only, so no library retries
    an unreachable hub; logs `reason` once."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    for module, attrs in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        if module in sys.modules:  # read at import: set them too
            for attr in attrs:
                setattr(sys.modules[module], attr, True)
    log.warning("the Hugging Face hub is unreachable (%s): reading models and datasets from the local cache only", reason)


def use_hub() -> bool:
    """Whether to download from the hub: not offline, and the hub answers. An unreachable hub
    switches the process offline (`go_offline`)."""
    if offline():
        return False
    reason = unreachable_reason()
    if reason is not None:
        go_offline(reason)
        return False
    return True


def why_offline() -> str:
    """Why this process reads only the cache, for error messages."""
    reason = next((r for r in _reachability.values() if r), None)
    return f"the hub is unreachable: {reason}" if reason else "HF_HUB_OFFLINE is set"


def _candidates(name: str, table: dict[str, str]) -> list[str]:
    """The canonical repo id of `name` first, then `name` itself (a cache made under it)."""
    return list(dict.fromkeys([table.get(name, name), name]))


def cached_model_files(name: str) -> tuple[Path, Path] | None:
    """(weights, config.json) of hub model `name` in the local cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    for repo in _candidates(name, MODEL_REPOS):
        weights = try_to_load_from_cache(repo, "model.safetensors")
        config = try_to_load_from_cache(repo, "config.json")
        if isinstance(weights, str) and isinstance(config, str):
            return Path(weights), Path(config)
    return None


def model_files(name: str) -> tuple[Path, Path]:
    """(weights, config.json) of hub model `name` ("gpt2", "org/name"): downloaded when the hub
    is reachable (and cached), else from the cache; ValueError with the fix otherwise."""
    if use_hub():
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

        repo = _candidates(name, MODEL_REPOS)[0]
        try:
            config = hf_hub_download(repo, "config.json")
            weights = hf_hub_download(repo, "model.safetensors")
        except RepositoryNotFoundError:
            raise ValueError(f"{name!r} is neither a local path nor a hub repository; short names: "
                             f"{', '.join(MODEL_REPOS)}") from None
        except EntryNotFoundError:
            raise ValueError(f"hub repository {repo} has no config.json + model.safetensors: not a "
                             f"GPT-2 checkpoint krony can load") from None
        return Path(weights), Path(config)
    found = cached_model_files(name)
    if found is None:
        repos = " or ".join(_candidates(name, MODEL_REPOS))
        raise ValueError(
            f"could not reach the Hugging Face hub for {name!r} and no cached copy exists ({why_offline()}; "
            f"looked for {repos} in {cache_dir()}). Load a local copy instead: a directory with config.json "
            f"and model.safetensors (save one where you have internet with "
            f"GPT.from_pretrained({name!r}).save_pretrained(dir), or fill the cache with "
            f"`hf download {_candidates(name, MODEL_REPOS)[0]} config.json model.safetensors`)."
        )
    return found


def cached_dataset(repo: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of hub dataset `repo` at `revision` (None: main), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for candidate in _candidates(repo, DATASET_REPOS):
        try:
            return Path(snapshot_download(candidate, repo_type="dataset", revision=revision, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            continue
    return None


def dataset_location(repo: str, revision: str | None = None) -> tuple[str, str | None]:
    """(path, revision) to give `datasets.load_dataset` for hub dataset `repo` at `revision`: the
    hub itself when it is reachable, else the cached snapshot (a local folder, revision None)."""
    if use_hub():
        return repo, revision
    snapshot = cached_dataset(repo, revision)
    if snapshot is None:
        rev = f" --revision {revision}" if revision else ""
        raise ValueError(
            f"hub dataset {repo!r} at revision {revision or 'main'} is not in the local cache ({cache_dir()}) "
            f"and {why_offline()}; fill the cache where you have internet with "
            f"`hf download --repo-type dataset {repo}{rev}`, or use local files"
        )
    return str(snapshot), None


__all__ = [
    "DATASET_REPOS", "MODEL_REPOS", "WEIGHT_FILES", "cache_dir", "cached_dataset", "cached_model_files",
    "dataset_location", "go_offline", "looks_like_path", "model_files", "offline", "unreachable_reason", "use_hub",
]
