"""Crash safety with real processes and real signals: a run killed (SIGKILL) or pre-empted
(SIGTERM, SIGUSR1) at any point and started again with the same command ends with the same
weights and losses as one never interrupted, whether its directory is under logs/ or fixed."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import module_dir
from krony.train.resume import config_changes, job_identity, job_key, latest_checkpoint

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}

# a narrow smoke run (d=256, so a checkpoint takes a visible moment to write), 2 dataloader workers,
# a checkpoint every 2 steps, 10 steps
BASE = ["experiment=smoke", "+model.teacher_config.n_embd=256", "+model.teacher_config.n_head=4",
        "decomp=64x32", "init=random", "data.num_workers=2",  # 64x32 is 67m: runs are named 67m-...
        "callbacks.checkpoint_last.every_n_train_steps=2", "trainer.enable_progress_bar=false"]
ARGS = BASE + ["trainer.max_steps=10", "trainer.val_check_interval=5"]


def command(args):
    return [sys.executable, "-m", "krony.run", *args]


def run(root: Path, args=ARGS, env=ENV, code: int = 0) -> subprocess.CompletedProcess:
    out = subprocess.run(command(args), cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == code, out.stderr[-3000:]
    return out


def run_and_kill(root: Path, when, args=ARGS, timeout: float = 300, sig=signal.SIGKILL, group: bool = True,
                 env=ENV) -> int:
    """Start the run and send `sig` to its whole process group (workers included, as a cluster
    does) or to the main process only, once `when()` is true; returns the exit code. SIGKILL
    ends it at once; a pre-emption signal lets it save and exit by itself."""
    proc = subprocess.Popen(command(args), cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    try:
        while not when():
            assert proc.poll() is None, "the run ended before the kill point"
            assert time.time() - t0 < timeout, "kill point never reached"
            time.sleep(0.002)
        (os.killpg if group else os.kill)(proc.pid, sig)
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_dirs(root: Path) -> list[Path]:
    return sorted((root / "logs" / "runs").glob("*/*"))


def job_dir(root: Path) -> Path:
    """The directory that holds the job's checkpoints and finished status."""
    dirs = [d for d in run_dirs(root) + [root / "fixed"] if (d / "job.json").exists()]
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
    with module_dir(tmp_path_factory, "reference") as root:
        run(root)
        d = job_dir(root)
        # retention: the newest 2 periodic checkpoints (of 5 written), last.ckpt linking the newest
        # (the smoke experiment keeps no best.ckpt: it validates once, at the end)
        names = sorted(p.name for p in (d / "checkpoints").iterdir())
        assert names == ["last.ckpt", "step00000008.ckpt", "step00000010.ckpt"]
        assert (d / "checkpoints" / "last.ckpt").resolve().name == "step00000010.ckpt"
        yield losses(d), weights(d)


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
    assert_newest_two_kept(d)  # the checkpoint the resume started from went too
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
    time.sleep(1.1)  # run directories are named to the second: the next start gets its own
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
    assert (second_sweep / "67m-random-r1" / "skipped.txt").exists()
    assert (second_sweep / "67m-random-r2" / "resumed.txt").exists()
    for job in ("67m-random-r1", "67m-random-r2"):
        status = json.loads((first_sweep / job / "job.json").read_text())
        assert status["status"] == "finished"
        assert torch.load(latest_checkpoint(first_sweep / job), weights_only=True)["global_step"] == 6


def test_job_identity_is_the_config_less_paths_logging_and_checkpoint_cadence():
    base = {"model": {"scheme": "81m", "factors": 1}, "optim": {"lr": 6e-5}, "seed": 1}
    ident = job_identity(base)
    assert ident == {"model.factors": 1, "model.scheme": "81m", "optim.lr": 6e-5, "seed": 1}
    bookkeeping = {**base, "paths": {"output_dir": "/x"}, "hydra": {"run": {"dir": "/y"}}, "resume": False,
                   "callbacks": {"checkpoint_last": {"every_n_train_steps": 7}}, "logger": {"csv": {}},
                   "trainer": {"enable_progress_bar": False, "log_every_n_steps": 3}}
    assert job_identity(bookkeeping) == ident and job_key(job_identity(bookkeeping)) == job_key(ident)
    changed = job_identity({**base, "optim": {"lr": 1e-4}})
    assert job_key(changed) != job_key(ident)
    assert config_changes(ident, changed) == "changed: optim.lr 6e-05 -> 0.0001"


# ------------------------------------------------------------------ pre-emption


def saved(root: Path, step_file: str = "step00000004.ckpt", delay: float = 0.1):
    """True `delay` seconds after `step_file` appears: the signal then lands in the next step
    (a step takes several tenths of a second here), not in the checkpoint's own step."""
    seen: list[float] = []

    def when() -> bool:
        if not seen and any(root.rglob(step_file)):
            seen.append(time.time())
        return bool(seen) and time.time() - seen[0] >= delay

    return when


def assert_interrupted(directory: Path, signal_name: str) -> int:
    status = json.loads((directory / "job.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == signal_name, status
    step = status["step"]
    assert latest_checkpoint(directory).name == f"step{step:08d}.ckpt"  # the step in progress, saved
    assert torch.load(latest_checkpoint(directory), weights_only=True)["global_step"] == step
    return step


def assert_newest_two_kept(directory: Path) -> None:
    """Retention: `save_top_k=2` periodic checkpoints and last.ckpt, after any number of resumes."""
    names = sorted(p.name for p in (directory / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step00000008.ckpt", "step00000010.ckpt"], names


def assert_each_step_logged_once(directory: Path) -> None:
    steps = []
    for events in sorted(directory.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(events))
        ea.Reload()
        steps += [e.step for e in ea.Scalars("train/loss")]
    assert sorted(steps) == list(range(10)), steps  # no step lost, none repeated


@pytest.mark.slow
def test_sigterm_to_the_whole_job_saves_the_step_in_progress_and_continues_exactly(tmp_path, reference):
    """As a cluster pre-empts: SIGTERM to every process of the job (dataloader workers included)
    at an arbitrary step, here the one after the periodic checkpoint of step 4."""
    code = run_and_kill(tmp_path, saved(tmp_path), sig=signal.SIGTERM, group=True)
    assert code == 128 + signal.SIGTERM
    (d,) = run_dirs(tmp_path)
    assert assert_interrupted(d, "SIGTERM") >= 5
    run(tmp_path)
    assert_same_as_reference(tmp_path, reference)
    assert_each_step_logged_once(d)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_saves_the_step_and_continues_exactly(tmp_path, reference):
    """Ctrl-C in a terminal: SIGINT to every process of the group. The step in progress is
    saved, the job marked interrupted with the line saying how to continue, exit 130."""
    proc = subprocess.Popen(command(ARGS), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    when = saved(tmp_path)
    while not when():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in out + err, err[-3000:]
    assert "interrupted by SIGINT at step" in out + err and "start the same command again to continue from there" in out + err
    (d,) = run_dirs(tmp_path)
    assert assert_interrupted(d, "SIGINT") >= 5
    run(tmp_path)
    assert_same_as_reference(tmp_path, reference)
    assert_newest_two_kept(d)
    assert_each_step_logged_once(d)


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once_leaving_the_checkpoint_before(tmp_path):
    inject = ["+callbacks.signal._target_=signal_helpers.SendSignal", "+callbacks.signal.step=5",
              "+callbacks.signal.name=SIGINT", "+callbacks.twice._target_=signal_helpers.SendSignal",
              "+callbacks.twice.step=5", "+callbacks.twice.name=SIGINT"]
    out = run(tmp_path, ARGS + inject, code=130)
    assert "aborted by a second Ctrl-C at step 5, the step in progress not saved" in out.stdout + out.stderr
    (d,) = run_dirs(tmp_path)
    status = json.loads((d / "job.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGINT"
    assert latest_checkpoint(d).name == "step00000004.ckpt"  # the one saved before, not step 5: a start
    assert status["checkpoint"] == str(latest_checkpoint(d))  # again continues there, as after a SIGKILL


@pytest.mark.slow
def test_sigterm_during_validation_saves_that_step(tmp_path, reference):
    """The signal arrives after the step's checkpoint hook, during validation: Lightning stops
    there, and the step is saved on the way out."""
    inject = ["+callbacks.signal._target_=signal_helpers.SendSignal", "+callbacks.signal.step=5",
              "+callbacks.signal.hook=on_validation_start"]
    run(tmp_path, ARGS + inject, code=128 + signal.SIGTERM)
    (d,) = run_dirs(tmp_path)
    assert assert_interrupted(d, "SIGTERM") == 5
    run(tmp_path)
    assert_same_as_reference(tmp_path, reference)


def fake_scontrol(directory: Path) -> Path:
    """An `scontrol` that records its arguments, first on PATH."""
    directory.mkdir()
    script = directory / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {directory}/calls\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return directory


@pytest.mark.slow
def test_fixed_run_dir_preempted_under_slurm_requeues_and_continues_in_place(tmp_path, reference):
    """A SLURM job with a fixed run directory gets SIGUSR1 (SLURM's warning before the time
    limit, Lightning's requeue signal): it saves, asks SLURM to requeue it, and the requeued
    job (the same command) continues in the same directory."""
    bin_dir = fake_scontrol(tmp_path / "bin")
    slurm = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1",
             "SLURM_JOB_NAME": "krony", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0"}
    fixed = ARGS + [f"hydra.run.dir={tmp_path / 'fixed'}"]
    code = run_and_kill(tmp_path, saved(tmp_path / "fixed"), fixed, sig=signal.SIGUSR1, group=False, env=slurm)
    assert code == 128 + signal.SIGUSR1
    assert assert_interrupted(tmp_path / "fixed", "SIGUSR1") >= 5
    assert (bin_dir / "calls").read_text().split() == ["requeue", "4242"]
    run(tmp_path, fixed, env=slurm)
    d = assert_same_as_reference(tmp_path, reference)
    assert d == tmp_path / "fixed" and not (tmp_path / "logs" / "runs").exists()


@pytest.mark.slow
def test_fixed_run_dir_killed_continues_in_place(tmp_path, reference):
    fixed = ARGS + [f"paths.output_dir={tmp_path / 'fixed'}"]
    run_and_kill(tmp_path, saved(tmp_path / "fixed"), fixed)
    run(tmp_path, fixed)
    assert assert_same_as_reference(tmp_path, reference) == tmp_path / "fixed"


# ------------------------------------------------------------------ identity: the resolved config


SHORT = ["experiment=smoke", "+model.teacher_config.n_embd=128", "+model.teacher_config.n_head=2", "decomp=64x32", "init=random", "data.num_workers=0", "trainer.max_steps=1", "trainer.val_check_interval=1",
         "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_an_edited_yaml_is_a_new_job_and_is_never_resumed_from_the_old_one(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(TESTS.parent / "conf", conf)
    env = {**ENV, "KRONY_CONF": str(conf)}
    run(tmp_path, SHORT, env=env)
    again = run(tmp_path, SHORT, env=env)
    assert "already finished" in again.stdout + again.stderr  # unchanged: skipped
    constant = conf / "optim" / "constant.yaml"
    set_lr = lambda old, new: constant.write_text(constant.read_text().replace(f"\nlr: {old}", f"\nlr: {new}"))  # noqa: E731
    set_lr("6.0e-5", "1.0e-4")
    edited = run(tmp_path, SHORT, env=env)
    log = edited.stdout + edited.stderr
    assert "already finished" not in log
    assert "had another config (changed: optim.lr 6e-05 -> 0.0001): not resumed, training afresh" in log
    statuses = [json.loads((d / "job.json").read_text()) for d in run_dirs(tmp_path) if (d / "job.json").exists()]
    assert [s["status"] for s in statuses] == ["finished", "finished"] and statuses[0]["key"] != statuses[1]["key"]
    # the same edit in a fixed directory that holds the old run's checkpoints: refused, in one line
    fixed = [f"hydra.run.dir={tmp_path / 'fixed'}"]
    set_lr("1.0e-4", "3.0e-4")
    run(tmp_path, SHORT + fixed, env=env)
    set_lr("3.0e-4", "2.0e-4")
    refused = run(tmp_path, SHORT + fixed, env=env, code=1)
    assert "holds checkpoints of a run with another config (changed: optim.lr 0.0003 -> 0.0002); it is not resumed" in refused.stderr
    run(tmp_path, SHORT + fixed + ["resume=false"], env=env)  # ... unless asked: the old checkpoints are moved aside
    assert len(list((tmp_path / "fixed").glob("checkpoints.replaced-*"))) == 1
