"""The benchmarks run and report what they claim: python -m krony.bench layer|model|data|compress on small sizes."""

import copy
import json

import pytest
import torch

from krony.bench.__main__ import main, markdown
from krony.config import GPTConfig


def test_layer_bench_rows_and_json(tmp_path, capsys):
    out = tmp_path / "layer.json"
    assert main(["layer", "--schemes", "67m", "81m", "mf2", "--tokens", "32", "--rounds", "1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| 67m | kronecker | A=64x32 | 10,240 | a_first | b_first |" in table  # 2 x 3,200 + both biases
    record = json.loads(out.read_text())
    assert record["machine"]["threads"] == torch.get_num_threads()
    rows = {r["scheme"]: r for r in record["rows"]}
    assert set(rows) == {"67m", "81m", "mf2"}
    assert rows["67m"]["bound"] == pytest.approx(19.2, rel=0.01)  # 2*768*3072 / (2*122,880 + ...) from the cost model
    assert rows["81m"]["bound"] == pytest.approx(3.98, rel=0.01)
    for r in rows.values():
        assert r["dense_ms"] > 0 and r["factored_ms"] > 0
        assert r["speedup"] == pytest.approx(r["dense_ms"] / r["factored_ms"])


def test_layer_bench_rows_for_every_structure(tmp_path, capsys):
    out = tmp_path / "layer.json"
    assert main(["layer", "--schemes", "67m", "96m", "--structure", "kronecker", "lowrank", "monarch", "--tokens", "16",
                 "--rounds", "1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| 67m | lowrank | rank=1 | 11,520 | - | - |" in table  # 2 x (768 + 3072) + both biases
    rows = {(r["scheme"], r["structure"]): r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 6
    assert rows["96m", "monarch"]["size"] == "nblocks=4, block_rank=77"
    assert rows["67m", "kronecker"]["bound"] == pytest.approx(19.2, rel=0.01)
    assert rows["67m", "lowrank"]["bound"] == pytest.approx(2 * 768 * 3072 / (2 * 3840))  # rank 1: r (in + out) a matrix
    # FLOP-matched: 67m's Kronecker pair costs what a rank-32 pair costs
    assert main(["layer", "--schemes", "67m", "--structure", "lowrank", "--match", "flops", "--tokens", "16",
                 "--rounds", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["size"] == "rank=32"


def test_model_bench_tiny(tmp_path, monkeypatch):
    from krony.bench import model as bench_model

    config = GPTConfig(block_size=64, vocab_size=101, n_layer=2, n_head=4, n_embd=64)
    monkeypatch.setitem(bench_model.MODELS, "16x8", {"scheme": "16x8"})
    rows = bench_model.bench_models(["gpt2", "16x8"], config, batch=2, seq_len=16, rounds=1, new_tokens=4,
                                    prompt=4, peak=1e10)
    dense, kron = rows
    assert dense["train_speedup"] == 1.0 and dense["gen_speedup"] == 1.0
    assert kron["params"] < dense["params"]
    assert kron["flops_per_token"] < dense["flops_per_token"]
    for r in rows:
        assert r["train_tokens_per_sec"] > 0 and r["gen_tokens_per_sec"] > 0
        assert 0 < r["mfu"] < 10
        assert r["train_step_mib"] is None or r["train_step_mib"] >= 0


def test_model_bench_rejects_unknown_model(capsys):
    assert main(["model", "--models", "gpt2", "85m", "--n-layer", "1"]) == 2
    assert "unknown model '85m'; valid choices: gpt2, 67m, 81m, 96m, mf2x4" in capsys.readouterr().err


def test_cuda_requested_without_cuda_fails_clearly(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["layer", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_data_bench_stream_and_memmap(tmp_path):
    from krony.bench.data import bench_data

    rows = bench_data(workers=[0], block_size=256, seconds=0.3)
    assert [r["source"] for r in rows] == ["stream", "memmap"]
    assert all(r["tokens_per_sec"] > 0 for r in rows)


def test_compress_bench_times_vanloan_against_the_full_svd(tmp_path, capsys):
    out = tmp_path / "compress.json"
    assert main(["compress", "--schemes", "81m", "--out", str(out)]) == 0
    assert "| 81m | 1 | exact |" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["rows"]
    assert row["compress_s"] > 0 and row["full_svd_s"] > 0 and row["speedup"] == pytest.approx(row["full_svd_s"] / row["compress_s"])
    assert row["per_matrix_ms"] == pytest.approx(1000 * row["compress_s"] / 24)


def test_markdown_skips_absent_columns_and_shows_none_as_dash():
    text = markdown([{"a": 1, "b": None}], [("a", "{}"), ("b", "{:.1f}"), ("c", "{}")])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | - |"]


def test_compile_has_no_graph_breaks_through_kronecker_layers(tiny_model, tokens):
    from krony import compress

    for scheme in ("16x8", "128x64"):  # factored pair; factor dims of 1 (the custom autograd functions)
        model = compress(copy.deepcopy(tiny_model), scheme, init="random")
        explanation = torch._dynamo.explain(model)(tokens[:1, :8], tokens[:1, :8])
        assert explanation.graph_break_count == 0, explanation.break_reasons
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as trainer=gpu with model.compile=true runs it
            explanation = torch._dynamo.explain(model)(tokens[:1, :8], tokens[:1, :8])
        assert explanation.graph_break_count == 0, explanation.break_reasons


def test_causal_lm_bench_compares_each_structure_with_dense_in_each_dtype(tmp_path, capsys):
    from families import save_tiny_teacher

    folder = save_tiny_teacher(tmp_path / "tiny-llama")
    out = tmp_path / "lm.json"
    assert main(["causal-lm", "--model", str(folder), "--fractions", "0.5", "--seq-len", "16", "--rounds", "1",
                 "--dtypes", "fp32", "bf16", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["args"]["model"] == "tiny-llama" and record["args"]["out"] == "lm.json"  # no path of this machine
    rows = record["rows"]
    assert [(r["model"], r["dtype"]) for r in rows] == [
        (m, d) for d in ("float32", "bfloat16") for m in ("dense", "kronecker-ffn50", "lowrank-ffn50", "monarch-ffn50")]
    for r in rows:
        assert r["train_tokens_per_sec"] > 0 and r["flops_per_token"] > 0
        if r["model"] == "dense":
            assert r["flop_bound"] == 1.0 and r["train_speedup"] == 1.0
    dense = next(r for r in rows if r["model"] == "dense")
    assert all(r["flops_per_token"] < dense["flops_per_token"] for r in rows if r["model"] != "dense")
    assert "| kronecker-ffn50 | bfloat16 |" in capsys.readouterr().out
