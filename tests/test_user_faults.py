"""What a new user met, reproduced the way they met it: two starts of one job at once, a full
disk, job identity under another spelling, typos, bad data files, a noisy console, a model card
that claimed too much, a compressed export without its config.json, and the evaluation files.
(Ctrl-C and checkpoint retention after a resume are in tests/test_resume.py, beside the other
signals; the console of the README's sweep in tests/test_run.py.)"""

import contextlib
import errno
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ENV, krony_run

from krony.fileio import DiskFull, atomic_write, write_text
from krony.train.lock import JobLock, JobRunning, holder_of, identity_lock_path, running_holder

# a narrow smoke run: d=128, two blocks, a handful of steps
SMALL = ["experiment=smoke", "+model.teacher_config.n_embd=128", "+model.teacher_config.n_head=2", "decomp=64x32",
         "init=random", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1"]


def start(args, cwd, env=ENV) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "krony.run", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def statuses(root: Path) -> dict[Path, str]:
    return {p.parent: json.loads(p.read_text())["status"] for p in (root / "logs").rglob("job.json")}


def one_line_error(out: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line of a command refused before any job (exit 2)."""
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


# ------------------------------------------------------------------ 1. one process per job


def test_a_live_lock_names_its_holder_and_a_stale_one_is_taken_over(tmp_path, monkeypatch):
    path = tmp_path / "locks" / "k.lock"
    mine = JobLock("81m-vanloan-r1", "k")
    mine.acquire(path, tmp_path / "run")
    with pytest.raises(JobRunning) as info:  # a second holder of the same job, this host, live pid
        JobLock("81m-vanloan-r1", "k").acquire(path, tmp_path / "other")
    line = str(info.value)
    host, since = socket.gethostname(), time.strftime("%H:%M")
    assert line == f"81m-vanloan-r1 is already running (pid {os.getpid()} on {host}, since {since}) in {tmp_path / 'run'}"
    mine.release()
    assert not path.exists() and holder_of(path) is None

    # a holder killed by SIGKILL: its pid is gone, the lock is stale and taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "host": host, "since": time.time(), "run_name": "x",
                                "directory": "d", "key": "k", "token": "t"}))
    assert holder_of(path) is None
    JobLock("x", "k").acquire(path, tmp_path / "run")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    path.unlink()

    # another host: live while its heartbeat is fresh, stale after KRONY_LOCK_STALE_S
    path.write_text(json.dumps({"pid": 1, "host": "node-17", "since": time.time(), "run_name": "x",
                                "directory": "d", "key": "k", "token": "t"}))
    assert holder_of(path).host == "node-17"
    monkeypatch.setenv("KRONY_LOCK_STALE_S", "1")
    old = time.time() - 5
    os.utime(path, (old, old))
    assert holder_of(path) is None


@pytest.mark.slow
def test_two_identical_commands_started_together_train_the_job_once(tmp_path):
    args = SMALL + ["trainer.max_steps=6", "trainer.val_check_interval=6"]
    first, second = start(args, tmp_path), start(args, tmp_path)
    outs = [p.communicate(timeout=600) + (p.returncode,) for p in (first, second)]
    codes = sorted(code for *_, code in outs)
    assert codes == [0, 1], outs
    refused = next(err for _, err, code in outs if code == 1)
    line = refused.strip().splitlines()[-1]
    assert line.startswith("67m-random-r1 is already running (pid ") and f" on {socket.gethostname()}, since " in line
    assert "Traceback" not in refused
    assert list(statuses(tmp_path).values()) == ["finished"]  # one directory trained, one job.json
    (trained,) = statuses(tmp_path)
    assert line.endswith(f") in {trained}")
    assert len(list(trained.glob("events.out.tfevents.*"))) == 1 and not (trained / "error.txt").exists()
    assert not any((tmp_path / "logs").rglob("*.lock"))  # released at exit


@pytest.mark.slow
def test_a_second_job_in_a_running_jobs_fixed_directory_is_refused(tmp_path):
    fixed = tmp_path / "fixed"
    first = start(SMALL + ["trainer.max_steps=8", "trainer.val_check_interval=8", f"hydra.run.dir={fixed}"], tmp_path)
    deadline = time.time() + 300
    while not (fixed / "job.lock").exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    for other in (SMALL + ["trainer.max_steps=8", "trainer.val_check_interval=8"],  # the same job
                  SMALL + ["trainer.max_steps=8", "trainer.val_check_interval=8", "seed=7"]):  # another config
        out = krony_run(other + [f"hydra.run.dir={fixed}"], tmp_path)
        assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].endswith(f") in {fixed}"), out.stderr
        assert "is already running (pid " in out.stderr and "Traceback" not in out.stderr
    assert first.wait(timeout=600) == 0, first.communicate()
    assert json.loads((fixed / "job.json").read_text())["status"] == "finished"
    assert not (fixed / "error.txt").exists() and len(list(fixed.glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_a_sweep_skips_a_job_another_process_is_running(tmp_path):
    from krony.run import CONF_DIR
    from krony.run_check import compose_job
    from krony.train.resume import job_identity, job_key

    from omegaconf import OmegaConf

    jobs = SMALL + ["trainer.max_steps=2", "trainer.val_check_interval=2", f"paths.root_dir={tmp_path}"]
    cfg = compose_job(CONF_DIR, jobs + ["model.factors=2"])
    key = job_key(job_identity(OmegaConf.to_container(cfg, resolve=True)))
    elsewhere = tmp_path / "elsewhere"
    with JobLock("67m-random-r2", key) as held:  # this test process "runs" the r2 job
        held.acquire(identity_lock_path(tmp_path / "logs", key), elsewhere)
        assert running_holder(tmp_path / "logs", key) is not None
        out = krony_run(["-m", *jobs, "model.factors=1,2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = next((tmp_path / "logs" / "sweeps").iterdir())
    assert json.loads((sweep / "67m-random-r1" / "job.json").read_text())["status"] == "finished"
    assert (sweep / "67m-random-r2" / "running.txt").read_text() == f"running in {elsewhere}\n"
    assert not (sweep / "67m-random-r2" / "job.json").exists()
    assert "67m-random-r2 is already running" in out.stdout + out.stderr and "skipped" in out.stdout + out.stderr


# ------------------------------------------------------------------ 2. a full disk


def test_a_write_that_finds_the_disk_full_leaves_no_partial_file(tmp_path):
    target = tmp_path / "step00000004.ckpt"
    target.write_bytes(b"previous")
    (tmp_path / "step00000004.ckpt.tmp").symlink_to("/dev/full")  # every write to it: ENOSPC

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"x" * (1 << 20))
            f.flush()

    with pytest.raises(DiskFull) as info:
        atomic_write(target, write)
    assert info.value.errno == errno.ENOSPC and str(info.value).startswith(f"disk full: could not write {target} (")
    assert "GB free in" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "step00000004.ckpt.tmp").exists() and target.read_bytes() == b"previous"


@contextlib.contextmanager
def small_disk(tmp_path: Path, megabytes: int):
    """A filesystem of `megabytes`: a tmpfs when this process may mount one (root), else None."""
    mount = tmp_path / "disk"
    mount.mkdir()
    ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)],
                                              capture_output=True).returncode == 0
    try:
        yield mount if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


INJECT_ENOSPC = '''
import errno, os
import krony.train.lightning_io as io
real = io._save
def _save(checkpoint, path):
    if os.path.basename(path).startswith(os.environ["KRONY_TEST_FAIL_AT"]):
        with open(path, "wb") as f:
            f.write(b"x" * (1 << 20))  # the part that fit
        raise OSError(errno.ENOSPC, "No space left on device")
    real(checkpoint, path)
io._save = _save
'''


@pytest.mark.slow
def test_a_full_disk_refuses_the_start_then_fails_one_save_cleanly(tmp_path):
    # d=128: a training checkpoint takes 81 MB; three of them (two kept + the next) need 0.24 GB
    args = ["experiment=smoke", "+model.teacher_config.n_embd=128", "+model.teacher_config.n_head=2", "decomp=64x32",
            "init=random", "callbacks.checkpoint_last.every_n_train_steps=2", "trainer.enable_progress_bar=false",
            "trainer.max_steps=6", "trainer.val_check_interval=6", "trainer.limit_val_batches=1"]
    with small_disk(tmp_path, 120) as disk:
        env = dict(ENV)
        if disk is None:  # not root: the same fault, injected at the save of step 4
            hook = tmp_path / "hook"
            hook.mkdir()
            (hook / "sitecustomize.py").write_text(INJECT_ENOSPC)
            env.update(PYTHONPATH=os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]),
                       KRONY_TEST_FAIL_AT="step00000004")
        run_dir = (disk or tmp_path) / "fixed"
        if disk is not None:
            out = krony_run(args + [f"hydra.run.dir={run_dir}"], tmp_path, env=env)
            assert out.returncode == 1 and "Traceback" not in out.stderr
            line = out.stderr.strip().splitlines()[-1]
            assert "not enough disk: the checkpoints need 0.24 GB more" in line and "check_disk=false" in line
            assert not (run_dir / "checkpoints").exists()
        out = krony_run(args + [f"hydra.run.dir={run_dir}", "check_disk=false"], tmp_path, env=env)
        assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
        line = out.stderr.strip().splitlines()[-1]
        assert f"disk full: could not write {run_dir}/checkpoints/step00000004.ckpt (" in line
        assert "GB free in" in line and "start the same command again to continue" in line
        names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        assert names == ["last.ckpt", "step00000002.ckpt"]  # no partial file; the previous checkpoint kept
        assert json.loads((run_dir / "job.json").read_text())["status"] == "failed"
        assert "DiskFull" in (run_dir / "error.txt").read_text()


# ------------------------------------------------------------------ 3. job identity: canonical values


def test_a_scheme_or_teacher_spelled_another_way_is_the_same_job():
    from krony.train.resume import job_identity, job_key

    def key(decomp, teacher="gpt2"):
        return job_key(job_identity({"decomp": decomp, "model": {"scheme": decomp, "teacher": teacher}, "seed": 1}))

    assert key("81m") == key("81M") == key("768x768") == key("81m", "openai-community/gpt2")
    assert key("81m") != key("96m") and key("81m") != key("81m", "gpt2-medium")


@pytest.mark.slow
def test_decomp_81M_and_768x768_after_81m_are_skipped_as_finished(tmp_path):
    args = ["experiment=smoke", "+model.teacher_config.n_embd=768", "trainer.max_steps=1", "trainer.val_check_interval=1",
            "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "callbacks.checkpoint_last.save_top_k=1"]
    assert krony_run(args + ["decomp=81m"], tmp_path).returncode == 0
    for spelling in ("81M", "768x768"):
        out = krony_run(args + [f"decomp={spelling}"], tmp_path)
        assert out.returncode == 0 and "already finished" in out.stdout + out.stderr, out.stderr[-2000:]
        assert "changed:" not in out.stdout + out.stderr
    assert list(statuses(tmp_path).values()) == ["finished"]


# ------------------------------------------------------------------ 6. bad data files, before anything heavy


def test_binary_single_document_and_latin1_files_are_named_in_a_second(tmp_path):
    rng = random.Random(0)
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(rng.randrange(1, 256) for _ in range(200_000)))  # no NUL byte anywhere
    one_doc = tmp_path / "book.txt"
    one_doc.write_text(("lorem ipsum dolor sit amet " * 4000 + "\n") * 100)  # 11 MB, no blank line: one paragraph
    latin = tmp_path / "notes.txt"
    latin.write_bytes("Café crème à la façade.\n\nDeuxième paragraphe, très élégant.\n".encode("latin-1"))
    cases = {
        binary: f"{binary} is not text: its first 64 KB are",
        one_doc: f"data.val_documents=100: {one_doc} holds 1 document(s) (sample_by=paragraph: blank-line separated), "
                 "all held out for validation, so nothing is left to train on; lower data.val_documents, or hold out "
                 "a share of the text instead with data.val_fraction=0.01",
        latin: f"{latin} is not UTF-8: 8 invalid byte(s) in its first 1 KB, the first 0xe9 at offset 3 (Latin-1 or "
               "Windows-1252 text?); read it with data.source.encoding=latin-1",
    }
    for path, expected in cases.items():
        t0 = time.perf_counter()
        out = krony_run(["experiment=smoke", f"data.source.data_files=[{path}]"], tmp_path)
        assert expected in one_line_error(out)
        assert time.perf_counter() - t0 < 5, path  # before the teacher, the compression or the data
    assert not (tmp_path / "logs").exists()
    # Latin-1 read as such, two paragraphs: now the split is what is wrong
    out = krony_run(["experiment=smoke", f"data.source.data_files=[{latin}]", "data.source.encoding=latin-1"], tmp_path)
    assert f"{latin} holds 2 document(s)" in one_line_error(out)


@pytest.mark.slow
def test_a_one_document_corpus_trains_with_a_share_held_out(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text(" ".join(f"word{i % 977} and more" for i in range(60_000)) + "\n")
    out = krony_run(SMALL + ["trainer.max_steps=2", "trainer.val_check_interval=2", f"data.source.data_files=[{book}]",
                             "data.val_fraction=0.05"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = statuses(tmp_path)
    assert json.loads((run / "summary.json").read_text())["metrics"]["hp/final_val_loss"] > 0


# ------------------------------------------------------------------ 7 and 9. typos: one line, no directory left behind


@pytest.mark.parametrize("args,expected", [
    (["init=vanlon"], "error: init=vanlon: no such option (did you mean vanloan?); the options of init are prune, "
                      "prune_fill, random, vanloan, vanloan_authors, vanloan_norm (python -m krony.run --help init)"),
    (["experiment=smok"], "error: experiment=smok: no such option (did you mean smoke?)"),
    (["-m", "experiment=smoke", "init=vanloan,prnue"], "error: init=prnue: no such option (did you mean prune?)"),
    (["experiment=smoke", "model.factor=2"], "error: model.factor=2: unknown key (did you mean model.factors?); "
                                             "the keys under model are"),
    (["experiment=smoke", "decomp=81"], "error: decomp=81: must be a string, a scheme name, A dims or an FFN fraction "
                                        "such as 81m, 768x768 or ffn50 (did you mean 81m?)"),
    (["experiment=smoke", "decomp=Eighty"], "error: decomp='Eighty': unknown scheme 'Eighty'"),
])
def test_typos_are_one_krony_line_with_the_closest_option_and_leave_no_directory(tmp_path, args, expected):
    t0 = time.perf_counter()
    out = krony_run(args, tmp_path)
    assert one_line_error(out).startswith(expected)
    assert time.perf_counter() - t0 < 3 and not (tmp_path / "logs").exists()


@contextlib.contextmanager
def read_only_dir(tmp_path: Path):
    """A directory this process cannot write: mode 0555, or for root a read-only tmpfs."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("root without permission to mount a read-only filesystem")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_read_only_krony_root_is_one_line(tmp_path):
    with read_only_dir(tmp_path) as ro:
        out = krony_run(["experiment=smoke"], tmp_path, env={**ENV, "KRONY_ROOT": str(ro)})
        line = one_line_error(out)
    assert line.startswith(f"error: KRONY_ROOT={ro}: cannot write in {ro} (")
    assert "point KRONY_ROOT (or paths.root_dir=...) at a writable directory" in line


# ------------------------------------------------------------------ 10. the model card claims what happened


def run_dir(tmp_path: Path, model, identity: dict, results: dict | None = None) -> Path:
    run = tmp_path / "run"
    model.save_pretrained(run / "export")
    write_text(run / "job.json", json.dumps({"status": "finished", "identity": identity, "overrides": []}))
    write_text(run / "summary.json", json.dumps({"hparams": {"scheme": "32x16"}, "steps": 4, "tokens": 1024}))
    if results is not None:
        write_text(run / "results.json", json.dumps(results))
    return run


SMOKE_IDENTITY = {"model.teacher": None, "model.teacher_config.preset": "gpt2", "model.teacher_config.n_layer": 2,
                  "data.mode": "stream", "data.source.path": "text",
                  "data.source.data_files": ["/somewhere/krony/data/samples/openwebtext_sample.txt"]}


def test_a_smoke_run_is_refused_and_with_the_flag_its_card_claims_nothing_it_did_not_do(tmp_path, capsys):
    from huggingface_hub import ModelCard

    from krony import GPT, GPTConfig, compress
    from krony.__main__ import main as krony_main

    torch.manual_seed(0)
    model = compress(GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=1000, block_size=64)), (32, 16))
    cut = {"protocol": "paper", "context": 64, "max_tokens": 4096,
           "results": {"wikitext103": {"ppl": 900.5, "tokens": 4096, "source": {"hub": "wikitext", "config": "wikitext-103-v1"}}}}
    run = run_dir(tmp_path, model, SMOKE_IDENTITY, cut)
    assert krony_main(["publish", str(run), "--repo", "me/smoke", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "trained from a random teacher (a smoke run)" in err and "--allow-random-teacher" in err
    assert len(err.strip().splitlines()) == 1
    out = tmp_path / "pub"
    assert krony_main(["publish", str(run), "--repo", "me/smoke", "--dry-run", "--allow-random-teacher",
                       "--out", str(out)]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and card.data.datasets is None  # no hub teacher, no hub dataset
    assert card.data.eval_results is None  # 4,096 tokens are no test-set result
    assert "random-weights" in card.data.tags and "A test artefact, not a language model" in card.text
    assert "training data: local files: openwebtext_sample.txt" in card.text
    assert "on the first 4,096 tokens of each set only" in card.text


def test_a_hub_run_card_names_its_teacher_data_and_whole_test_sets(tmp_path):
    from huggingface_hub import ModelCard

    from krony import GPT, GPTConfig, compress
    from krony.publish import prepare

    torch.manual_seed(0)
    model = compress(GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=1000, block_size=64)), (32, 16))
    identity = {"model.teacher": "openai-community/gpt2", "data.mode": "stream", "data.source.path": "Skylion007/openwebtext",
                "data.source.revision": "79d93d786212f7344586290adb811d4ae6a1762c"}
    whole = {"protocol": "paper", "context": 1024, "max_tokens": None,
             "results": {"wikitext2": {"ppl": 31.25, "tokens": 287644, "source": {"hub": "wikitext", "config": "wikitext-2-v1"}}}}
    card = ModelCard.load(prepare(run_dir(tmp_path, model, identity, whole), "me/k", tmp_path / "pub") / "README.md")
    assert card.data.base_model == "openai-community/gpt2" and card.data.datasets == ["Skylion007/openwebtext"]
    assert [(r.dataset_name, r.metric_value) for r in card.data.eval_results] == [("WikiText-2", 31.25)]
    assert "- teacher: [openai-community/gpt2]" in card.text and "revision 79d93d7" in card.text


# ------------------------------------------------------------------ 11. the README's other commands


def test_a_compressed_export_without_config_json_says_so(tmp_path):
    from krony import GPT, GPTConfig, compress

    torch.manual_seed(0)
    folder = compress(GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=1000, block_size=64)),
                      (32, 16)).save_pretrained(tmp_path / "export")
    (folder / "config.json").unlink()
    with pytest.raises(ValueError) as info:
        GPT.from_pretrained(folder)
    message = str(info.value)
    assert message.startswith(f"config.json is missing beside {folder / 'model.safetensors'}: ")
    assert "copy config.json from the folder the model was saved in" in message and "\n" not in message


@pytest.mark.slow
def test_fetch_eval_writes_the_files_data_dir_reads(tmp_path):
    from hubcache import put_eval_datasets

    from krony.eval.data import load_rows
    from krony.eval.harness import LOCAL_TASKS

    cache = tmp_path / "hf" / "hub"
    put_eval_datasets(cache)
    env = {**ENV, "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(Path(__file__).parent)}
    out = subprocess.run([sys.executable, "-m", "krony.data", "fetch-eval", "--out", str(tmp_path / "eval")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "evaluate with data_dir=" in out.stdout
    for task_file in LOCAL_TASKS.values():
        assert (tmp_path / "eval" / task_file.format(split="test")).is_file()
    code = ("import sys; from krony.eval.data import load_rows; "
            "print(all(load_rows(d, 'test', sys.argv[1]).rows == load_rows(d, 'test').rows "
            "for d in ('wikitext103', 'wikitext2', 'lambada')))")
    same = subprocess.run([sys.executable, "-c", code, str(tmp_path / "eval")], env=env, capture_output=True, text=True)
    assert same.stdout.strip() == "True", same.stderr[-2000:]
    assert load_rows("lambada", "test", tmp_path / "eval").rows
