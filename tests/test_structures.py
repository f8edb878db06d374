"""The structures beside Kronecker behind the same interface: low-rank and Monarch. Each forward
equals x @ to_dense().T + b; each optimal init is what the theory says; each is sized to a
Table-1 budget within 0.5% of its parameter count."""

import logging

import pytest
import torch

from krony import GPT, GPTConfig, compress, count_params, decompress, factored_layers, model_size
from krony.layers import STRUCTURES, LowRankLinear, MonarchLinear
from krony.schemes import TABLE1

SHAPES = [(64, 256), (256, 64), (96, 48)]  # (in, out)


def make(structure: str, in_features: int, out_features: int):
    if structure == "lowrank":
        return LowRankLinear(in_features, out_features, rank=5)
    return MonarchLinear(in_features, out_features, nblocks=4 if in_features % 4 == 0 else 3, block_rank=2)


@pytest.mark.parametrize("structure", ["lowrank", "monarch"])
@pytest.mark.parametrize("in_features,out_features", SHAPES)
def test_forward_equals_the_dense_weight(structure, in_features, out_features):
    torch.manual_seed(0)
    layer = make(structure, in_features, out_features).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 5, in_features, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias)
    torch.testing.assert_close(layer.to_linear()(x), layer(x))
    assert layer.num_params() == layer.multiply_adds() + out_features  # factors (= cost per token) + bias
    assert type(layer)(**layer.spec()).to_dense().shape == (out_features, in_features)


@pytest.mark.parametrize("rank", [1, 7, 32])
def test_lowrank_init_error_is_the_norm_of_the_discarded_singular_values(rank):
    torch.manual_seed(1)
    W = torch.randn(96, 48, dtype=torch.float64)
    layer = LowRankLinear(48, 96, rank).double()
    layer.init_from(W, "svd")
    discarded = torch.linalg.svdvals(W)[rank:]
    assert (W - layer.to_dense()).norm().item() == pytest.approx(discarded.norm().item(), rel=1e-10)


@pytest.mark.parametrize("nblocks,block_rank", [(2, 1), (4, 3), (8, 2)])
def test_monarch_projection_is_exact_for_a_monarch_matrix(nblocks, block_rank):
    torch.manual_seed(2)
    W = MonarchLinear(64, 256, nblocks, block_rank).double().to_dense()  # a random Monarch matrix
    layer = MonarchLinear(64, 256, nblocks, block_rank).double()
    layer.init_from(W, "project")
    torch.testing.assert_close(layer.to_dense(), W, atol=1e-10, rtol=1e-10)


def test_monarch_projection_beats_its_own_random_and_uses_each_blocks_svd():
    torch.manual_seed(3)
    W = torch.randn(256, 64, dtype=torch.float64)
    layer = MonarchLinear(64, 256, 4, 2).double()
    layer.init_from(W, "project")
    blocks = W.reshape(4, 64, 4, 16).transpose(1, 2)  # (j, i, 64, 16): every block keeps its top 2 singular values
    discarded = torch.linalg.svdvals(blocks)[..., 2:]
    assert (W - layer.to_dense()).norm().item() == pytest.approx(discarded.norm().item(), rel=1e-10)


@pytest.mark.parametrize("structure", ["lowrank", "monarch"])
def test_table1_budgets_land_within_half_a_percent(structure):
    for scheme in TABLE1:
        target = model_size(scheme.key)
        got = model_size(scheme.key, structure=structure)
        assert abs(got - target) / target < 0.005, (scheme.key, got, target)


@pytest.mark.parametrize("structure", ["lowrank", "monarch"])
def test_a_total_parameter_budget_sizes_the_structure(structure):
    with torch.device("meta"):
        model = GPT(GPTConfig())
    compress(model, structure=structure, budget=81_972_576)
    assert abs(count_params(model) - 81_972_576) / 81_972_576 < 0.005
    with pytest.raises(ValueError, match="sized by a scheme or ffn_fraction"):
        compress(GPT(GPTConfig(n_layer=1, n_embd=64, n_head=2, vocab_size=11, block_size=8)), budget=10_000)


@pytest.mark.parametrize("structure", ["lowrank", "monarch"])
def test_flop_matched_sizing_and_the_logged_gap(structure, caplog):
    ffn = lambda model: sum(layer.multiply_adds() for layer in factored_layers(model).values())  # noqa: E731
    for scheme in ("67m", "81m", "96m"):
        with torch.device("meta"):
            kron = compress(GPT(GPTConfig()), scheme, init="random")
            by_params = compress(GPT(GPTConfig()), scheme, init="random", structure=structure)
            with caplog.at_level(logging.INFO, logger="krony.compression"):
                by_flops = compress(GPT(GPTConfig()), scheme, init="random", structure=structure, match="flops")
        assert abs(ffn(by_flops) - ffn(kron)) / ffn(kron) < 0.011, scheme  # within 1.1%: b steps of m (in + out)
        assert abs(count_params(by_params) - count_params(kron)) / count_params(kron) < 0.005
        assert f"{ffn(by_flops):,} FFN multiply-adds per token against {ffn(kron):,}" in caplog.text
    # 96m last: its Kronecker layers (B 2x1) cost what rank 308 / block rank 77 cost, their parameter count
    assert ffn(by_params) == pytest.approx(ffn(kron), rel=0.005)
    with torch.device("meta"):
        kron = compress(GPT(GPTConfig()), "67m", init="random")
        by_flops = compress(GPT(GPTConfig()), "67m", init="random", structure=structure, match="flops")
    # 67m's (B 48x24) run the multiply-adds of a rank-32 factorisation of each matrix, on 3,200 weights
    assert ffn(kron) == ffn(by_flops) == 24 * 32 * (768 + 3072)
    with pytest.raises(ValueError, match="match='flops' takes a scheme"):
        compress(GPT(GPTConfig(n_layer=1, n_embd=64, n_head=2, vocab_size=11, block_size=8)), structure=structure,
                 budget=10_000, match="flops")
    with pytest.raises(ValueError, match="valid choices: params, flops"):
        compress(GPT(GPTConfig(n_layer=1, n_embd=64, n_head=2, vocab_size=11, block_size=8)), structure=structure,
                 match="compute")


@pytest.mark.parametrize("structure", ["lowrank", "monarch"])
def test_compress_decompress_and_the_optimal_init_of_each_structure(structure, tiny_model, tokens):
    dense_logits = tiny_model(tokens)[0]
    full = {"lowrank": dict(structure_options=None, scheme=64 * 320),  # rank 64 = full rank of (256, 64)
            "monarch": dict(structure_options={"nblocks": 4}, scheme=4 * 16 * 320)}[structure]  # b = 16 = in/m
    compress(tiny_model, full["scheme"], init="vanloan", structure=structure, structure_options=full["structure_options"])
    assert all(type(m).__name__ == STRUCTURES[structure].__name__ for n, m in tiny_model.named_modules() if n.endswith("c_fc"))
    torch.testing.assert_close(tiny_model(tokens)[0], dense_logits, atol=1e-4, rtol=1e-4)  # full size rebuilds W
    decompress(tiny_model)
    torch.testing.assert_close(tiny_model(tokens)[0], dense_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("structure", ["lowrank", "monarch"])
def test_gpt2_width_bf16_autocast_gradients_match_fp32(structure):
    """A GPT-2-width block (d=768, FFN 3072) with the 81m budget under CPU bf16 autocast, as the GPU default runs."""
    torch.manual_seed(0)
    model = compress(GPT(GPTConfig(n_layer=1, vocab_size=512, block_size=64)), "81m", structure=structure)
    idx = torch.randint(0, 512, (2, 64))

    def grads(autocast: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, loss = model(idx, idx)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if "mlp.c_" in n}

    exact, mixed = grads(False), grads(True)
    for name, g in exact.items():
        assert ((mixed[name] - g).norm() / g.norm()).item() < 3e-2, name
