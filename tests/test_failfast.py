"""Fail fast, in one line, before any heavy work: a bad config, a missing GPU, an unreachable hub,
a dataset that is not cached, damaged checkpoints and weights, bad data files. And `--help`."""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ENV, make_cfg
from conftest import krony_run as run_command

from krony.fileio import InvalidFile, torch_load
from krony.validate import ConfigError, validate

def krony_run(args, cwd, env=ENV, timeout=300):
    """The command's output and the seconds it took."""
    t0 = time.perf_counter()
    out = run_command(args, cwd, env, timeout)
    return out, time.perf_counter() - t0


def failure_line(out: subprocess.CompletedProcess) -> str:
    """The one-line error of a command: the check before any job starts (exit 2, `error: ...`, no
    directory written), or the failed job's line of the command's summary (exit 1)."""
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    if out.returncode == 2:
        assert lines[-1].startswith("error: "), out.stderr[-2000:]
        return lines[-1]
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert lines[-2] == "1 job(s) failed:", out.stderr[-2000:]
    return lines[-1]


def test_a_bad_config_and_help_answer_in_under_3_seconds(tmp_path):
    out, seconds = krony_run(["experiment=smoke", "model.factors=0"], tmp_path)
    assert failure_line(out) == "error: model.factors=0: the number of Kronecker factors must be an integer >= 1"
    assert seconds < 3, f"a config error took {seconds:.1f} s"
    assert not (tmp_path / "logs").exists()  # refused before Hydra made a run directory
    out, seconds = krony_run(["--help"], tmp_path)
    assert out.returncode == 0 and seconds < 3, f"--help took {seconds:.1f} s"
    # options with the comments of their YAML files
    assert "factors: 1                  # Kronecker products per matrix (r)" in out.stdout
    assert "init        initialisation of the factors (vanloan: each structure's optimal projection)" in out.stdout
    assert "structure   factored structure at the decomp's budget: kronecker | lowrank | monarch" in out.stdout
    assert "prune prune_fill random [vanloan] vanloan_authors vanloan_norm" in out.stdout
    out, _ = krony_run(["--help", "init"], tmp_path)
    assert "init=prune_fill" in out.stdout and "fill: 0.1                 # value of B's other entries" in out.stdout


def test_the_entry_point_imports_neither_torch_nor_lightning():
    code = "import sys, krony.run; bad = [m for m in ('torch', 'lightning') if m in sys.modules]; sys.exit(str(bad) if bad else 0)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_a_gpu_names_trainer_cpu(tmp_path):
    out, seconds = krony_run(["experiment=smoke", "trainer=gpu"], tmp_path)
    line = failure_line(out)
    assert "trainer.accelerator='gpu': this machine has no GPU" in line and "trainer=cpu" in line
    assert seconds < 10  # before the teacher, the compression or the data


class SilentServer:
    """A TCP server that accepts connections and never answers: a hub behind a dead network."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return


def online_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    """HF_HUB_OFFLINE unset, an empty cache, and a hub endpoint on this machine."""
    env = {k: v for k, v in ENV.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return {**env, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": endpoint, "KRONY_HUB_TIMEOUT": "1"}


@pytest.mark.parametrize("hub", ["silent", "closed"])
def test_an_unreachable_hub_is_asked_once_with_a_short_timeout(tmp_path, hub):
    if hub == "silent":
        server = SilentServer()
        endpoint = f"http://127.0.0.1:{server.port}"
    else:  # nothing listens there: connection refused at once
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        s.close()
    out, seconds = krony_run(["trainer=cpu", "data=local"], tmp_path, env=online_env(tmp_path, endpoint))
    line = failure_line(out)
    assert f"model.teacher='gpt2': the hub is unreachable: {endpoint} could not be reached" in line
    assert "model.teacher=/path/to/dir" in line and "experiment=smoke" in line
    assert "Retrying" not in out.stdout + out.stderr  # no retry storm from the hub libraries
    assert seconds < 8, f"{seconds:.1f} s"


def saved_tiny_teacher(directory: Path) -> Path:
    from krony import GPT, GPTConfig

    torch.manual_seed(0)
    GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=64)).save_pretrained(directory)
    return directory


def test_a_hub_dataset_that_is_not_cached_is_one_line_from_the_main_process(tmp_path):
    teacher = saved_tiny_teacher(tmp_path / "teacher")
    env = {**ENV, "HF_HOME": str(tmp_path / "hf")}
    out, seconds = krony_run(["trainer=cpu", f"model.teacher={teacher}", "decomp=64x16", "context=32"],
                             tmp_path, env=env)
    line = failure_line(out)
    assert "data.source.path='Skylion007/openwebtext': hub dataset 'Skylion007/openwebtext' at revision 79d93d7" in line
    assert "hf download --repo-type dataset Skylion007/openwebtext --revision 79d93d7" in line
    assert "DataLoader worker" not in out.stdout + out.stderr and seconds < 30


def test_a_damaged_checkpoint_is_named_and_never_unpickled(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 this is not a complete zip archive")
    out, _ = krony_run(["experiment=smoke", f"ckpt_path={bad}"], tmp_path)
    line = failure_line(out)
    assert f"{bad} is not a valid checkpoint:" in line
    assert "weights_only" not in out.stdout + out.stderr


@pytest.mark.slow
def test_a_damaged_checkpoint_found_by_resume_is_named_with_the_way_out(tmp_path):
    run_dir = tmp_path / "fixed"
    args = ["experiment=smoke", "+model.teacher_config.n_embd=128", "+model.teacher_config.n_head=2", "decomp=64x32", "trainer.max_steps=1", "trainer.val_check_interval=1", "trainer.limit_val_batches=1",
            f"hydra.run.dir={run_dir}"]
    out, _ = krony_run(args, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    job = run_dir / "job.json"
    job.write_text(job.read_text().replace('"finished"', '"interrupted"'))  # as if pre-empted at its last step
    ckpt = (run_dir / "checkpoints" / "last.ckpt").resolve()
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # cut short (a full disk, a copy interrupted)
    out, _ = krony_run(args, tmp_path)
    line = failure_line(out)
    assert f"{ckpt} is not a valid checkpoint:" in line and "ckpt_path=..., or train afresh with resume=false" in line


class NotATensor:
    pass


def test_files_with_pickled_objects_or_damage_are_refused_in_one_line(tmp_path):
    from krony import GPT

    pickled = tmp_path / "model.bin"
    torch.save({"w": NotATensor()}, pickled)
    with pytest.raises(InvalidFile) as info:
        GPT.from_pretrained(pickled)
    message = str(info.value)
    assert message.startswith(f"{pickled} is not a valid weights file: it holds pickled Python objects")
    assert "weights_only" not in message and "\n" not in message
    teacher = saved_tiny_teacher(tmp_path / "teacher")
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as by a full disk
    with pytest.raises(InvalidFile, match=f"{weights} is not a valid weights file"):
        GPT.from_pretrained(teacher)
    other = saved_tiny_teacher(tmp_path / "other")
    (other / "config.json").write_text("{not json")
    with pytest.raises(InvalidFile, match="config.json is not a valid config.json"):
        GPT.from_pretrained(other)
    with pytest.raises(InvalidFile, match="is not a valid checkpoint"):
        torch_load(pickled)


@pytest.mark.parametrize("layers,hint", [(1, "give all, odd, even or a list"), ("some", "give all, odd, even"),
                                         ([0, 12], "block indices must be 0 to 1: the teacher has 2 blocks")])
def test_model_layers_of_a_wrong_type_or_range(tmp_path, layers, hint):
    cfg = make_cfg(tmp_path, [f"model.layers={layers}".replace(" ", "")])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.key == "model.layers" and hint in str(info.value)


def data_error(tmp_path, files, builder="text") -> str:
    listed = ",".join(str(f) for f in files)
    cfg = make_cfg(tmp_path, ["data=local", f"data.source.path={builder}", f"data.source.data_files=[{listed}]"])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.key == "data.source.data_files" and "\n" not in str(info.value)
    return str(info.value)


def test_empty_binary_and_misformatted_data_files_are_named(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Some text.\n\nMore text.\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    assert f"{empty} is empty" in data_error(tmp_path, [good, empty])
    assert f"{blank} holds only whitespace" in data_error(tmp_path, [blank])
    assert f"{binary} is not text: binary data (a NUL byte at offset 8)" in data_error(tmp_path, [good, binary])
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"body": "text without the text field"}\n')
    assert f"{jsonl} is not JSON lines with a 'text' field" in data_error(tmp_path, [jsonl], "json")
    fake = tmp_path / "docs.parquet"
    fake.write_text("text pretending to be parquet")
    assert f"{fake} is not a parquet file" in data_error(tmp_path, [fake], "parquet")
    # the good file alone is fine, once it is not all held out for validation
    validate(make_cfg(tmp_path, ["data=local", f"data.source.data_files=[{good}]", "data.val_documents=1"]))


def test_fused_adamw_with_fp16_and_clipping_is_refused(tmp_path):
    cfg = make_cfg(tmp_path, ["optim.fused=true", "trainer.precision=16-mixed"])
    with pytest.raises(ConfigError, match="optim.fused=True: a fused AdamW unscales fp16 gradients inside its step"):
        validate(cfg)
