"""Mixed precision: every Table-1 scheme, every forward path, 1 to 4 factors, with and without
scalars, runs forward and backward under bf16 and fp16 autocast with gradients close to fp32."""

import pytest
import torch

from krony import GPT, GPTConfig, KroneckerLinear, compress, kronecker_layers
from krony.layers.kronecker import PATHS
from krony.schemes import NAMED

# GPT-2 small width (d=768, FFN 3072), one block; a small vocabulary keeps the head cheap
GPT2_BLOCK = GPTConfig(n_layer=1, vocab_size=512, block_size=64)

BF16_TOL = 3e-2  # relative Frobenius error of a gradient: bf16 keeps 8 bits of mantissa
FP16_TOL = 5e-3  # fp16 keeps 11


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm().clamp_min(1e-30)).item()


def grads_under(model: GPT, x: torch.Tensor, dtype: torch.dtype | None, scale: float = 1.0, run=None) -> dict[str, torch.Tensor]:
    """Gradients of the LM loss on x, under autocast to `dtype` on x's device (None: fp32), loss
    times `scale`; `run` replaces the model's forward (a compiled one)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits, loss = (run or model)(x, x)
    if dtype is not None:
        assert logits.dtype == dtype
    (loss * scale).backward()
    return {n: p.grad.float() / scale for n, p in model.named_parameters() if p.grad is not None}


def assert_close_grads(model: GPT, x: torch.Tensor, dtype: torch.dtype, tol: float, scale: float = 1.0, run=None) -> None:
    want = grads_under(model, x, None)
    got = grads_under(model, x, dtype, scale, run)
    assert got.keys() == want.keys()
    factor_names = [n for n in want if n.endswith((".A", ".B", ".scalars"))]
    assert factor_names, "no Kronecker factor received a gradient"
    for name in want:
        assert got[name].dtype == torch.float32  # gradients land in the parameters' dtype
        assert torch.isfinite(got[name]).all(), name
        err = rel_err(got[name], want[name])
        assert err < tol, f"{name}: relative gradient error {err:.2e} under {dtype} (tolerance {tol})"


def compressed_block(scheme, factors: int = 1, scalars: bool = False, config: GPTConfig = GPT2_BLOCK) -> GPT:
    torch.manual_seed(0)
    model = GPT(config)
    compress(model, scheme, init="random", factors=factors, scalars=scalars)
    if scalars:  # scalars away from 1, so a wrong dtype in their gradient would show
        for layer in kronecker_layers(model).values():
            with torch.no_grad():
                layer.scalars.uniform_(0.5, 2.0)
    return model


SCHEME_CASES = [(s.key, 1, False) for s in NAMED if s.key != "gpt2"] + [("mf2", 4, True)]


@pytest.mark.parametrize("scheme,factors,scalars", SCHEME_CASES, ids=[f"{s}-r{r}{'-s' if sc else ''}" for s, r, sc in SCHEME_CASES])
def test_gpt2_width_block_bf16_gradients_match_fp32_on_every_path(scheme, factors, scalars):
    model = compressed_block(scheme, factors, scalars)
    x = torch.randint(0, GPT2_BLOCK.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    for path in ("auto", *PATHS):
        for layer in kronecker_layers(model).values():
            layer.path = path
        assert_close_grads(model, x, torch.bfloat16, BF16_TOL)


SMALL = GPTConfig(n_layer=1, n_head=4, n_embd=48, vocab_size=128, block_size=32)  # c_fc (192, 48)
# A dims of c_fc that reach every special case of the factored paths: B of c_fc (4, 1) gives
# the outer product (a dim of 1) and c_proj's B (1, 4) the contraction; (2, 2) the GEMM paths
SMALL_SCHEMES = [(48, 48), (96, 24), (192, 48)]


@pytest.mark.parametrize("dtype,tol,scale", [(torch.bfloat16, BF16_TOL, 1.0), (torch.float16, FP16_TOL, 1024.0)], ids=["bf16", "fp16"])
@pytest.mark.parametrize("a_dims", SMALL_SCHEMES, ids=lambda d: f"{d[0]}x{d[1]}")
def test_every_factor_count_scalars_and_path_under_autocast(a_dims, dtype, tol, scale):
    """fp16 with a loss scale, as the grad scaler of 16-mixed applies it."""
    x = torch.randint(0, SMALL.vocab_size, (2, 32), generator=torch.Generator().manual_seed(2))
    for factors in (1, 2, 3, 4):
        for scalars in (False, True):
            model = compressed_block(a_dims, factors, scalars, SMALL)
            for path in ("auto", *PATHS):
                for layer in kronecker_layers(model).values():
                    layer.path = path
                assert_close_grads(model, x, dtype, tol, scale)


def test_fp16_training_steps_with_a_grad_scaler_reduce_the_loss():
    """Optimizer steps under fp16 autocast with torch's GradScaler, at GPT-2 width for 81m:
    no dtype errors, finite updates, and the loss goes down. The first steps overflow (B's
    gradient sums over every token and row of A) and are skipped while the scaler lowers its
    scale: that is the scaler's job, and the steps after it train."""
    model = compressed_block("81m")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randint(0, GPT2_BLOCK.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
    losses = []
    for _ in range(10):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            _, loss = model(x, x)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0]
    assert scaler.get_scale() >= 256


def test_dense_weight_cache_never_serves_an_autocast_weight_to_fp32():
    layer = KroneckerLinear(48, 192, (48, 48), path="dense")
    x = torch.randn(3, 48)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
        y = layer(x)  # a bf16 W cached under autocast must not be reused here
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x @ layer.to_dense().T + layer.bias)


def test_lightning_16_mixed_with_grad_scaler_clipping_and_the_nonfinite_guard():
    """16-mixed as on a GPU (Lightning's MixedPrecision plugin with torch's GradScaler; CPU here):
    the first steps overflow at the scaler's initial scale and it skips them and lowers it;
    the module's non-finite guard leaves those to the scaler (with max_bad_steps=2 it would stop
    the run otherwise), gradients are clipped, and training goes on."""
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision
    from torch.utils.data import DataLoader

    from krony.train.module import LanguageModelModule

    teacher = dict(preset="gpt2", n_layer=1, n_embd=64, n_head=2, vocab_size=256, block_size=32)
    module = LanguageModelModule(
        model=dict(kind="krony", teacher=None, teacher_config=teacher, scheme="64x64", init="vanloan"),
        optim=dict(lr=1e-3, schedule="constant"), max_bad_steps=2, log_scalars_every=0,
    )
    batches = DataLoader(torch.randint(0, 256, (8 * 12, 33), generator=torch.Generator().manual_seed(0)), batch_size=8)
    plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**24))  # overflows at first
    trainer = L.Trainer(accelerator="cpu", plugins=[plugin], gradient_clip_val=1.0, max_steps=12, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=batches)
    assert trainer.global_step == 12 and module.skipped_steps == 0
    assert plugin.scaler.get_scale() <= 2.0**22  # overflows happened, and the scaler handled them
    assert not trainer.optimizers[0].defaults["fused"]
    assert all(torch.isfinite(p).all() for p in module.student.parameters())


def test_fused_adamw_is_not_chosen_when_scaled_gradients_are_clipped():
    from krony.config import OptimConfig
    from krony.train.optim import build_optimizer

    model = torch.nn.Linear(4, 4)
    fused = lambda **kw: build_optimizer(model, OptimConfig(), 10, **kw)[0].defaults["fused"]  # noqa: E731
    assert fused(on_cuda=True) and not fused(on_cuda=True, clips_scaled_grads=True) and not fused(on_cuda=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scheme,factors,scalars", SCHEME_CASES, ids=[f"{s}-r{r}{'-s' if sc else ''}" for s, r, sc in SCHEME_CASES])
def test_cuda_bf16_eager_and_compiled_gradients_match_fp32(scheme, factors, scalars):
    """The same check on the GPU, eager on every path and compiled with torch.compile (what
    trainer=gpu model.compile=true runs)."""
    model = compressed_block(scheme, factors, scalars).cuda()
    x = torch.randint(0, GPT2_BLOCK.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1)).cuda()
    for path in ("auto", *PATHS):
        for layer in kronecker_layers(model).values():
            layer.path = path
        assert_close_grads(model, x, torch.bfloat16, BF16_TOL)
    for layer in kronecker_layers(model).values():
        layer.path = "auto"
    assert_close_grads(model, x, torch.bfloat16, BF16_TOL, run=torch.compile(model))
