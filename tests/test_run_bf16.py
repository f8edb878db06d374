"""`python -m krony.run` at GPT-2 width under bf16-mixed on the CPU: a sweep with a failing job, and
the paper's multi-factor model distilled. In their own file so that pytest-xdist's workers (one
file each) share the load: a bf16 matmul on a CPU without bf16 units takes several times an fp32 one."""

import pytest

from conftest import events, krony_run
from krony import GPT


@pytest.mark.slow
def test_sweep_survives_a_failed_job(tmp_path):
    # 96m has B (2, 1): at most 2 factors, so r=3 fails; 81m (B (4, 1)) runs, at GPT-2 width under
    # bf16-mixed (its outer-product and contraction paths once crashed there)
    out = krony_run(["-m", "decomp=96m,81m", "model.factors=3", "experiment=smoke", "trainer.max_steps=1",
                     "trainer.val_check_interval=1", "trainer.limit_val_batches=1", "trainer.precision=bf16-mixed"], tmp_path)
    assert out.returncode == 1
    assert "1 job(s) failed" in out.stderr and "96m-vanloan-r3" in out.stderr and "at most min(m1*n1, m2*n2) = 2" in out.stderr
    sweep = next((tmp_path / "logs" / "sweeps").iterdir())
    assert "ConfigError" in (sweep / "96m-vanloan-r3" / "error.txt").read_text()  # refused before any work
    assert "train/loss" in events(sweep / "81m-vanloan-r3").Tags()["scalars"]


@pytest.mark.slow
def test_multifactor_logs_scalars_and_distils(tmp_path):
    """mf2 with 4 factors and scalars, distilled, under bf16-mixed at GPT-2 width."""
    out = krony_run(["model=multifactor", "decomp=mf2", "distill=on", "experiment=smoke", "trainer.max_steps=1",
                     "trainer.val_check_interval=1", "trainer.limit_val_batches=1", "trainer.precision=bf16-mixed"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = next((tmp_path / "logs" / "runs" / "mf2-vanloan-r4-s-kd").iterdir())
    tags = events(run).Tags()["scalars"]
    assert {"scalars/h0.c_fc/0", "scalars/h1.c_proj/3", "train/kl", "train/ce"} <= set(tags)
    model = GPT.from_pretrained(run / "export")
    assert model.transformer.h[0].mlp.c_proj.a_dims == (256, 1024) and model.transformer.h[0].mlp.c_proj.factors == 4
