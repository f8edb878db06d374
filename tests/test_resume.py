"""Crash safety with real processes and real SIGKILLs: a run killed at any point and started again
with the same command ends with the same weights and losses as one never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from krony.train.resume import job_key, latest_checkpoint

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

# a narrow smoke run (d=256, so a checkpoint takes a visible moment to write), 2 dataloader workers,
# a checkpoint every 2 steps, 10 steps
BASE = ["experiment=smoke", "+model.teacher_config.n_embd=256", "+model.teacher_config.n_head=4",
        "decomp=custom", "decomp.name=64x32", "init=random", "data.num_workers=2",
        "callbacks.checkpoint_last.every_n_train_steps=2", "trainer.enable_progress_bar=false"]
ARGS = BASE + ["trainer.max_steps=10", "trainer.val_check_interval=5"]


def command(args):
    return [sys.executable, "-m", "krony.run", *args]


def run(root: Path, args=ARGS) -> subprocess.CompletedProcess:
    out = subprocess.run(command(args), cwd=root, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def run_and_kill(root: Path, when, args=ARGS, timeout: float = 300) -> None:
    """Start the run and SIGKILL its whole process group (workers included) once `when()` is true."""
    proc = subprocess.Popen(command(args), cwd=root, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    try:
        while not when():
            assert proc.poll() is None, "the run ended before the kill point"
            assert time.time() - t0 < timeout, "kill point never reached"
            time.sleep(0.002)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_dirs(root: Path) -> list[Path]:
    return sorted((root / "logs" / "runs").glob("*/*"))


def job_dir(root: Path) -> Path:
    """The directory that holds the job's checkpoints and finished status."""
    dirs = [d for d in run_dirs(root) if (d / "job.json").exists()]
    finished = [d for d in dirs if json.loads((d / "job.json").read_text())["status"] == "finished"]
    assert len(finished) == 1, [(d, (d / "job.json").read_text()) for d in dirs]
    return finished[0]


def losses(directory: Path) -> dict[int, float]:
    """train/loss by step; after a resume the steps redone since the checkpoint appear twice
    (two event files): the later value is the one the final weights come from."""
    ea = EventAccumulator(str(directory))
    ea.Reload()
    return {e.step: e.value for e in ea.Scalars("train/loss")}


def weights(directory: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(latest_checkpoint(directory), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 10
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    run(root)
    d = job_dir(root)
    # retention: the newest 2 periodic checkpoints (of 5 written), best.ckpt, last.ckpt linking the newest
    names = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert names == ["best.ckpt", "last.ckpt", "step00000008.ckpt", "step00000010.ckpt"]
    assert (d / "checkpoints" / "last.ckpt").resolve().name == "step00000010.ckpt"
    return losses(d), weights(d)


def assert_same_as_reference(root: Path, reference) -> Path:
    ref_losses, ref_weights = reference
    d = job_dir(root)
    got = losses(d)
    for step, loss in got.items():
        assert loss == ref_losses[step], step  # bitwise: fp32 on CPU, same data order, same random states
    # the loss of the step just before a checkpoint is logged after the save: a kill in between loses
    # that one event (never the training it describes)
    missing = set(ref_losses) - set(got)
    assert len(missing) <= 1 and all(s % 2 == 1 for s in missing), missing
    w = weights(d)
    assert w.keys() == ref_weights.keys()
    for k in w:
        assert torch.equal(w[k], ref_weights[k]), k
    return d


def first_ckpt_written(root):
    return lambda: any((root / "logs").rglob("step00000004.ckpt"))


def saving(root):
    return lambda: any((root / "logs").rglob("*.ckpt.tmp"))


@pytest.mark.slow
def test_kill_after_a_checkpoint_resumes_exactly(tmp_path, reference):
    run_and_kill(tmp_path, first_ckpt_written(tmp_path))
    run(tmp_path)
    d = assert_same_as_reference(tmp_path, reference)
    assert len(run_dirs(tmp_path)) == 2  # the second start only points at the first directory
    assert "continued in" in next(p for p in run_dirs(tmp_path) if p != d).joinpath("resumed.txt").read_text()
    assert len(list(d.glob("events.out.tfevents.*"))) == 2


@pytest.mark.slow
def test_kill_during_a_checkpoint_save_leaves_the_previous_one(tmp_path, reference):
    run_and_kill(tmp_path, lambda: any((tmp_path / "logs").rglob("step00000004.ckpt.tmp")))
    (d,) = run_dirs(tmp_path)
    ckpts = d / "checkpoints"
    assert (ckpts / "step00000004.ckpt.tmp").exists()  # killed mid-write ...
    assert not (ckpts / "step00000004.ckpt").exists()
    assert latest_checkpoint(d).name == "step00000002.ckpt"  # ... so the resume takes the one before
    run(tmp_path)
    assert_same_as_reference(tmp_path, reference)


@pytest.mark.slow
def test_killed_before_a_checkpoint_starts_afresh_then_a_finished_run_is_skipped(tmp_path):
    args = BASE + ["trainer.max_steps=2", "trainer.val_check_interval=2"]
    run_and_kill(tmp_path, lambda: any((tmp_path / "logs").rglob("job.json")), args)
    run(tmp_path, args)  # nothing to continue from: a fresh run in a new directory
    dirs = run_dirs(tmp_path)
    assert [json.loads((d / "job.json").read_text())["status"] for d in dirs] == ["running", "finished"]
    run(tmp_path, args)
    assert "finished earlier in" in run_dirs(tmp_path)[2].joinpath("skipped.txt").read_text()
    run(tmp_path, args + ["resume=false"])
    assert len([d for d in run_dirs(tmp_path) if (d / "job.json").exists()]) == 3


@pytest.mark.slow
def test_multirun_again_skips_finished_jobs_and_resumes_the_interrupted_one(tmp_path):
    sweep = ["-m", *BASE, "trainer.max_steps=6", "trainer.val_check_interval=6", "model.factors=1,2"]
    second = lambda: any((tmp_path / "logs" / "sweeps").rglob("*-r2/checkpoints/step00000002.ckpt"))  # noqa: E731
    run_and_kill(tmp_path, second, sweep)
    run(tmp_path, sweep)
    first_sweep, second_sweep = sorted((tmp_path / "logs" / "sweeps").iterdir())
    assert (second_sweep / "64x32-random-r1" / "skipped.txt").exists()
    assert (second_sweep / "64x32-random-r2" / "resumed.txt").exists()
    for job in ("64x32-random-r1", "64x32-random-r2"):
        status = json.loads((first_sweep / job / "job.json").read_text())
        assert status["status"] == "finished"
        assert torch.load(latest_checkpoint(first_sweep / job), weights_only=True)["global_step"] == 6


def test_job_key_ignores_order_and_bookkeeping_overrides():
    assert job_key(["a=1", "b=2"]) == job_key(["b=2", "a=1", "resume=true", "paths.root_dir=/x", "hydra.verbose=1"])
    assert job_key(["a=1"]) != job_key(["a=2"])
