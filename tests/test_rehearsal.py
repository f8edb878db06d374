"""Dress rehearsal of the path users take, offline: the default command against a hub cache laid
out as `huggingface_hub` stores it (GPT-2 with the hub's keys and config.json, random weights;
OpenWebText as the pinned parquet revision; WikiText and LAMBADA for the evaluation after
training), with only size overrides. Then `python -m krony.eval model=gpt2` from the same cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import module_dir
from hubcache import HUB_GPT2_CONFIG, hub_gpt2_files, put_eval_datasets, put_openwebtext, put_repo

from krony import GPT, kronecker_layers


def env_with_cache(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return {**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    """HF_HOME with hub/ holding gpt2 (full size, random weights), OpenWebText and the eval sets."""
    with module_dir(tmp_path_factory, "hf_home") as home:
        cache = home / "hub"
        put_repo(cache, "model", "openai-community/gpt2", hub_gpt2_files(HUB_GPT2_CONFIG, seed=0))
        put_openwebtext(cache)
        put_eval_datasets(cache)
        yield home


def run(args: list[str], cwd: Path, env: dict[str, str], module: str = "krony.run", timeout: int = 900):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_default_command_runs_offline_from_the_hub_cache(hub_home, tmp_path):
    sizes = ["trainer=cpu", "trainer.max_steps=2", "context=32", "data.batch_size=2", "trainer.val_check_interval=2",
             "trainer.limit_val_batches=2"]
    out = run(sizes, tmp_path, env_with_cache(hub_home))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (job,) = (tmp_path / "logs" / "runs" / "81m-vanloan-r1").iterdir()
    assert json.loads((job / "job.json").read_text())["status"] == "finished"
    # the 12-block GPT-2 from the cache, compressed with 81m, trained 2 steps on the parquet stream
    summary = json.loads((job / "summary.json").read_text())
    assert summary["metrics"]["model/params"] == 81_972_576 and summary["tokens"] == 2 * 2 * 32
    model = GPT.from_pretrained(job / "export")
    assert model.config.n_layer == 12 and len(kronecker_layers(model)) == 24
    # the evaluation after training read WikiText-103, WikiText-2 and LAMBADA from the cache
    results = json.loads((job / "results.json").read_text())["results"]
    assert set(results) == {"wikitext103", "wikitext2", "lambada"}
    assert all(torch.isfinite(torch.tensor(r["ppl"])) for r in results.values())
    assert results["lambada"]["source"]["hub"] == "lambada" and results["lambada"]["source"]["config"] == "plain_text"
    assert len(results["lambada"]["source"]["revision"]) == 40  # the cached snapshot's commit
    # a job's files get the user's permissions (umask 022 here: 0644), the safetensors export included
    assert (job / "export" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_default_command_on_the_gpu_with_bf16_and_compile(hub_home, tmp_path):
    """The default command as users run it (trainer=gpu: bf16-mixed), compiled."""
    sizes = ["trainer.max_steps=20", "context=256", "data.batch_size=8", "trainer.val_check_interval=20",
             "trainer.limit_val_batches=2", "model.compile=true"]
    out = run(sizes, tmp_path, env_with_cache(hub_home))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (job,) = (tmp_path / "logs" / "runs" / "81m-vanloan-r1").iterdir()
    results = json.loads((job / "results.json").read_text())["results"]
    assert all(torch.isfinite(torch.tensor(r["ppl"])) for r in results.values())


@pytest.mark.slow
def test_eval_of_the_hub_model_offline(hub_home, tmp_path):
    out = run(["model=gpt2", "max_tokens=2048", "max_examples=6", "batch_size=2"], tmp_path, env_with_cache(hub_home),
              module="krony.eval")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "eval-paper.json").read_text())["results"]
    assert set(results) == {"wikitext103", "wikitext2", "lambada"}
    assert "| gpt2 | 124,439,808 |" in out.stdout


@pytest.mark.slow
def test_harness_offline_without_task_data_says_what_to_do(hub_home, tmp_path):
    """lm-eval's own tasks load their data with `datasets`, which offline needs its own cache
    (a hub snapshot is not enough): the error names both ways out."""
    pytest.importorskip("lm_eval")
    out = run(["model=gpt2", "protocol=harness", "tasks=[lambada_openai]", "max_examples=4"], tmp_path,
              env_with_cache(hub_home), module="krony.eval")
    assert out.returncode == 2
    assert "error: lm-eval could not load its task data" in out.stderr
    assert "run once with internet" in out.stderr and "for lambada_openai pass data_dir=<local files>" in out.stderr


def test_a_cache_made_by_transformers_under_gpt2_is_found(tmp_path, monkeypatch):
    """transformers' `from_pretrained("gpt2")` caches under `models--gpt2`: krony finds it too."""
    import huggingface_hub.constants

    small = {**HUB_GPT2_CONFIG, "n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 300, "n_positions": 32, "n_ctx": 32}
    put_repo(tmp_path, "model", "gpt2", hub_gpt2_files(small, seed=1))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = GPT.from_pretrained("gpt2")
    assert model.config.n_embd == 64 and model.config.n_layer == 1


def test_a_local_mirror_folder_of_the_dataset_streams(tmp_path):
    """data.source.path may be a folder laid out like the hub dataset (a copy made with
    `hf download --local-dir`): the README's `plain_text` config picks its parquet files."""
    from hubcache import put_openwebtext

    from krony.data import PackedBlocks, TextSource

    mirror = put_openwebtext(tmp_path / "cache", files=4)
    source = TextSource(path=str(mirror), revision=None, data_files=None, expected_files=4)
    blocks = PackedBlocks(source, block_size=32, val_documents=2, shuffle_buffer=0)
    first = next(iter(blocks))
    assert first.shape == (33,) and source.num_files == 4


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
