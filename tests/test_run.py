"""`python -m krony.run` end to end, offline on CPU: the smoke sweep, failing jobs, DDP."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tensorboard.plugins.hparams import metadata as hp_metadata

from conftest import ENV, events, krony_run, module_dir
from krony import GPT, kronecker_layers

@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory) -> Path:
    """The README's offline sweep, run once for the tests that read it: exactly the command."""
    with module_dir(tmp_path_factory, "sweep") as root:
        out = krony_run(["-m", "decomp=67m,81m,96m", "init=vanloan,prune", "experiment=smoke"], root)
        assert out.returncode == 0, out.stderr[-3000:]
        (root / "console.txt").write_text(out.stdout + out.stderr)  # what the user saw
        yield root


@pytest.mark.slow
def test_the_sweep_prints_each_line_once_without_tips_warnings_or_epoch_minus_two(smoke_sweep):
    text = (smoke_sweep / "console.txt").read_text()
    for noise in ("Tip:", "_pytree", "LeafSpec", "Epoch 0/-2", "fontManager", "documents longer than one block"):
        assert noise not in text, noise
    lines = text.splitlines()
    assert not [line for line in lines if line.startswith("INFO: ")], "Lightning's own console handler"
    for message in ("Seed set to 1337", "GPU available: False", "`Trainer.fit` stopped"):
        assert sum(message in line for line in lines) == 6, message  # once a job


@pytest.mark.slow
def test_smoke_sweep_six_jobs(smoke_sweep):
    sweeps = list((smoke_sweep / "logs" / "sweeps").iterdir())
    assert len(sweeps) == 1
    runs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert runs == sorted(f"{d}-{i}-r1" for d in ("67m", "81m", "96m") for i in ("vanloan", "prune"))
    for name in runs:
        run = sweeps[0] / name
        ea = events(run)
        tags = ea.Tags()["scalars"]
        for tag in ("train/loss", "train/ppl", "train/lr", "train/tokens", "train/tokens_per_sec", "train/flops_per_sec", "train/mfu", "val/loss", "val/ppl",
                    "model/params", "model/compression_ratio", "hp/best_val_loss"):
            assert tag in tags, (name, tag)
        assert len(ea.Scalars("train/loss")) == 4
        assert "_hparams_/session_start_info" in ea.summary_metadata  # the HParams tab entry
        ssi = hp_metadata.parse_session_start_info_plugin_data(ea.summary_metadata["_hparams_/session_start_info"].plugin_data.content)
        assert ssi.hparams["0_run"].string_value == name  # the run name, then scheme, structure, init, factors, scalars
        assert sorted(k for k in ssi.hparams if k[0].isdigit()) == ["0_run", "1_scheme", "2_structure", "3_init", "4_factors", "5_scalars"]
        # the smoke policy: one training checkpoint (step 4, last.ckpt links it) and the export; under 1 GB a job
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step00000004.ckpt"]
        written = sum(p.lstat().st_size for p in run.rglob("*") if p.is_file() or p.is_symlink())
        assert written < 1e9, f"{name} wrote {written / 1e9:.2f} GB"
        model = GPT.from_pretrained(run / "export")
        scheme = name.split("-")[0]
        layers = kronecker_layers(model)
        dims = {"67m": "64, 32", "81m": "768, 768", "96m": "1536, 768"}[scheme]
        assert len(layers) == 4 and f"A=({dims})" in repr(layers["transformer.h.0.mlp.c_fc"])
        summary = json.loads((run / "summary.json").read_text())
        assert summary["hparams"]["scheme"] == scheme and summary["hparams"]["init"] == name.split("-")[1]


@pytest.mark.slow
def test_report_of_the_sweep(smoke_sweep, tmp_path):
    sweep = next((smoke_sweep / "logs" / "sweeps").iterdir())
    out = subprocess.run([sys.executable, "-m", "krony.report", str(sweep), "--out", str(tmp_path)], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert report.count("-r1 |") == 6 and "| 81m-prune-r1 | 81m | kronecker | prune | 1 | False | 46,483,216 |" in report
    assert "Runs without an evaluation (no results.json or eval-paper.json): 67m-prune-r1," in report  # smoke: no eval
    for png in ("loss_vs_tokens.png", "ppl_vs_params.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    # the same sweep started again: every job is skipped, and the report of the new sweep
    # directory follows the skipped.txt pointers to the runs
    again = tmp_path / "again"
    rerun = krony_run(["-m", "decomp=67m,81m,96m", "init=vanloan,prune", "experiment=smoke", f"hydra.sweep.dir={again}"],
                      smoke_sweep)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(list(again.rglob("skipped.txt"))) == 6 and not list(again.rglob("events.out.tfevents.*"))
    out = subprocess.run([sys.executable, "-m", "krony.report", str(again), "--out", str(tmp_path / "r2")], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "r2" / "report.md").read_text().count("-r1 |") == 6


@pytest.mark.slow
def test_notebook_runs_on_the_sweep(smoke_sweep):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    sweep = next((smoke_sweep / "logs" / "sweeps").iterdir())
    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / "compare_sweep.ipynb", as_version=4)
    os.environ["KRONY_SWEEP"] = str(sweep)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    finally:
        del os.environ["KRONY_SWEEP"]
    outputs = "".join(str(o) for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "81m-vanloan-r1" in outputs and "image/png" in outputs


@pytest.mark.slow
def test_structures_sweep_at_one_budget(tmp_path):
    """Kronecker, low-rank and Monarch at the 67m budget, one command, offline."""
    out = krony_run(["-m", "structure=kronecker,lowrank,monarch", "decomp=67m", "experiment=smoke", "trainer.max_steps=1",
                     "trainer.val_check_interval=1", "trainer.limit_val_batches=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = next((tmp_path / "logs" / "sweeps").iterdir())
    kinds = {}
    for name in ("67m-vanloan-r1", "67m-lowrank-vanloan-r1", "67m-monarch-vanloan-r1"):
        model = GPT.from_pretrained(sweep / name / "export")
        kinds[name] = type(model.transformer.h[0].mlp.c_fc).__name__
    assert kinds == {"67m-vanloan-r1": "KroneckerLinear", "67m-lowrank-vanloan-r1": "LowRankLinear",
                     "67m-monarch-vanloan-r1": "MonarchLinear"}
    # each run records its structure, its size in every counting convention and its FLOPs per token
    metrics = {}
    for name in kinds:
        summary = json.loads((sweep / name / "summary.json").read_text())
        metrics[name] = summary["metrics"]
        assert summary["hparams"]["freeze"] == "none"
        assert summary["hparams"]["structure"] == {"KroneckerLinear": "kronecker", "LowRankLinear": "lowrank",
                                                   "MonarchLinear": "monarch"}[kinds[name]]
    params = [m["model/params"] for m in metrics.values()]
    assert max(params) / min(params) < 1.005  # one budget
    for m in metrics.values():
        assert m["model/params"] > m["model/params_no_output_embedding"] > m["model/params_non_embedding"] > 0
        assert m["model/flops_per_token"] > 0
    assert len({m["model/flops_per_token"] for m in metrics.values()}) == 3  # equal parameters, unequal cost


@pytest.mark.slow
def test_nested_training_logs_every_prefix(tmp_path):
    """The sandwich schedule on the 768x192 shape at GPT-2 width (2 blocks), offline."""
    out = krony_run(["experiment=smoke", "decomp=768x192", "model.factors=16", "nest=sandwich", "trainer.max_steps=2",
                     "trainer.val_check_interval=2", "trainer.limit_val_batches=2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = next((tmp_path / "logs" / "runs" / "768x192-vanloan-r16-nest_sandwich").iterdir())
    ea = events(run)
    val = {k: ea.Scalars(f"val/loss_k{k}")[-1].value for k in (1, 2, 4, 8, 16)}
    assert val[16] == pytest.approx(ea.Scalars("val/loss")[-1].value, rel=1e-5)  # the full model
    assert {"train/loss_k16", "train/loss_k1"} <= set(ea.Tags()["scalars"])
    assert json.loads((run / "summary.json").read_text())["hparams"]["nest"] == "sandwich"
    export = GPT.from_pretrained(run / "export")  # every factor, all active
    assert {layer.factors for layer in kronecker_layers(export).values()} == {16}


@pytest.mark.slow
def test_offline_teacher_says_how_to_fix(tmp_path):
    out = krony_run(["data=local", "trainer=cpu", "trainer.max_steps=1"], tmp_path, timeout=300)
    assert out.returncode == 2 and not (tmp_path / "logs").exists()  # refused before Hydra made a directory
    assert "model.teacher='gpt2'" in out.stderr and "experiment=smoke" in out.stderr and "local copy" in out.stderr


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not present")
@pytest.mark.slow
def test_validate_only_baseline_is_evaluated(tmp_path):
    out = krony_run(["model=distilgpt2_pretrained", "experiment=smoke", "callbacks.eval.datasets=[wikitext2]",
                     f"callbacks.eval.data_dir={DATA}", "callbacks.eval.max_tokens=600"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = next((tmp_path / "logs" / "runs" / "distilgpt2-pretrained").iterdir())
    ea = events(run)
    assert "val/loss" in ea.Tags()["scalars"] and "_hparams_/session_start_info" in ea.summary_metadata
    assert not (run / "checkpoints").exists()  # nothing trained, nothing saved
    results = json.loads((run / "results.json").read_text())
    assert results["results"]["wikitext2"]["tokens"] == 600 and results["results"]["wikitext2"]["ppl"] > 1


DDP_SCRIPT = textwrap.dedent('''
    import json, sys
    import lightning as L, torch
    from krony.data import TextDataModule, TextSource, sample_path

    class Record(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []
        def training_step(self, batch, i):
            self.seen += [b[:8].tolist() for b in batch]
            return (self.w * batch.float().mean()).sum()
        def on_train_end(self):
            with open(f"{sys.argv[1]}/rank{self.global_rank}.json", "w") as f:
                json.dump(self.seen, f)
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    source = TextSource(path="text", name=None, revision=None, data_files=[sample_path()], expected_files=None)
    dm = TextDataModule(source, block_size=64, batch_size=4, num_workers=2, val_documents=100, shuffle_buffer=16)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=30, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(Record(), datamodule=dm)
''')


@pytest.mark.slow
def test_ddp_ranks_see_disjoint_data(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r0 = {tuple(b) for b in json.loads((tmp_path / "rank0.json").read_text())}
    r1 = {tuple(b) for b in json.loads((tmp_path / "rank1.json").read_text())}
    assert len(r0) > 50 and len(r1) > 50
    assert not r0 & r1


@pytest.mark.slow
def test_ddp_run_writes_one_run_directory(tmp_path):
    out = krony_run(["experiment=smoke", "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_steps=2",
                     "trainer.val_check_interval=2", "trainer.limit_val_batches=2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "logs" / "runs" / "81m-vanloan-r1").iterdir())
    assert len(runs) == 1
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1
    assert len(kronecker_layers(GPT.from_pretrained(runs[0] / "export"))) == 4  # 2 blocks x (c_fc, c_proj)


@pytest.mark.slow
def test_data_cli_prepare_and_memmap_training(tmp_path):
    from krony.data import sample_path

    prep = subprocess.run([sys.executable, "-m", "krony.data", "prepare", "--files", sample_path(), "--out", str(tmp_path / "mm"),
                           "--val-documents", "100", "--workers", "1"], env=ENV, capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr[-2000:]
    out = krony_run(["experiment=smoke", "data=memmap", f"data.memmap_dir={tmp_path / 'mm'}", "data.num_workers=0",
                     "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not present")
@pytest.mark.slow
def test_evaluation_after_training_is_logged(tmp_path):
    out = krony_run(["experiment=smoke", "trainer.max_steps=1", "trainer.val_check_interval=1", "trainer.limit_val_batches=1",
                     f"callbacks.eval.data_dir={DATA}", "callbacks.eval.datasets=[wikitext2,lambada]",
                     "callbacks.eval.max_tokens=1024", "callbacks.eval.max_examples=4"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = next((tmp_path / "logs" / "runs" / "81m-vanloan-r1").iterdir())
    tags = events(run).Tags()["scalars"]
    assert {"eval/wikitext2/ppl", "eval/lambada/ppl", "eval/lambada/scored_tokens"} <= set(tags)
    results = json.loads((run / "results.json").read_text())["results"]
    assert results["wikitext2"]["tokens"] == 1024 and results["lambada"]["source"]["path"].endswith("lambada_test_plain_text.txt")


@pytest.mark.slow
@pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not present")
def test_harness_evaluation_after_training(tmp_path):
    pytest.importorskip("lm_eval")
    out = krony_run(["experiment=smoke", "trainer.max_steps=1", "trainer.val_check_interval=1", "trainer.limit_val_batches=1",
                     "callbacks.eval.protocol=harness", f"callbacks.eval.data_dir={DATA}", "callbacks.eval.max_examples=2"],
                    tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = next((tmp_path / "logs" / "runs" / "81m-vanloan-r1").iterdir())
    assert {"eval/wikitext/word_perplexity", "eval/lambada_openai/acc"} <= set(events(run).Tags()["scalars"])
    record = json.loads((run / "results.json").read_text())
    assert record["protocol"] == "harness" and record["results"]["wikitext"]["documents"] == 2


@pytest.mark.slow
def test_same_seed_and_config_give_the_same_losses(smoke_sweep, tmp_path):
    """Determinism: a smoke job of the sweep, run again on its own elsewhere, gives identical
    losses and weights on CPU."""
    out = krony_run(["experiment=smoke", "decomp=67m", "init=prune", "trainer.enable_progress_bar=false"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (again,) = (tmp_path / "logs" / "runs").glob("*/*")
    (first,) = (smoke_sweep / "logs" / "sweeps").glob("*/67m-prune-r1")
    losses = [{e.step: e.value for e in events(d).Scalars("train/loss")} for d in (first, again)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    a, b = GPT.from_pretrained(first / "export").state_dict(), GPT.from_pretrained(again / "export").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_report_follows_skip_and_resume_pointers(tmp_path):
    from krony.report import follow_pointer

    run = tmp_path / "runs" / "81m-vanloan-r1" / "2026-01-01_00-00-00"
    (tmp_path / "again").mkdir()
    skipped, resumed = tmp_path / "again" / "skipped.txt", tmp_path / "again" / "resumed.txt"
    skipped.write_text(f"finished earlier in {run}\n")  # what python -m krony.run writes
    resumed.write_text(f"continued in {run} from {run}/checkpoints/last.ckpt\n")
    assert follow_pointer(skipped) == run and follow_pointer(resumed) == run
    (tmp_path / "again" / "other.txt").write_text(f"finished earlier in {run}\n")
    assert follow_pointer(tmp_path / "again" / "other.txt") is None
