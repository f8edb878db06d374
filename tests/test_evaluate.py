"""Evaluation protocols on ../shared/data, against straightforward reference implementations."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from krony import GPT, GPTConfig
from krony.eval.__main__ import main as eval_main
from krony.eval.data import file_sha256, lambada_rows_from_file, load_rows, paper_text, token_ids, wikitext_rows_from_file
from krony.eval.protocols import _spans, perplexity
from krony.tokenizer import gpt2_encoding

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not present")


@pytest.fixture(scope="module")
def small_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=32)).eval()


def test_wikitext_rows_follow_the_hub_convention():
    rows = wikitext_rows_from_file(DATA / "wikitext-103" / "wiki.test.tokens")
    assert len(rows) == 4358  # one row per line
    assert rows[:4] == ["", " = Robert Boulter = \n", "", rows[3]]
    assert rows[3].startswith(" Robert Boulter is an English film") and rows[3].endswith(" . \n")
    assert sum(r == "" for r in rows) == 1467  # the README's blank lines
    assert all(r == "" or r.endswith("\n") for r in rows)
    loaded = load_rows("wikitext2", "valid", DATA)
    assert loaded.rows == wikitext_rows_from_file(DATA / "wikitext-2" / "wiki.valid.tokens")
    assert loaded.source == {"path": str(DATA / "wikitext-2" / "wiki.valid.tokens"),
                             "sha256": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"}


def test_lambada_rows():
    rows = lambada_rows_from_file(DATA / "lambada" / "lambada_test.jsonl")
    assert len(rows) == 5153 and all(" " in r for r in rows)


def test_paper_lambada_is_the_original_text():
    """The paper's LAMBADA is Paperno et al.'s (the hub's `lambada`, lower-cased and tokenised),
    rows joined with "\n\n" as the authors' script does, not OpenAI's detokenised version."""
    loaded = load_rows("lambada", "test", DATA)
    assert loaded.source["path"].endswith("lambada/lambada_test_plain_text.txt")
    assert loaded.source["sha256"] == "4ab6062b68422bf2e83653d367c9765d42404f7ec21b8b59b6518b45606aaef2"
    assert len(loaded.rows) == 5153 and loaded.rows[0].startswith("in my palm is a clear stone , and inside it")
    assert not any(r.endswith("\n") for r in loaded.rows)
    ids = token_ids(loaded.rows)
    openai = token_ids(lambada_rows_from_file(DATA / "lambada" / "lambada_test.jsonl"))
    assert len(ids) == 429_710 and len(openai) == 440_534  # the issue: "about 430K" against 440,534


def test_paper_protocol_counts_for_wikitext2_raw_test():
    rows = wikitext_rows_from_file(DATA / "wikitext-2-raw" / "wiki.test.raw")
    ids = token_ids(rows)
    # the Hugging Face perplexity guide's figure for "\n\n".join(wikitext-2-raw-v1 test) with GPT-2's tokenizer
    assert len(ids) == 287_644
    spans = _spans(len(ids), 1024, 1024)
    assert len(spans) == math.ceil((len(ids) - 1) / 1024) == 281
    assert sum(end - first for _, end, first in spans) == len(ids) - len(spans)  # all but each window's first token
    tokenized = token_ids(load_rows("wikitext2", "test", DATA).rows)
    assert tokenized == gpt2_encoding().encode_ordinary(paper_text(load_rows("wikitext2", "test", DATA).rows))
    assert len(tokenized) != len(ids)  # <unk> and the tokenised form change the stream


def reference_ppl(model, ids, context, stride):
    """One window at a time, the Hugging Face guide's loop."""
    ids = torch.tensor(ids)[None]
    nlls, counts, window_means, prev_end = [], [], [], 0
    starts = range(0, ids.size(1) - 1, context) if stride == context else range(0, ids.size(1), stride)
    for begin in starts:
        end = min(begin + context, ids.size(1))
        trg_len = end - begin - 1 if stride == context else end - prev_end - (1 if begin == 0 else 0)
        x = ids[:, begin:end]
        logits = model(x)[0][0, :-1]
        losses = F.cross_entropy(logits, x[0, 1:], reduction="none")[-trg_len:] if trg_len > 0 else torch.zeros(0)
        nlls.append(losses.sum().item())
        counts.append(len(losses))
        window_means.append(losses.mean().item())
        prev_end = end
        if end == ids.size(1):
            break
    if stride == context:
        return math.exp(sum(window_means) / len(window_means))
    return math.exp(sum(nlls) / sum(counts))


@pytest.mark.parametrize("stride", [64, 32, 17])
@torch.no_grad()
def test_batched_matches_a_straightforward_loop(small_model, stride):
    ids = token_ids(load_rows("wikitext2", "test", DATA).rows[:40])[:1000]
    got = perplexity(small_model, ids, context=64, stride=stride, batch_size=5)
    assert got == pytest.approx(reference_ppl(small_model, ids, 64, stride), rel=1e-4)


def test_eval_cli_on_a_local_checkpoint(small_model, tmp_path, capsys):
    small_model.save_pretrained(tmp_path / "m")
    out = tmp_path / "results.json"
    rc = eval_main([f"model={tmp_path / 'm'}", f"data_dir={DATA}", "datasets=[wikitext2,lambada]", "max_tokens=2000",
                    "batch_size=4", f"output={out}", "device=cpu"])
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["protocol"] == "paper" and record["context"] == 64
    wt2, lam = record["results"]["wikitext2"], record["results"]["lambada"]
    assert wt2["tokens"] == 2000 and wt2["scored_tokens"] == 2000 - wt2["windows"] and wt2["rows"] == 4358
    assert lam["rows"] == 5153 and lam["source"]["sha256"] == file_sha256(DATA / "lambada" / "lambada_test_plain_text.txt")
    assert "| " in capsys.readouterr().out
    assert eval_main(["model=x", "protocol=beam"]) == 2
    assert eval_main(["modle=gpt2"]) == 2
