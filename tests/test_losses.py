"""Distillation loss against a hand computation on tiny logits."""

import math

import pytest
import torch

from krony.train.losses import DistillConfig, distillation_loss, hidden_cosine_loss, lm_loss, soft_target_kl


def test_kl_by_hand():
    s = torch.tensor([[[1.0, 0.0, -1.0]]])  # (B=1, T=1, V=3)
    t = torch.tensor([[[0.5, 0.5, 0.0]]])
    T = 2.0

    def softmax(v):
        e = [math.exp(x / T) for x in v]
        return [x / sum(e) for x in e]

    p, q = softmax([0.5, 0.5, 0.0]), softmax([1.0, 0.0, -1.0])
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) * T * T
    assert soft_target_kl(s, t, T).item() == pytest.approx(expected, rel=1e-5)


def test_total_by_hand():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    y = torch.randint(0, 5, (2, 3))
    cfg = DistillConfig(enabled=True, temperature=3.0, alpha_ce=0.25, alpha_clm=0.75, alpha_cos=0.5)
    hs, ht = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    out = distillation_loss(cfg, s, t, y, hs, ht)
    # per token: KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the 6 tokens
    p = torch.softmax(t / 3, -1)
    kl = (p * (p.log() - torch.log_softmax(s / 3, -1))).sum(-1).mean() * 9
    ce = -torch.log_softmax(s, -1).gather(-1, y.unsqueeze(-1)).mean()
    cos = (1 - (hs * ht).sum(-1) / (hs.norm(dim=-1) * ht.norm(dim=-1))).mean()
    torch.testing.assert_close(out["kl"], kl)
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["cos"], cos)
    torch.testing.assert_close(out["loss"], 0.25 * kl + 0.75 * ce + 0.5 * cos)
    torch.testing.assert_close(lm_loss(s, y), ce)
    torch.testing.assert_close(hidden_cosine_loss(hs, ht), cos)


def test_identical_logits_have_zero_kl():
    x = torch.randn(1, 4, 7)
    assert soft_target_kl(x, x, 2.0).abs().item() < 1e-6


def test_bad_settings():
    with pytest.raises(ValueError, match="temperature=0: must be > 0"):
        DistillConfig(temperature=0)
    with pytest.raises(ValueError, match="needs the hidden states"):
        distillation_loss(DistillConfig(alpha_cos=1.0), torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.zeros(1, 2, dtype=torch.long))
