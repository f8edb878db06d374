"""Evaluation protocols on ../shared/data, against straightforward reference implementations."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from krony import GPT, GPTConfig
from krony.eval import main as eval_main
from krony.evaluate import (
    _spans,
    lambada_accuracy,
    lambada_rows_from_file,
    lm_eval_wikitext,
    load_rows,
    paper_text,
    perplexity,
    score_windows,
    token_ids,
    wikitext_detokenize,
    wikitext_documents,
    wikitext_rows_from_file,
    word_count,
)
from krony.tokenizer import EOT, gpt2_encoding

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
    assert load_rows("wikitext2", "valid", DATA) == wikitext_rows_from_file(DATA / "wikitext-2" / "wiki.valid.tokens")


def test_lambada_rows():
    rows = lambada_rows_from_file(DATA / "lambada" / "lambada_test.jsonl")
    assert len(rows) == 5153 and all(" " in r for r in rows)


def test_paper_protocol_counts_for_wikitext2_raw_test():
    rows = load_rows("wikitext2", "test", DATA, raw=True)
    ids = token_ids(rows)
    # the Hugging Face perplexity guide's figure for "\n\n".join(wikitext-2-raw-v1 test) with GPT-2's tokenizer
    assert len(ids) == 287_644
    spans = _spans(len(ids), 1024, 1024)
    assert len(spans) == math.ceil((len(ids) - 1) / 1024) == 281
    assert sum(end - first for _, end, first in spans) == len(ids) - len(spans)  # all but each window's first token
    tokenized = token_ids(load_rows("wikitext2", "test", DATA))
    assert tokenized == gpt2_encoding().encode_ordinary(paper_text(load_rows("wikitext2", "test", DATA)))
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
    ids = token_ids(load_rows("wikitext2", "test", DATA)[:40])[:1000]
    got = perplexity(small_model, ids, context=64, stride=stride, batch_size=5)
    assert got == pytest.approx(reference_ppl(small_model, ids, 64, stride), rel=1e-4)


@torch.no_grad()
def test_rolling_scores_every_token_once(small_model):
    ids = [EOT] + token_ids(["some words to score, more than one window of them. " * 20])
    res = score_windows(small_model, ids, context=64, rolling=True, batch_size=3)
    assert res.tokens == len(ids) - 1
    logits = torch.cat([small_model(torch.tensor(ids[s : e - 1])[None])[0][0] for s, e, _ in _spans(len(ids), 64, 64, True)])
    targets = torch.cat([torch.tensor(ids[s + 1 : e]) for s, e, _ in _spans(len(ids), 64, 64, True)])
    assert res.nll == pytest.approx(F.cross_entropy(logits, targets, reduction="sum").item(), rel=1e-4)


class Rigged(torch.nn.Module):
    """Predicts the true next token of the passages it was given (by looking them up)."""

    def __init__(self, passages):
        super().__init__()
        enc = gpt2_encoding()
        self.config = GPTConfig(block_size=1024)
        self.seqs = []
        for p in passages:
            ctx, word = p.rsplit(" ", 1)
            self.seqs.append(enc.encode_ordinary(ctx) + enc.encode_ordinary(" " + word))
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.zeros(*x.shape, 50257)
        for b, row in enumerate(x.tolist()):
            seq = next(s for s in self.seqs if s[: len(s) - 1] == row[: len(s) - 1])
            for t in range(len(seq) - 1):
                logits[b, t, seq[t + 1]] = 30.0
        return logits, None


def test_lambada_rigged_and_random(small_model):
    passages = lambada_rows_from_file(DATA / "lambada" / "lambada_test.jsonl")[:24]
    rigged = lambada_accuracy(Rigged(passages), passages, batch_size=5)
    assert rigged["acc"] == 1.0 and rigged["ppl"] == pytest.approx(1.0, abs=1e-6)
    small = GPT(GPTConfig(block_size=1024, vocab_size=50257, n_layer=1, n_head=2, n_embd=32)).eval()
    rand = lambada_accuracy(small, passages, batch_size=8)
    assert rand["acc"] <= 1 / 24  # chance over a 50257-token vocabulary is ~0
    assert rand["ppl"] > 1000


def test_lm_eval_word_count_matches_the_data_readme():
    rows = load_rows("wikitext2", "test", DATA, raw=True)
    docs = wikitext_documents(rows)
    assert "".join(docs) == "".join(rows)
    assert sum(word_count(d) for d in docs) == 241_211
    assert len(docs) > 40 and docs[1].startswith(" = ")


def test_detokenizer():
    assert wikitext_detokenize(' a @-@ b , c " d " ( e ) 1 @,@ 000 @.@ 5 \n') == ' a-b, c "d" (e) 1,000.5\n'


@torch.no_grad()
def test_lm_eval_metrics_are_consistent(small_model):
    rows = load_rows("wikitext2", "test", DATA, raw=True)[:30]
    out = lm_eval_wikitext(small_model, rows, context=64, batch_size=4)
    assert out["bits_per_byte"] == pytest.approx(math.log2(out["byte_perplexity"]))
    assert out["word_perplexity"] > out["byte_perplexity"] > 1


def test_eval_cli_on_a_local_checkpoint(small_model, tmp_path, capsys):
    small_model.save_pretrained(tmp_path / "m")
    out = tmp_path / "results.json"
    rc = eval_main([f"model={tmp_path / 'm'}", f"data_dir={DATA}", "datasets=[wikitext2,lambada]", "max_tokens=2000",
                    "max_examples=8", "batch_size=4", f"output={out}", "device=cpu"])
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["protocol"] == "paper" and record["context"] == 64
    assert record["results"]["wikitext2"]["tokens"] == 2000
    assert record["results"]["lambada"]["last_word_n"] == 8
    assert "| " in capsys.readouterr().out
    assert eval_main(["model=x", "protocol=beam"]) == 2
    assert eval_main(["modle=gpt2"]) == 2
