"""Compressed exports stay compressed in transformers: the folder `save_pretrained` writes loads
with `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` in a process where
`import krony` fails, and gives krony's logits, parameter count and greedy tokens."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from krony import GPT, GPTConfig, compress, count_params

from no_krony import transformers_view


@pytest.fixture
def small_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=4, n_embd=64)).eval()


STRUCTURE_CLASSES = ("KroneckerLinear", "LowRankLinear", "MonarchLinear")
SETTINGS = [dict(scheme=(32, 16), factors=2, scalars=True),  # every block, learned scalars
            dict(scheme=(64, 16), factors=1, layers=[1]),  # one block factored, one dense
            dict(scheme=(128, 32), factors=3, init="prune"),
            dict(scheme="128x32", structure="lowrank"),  # the other structures travel the same way
            dict(scheme="128x32", structure="monarch")]


def test_transformers_loads_the_factored_model_without_krony(tmp_path):
    models, exports = [], []
    for i, kwargs in enumerate(SETTINGS):
        torch.manual_seed(i)
        model = compress(GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=4, n_embd=64)).eval(), **kwargs)
        idx = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            ref = {"idx": idx, "logits": model(idx)[0], "prompt": idx[:1, :6], "new": 10}
        models.append(model)
        exports.append((model.save_pretrained(tmp_path / f"export{i}"), ref))
    for model, (_, ref), seen in zip(models, exports, transformers_view(exports, tmp_path)):
        assert seen["class"] == "KronyForCausalLM"
        assert seen["max_diff"] < 1e-5
        assert seen["params"] == count_params(model)
        assert seen["greedy"] == model.generate(ref["prompt"], ref["new"], temperature=0.0).tolist()  # KV caches
        assert seen["factored"] == sorted(n for n, m in model.named_modules() if type(m).__name__ in STRUCTURE_CLASSES)
        assert seen["text"].startswith("Hello world")


def test_the_safetensors_file_is_the_compressed_size(small_gpt, tmp_path):
    dense_bytes = small_gpt.save_pretrained(tmp_path / "dense").joinpath("model.safetensors").stat().st_size
    compress(small_gpt, (32, 16), factors=2)
    folder = small_gpt.save_pretrained(tmp_path / "compressed")
    stored = count_params(small_gpt)  # lm_head is tied: stored once, as wte
    size = (folder / "model.safetensors").stat().st_size
    assert 4 * stored <= size < 4 * stored + 20_000  # fp32 values plus the JSON header
    assert size < dense_bytes
    assert not (tmp_path / "dense" / "modeling_krony.py").exists()  # dense exports stay plain GPT-2


def test_without_trust_remote_code_transformers_refuses_and_names_the_flag(small_gpt, tmp_path):
    compress(small_gpt, (32, 16))
    folder = small_gpt.save_pretrained(tmp_path / "export")
    code = ("from transformers import AutoModelForCausalLM\n"
            f"AutoModelForCausalLM.from_pretrained({str(folder)!r})\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert "trust_remote_code=True" in out.stderr


def test_plain_gpt2_refuses_the_folder_instead_of_random_ffn_weights(small_gpt, tmp_path):
    import transformers

    compress(small_gpt, (32, 16), layers=[0])
    folder = small_gpt.save_pretrained(tmp_path / "export")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # A sits at c_fc.weight with its own shape
        transformers.GPT2LMHeadModel.from_pretrained(folder)


def test_remote_code_files_import_nothing_but_torch_and_transformers():
    import ast

    for path in (Path(__file__).resolve().parents[1] / "krony" / "hf_remote").glob("*.py"):
        tree = ast.parse(path.read_text())
        roots = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert roots <= {"torch", "transformers"}, (path.name, roots)


# ---------------------------------------------------------------- publishing


def fake_run(tmp_path: Path, model: GPT) -> Path:
    """A finished run directory as `python -m krony.run` leaves it: export/ and its records."""
    run = tmp_path / "run"
    model.save_pretrained(run / "export")
    (run / "results.json").write_text(json.dumps({"protocol": "paper", "context": 64, "results": {
        "wikitext103": {"ppl": 41.98, "tokens": 1000}, "lambada": {"ppl": 64.92, "tokens": 900}}}))
    (run / "summary.json").write_text(json.dumps({"hparams": {"teacher": "gpt2", "scheme": "32x16", "init": "vanloan"},
                                                 "steps": 12, "tokens": 24576}))
    identity = {"model.teacher": "openai-community/gpt2", "data.mode": "stream", "data.source.path": "Skylion007/openwebtext",
                "data.source.revision": "79d93d786212f7344586290adb811d4ae6a1762c"}
    (run / "job.json").write_text(json.dumps({"status": "finished", "overrides": ["decomp=32x16", "model.factors=2"],
                                              "identity": identity}))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("decomp: 32x16\nseed: 1337\n")
    return run


def test_publish_dry_run_writes_the_folder_and_a_card_the_hub_tools_read(small_gpt, tmp_path):
    from huggingface_hub import ModelCard

    from krony.__main__ import main as krony_main

    compress(small_gpt, (32, 16), factors=2, scalars=True)
    run = fake_run(tmp_path, small_gpt)
    assert krony_main(["publish", str(run), "--repo", "someone/krony-81m", "--dry-run", "--out", str(tmp_path / "pub")]) == 0
    folder = tmp_path / "pub"
    assert {"README.md", "config.json", "model.safetensors", "modeling_krony.py", "krony_layers.py",
            "vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and card.data.base_model == "openai-community/gpt2"
    assert card.data.datasets == ["Skylion007/openwebtext"] and "kronecker" in card.data.tags
    results = {r.dataset_name: r.metric_value for r in card.data.eval_results}
    assert results == {"WikiText-103": 41.98, "LAMBADA": 64.92}
    text = card.text
    assert f"| `table1` | {count_params(small_gpt):,} |" in text
    assert "| A, B of the first factored matrix | (32, 16), (8, 4) (contract matrices: transposed) |" in text and "| factors per matrix | 2 |" in text
    assert "tokens seen: 24,576" in text and "python -m krony.run decomp=32x16 model.factors=2" in text
    assert "decomp: 32x16" in text and 'trust_remote_code=True' in text
    again = GPT.from_pretrained(folder)
    torch.testing.assert_close(again(torch.arange(8)[None])[0], small_gpt(torch.arange(8)[None])[0])


def test_publish_says_what_is_wrong_in_one_line(small_gpt, tmp_path, monkeypatch, capsys):
    from krony.__main__ import main as krony_main

    compress(small_gpt, (32, 16))
    folder = small_gpt.save_pretrained(tmp_path / "model")
    assert krony_main(["publish", str(folder), "--repo", "no-slash"]) == 2
    assert "give the hub repository as org/name" in capsys.readouterr().err
    assert krony_main(["publish", str(tmp_path / "nothing"), "--repo", "a/b"]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert krony_main(["publish", str(folder), "--repo", "a/b", "--out", str(tmp_path / "pub")]) == 2
    err = capsys.readouterr().err
    assert "publishing needs the hub" in err and str(tmp_path / "pub") in err and len(err.strip().splitlines()) == 1


def test_publish_without_a_token_names_the_way_to_log_in(small_gpt, tmp_path, monkeypatch):
    import krony.hub
    from krony.publish import PublishError, upload

    monkeypatch.setattr(krony.hub, "use_hub", lambda: True)
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    with pytest.raises(PublishError, match="no Hugging Face token: run `hf auth login` or set HF_TOKEN"):
        upload(tmp_path, "a/b")


def test_publish_to_a_repo_the_token_cannot_write_is_one_line(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    import krony.hub
    from krony.publish import PublishError, upload

    def refuse(self, *args, **kwargs):
        raise HfHubHTTPError("403 Forbidden: no write access", response=SimpleNamespace(status_code=403, headers={}, request=None))

    monkeypatch.setattr(krony.hub, "use_hub", lambda: True)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    with pytest.raises(PublishError, match=r"the token cannot write to org/name \(HTTP 403\): use a token with write access"):
        upload(tmp_path, "org/name", token="hf_fake")


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["81m", "67m"])
def test_gpt2_width_export_runs_in_transformers_in_fp32_and_bf16(tmp_path, scheme):
    """GPT-2 small widths (2 blocks): the remote code at the real Table-1 dims, and under bf16 as a GPU user loads it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = compress(GPT(GPTConfig(n_layer=2, block_size=128)).eval(), scheme)
    folder = model.save_pretrained(tmp_path / scheme)
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(idx)[0]
        fp32 = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        torch.testing.assert_close(fp32(idx).logits, want, atol=1e-4, rtol=1e-4)
        assert fp32.num_parameters() == count_params(model)
        bf16 = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.bfloat16).eval()
        got = bf16(idx).logits.float()
    assert bf16.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16
    assert ((got - want).norm() / want.norm()).item() < 2e-2
