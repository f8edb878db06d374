"""Compose every option of every config group and instantiate what it describes."""

import re

import pytest
import torch
from hydra.utils import instantiate

from conftest import make_cfg
from krony import NAMED, get_scheme, model_size
from krony.run import CONF_DIR, build_module

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# options that need a value the smoke experiment does not give
EXTRA = {
    ("model", "distilgpt2"): ["model.student_layers=[0,1]"],
    ("model", "distilgpt2_ce"): ["model.student_layers=[0,1]"],
    ("freeze", "scalars"): ["model.scalars=true"],
    ("freeze", "scalars_at_4"): ["model.scalars=true"],
    ("trainer", "gpu"): ["trainer.accelerator=cpu"],
    ("trainer", "ddp"): ["trainer.accelerator=cpu"],
}


def test_every_group_has_options():
    assert set(GROUPS) >= {"init", "freeze", "distill", "model", "optim", "data", "trainer", "logger",
                           "callbacks", "paths", "experiment"}
    for group in GROUPS:
        assert options(group), group


def test_decomp_takes_any_scheme_by_name_or_dims(tmp_path):
    for scheme in NAMED:
        for typed in {scheme.key, scheme.key.upper(), f"{scheme.a_dims[0]}x{scheme.a_dims[1]}"}:
            cfg = make_cfg(tmp_path, [f"decomp={typed}"])
            assert get_scheme(cfg.model.scheme) is get_scheme(scheme.key)
            assert cfg.run_name == f"{scheme.key}-vanloan-r1"  # the canonical name, whatever was typed
    cfg = make_cfg(tmp_path, ["decomp=32x16"])  # dims outside every table
    assert cfg.run_name == "32x16-vanloan-r1" and model_size(cfg.model.scheme) > 0


@pytest.mark.parametrize("structure", ["kronecker", "lowrank", "monarch"])
def test_decomp_ffn_keeps_that_fraction_of_the_ffn(tmp_path, structure):
    """`decomp=ffnNN`: the FFN fraction, for every structure; the run name is the canonical spelling."""
    from krony.compression import factored_layers
    from krony.validate import problems

    cfg = make_cfg(tmp_path, ["decomp=FFN25.0", f"structure={structure}"])
    assert problems(cfg) == []
    tag = "" if structure == "kronecker" else f"-{structure}"
    assert cfg.run_name == f"ffn25{tag}-vanloan-r1"
    layers = factored_layers(build_module(cfg).student)
    kept = sum(m.num_params() - m.bias.numel() for m in layers.values())
    dense = sum(m.in_features * m.out_features for m in layers.values())
    assert abs(kept / dense - 0.25) < 0.02 * 0.25


@pytest.mark.parametrize("group", ["init", "freeze", "distill", "model", "optim", "code", "structure"])
def test_module_builds_for_every_option(tmp_path, group):
    for option in options(group):
        cfg = make_cfg(tmp_path, [f"{group}={option}", *EXTRA.get((group, option), [])])
        module = build_module(cfg)
        x = torch.randint(0, 50257, (1, 8))
        assert module(x).shape == (1, 8, 50257), (group, option)
        assert cfg.run_name and "${" not in cfg.run_name


@pytest.mark.parametrize("group", ["data", "trainer", "logger", "callbacks"])
def test_instantiate_every_option(tmp_path, group):
    for option in options(group):
        cfg = make_cfg(tmp_path, [f"{group}={option}", *EXTRA.get((group, option), [])])
        node = cfg[group]
        objs = [instantiate(node)] if "_target_" in node else [instantiate(v) for v in node.values() if v is not None]
        assert all(o is not None for o in objs), (group, option)


def test_experiments_compose(tmp_path):
    for option in options("experiment"):
        cfg = make_cfg(tmp_path, [f"experiment={option}"])
        assert cfg.trainer.max_steps > 0


def test_paper_96m_sweeps_the_papers_three_jobs(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=paper_96m"])
    assert cfg.run_name == "95m-prune-r1"  # without -m: the paper's 96M-prune row
    jobs = cfg.hydra.sweeper.params["+paper96"].split(",")
    names = [make_cfg(tmp_path, ["experiment=paper_96m", f"+paper96={j}"]).run_name for j in jobs]
    assert names == ["95m-prune-r1", "95m-vanloan-r1", "96m-vanloan-r1"]


def test_code_authors_gathers_the_authors_choices(tmp_path):
    cfg = make_cfg(tmp_path, ["code=authors"])
    assert cfg.run_name == "81m-vanloan-r1-authors" and cfg.init.options.svd == "lowrank"
    module = build_module(cfg)
    from krony.train.optim import build_optimizer

    assert module.student.config.activation == "gelu"
    opt, _ = build_optimizer(module.student, module.optim_cfg, total_steps=10)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.01, 0.1}
    assert make_cfg(tmp_path, ["code=authors", "init=prune"]).init.method == "prune"  # the command line wins


def test_slurm_launcher_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = make_cfg(tmp_path, ["hydra/launcher=slurm"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_run_names(tmp_path):
    assert make_cfg(tmp_path, ["decomp=96m", "init=prune"]).run_name == "96m-prune-r1"
    assert make_cfg(tmp_path, ["model=multifactor", "decomp=mf2"]).run_name == "mf2-vanloan-r4-s"
    assert make_cfg(tmp_path, ["distill=on", "freeze=embeddings"]).run_name == "81m-vanloan-r1-kd-frz_emb"
    assert make_cfg(tmp_path, ["model=distilgpt2"]).run_name == "distilgpt2-kd"
    assert make_cfg(tmp_path, ["structure=lowrank", "decomp=67m"]).run_name == "67m-lowrank-vanloan-r1"
    assert make_cfg(tmp_path, ["structure=monarch", "structure.match=flops"]).run_name == "81m-monarch-flops-vanloan-r1"
    assert make_cfg(tmp_path, ["decomp=768x192", "model.factors=16", "nest=sandwich"]).run_name == "768x192-vanloan-r16-nest_sandwich"


LEAF = re.compile(r"^\s*[A-Za-z_][\w/]*:\s*\S")  # "key: value" (block headers have no value)


def test_every_option_has_a_comment():
    missing = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        in_defaults = False
        for line in path.read_text().splitlines():
            if line.startswith("defaults:"):
                in_defaults = True
                continue
            if in_defaults and (line.startswith("  - ") or not line.strip()):
                continue
            in_defaults = False
            if LEAF.match(line) and "#" not in line and "_target_" not in line:
                missing.append(f"{path.relative_to(CONF_DIR)}: {line.strip()}")
    assert not missing, "options without a comment:\n" + "\n".join(missing)
