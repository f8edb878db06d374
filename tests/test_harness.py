"""protocol=harness: lm-evaluation-harness on krony models, against lm-eval's own HF model.

The reference is lm-eval's `hf` model (transformers' GPT2LMHeadModel) on the same weights, so
a difference would be ours: tokenisation, windows, batching, the factored layers.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's hf model
import lm_eval
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from krony import GPT, GPTConfig, compress, decompress
from krony.eval.__main__ import main as eval_main
from krony.eval.harness import TASKS_DIR, KronyLM, wikitext_pages
from krony.tokenizer import gpt2_encoding

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not present")
LIMIT = 3
TASKS = ["wikitext", "lambada_openai"]
METRICS = {"wikitext": ["word_perplexity", "byte_perplexity", "bits_per_byte"], "lambada_openai": ["perplexity", "acc"]}


def tiny(seed=0, block_size=128) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=block_size)).eval()


def hf_reference(model_dir: Path, extra: str = "", tasks: list[str] = TASKS) -> dict:
    """lm-eval's own `hf` model on an exported model (`extra`: more model_args), our offline task definitions."""
    manager = TaskManager(include_path=str(TASKS_DIR), metadata={"data_dir": str(DATA)})
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32{extra}", tasks=tasks,
                                  task_manager=manager, limit=LIMIT, batch_size=4, device="cpu", bootstrap_iters=0)
    return {t: {m: res["results"][t][f"{m},none"] for m in METRICS[t]} for t in tasks}


def ours(model_arg: str, tmp_path: Path, tasks: list[str] = TASKS) -> dict:
    out = tmp_path / "eval-harness.json"
    assert eval_main([f"model={model_arg}", "protocol=harness", f"data_dir={DATA}", f"max_examples={LIMIT}",
                      f"tasks=[{','.join(tasks)}]", "batch_size=4", "device=cpu", f"output={out}"]) == 0
    return json.loads(out.read_text())


def assert_same(got: dict, want: dict, rel: float) -> None:
    for task, metrics in want.items():
        for m, v in metrics.items():
            assert got[task][m] == pytest.approx(v, rel=rel, abs=1e-9), (task, m)


@needs_data
def test_wikitext_pages_are_the_hubs_document_level_split():
    pages = wikitext_pages(DATA / "wikitext-2-raw" / "wiki.test.raw")
    assert len(pages) == 62  # the hub's wikitext_document_level test split (our old article split made 63)
    assert pages[0].startswith(" = Robert Boulter = \n \n Robert Boulter is an English film")
    assert all(p.lstrip().startswith("= ") and not p.lstrip().startswith("= =") for p in pages)
    assert "\n \n" in pages[0]  # blank lines stay, so paragraphs are two newlines apart
    assert len(wikitext_pages(DATA / "wikitext-2-raw" / "wiki.valid.raw")) == 60


@needs_data
@pytest.mark.slow
def test_harness_equals_lm_evals_hf_model_on_the_same_weights(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "dense")  # plain GPT-2 layout + tokenizer files
    record = ours(str(tmp_path / "dense"), tmp_path)
    assert record["protocol"] == "harness" and record["max_examples"] == LIMIT
    results = record["results"]
    assert_same(results, hf_reference(tmp_path / "dense"), rel=1e-5)
    assert results["wikitext"]["documents"] == LIMIT
    assert results["wikitext"]["source"]["path"].endswith("wikitext-2-raw/wiki.test.raw")
    assert len(results["lambada_openai"]["source"]["sha256"]) == 64


@needs_data
@pytest.mark.slow
def test_harness_on_a_factored_model_equals_its_dense_form(tmp_path):
    model = compress(tiny(1), "16x8", init="random")  # A (16, 8) of c_fc (256, 64), never densified by krony
    model.save_pretrained(tmp_path / "kron")
    decompress(model).save_pretrained(tmp_path / "dense")
    assert_same(ours(str(tmp_path / "kron"), tmp_path)["results"], hf_reference(tmp_path / "dense"), rel=1e-4)


@needs_data
@pytest.mark.slow
def test_lm_evals_own_command_line_runs_the_krony_model(tmp_path):
    """`python -m krony.eval.harness` is lm-eval's command line with "krony" registered."""
    model = compress(tiny(2), "16x8", init="random")
    model.save_pretrained(tmp_path / "kron")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "krony.eval.harness", "run", "--model", "krony", "--model_args",
           f"pretrained={tmp_path / 'kron'}", "--batch_size", "4", "--tasks", ",".join(TASKS), "--data_dir", str(DATA),
           "--limit", str(LIMIT), "--device", "cpu", "--output_path", str(tmp_path / "cli")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = (tmp_path / "cli").rglob("results_*.json")
    cli = json.loads(result_file.read_text())["results"]
    want = {t: {m: cli[t][f"{m},none"] for m in METRICS[t]} for t in TASKS}
    assert_same(ours(str(tmp_path / "kron"), tmp_path)["results"], want, rel=1e-9)


@needs_data
@pytest.mark.slow
def test_lm_evals_hf_model_runs_the_compressed_export_with_remote_code(tmp_path):
    """`lm_eval --model hf --model_args pretrained=<dir>,trust_remote_code=True` on the factored folder,
    never densified, gives krony's own numbers on the same folder; run as the README's offline form
    (`python -m krony.eval.harness run --model hf ... --data_dir ...`: lm-eval's own tasks need the hub)."""
    model = compress(tiny(2), "32x16", init="random", factors=2, scalars=True)
    model.save_pretrained(tmp_path / "kron")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "krony.eval.harness", "run", "--model", "hf", "--model_args",
           f"pretrained={tmp_path / 'kron'},trust_remote_code=True,dtype=float32", "--batch_size", "4", "--tasks",
           "lambada_openai", "--data_dir", str(DATA), "--limit", str(LIMIT), "--device", "cpu",
           "--output_path", str(tmp_path / "cli")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = (tmp_path / "cli").rglob("results_*.json")
    cli = json.loads(result_file.read_text())["results"]
    want = {"lambada_openai": {m: cli["lambada_openai"][f"{m},none"] for m in METRICS["lambada_openai"]}}
    assert_same(ours(str(tmp_path / "kron"), tmp_path, ["lambada_openai"])["results"], want, rel=1e-5)


def test_lm_evals_default_device_falls_back_to_the_cpu_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=32))
    assert KronyLM(model=model, device="cuda:0").device == torch.device("cpu")  # lm-eval's CLI default


def test_generate_until_is_greedy_decoding_cut_at_the_stop_sequence():
    model = tiny(3)
    lm = KronyLM(model=model, device="cpu")
    prompt = "The quick brown fox"
    ids = gpt2_encoding().encode_ordinary(prompt)
    greedy = model.generate(torch.tensor([ids]), 12, temperature=0)[0, len(ids):].tolist()
    text = gpt2_encoding().decode(greedy)
    stop = text[5:7] if len(text) > 7 else "\n\n\n"
    req = Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": 12, "do_sample": False}), 0)
    (out,) = lm.generate_until([req], disable_tqdm=True)
    assert out == text.split(stop)[0]


def test_loglikelihood_is_the_sum_of_token_log_probabilities():
    model = tiny(4)
    lm = KronyLM(model=model, device="cpu", batch_size=2)
    enc = gpt2_encoding()
    pairs = [("Hello there", " world"), ("A", " much longer continuation of text"), ("x y z", " w")]
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    for (ctx, cont), (logprob, greedy) in zip(pairs, got):
        c, t = enc.encode_ordinary(ctx), enc.encode_ordinary(ctx + cont)[len(enc.encode_ordinary(ctx)):]
        x = torch.tensor([c + t])
        with torch.no_grad():
            lp = torch.log_softmax(model(x[:, :-1])[0][0], -1)[len(c) - 1:]
        assert logprob == pytest.approx(lp.gather(-1, torch.tensor(t)[:, None]).sum().item(), rel=1e-5)
        assert greedy == bool(torch.equal(lp.argmax(-1), torch.tensor(t)))


def test_bf16_autocast_at_gpt2_width_on_a_factored_model():
    """dtype=bfloat16 (the GPU setting) on an 81m model at GPT-2 width: close to fp32, finite."""
    torch.manual_seed(5)
    model = compress(GPT(GPTConfig(n_layer=1)).eval(), "81m", init="random")
    reqs = [Instance("loglikelihood", {}, ("The capital of France is", " Paris"), 0),
            Instance("loglikelihood", {}, ("One, two,", " three"), 1)]
    fp32 = KronyLM(model=model, device="cpu").loglikelihood(reqs, disable_tqdm=True)
    bf16 = KronyLM(model=model, device="cpu", dtype="bfloat16").loglikelihood(reqs, disable_tqdm=True)
    for (a, _), (b, _) in zip(fp32, bf16):
        assert math.isfinite(b) and b == pytest.approx(a, rel=0.05)
    with pytest.raises(ValueError, match="dtype='half': valid choices: float32, bfloat16, float16"):
        KronyLM(model=model, device="cpu", dtype="half")
