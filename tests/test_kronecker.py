"""KroneckerLinear against F.linear with the materialised kron(A, B), on every path."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
import torch.nn.functional as F

from krony import KroneckerLinear, choose_path, kron_weight, path_costs
from krony.layers.kronecker import PATHS, kron_matmul

# (m1, n1, m2, n2): square and not, B of 1xk and kx1, A of 1xk and kx1
SHAPES = [(4, 3, 2, 5), (6, 2, 1, 4), (3, 5, 4, 1), (1, 4, 3, 2), (5, 1, 2, 3), (2, 2, 2, 2), (8, 4, 3, 3)]


def reference(x, layer):
    W = sum(
        (layer.scalars[i] if layer.scalars is not None else 1.0) * torch.kron(layer.A[i], layer.B[i])
        for i in range(layer.factors)
    )
    return F.linear(x, W, layer.bias)


@pytest.mark.parametrize("m1,n1,m2,n2", SHAPES)
@pytest.mark.parametrize("factors", [1, 2, 3, 4])
@pytest.mark.parametrize("scalars", [False, True])
def test_forward_matches_materialised_kron(m1, n1, m2, n2, factors, scalars):
    torch.manual_seed(factors)
    layer = KroneckerLinear(n1 * n2, m1 * m2, (m1, n1), factors=factors, scalars=scalars)
    with torch.no_grad():
        layer.bias.normal_()
        if scalars:
            layer.scalars.normal_()
    for x in (torch.randn(7, n1 * n2), torch.randn(2, 5, n1 * n2)):  # 2-D and 3-D inputs
        expected = reference(x, layer)
        for path in PATHS:
            y = layer(x, path=path)
            assert y.shape == (*x.shape[:-1], m1 * m2)
            torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_to_dense_is_the_scaled_kron_sum():
    torch.manual_seed(0)
    layer = KroneckerLinear(6, 8, (4, 2), factors=3, scalars=True)
    with torch.no_grad():
        layer.scalars.copy_(torch.tensor([0.5, -2.0, 3.0]))
    expected = sum(s * torch.kron(a, b) for s, a, b in zip(layer.scalars, layer.A, layer.B))
    torch.testing.assert_close(layer.to_dense(), expected)
    torch.testing.assert_close(kron_weight(layer.A, layer.B, layer.scalars), expected)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scalars", [False, True])
def test_gradcheck_float64(path, scalars):
    torch.manual_seed(0)
    A = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    B = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, dtype=torch.float64, requires_grad=True) if scalars else None
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    inputs = (x, A, B, s) if scalars else (x, A, B)
    assert torch.autograd.gradcheck(lambda *t: kron_matmul(*t[:3], t[3] if scalars else None, path=path), inputs)


def test_gradients_agree_across_paths():
    torch.manual_seed(0)
    layer = KroneckerLinear(12, 12, (4, 3), factors=2, scalars=True).double()
    x = torch.randn(5, 12, dtype=torch.float64)
    grads = {}
    for path in PATHS:
        layer.zero_grad()
        layer(x, path=path).square().sum().backward()
        grads[path] = [p.grad.clone() for p in (layer.A, layer.B, layer.scalars, layer.bias)]
    for path in PATHS[1:]:
        for g0, g in zip(grads[PATHS[0]], grads[path]):
            torch.testing.assert_close(g, g0)


def measured_madds(layer: KroneckerLinear, path: str, tokens: int = 4096) -> float:
    """Multiply-adds per token of `layer` on `path`, counted by torch's FLOP counter (meta tensors)."""
    x = torch.empty(tokens, layer.in_features, device="meta")
    with FlopCounterMode(display=False) as counter:
        layer(x, path=path)
    return counter.get_total_flops() / 2 / tokens


# shapes without a factor dim of 1: every product is a GEMM the counter sees
COUNTED = [(4, 3, 2, 5), (8, 4, 4, 8), (64, 32, 48, 24), (1024, 256, 3, 3), (96, 48, 32, 16)]


@pytest.mark.parametrize("m1,n1,m2,n2", COUNTED)
@pytest.mark.parametrize("factors", [1, 2, 4])
def test_cost_model_equals_the_measured_flops_of_each_path(m1, n1, m2, n2, factors):
    layer = KroneckerLinear(n1 * n2, m1 * m2, (m1, n1), factors=factors, device="meta")
    costs = path_costs(m1, n1, m2, n2, factors)
    for path in ("a_first", "b_first"):
        assert measured_madds(layer, path) == costs[path]
    build_w = factors * m1 * m2 * n1 * n2 / 4096  # building W once per call (a GEMM when r > 1), spread over its tokens
    assert costs["dense"] <= measured_madds(layer, "dense") <= costs["dense"] + build_w


@pytest.mark.parametrize("m1,n1,m2,n2", COUNTED)
@pytest.mark.parametrize("factors", [1, 2, 4])
def test_auto_path_is_the_cheapest_measured(m1, n1, m2, n2, factors):
    layer = KroneckerLinear(n1 * n2, m1 * m2, (m1, n1), factors=factors, device="meta")
    measured = {path: measured_madds(layer, path, tokens=1 << 20) for path in PATHS}
    assert measured[layer.chosen_path] == pytest.approx(min(measured.values()), rel=1e-3)
    assert layer.multiply_adds() == pytest.approx(measured[layer.chosen_path], rel=1e-3)


def test_paper_cases_pick_the_expected_path():
    assert choose_path(768, 768, 4, 1) == "a_first"  # 81m: A @ X first is 4x cheaper
    assert choose_path(3072, 768, 1, 1) == "dense"  # B = 1x1 is the dense matrix
    assert choose_path(1024, 256, 3, 3, factors=3) == "dense"  # mf2 with 3 factors: factored costs more
    assert choose_path(64, 32, 48, 24) != "dense"


def test_path_override_and_validation():
    layer = KroneckerLinear(6, 8, (4, 2), path="dense")
    assert layer.chosen_path == "dense"
    layer.path = "auto"
    assert layer.chosen_path == "b_first"  # B (2, 3): 28 multiply-adds per token, a_first and dense 48
    with pytest.raises(ValueError, match="valid paths"):
        layer.path = "fastest"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_features=768, out_features=3072, a_dims=(100, 32)), "do not divide"),
        (dict(in_features=768, out_features=3072, a_dims=(64, 7)), "n1 must divide 768"),
        (dict(in_features=8, out_features=8, a_dims=(2, 2), factors=0), "factors must be an integer >= 1"),
    ],
)
def test_bad_layer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KroneckerLinear(**kwargs)


def test_load_factors_folds_scalars_when_off():
    torch.manual_seed(0)
    A, B, s = torch.randn(2, 4, 2), torch.randn(2, 2, 3), torch.tensor([2.0, -1.0])
    on = KroneckerLinear(6, 8, (4, 2), factors=2, scalars=True)
    off = KroneckerLinear(6, 8, (4, 2), factors=2, scalars=False)
    on.load_factors(A, B, s)
    off.load_factors(A, B, s)
    torch.testing.assert_close(on.to_dense(), off.to_dense())
    with pytest.raises(ValueError, match="do not match"):
        off.load_factors(A[:1], B, s)


def test_to_linear_copies_weight_and_bias():
    torch.manual_seed(0)
    layer = KroneckerLinear(6, 8, (4, 2), factors=2, scalars=True)
    lin = layer.to_linear()
    x = torch.randn(3, 6)
    torch.testing.assert_close(lin(x), layer(x))


def test_random_init_std_matches_gpt2():
    torch.manual_seed(0)
    for factors in (1, 4):
        layer = KroneckerLinear(768, 3072, (64, 32), factors=factors)
        assert abs(layer.to_dense().std().item() - 0.02) < 0.002


def test_dtype_and_bias_off():
    layer = KroneckerLinear(6, 8, (4, 2), bias=False, dtype=torch.float64)
    assert layer.bias is None and layer.A.dtype == torch.float64
    x = torch.randn(2, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T)
    assert "A=(4, 2), B=(2, 3)" in repr(layer)



@pytest.mark.parametrize("m1,n1,m2,n2", SHAPES)
@pytest.mark.parametrize("path", ["a_first", "b_first"])
@pytest.mark.parametrize("factors", [1, 2])
def test_gradcheck_layer_with_bias_every_special_case(m1, n1, m2, n2, path, factors):
    # the factor dims of 1 take their own autograd functions (outer product, contraction);
    # the bias is fused into the last product where it can be: all checked against finite differences
    torch.manual_seed(1)
    layer = KroneckerLinear(n1 * n2, m1 * m2, (m1, n1), factors=factors, scalars=True, path=path).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, 2, n1 * n2, dtype=torch.float64, requires_grad=True)
    params = tuple(p for p in (layer.A, layer.B, layer.scalars, layer.bias))

    def f(x, A, B, s, b):
        return torch.func.functional_call(layer, {"A": A, "B": B, "scalars": s, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, *params))
    torch.testing.assert_close(layer(x), reference(x, layer))


@pytest.mark.parametrize("fc_dims", [(4, 2), (8, 8), (16, 8), (2, 8)])
def test_fused_ffn_matches_two_layers(fc_dims):
    from krony.layers.kronecker import fusable, kron_ffn

    torch.manual_seed(0)
    fc = KroneckerLinear(8, 32, fc_dims, scalars=True)
    proj = KroneckerLinear(32, 8, (fc_dims[1], fc_dims[0]))
    with torch.no_grad():
        fc.bias.normal_()
        proj.bias.normal_()
    assert fusable(fc, proj)
    x = torch.randn(2, 5, 8, requires_grad=True)
    act = torch.nn.functional.gelu
    y = kron_ffn(x, fc, proj, act)
    expected = F.linear(act(reference(x, fc)), proj.to_dense(), proj.bias)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(y.square().sum(), (x, fc.A, fc.B, fc.scalars, fc.bias, proj.A, proj.B, proj.bias))
    ref = torch.autograd.grad(expected.square().sum(), (x, fc.A, fc.B, fc.scalars, fc.bias, proj.A, proj.B, proj.bias))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_not_fusable_when_a_layer_is_dense_or_dims_differ():
    from krony.layers.kronecker import fusable

    fc = KroneckerLinear(8, 32, (4, 2))
    assert not fusable(fc, KroneckerLinear(32, 8, (4, 2)))  # proj expects (8, 4) on its input, fc gives (4, 8)
    assert not fusable(fc, torch.nn.Linear(32, 8))
    assert not fusable(fc, KroneckerLinear(32, 8, (2, 4), path="dense"))


def test_dense_weight_is_reused_without_grad_and_rebuilt_on_change():
    torch.manual_seed(0)
    layer = KroneckerLinear(12, 8, (4, 3), factors=3, path="dense")
    x = torch.randn(5, 12)
    with torch.no_grad():
        layer(x)
        first = layer._weight_cache[1]
        layer(x)
        assert layer._weight_cache[1] is first  # reused
        layer.A.mul_(2.0)  # an optimizer step changes the factors in place
        torch.testing.assert_close(layer(x), reference(x, layer))
        assert layer._weight_cache[1] is not first
    y = layer(x)  # with gradients the weight is built in the graph, no cache
    assert y.requires_grad and layer._weight_cache is None
