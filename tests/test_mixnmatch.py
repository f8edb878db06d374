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
    inc = sensitivity(nested, cal, [1, 2, 4])
    rows = pareto(nested, inc, val)
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
    increase = json.loads((tmp_path / "mm" / "sensitivity.json").read_text())
    assert set(increase) == {"transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"}
    assert all(set(v) == {"1", "2", "4"} and v["4"] == 0.0 for v in increase.values())
    assert main([str(tmp_path / "nested"), "--out", str(tmp_path / "mm"), "--ks", "1", "8"]) == 2
    assert "every k must be in 1..4" in capsys.readouterr().err
    assert main([str(tmp_path / "nested"), "--out", str(tmp_path / "mm"), "--ks", "1", "2", "4",
                 "--validation-file", str(tmp_path / "missing.txt")]) == 2
    assert "--validation-file" in capsys.readouterr().err


def test_validation_rows_are_the_local_runs_validation_set(tmp_path):
    """Mix'n'Match's validation loss is measured on exactly what a data=local run validates on
    (so it matches the run's val/loss_k<k>); calibration rows are training text, in order."""
    from hydra.utils import instantiate

    from conftest import make_cfg

    cfg = make_cfg(tmp_path, ["data=local", "context=64"])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    run_val = torch.cat(list(dm.val_dataloader()))
    cal, val = sample_tokens(64, 256)
    torch.testing.assert_close(val, run_val, rtol=0, atol=0)
    assert cal.shape == (4, 65)
    assert not any(torch.equal(c, v) for c in cal for v in val)
    assert sample_tokens(64, 256, 128)[1].shape == (2, 65)
    with pytest.raises(ValueError, match="at most"):
        sample_tokens(64, 10**7)
    with pytest.raises(ValueError, match="lower --context"):
        sample_tokens(64, 256, val_documents=0)


def test_calibration_from_a_text_file(tmp_path):
    from krony.tokenizer import EOT, encode_document

    paragraphs = [f"Paragraph {i} says something about the number {i * 7}." for i in range(60)]
    text = tmp_path / "calib.txt"
    text.write_text("\n\n".join(paragraphs) + "\n")
    cal, val = sample_tokens(16, 64, calibration_file=text)
    stream = [t for p in paragraphs for t in encode_document(p)]
    assert stream[len(encode_document(paragraphs[0])) - 1] == EOT
    assert cal.flatten().tolist() == stream[:4 * 17]  # paragraphs packed in order, end-of-text between
    torch.testing.assert_close(val, sample_tokens(16, 64)[1], rtol=0, atol=0)  # validation stays the run's
    with pytest.raises(ValueError, match="cannot be read"):
        sample_tokens(16, 64, calibration_file=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=r"at most that many \(--calibration-tokens\)"):
        sample_tokens(16, 10**6, calibration_file=text)
    cal2, val2 = sample_tokens(16, 64, 32, validation_file=text)  # validation from the file, calibration the default
    assert val2.flatten().tolist() == stream[:2 * 17]
    torch.testing.assert_close(cal2, sample_tokens(16, 64)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"--validation-file .*missing.txt cannot be read"):
        sample_tokens(16, 64, validation_file=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=r"at most that many \(--validation-tokens\)"):
        sample_tokens(16, 64, 10**6)
