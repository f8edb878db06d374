"""FLOP counting for MFU: the counter on the meta device against the closed form, and peak FLOPs."""

import pytest
import torch

from krony import compress
from krony.flops import analytic_flops_per_token, peak_flops, train_flops


def test_dense_count_equals_6n_plus_attention(tiny_model):
    T = 16
    assert train_flops(tiny_model, 2, T) == 2 * T * analytic_flops_per_token(tiny_model, T)
    # the forward alone (what a run logs as model/flops_per_token): 2N + 4 L d T
    assert train_flops(tiny_model, 2, T, backward=False) == 2 * T * analytic_flops_per_token(tiny_model, T, backward=False)


def test_kronecker_model_counts_its_factored_gemms(tiny_model):
    T = 16
    dense = train_flops(tiny_model, 1, T)
    compress(tiny_model, "16x8", init="random")
    counted = train_flops(tiny_model, 1, T)
    assert counted < dense
    # the counter sees GEMMs only; the closed form adds nothing else either
    assert counted == pytest.approx(T * analytic_flops_per_token(tiny_model, T), rel=0.02)


def test_counting_leaves_the_model_untouched_and_frozen_weights_cost_less(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    full = train_flops(tiny_model, 1, 8)
    assert all(p.grad is None for p in tiny_model.parameters())
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k])
    for p in tiny_model.transformer.h.parameters():
        p.requires_grad_(False)
    assert train_flops(tiny_model, 1, 8) < full
    assert train_flops(tiny_model, 1, 8, backward=False) < train_flops(tiny_model, 1, 8)


def test_peak_flops_from_override_or_device():
    assert peak_flops("cpu", torch.float32, 5e11) == 5e11
    assert peak_flops("cpu", torch.float32) is None  # CPUs have no table entry: no MFU unless configured
    with pytest.raises(ValueError, match="peak_flops must be > 0"):
        peak_flops("cpu", torch.float32, 0)
