"""Mix'n'Match: per-layer factor counts for a budget from one nested model."""

import csv
import itertools
import json
import random

import pytest
import torch

from krony import GPT, GPTConfig, compress, count_params, extract
from krony.mixnmatch import choose, factor_params, main, mean_loss, pareto, params_with, sample_tokens, sensitivity
from krony.nested import set_active_factors


def test_knapsack_is_exact_against_brute_force():
    rng = random.Random(0)
    for _ in range(30):
        names = ["a", "b", "c", "d"]
        ks = [1, 2, 4]
        per = {n: rng.choice([3, 6, 9]) for n in names}
        inc = {n: {k: rng.random() / k for k in ks} for n in names}
        budget = rng.randint(12, 120)
        best = None
        for picks in itertools.product(ks, repeat=len(names)):
            if sum(k * per[n] for n, k in zip(names, picks)) <= budget:
                cost = sum(inc[n][k] for n, k in zip(names, picks))
                best = cost if best is None or cost < best else best
        got = choose(inc, per, budget)
        if best is None:
            assert got is None
        else:
            assert sum(k * per[n] for n, k in got.items()) <= budget
            assert sum(inc[n][k] for n, k in got.items()) == pytest.approx(best)


@pytest.fixture
def nested():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=101, n_layer=2, n_head=4, n_embd=64))
    return compress(model, "64x16", factors=4).eval()  # B (4, 4): up to 16 factors, 4 kept


def test_sensitivity_is_the_loss_increase_of_one_layer_at_k(nested):
    tokens = torch.randint(0, 101, (4, 17), generator=torch.Generator().manual_seed(1))
    inc = sensitivity(nested, tokens, [1, 2, 4])
    base = mean_loss(nested, tokens)
    set_active_factors(nested, {"transformer.h.1.mlp.c_proj": 1})
    assert inc["transformer.h.1.mlp.c_proj"][1] == pytest.approx(mean_loss(nested, tokens) - base)
    assert all(v[4] == 0.0 for v in inc.values())
    set_active_factors(nested, None)


def test_pareto_rows_fit_their_budgets_and_beat_uniform_on_the_estimate(nested):
    g = torch.Generator().manual_seed(2)
    cal, val = torch.randint(0, 101, (4, 17), generator=g), torch.randint(0, 101, (4, 17), generator=g)
    rows = pareto(nested, cal, val, [1, 2, 4])
    inc = sensitivity(nested, cal, [1, 2, 4])
    uniform = {k: count_params(extract(nested, k)) for k in (1, 2, 4)}
    assert [r["budget"] for r in rows] == sorted(set(uniform.values()) | {(uniform[1] + uniform[2]) // 2,
                                                                         (uniform[2] + uniform[4]) // 2})
    for r in rows:
        assert r["params"] <= r["budget"] and r["params"] == count_params(extract(nested, r["per_layer"]))
        k = r["uniform_k"]
        assert r["uniform_params"] == uniform[k] <= r["budget"]
        assert r["predicted_increase"] <= sum(inc[n][k] for n in inc) + 1e-12  # uniform k is one of the choices
    assert rows[-1]["predicted_increase"] <= 0.0  # the full model fits the largest budget (random weights may do better)
    assert params_with(nested, dict.fromkeys(inc, 2)) == uniform[2]
    assert set(factor_params(nested).values()) == {64 * 16 + 16}


def test_command_writes_the_pareto_set(tmp_path, capsys):
    torch.manual_seed(3)
    model = compress(GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=32)), "16x8", factors=4)  # full vocabulary
    model.save_pretrained(tmp_path / "nested")
    assert main([str(tmp_path / "nested"), "--out", str(tmp_path / "mm"), "--ks", "1", "2", "4",
                 "--calibration-tokens", "256", "--validation-tokens", "256"]) == 0
    rows = json.loads((tmp_path / "mm" / "pareto.json").read_text())
    assert len(rows) == 5 and all("val_loss" in r and "uniform_val_loss" in r for r in rows)
    with open(tmp_path / "mm" / "pareto.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and "transformer.h.0.mlp.c_fc=" in table[0]["per_layer"]
    assert main([str(tmp_path / "nested"), "--out", str(tmp_path / "mm"), "--ks", "1", "8"]) == 2
    assert "every k must be in 1..4" in capsys.readouterr().err


def test_validation_tokens_are_the_held_out_start_of_the_sample():
    from krony.data.sources import sample_path
    from krony.tokenizer import encode_document

    ids = encode_document(open(sample_path()).read())
    cal, val = sample_tokens(64, 256, 256)
    assert val.shape == cal.shape == (4, 65)
    assert val.flatten().tolist() == ids[:4 * 65]  # data=local holds out the first 100 paragraphs (4,880 tokens)
    assert cal.flatten().tolist() == ids[-4 * 65:]
    with pytest.raises(ValueError, match="ask for fewer than"):
        sample_tokens(64, 10**6, 64)
