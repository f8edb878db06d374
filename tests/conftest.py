"""Shared fixtures. Tests never touch the network: the hub libraries are forced offline
before anything imports them, so an accidental download fails at once."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from krony import GPT, GPTConfig  # noqa: E402


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
