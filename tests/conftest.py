"""Shared fixtures and helpers. Tests never touch the network: the hub libraries are forced
offline before anything imports them, so an accidental download fails at once.

Helpers the test modules import (`from conftest import ...`): `make_cfg` composes a run config
as `python -m krony.run` would (with experiment=smoke), `krony_run` runs that command in a
subprocess, offline."""

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the cores: one thread each, runs they start too
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from krony import GPT, GPTConfig  # noqa: E402
from krony.run import CONF_DIR  # noqa: E402  (also registers the config resolvers)
from krony.run_check import compose_job  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
"""The environment of `krony_run`'s subprocesses: offline, unbuffered."""


def krony_run(args: list[str], cwd: Path, env: dict[str, str] = ENV, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m krony.run *args` in `cwd`, output captured."""
    return subprocess.run([sys.executable, "-m", "krony.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@contextmanager
def module_dir(tmp_path_factory, name: str):
    """A directory for a module-scoped fixture, removed once the module's tests are done (kept when
    the fixture itself failed). pytest keeps such directories after the session, and a smoke run
    writes about 0.7 GB."""
    path = tmp_path_factory.mktemp(name)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def events(run_dir: Path):
    """The TensorBoard events of a run directory that holds exactly one event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1, f"expected one event file in {run_dir}, found {files}"
    ea = EventAccumulator(str(files[0]))
    ea.Reload()
    return ea


def make_cfg(tmp_path: Path, overrides: list[str]):
    """The smoke run config with `overrides`, composed as `python -m krony.run` composes it."""
    GlobalHydra.instance().clear()
    return compose_job(CONF_DIR, ["experiment=smoke", f"paths.root_dir={tmp_path}", *overrides], tmp_path / "out")



@pytest.fixture
def tiny_config() -> GPTConfig:
    """A 2-block GPT-2 small enough for millisecond tests: d=64, FFN 256, 4 heads."""
    return GPTConfig(block_size=32, vocab_size=101, n_layer=2, n_head=4, n_embd=64)


@pytest.fixture
def tiny_model(tiny_config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


@pytest.fixture
def tokens(tiny_config: GPTConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, tiny_config.vocab_size, (3, tiny_config.block_size), generator=g)
