"""The whole pipeline with a teacher that is not GPT-2: a tiny random Llama saved as a folder
with its own tokenizer (a byte-level BPE of 512 tokens that puts BOS before every text, as
Llama's does). Its tokenizer feeds the stream, the memmaps, the evaluation and the harness; the
run sweeps the structures, distils, freezes, nests, resumes and exports a folder transformers
loads without krony."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ENV, events, krony_run, module_dir
from families import save_tiny_teacher, tiny_model
from krony.compression import count_params, factored_layers
from krony.data.sources import TextSource, sample_path
from krony.data.stream import PackedBlocks
from krony.tokenizer import TextTokenizer, tokenizer_for

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
STRUCTURES = ("kronecker", "lowrank", "monarch")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny-llama")


def sample_source() -> TextSource:
    return TextSource(path="text", name=None, revision=None, data_files=[sample_path()], expected_files=None,
                      sample_by="paragraph")


# ---------------------------------------------------------------- the tokenizer


def test_the_run_tokenizer_is_the_teachers_with_its_bos_and_eos(teacher):
    tok = tokenizer_for(teacher)
    assert (tok.vocab_size, tok.bos, tok.eos) == (512, 0, 1)
    ids = tok.encode("Hello world")
    assert tok.encode_document("Hello world") == [0, *ids, 1]
    assert tok.decode(ids) == "Hello world"
    assert tok.encode("</s>") != [1]  # special-token text in a document is plain text
    assert pickle.loads(pickle.dumps(tok)) == tok  # what dataloader workers and tokenising processes get
    for gpt2 in (None, "gpt2", "distilgpt2"):
        assert tokenizer_for(gpt2) == TextTokenizer(None)
    assert TextTokenizer().encode_document("Hello") == [15496, 50256]  # GPT-2's offline BPE, EOT after


def test_stream_and_memmaps_use_the_teachers_tokenizer(teacher, tmp_path):
    from krony.data.memmap import MemmapBlocks, prepare

    tok = tokenizer_for(teacher)
    stream = PackedBlocks(sample_source(), 16, split="val", val_documents=20, tokenizer=tok)
    blocks = torch.stack(list(stream))
    assert blocks.max() < 512 and (blocks == 0).any() and (blocks == 1).any()  # BOS and EOS between documents
    meta = prepare(sample_source(), tmp_path / "mm", val_documents=20, workers=1, tokenizer=tok)
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == (str(teacher), 512, "uint16")
    memmap = MemmapBlocks(tmp_path / "mm", 16, "val", tok)
    assert torch.equal(torch.stack([memmap[i] for i in range(len(memmap))]), blocks[: len(memmap)])
    with pytest.raises(ValueError, match="prepared with the tokenizer of .*tiny-llama.*--tokenizer gpt2"):
        MemmapBlocks(tmp_path / "mm", 16, "val", TextTokenizer())


class WideTokenizer(TextTokenizer):
    """A tokenizer of 100,000 ids whose ids are all above 65,535 (what uint16 cannot hold)."""

    @property
    def vocab_size(self) -> int:
        return 100_000

    def encode_document(self, text: str) -> list[int]:
        return [70_000 + ord(c) % 1000 for c in text[:50]] + [99_999]


def test_memmaps_of_a_vocabulary_over_65535_hold_every_id(tmp_path):
    from krony.data.memmap import MemmapBlocks, prepare

    tok = WideTokenizer("wide")
    meta = prepare(sample_source(), tmp_path, val_documents=5, workers=1, tokenizer=tok)
    assert meta["dtype"] == "uint32"
    data = np.fromfile(tmp_path / "val.bin", dtype=np.uint32)
    assert data.min() >= 70_000 and data.max() == 99_999
    block = MemmapBlocks(tmp_path, 31, "val", tok)[0]
    assert block.tolist() == data[:32].tolist()


# ---------------------------------------------------------------- parts of the run


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "opt", "gpt2"])
def test_freeze_finds_embeddings_attention_and_norms_of_every_family(family):
    from krony.config import FreezeConfig
    from krony.train.freeze import apply_freeze

    model = tiny_model(family)
    frozen = set(apply_freeze(model, FreezeConfig(attention=True, layer_norms=True, embeddings=True)))
    attention = {"llama": "self_attn", "gpt_neox": "attention", "opt": "self_attn", "gpt2": "attn"}[family]
    for name, p in model.named_parameters():
        parts = name.split(".")
        expected = (attention in parts or "norm" in name.lower() or name.split(".")[-2] in ("ln_1", "ln_2", "ln_f")
                    or p is model.get_input_embeddings().weight or "embed_positions" in name or "wpe" in name)
        assert (name in frozen) == expected, name


def test_validation_reads_any_teachers_dims_and_refuses_gpt2_only_options(teacher, tmp_path):
    from conftest import make_cfg
    from krony.config import ConfigError
    from krony.validate import _teacher_dims, validate

    assert _teacher_dims(str(teacher), None) == {"n_embd": 64, "n_inner": 192, "block_size": 64, "n_layer": 2,
                                                 "model_type": "llama"}
    validate(make_cfg(tmp_path, [f"model.teacher={teacher}", "decomp=ffn50"]))
    for overrides, key in ((["context=128"], "context"), (["model=distilgpt2"], "model"),
                           (["model.activation=gelu"], "model.activation"), (["model.layers=[2]"], "model.layers")):
        with pytest.raises(ConfigError) as e:
            validate(make_cfg(tmp_path, [f"model.teacher={teacher}", "decomp=ffn50", *overrides]))
        assert str(e.value).startswith(key), str(e.value)


def test_train_flops_of_a_transformers_model_scale_with_the_batch():
    from krony.flops import train_flops

    model = tiny_model("llama")
    one, four = train_flops(model, 1, 16), train_flops(model, 4, 16)
    assert one > 0 and four == 4 * one
    assert train_flops(model, 1, 16, backward=False) * 3 == pytest.approx(one, rel=0.1)
    assert all(p.grad is None for p in model.parameters())  # counted without touching the gradients


# ---------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, teacher):
    """`python -m krony.run -m model.teacher=<folder> decomp=ffn50 structure=kronecker,lowrank,monarch distill=on`."""
    with module_dir(tmp_path_factory, "any-teacher-sweep") as root:
        out = krony_run(["-m", "experiment=smoke", f"model.teacher={teacher}", "decomp=ffn50",
                         "structure=" + ",".join(STRUCTURES), "distill=on", "freeze=layer_norms"], root)
        assert out.returncode == 0, out.stderr[-3000:]
        (root / "console.txt").write_text(out.stdout + out.stderr)
        runs = sorted(p for p in next((root / "logs" / "sweeps").iterdir()).iterdir() if p.is_dir())
        yield root, runs


@pytest.mark.slow
def test_the_sweep_trains_distils_and_logs_every_structure(sweep):
    root, runs = sweep
    assert [r.name for r in runs] == ["ffn50-lowrank-vanloan-r1-kd-frz_ln", "ffn50-monarch-vanloan-r1-kd-frz_ln",
                                      "ffn50-vanloan-r1-kd-frz_ln"]
    text = (root / "console.txt").read_text()
    for structure in STRUCTURES:
        assert f"{structure}: the 6 factored matrices keep" in text
    for run in runs:
        ea = events(run)
        tags = ea.Tags()["scalars"]
        for tag in ("train/loss", "train/kl", "train/ce", "val/loss", "model/params", "train/mfu",
                    "model/frozen_params"):
            assert tag in tags, (run.name, tag)
        assert len(ea.Scalars("train/loss")) == 4
        assert ea.Scalars("model/frozen_params")[0].value == 64 * 5  # 2 blocks x 2 RMSNorms + the final one
        summary = json.loads((run / "summary.json").read_text())
        assert summary["hparams"]["teacher"].endswith("tiny-llama")


@pytest.mark.slow
def test_the_exports_load_without_krony_with_the_teachers_tokenizer(sweep, tmp_path, teacher):
    from no_krony import transformers_view

    from krony.causal_lm import load_model, load_tokenizer

    _, runs = sweep
    exports, models = [], []
    for run in runs:
        folder = run / "export"
        assert (folder / "tokenizer.json").exists()
        assert load_tokenizer(folder)("Hello")["input_ids"] == load_tokenizer(teacher)("Hello")["input_ids"]
        model = load_model(folder)
        idx = torch.randint(2, 512, (2, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = {"idx": idx, "logits": model(idx).logits, "prompt": idx[:1, :5], "new": 4, "pad": 1}
            ref["greedy"] = model.generate(ref["prompt"], max_new_tokens=4, do_sample=False, pad_token_id=1).tolist()
        exports.append((folder, ref))
        models.append(model)
    for model, (_, ref), seen in zip(models, exports, transformers_view(exports, tmp_path)):
        assert seen["class"] == "KronyForCausalLM"
        assert seen["rel_diff"] < 1e-4
        assert seen["params"] == count_params(model)
        assert seen["greedy"] == ref["greedy"]
        assert seen["factored"] == sorted(factored_layers(model))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "wikitext-2").is_dir(), reason="needs ../shared/data")
def test_eval_scores_the_run_in_the_teachers_tokens(sweep, teacher):
    import subprocess
    import sys

    from krony.eval.data import load_rows, token_ids

    _, runs = sweep
    out = subprocess.run([sys.executable, "-m", "krony.eval", f"model={runs[0]}", f"data_dir={SHARED}",
                          "datasets=[wikitext2]", "max_tokens=300"], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads((runs[0] / "eval-paper.json").read_text())
    r = rec["results"]["wikitext2"]
    assert r["tokens"] == 300 and 1 < r["ppl"] < 1e4
    ids = token_ids(load_rows("wikitext2", "test", SHARED).rows, tokenizer_for(teacher))
    assert max(ids[:300]) < 512  # the stream scored is the teacher's tokens, not GPT-2's


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "lambada").is_dir(), reason="needs ../shared/data")
def test_the_harness_runs_lm_evals_hf_model_on_the_run(sweep):
    pytest.importorskip("lm_eval")
    from krony.causal_lm import load_model
    from krony.eval.harness import evaluate, lm_eval_model

    _, runs = sweep
    model = load_model(runs[1] / "export")
    tok = tokenizer_for(runs[1] / "export")
    assert type(lm_eval_model(model, tokenizer=tok)).__name__ == "HFLM"
    res = evaluate(model, ["lambada_openai"], str(SHARED), batch_size=4, limit=4, progress=False, tokenizer=tok)
    assert res["lambada_openai"]["documents"] == 4 and 0 <= res["lambada_openai"]["acc"] <= 1
    with pytest.raises(ValueError, match="tokenizer"):
        lm_eval_model(model)


@pytest.mark.slow
def test_nested_factors_and_mixnmatch_with_a_llama_teacher(tmp_path, teacher):
    from krony.mixnmatch import main as mixnmatch

    out = krony_run(["experiment=smoke", f"model.teacher={teacher}", "decomp=ffn50", "model.factors=4", "nest=all",
                     "nest.prefixes=[1,2,4]"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = next((tmp_path / "logs" / "runs").glob("ffn50-vanloan-r4-nest_all/*"))
    tags = events(run).Tags()["scalars"]
    assert {"val/loss_k1", "val/loss_k2", "val/loss_k4"} <= set(tags)
    assert mixnmatch([str(run), "--out", str(tmp_path / "mm"), "--ks", "1", "2", "4", "--context", "32",
                      "--calibration-tokens", "500", "--validation-tokens", "500"]) == 0
    rows = json.loads((tmp_path / "mm" / "pareto.json").read_text())
    assert rows and all("budget" in r for r in rows)


@pytest.mark.slow
def test_a_killed_run_with_a_llama_teacher_resumes_exactly(tmp_path_factory, teacher):
    """SIGKILL after the step-4 checkpoint, the same command again: the weights of step 10 are
    bitwise those of a run never interrupted."""
    from test_resume import job_dir, run, run_and_kill, weights

    args = ["experiment=smoke", f"model.teacher={teacher}", "decomp=ffn50", "init=random", "data.num_workers=2",
            "callbacks.checkpoint_last.every_n_train_steps=2", "trainer.enable_progress_bar=false",
            "trainer.max_steps=10", "trainer.val_check_interval=5"]
    with module_dir(tmp_path_factory, "llama-reference") as ref_root, module_dir(tmp_path_factory, "llama-killed") as root:
        run(ref_root, args)
        reference = weights(job_dir(ref_root))
        run_and_kill(root, lambda: any((root / "logs").rglob("step00000004.ckpt")), args)
        run(root, args)
        resumed = weights(job_dir(root))
        assert resumed.keys() == reference.keys()
        for k in reference:
            assert torch.equal(resumed[k], reference[k]), k
        shutil.rmtree(root / "logs", ignore_errors=True)


@pytest.mark.slow
def test_a_hub_teacher_runs_offline_from_the_hub_cache(tmp_path, teacher):
    """The rehearsal of `model.teacher=HuggingFaceTB/SmolLM2-135M` with internet: the tiny
    teacher's files stored as huggingface_hub stores a download, HF_HUB_OFFLINE=1. Validation
    reads the cached config.json, transformers and the tokenizer load from the cache."""
    import os

    from hubcache import put_repo

    repo = "HuggingFaceTB/SmolLM2-135M"
    put_repo(tmp_path / "hf" / "hub", "model", repo, {p.name: p.read_bytes() for p in teacher.iterdir()})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    out = krony_run(["experiment=smoke", f"model.teacher={repo}", "decomp=ffn50", "context=128"], tmp_path, env=env)
    assert out.returncode == 2 and "context=128" in out.stderr and "1 to 64" in out.stderr  # the cached config's context
    out = krony_run(["experiment=smoke", f"model.teacher={repo}", "decomp=ffn50", "structure=lowrank"], tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    export = next((tmp_path / "logs" / "runs").glob("ffn50-lowrank-vanloan-r1/*/export"))
    assert (export / "tokenizer.json").exists()
    assert json.loads((export / "config.json").read_text())["model_type"] == "krony_llama"
