"""Non-finite losses and gradients: skipped, counted, logged; N in a row stop the run with a checkpoint."""

import pytest
import torch

import krony.train.module as module_mod
from krony.run import train
from conftest import make_cfg

pytestmark = pytest.mark.slow  # every test here trains


class NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def inject(monkeypatch, faults: dict[int, str]):
    """Make the training loss of call i (0-based) non-finite ("loss") or its gradient ("grad")."""
    calls = {"n": 0}
    real = module_mod.lm_loss

    def faulty(logits, targets):
        loss = real(logits, targets)
        if not torch.is_grad_enabled():  # validation
            return loss
        kind = faults.get(calls["n"])
        calls["n"] += 1
        if kind == "loss":
            return loss * float("nan")
        if kind == "grad":
            return NanGrad.apply(loss)
        return loss

    monkeypatch.setattr(module_mod, "lm_loss", faulty)


def weights(cfg):
    from krony.model import GPT

    return GPT.from_pretrained(f"{cfg.hydra.runtime.output_dir}/export").state_dict()


def test_single_bad_steps_are_skipped_and_change_no_weight(tmp_path, monkeypatch):
    from krony.train.module import LanguageModelModule

    seen = {}
    real_hook = LanguageModelModule.on_before_optimizer_step

    def spy(self, optimizer):  # the weights as each optimizer step starts
        real_hook(self, optimizer)
        seen[self.global_step] = {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    monkeypatch.setattr(LanguageModelModule, "on_before_optimizer_step", spy)
    inject(monkeypatch, {1: "loss", 2: "grad"})
    cfg = make_cfg(tmp_path, ["init=random", "trainer.max_steps=5", "trainer.val_check_interval=5"])
    metrics = train(cfg)
    assert metrics["train/skipped_steps"] == 2.0
    for k in seen[1]:  # steps 1 and 2 updated nothing, step 0 and 3 did
        assert torch.equal(seen[1][k], seen[3][k]), k
    assert any(not torch.equal(seen[0][k], seen[1][k]) for k in seen[0])
    assert all(torch.isfinite(v).all() for v in weights(cfg).values())


def test_bad_steps_in_a_row_stop_the_run_with_a_checkpoint(tmp_path, monkeypatch):
    inject(monkeypatch, {1: "grad", 2: "grad", 3: "grad"})
    cfg = make_cfg(tmp_path, ["init=random", "max_bad_steps=3", "trainer.max_steps=8"])
    with pytest.raises(FloatingPointError, match="3 steps in a row had a non-finite gradient.*checkpoint"):
        train(cfg)
    ckpt = tmp_path / "out" / "checkpoints" / "nonfinite-stop.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3  # saved during step 3, the third skipped update in a row
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_checkpoint_of_another_scheme_is_refused_with_both_shapes(tmp_path):
    cfg = make_cfg(tmp_path / "a", ["init=random", "decomp=67m", "trainer.max_steps=2", "trainer.val_check_interval=2"])
    train(cfg)
    ckpt = tmp_path / "a" / "out" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    # the disk estimate logged at start is within 2% of what a checkpoint really takes
    from krony.run import build_module
    from krony.train.lightning_io import checkpoint_bytes

    estimate = checkpoint_bytes(build_module(cfg).student)
    assert abs(estimate - ckpt.stat().st_size) / ckpt.stat().st_size < 0.02
    other = make_cfg(tmp_path / "b", ["init=random", "decomp=81m", "trainer.max_steps=4"])
    with pytest.raises(ValueError, match=r"does not fit the configured model.*c_fc.A: checkpoint \(1, 64, 32\) "
                                         r"vs configured \(1, 768, 768\)"):
        train(other, ckpt_path=ckpt)
