"""`python -m krony` and the README's offline example."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from krony import GPT, count_params, kronecker_layers
from krony.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def test_schemes_command_prints_table1():
    out = subprocess.run([sys.executable, "-m", "krony", "schemes"], capture_output=True, text=True, check=True).stdout
    assert "| 81m | (768, 768) | (4, 1) | 589,828 | 81,972,576 | a_first |" in out
    assert "| gpt2 | (3072, 768) | (1, 1) | 2,359,297 | 124,439,832 | dense |" in out
    assert "124,439,808" in out


def test_schemes_command_sizes_the_other_structures(capsys):
    assert main(["schemes", "--structure", "lowrank"]) == 0
    out = capsys.readouterr().out
    # r (768 + 3072) nearest 589,828; its multiply-adds beside the Kronecker layers' (81m's B is 4x1: cheap)
    assert "| 81m | 81,972,576 | rank=154 | 82,009,344 | +0.04% | 14,192,640 (14,229,504) | -0.26% | 0.251 |" in out
    assert main(["schemes", "--structure", "monarch"]) == 0
    assert "| 96m | 96,128,304 | nblocks=4, block_rank=77 | 96,201,984 | +0.08% |" in capsys.readouterr().out
    # FLOP-matched: 67m's Kronecker layers run 32x more multiply-adds than they hold weights
    assert main(["schemes", "--structure", "monarch", "--match", "flops"]) == 0
    assert "| 67m | 67,893,504 | nblocks=4, block_rank=8 | 70,765,824 | +4.23% | 2,949,120 (2,949,120) | +0.00% |" in capsys.readouterr().out


def test_compress_command_on_a_local_checkpoint(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "dense")
    rc = main(["compress", "--model", str(tmp_path / "dense"), "--scheme", "128x32", "--factors", "4",
               "--out", str(tmp_path / "c"), "--dense-out", str(tmp_path / "d")])
    assert rc == 0
    out = capsys.readouterr().out
    compressed = GPT.from_pretrained(tmp_path / "c")
    assert len(kronecker_layers(compressed)) == 4
    assert f"parameters (table1): {count_params(compressed):,}" in out
    # 4 factors of B (2, 2) are full rank: the weights come back exactly
    assert float(re.search(r"relative error .*: ([0-9.]+)", out).group(1)) < 1e-4
    dense = GPT.from_pretrained(tmp_path / "d")
    torch.testing.assert_close(dense.transformer.h[0].mlp.c_fc.weight, tiny_model.transformer.h[0].mlp.c_fc.weight,
                               atol=1e-5, rtol=1e-5)


def test_compress_command_with_another_structure(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "dense")
    # 16x8 of c_fc (256, 64): B (16, 8), 256 weights a matrix (rank 1 holds 320); its Kronecker
    # forward runs 3,072 multiply-adds a token, nearest what rank 10 runs, (64 + 256) x 10
    for match, rank in (("params", 1), ("flops", 10)):
        assert main(["compress", "--model", str(tmp_path / "dense"), "--scheme", "16x8", "--structure", "lowrank",
                     "--match", match, "--out", str(tmp_path / match)]) == 0
        out = capsys.readouterr().out
        assert f"structure lowrank (rank={rank} for the first matrix, {match}-matched to 16x8)" in out
        assert GPT.from_pretrained(tmp_path / match).transformer.h[1].mlp.c_proj.rank == rank
        assert 0 < float(re.search(r"relative error .*: ([0-9.]+)", out).group(1)) < 1
    assert main(["compress", "--model", str(tmp_path / "dense"), "--scheme", "16x8", "--structure", "lowrank",
                 "--init", "prune"]) == 2
    assert "init='prune': not an init of lowrank; it takes vanloan, random" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,match",
    [
        (["--scheme", "80m"], "unknown scheme '80m'"),
        (["--scheme", "100x32"], "do not divide"),
        (["--model", "./nowhere"], "no such file or directory"),
    ],
)
def test_compress_command_errors(tiny_model, tmp_path, capsys, args, match):
    tiny_model.save_pretrained(tmp_path)
    assert main(["compress", "--model", str(tmp_path), *args]) == 2
    assert re.search(match, capsys.readouterr().err)


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_offline_example_runs(tmp_path):
    offline = readme_python_blocks()[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", offline], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "KroneckerLinear(in_features=64, out_features=256, A=(32, 16), B=(8, 4), factors=2" in out.stdout
    dense = int(re.search(r"dense: (\d+)", out.stdout).group(1))
    compressed = int(re.search(r"compressed: (\d+)", out.stdout).group(1))
    # 4 matrices go from 64*256 weights to 2 * (32*16 + 8*4) factors + 2 scalars
    assert dense - compressed == 4 * (64 * 256 - 2 * (32 * 16 + 8 * 4) - 2)
    assert (tmp_path / "runs" / "tiny-dense" / "model.safetensors").exists()


def test_readme_hub_example_uses_the_same_api():
    hub = readme_python_blocks()[1]
    assert 'krony.GPT.from_pretrained("gpt2")' in hub
    compile(hub, "README", "exec")
