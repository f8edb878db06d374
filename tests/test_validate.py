"""Bad configs fail before any model is built or data read, with one line naming key, value and the fix."""

import pytest
from omegaconf import open_dict

from krony.validate import ConfigError, problems, validate
from conftest import make_cfg


def error_for(tmp_path, overrides, edit=None) -> ConfigError:
    cfg = make_cfg(tmp_path, overrides)
    if edit:
        with open_dict(cfg):
            edit(cfg)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert "\n" not in message
    return info.value


def test_smoke_and_paper_configs_are_valid(tmp_path):
    assert problems(make_cfg(tmp_path, [])) == []
    assert problems(make_cfg(tmp_path, ["decomp=96m", "init=prune", "model=multifactor", "decomp=mf2", "init=vanloan"])) == []


def test_unknown_scheme(tmp_path):
    e = error_for(tmp_path, ["decomp=85m"])
    assert e.key == "decomp" and e.value == "85m" and "valid names: 67m" in str(e)


def test_ffn_fractions(tmp_path):
    assert problems(make_cfg(tmp_path, ["decomp=ffn50", "init=prune"])) == []
    e = error_for(tmp_path, ["decomp=ffn150"])
    assert e.key == "decomp" and "as a percentage, e.g. ffn50" in str(e)
    e = error_for(tmp_path, ["decomp=ffn0.01"])  # no Kronecker dims of GPT-2's FFN keep 0.01%
    assert e.key == "decomp" and "within 2%; nearest:" in str(e)
    assert problems(make_cfg(tmp_path, ["decomp=ffn0.01", "structure=lowrank"])) == []  # rank 1 is near enough


def test_structure_rules(tmp_path):
    e = error_for(tmp_path, ["structure=lowrank", "init=prune"])
    assert e.key == "init.method" and "not an init of lowrank; it takes vanloan, random" in str(e)
    e = error_for(tmp_path, ["structure=monarch", "structure.options.nblocks=5"])
    assert e.key == "structure.options.nblocks" and "must divide both FFN dims (768, 3072)" in str(e)
    e = error_for(tmp_path, ["structure=lowrank", "model.structure=butterfly"])
    assert e.key == "model.structure" and "valid choices: kronecker, lowrank, monarch" in str(e)
    assert problems(make_cfg(tmp_path, ["structure=monarch", "decomp=96m", "model.factors=3"])) == []  # no Kronecker limits
    e = error_for(tmp_path, ["structure=lowrank", "structure.match=flop"])
    assert e.key == "structure.match" and "valid choices: params, flops" in str(e)


def test_nest_rules(tmp_path):
    e = error_for(tmp_path, ["nest=all", "decomp=768x192", "model.factors=8"])
    assert e.key == "nest.prefixes" and "the largest prefix must be the model's factors (model.factors=8)" in str(e)
    e = error_for(tmp_path, ["nest=sandwich", "decomp=768x192", "model.factors=16", "distill=on"])
    assert e.key == "nest.schedule" and "use distill=off" in str(e)
    e = error_for(tmp_path, ["nest=all", "nest.prefixes=[1,4,2]"])
    assert e.key == "nest.prefixes" and "increasing" in str(e)
    assert problems(make_cfg(tmp_path, ["nest=sample", "decomp=768x192", "model.factors=16"])) == []


def test_evaluation_after_training(tmp_path, monkeypatch):
    e = error_for(tmp_path, ["callbacks.eval.protocol=lm-eval"])
    assert str(e) == "callbacks.eval.protocol='lm-eval': valid choices: paper, sliding, harness"
    e = error_for(tmp_path, ["callbacks.eval.datasets=[hellaswag]"])
    assert "callbacks.eval.datasets=['hellaswag']: valid choices: wikitext103, wikitext2, lambada" in str(e)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    e = error_for(tmp_path, ["callbacks.eval.protocol=harness"])
    assert "lm-evaluation-harness is not installed: pip install -e '.[eval]'" in str(e)


def test_unknown_init(tmp_path):
    e = error_for(tmp_path, ["init.method=svd"])
    assert str(e) == "init.method='svd': valid choices: vanloan, prune, random"


def test_dims_that_do_not_divide(tmp_path):
    e = error_for(tmp_path, ["decomp=100x32"])
    assert e.key == "decomp" and "expand matrices" in str(e) and "m1 must divide 3072" in str(e)


@pytest.mark.parametrize("factors", [0, -2])
def test_factors_below_one(tmp_path, factors):
    e = error_for(tmp_path, [f"model.factors={factors}"])
    assert e.key == "model.factors" and e.value == factors and ">= 1" in str(e)


@pytest.mark.parametrize("lr", [0, -1e-4])
def test_learning_rate_not_positive(tmp_path, lr):
    e = error_for(tmp_path, [f"optim.lr={lr}"])
    assert e.key == "optim.lr" and "> 0" in str(e)


def test_context_above_the_models(tmp_path):
    e = error_for(tmp_path, ["context=2048"])
    assert str(e) == "context=2048: sequence length must be 1 to 1024, the teacher's context"


def test_freezing_a_part_that_does_not_exist(tmp_path):
    e = error_for(tmp_path, [], edit=lambda cfg: cfg.freeze.__setitem__("mlp", True))
    assert e.key == "freeze.mlp" and "unknown key; valid keys: embeddings, attention, layer_norms, scalars, scalars_value" in str(e)


def test_freezing_scalars_of_a_model_without_them(tmp_path):
    e = error_for(tmp_path, ["freeze=scalars_at_4"])
    assert e.key == "freeze.scalars" and "model.scalars=true" in str(e)


def test_prune_with_more_factors_than_b_has_entries(tmp_path):
    e = error_for(tmp_path, ["decomp=96m", "init=prune", "model.factors=3"])  # B of 96m is (2, 1)
    assert e.key == "model.factors" and "at most m2*n2 = 2" in str(e)


def test_prune_offset_outside_b(tmp_path):
    e = error_for(tmp_path, ["decomp=96m", "init=prune", "init.options.offsets=[[1,1]]"])
    assert e.key == "init.options.offsets" and "outside B (2, 1)" in str(e)


def test_missing_data_file(tmp_path):
    e = error_for(tmp_path, ["data=local", f"data.source.data_files=[{tmp_path}/nope.txt]"])
    assert e.key == "data.source.data_files" and "no file matches" in str(e)


def test_missing_memmap(tmp_path):
    e = error_for(tmp_path, ["data=memmap", f"data.memmap_dir={tmp_path}/none"])
    assert e.key == "data.memmap_dir" and "python -m krony.data prepare" in str(e)


def test_missing_teacher_checkpoint(tmp_path):
    e = error_for(tmp_path, [f"model.teacher={tmp_path}/gpt2-local"])
    assert e.key == "model.teacher" and "no such file or directory" in str(e)


def test_uncached_hub_teacher_offline(tmp_path, monkeypatch):
    from krony.preflight import preflight

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = make_cfg(tmp_path, ["model.teacher=gpt2"])
    validate(cfg)  # the config itself is fine ...
    with pytest.raises(ConfigError) as info:
        preflight(cfg)  # ... but there is no teacher to load
    assert info.value.key == "model.teacher" and "HF_HUB_OFFLINE is set" in str(info.value)
    assert "model.teacher=/path/to/dir" in str(info.value) and "\n" not in str(info.value)


def test_run_stops_before_building_anything(tmp_path, monkeypatch):
    import krony.run

    built = []
    monkeypatch.setattr(krony.run, "build_module", lambda cfg: built.append(cfg))
    cfg = make_cfg(tmp_path, ["model.factors=0"])
    with pytest.raises(ConfigError, match="model.factors=0"):
        krony.run.train(cfg)
    assert built == []


def test_missing_checkpoint_to_continue_from(tmp_path):
    e = error_for(tmp_path, [f"ckpt_path={tmp_path}/last.ckpt"])
    assert e.key == "ckpt_path" and "no such checkpoint file" in str(e)


def test_a_config_is_validated_once_a_process(tmp_path, monkeypatch):
    """The command's check, the job and its training each call validate(): the checks run once
    per config; another config is checked afresh."""
    import krony.validate as v

    calls = []
    real = v.problems
    monkeypatch.setattr(v, "problems", lambda cfg: calls.append(1) or real(cfg))
    cfg = make_cfg(tmp_path, ["decomp=81m"])
    for _ in range(3):
        v.validate(cfg)
    assert len(calls) == 1
    v.validate(make_cfg(tmp_path, ["decomp=96m"]))
    assert len(calls) == 2
    with pytest.raises(v.ConfigError):
        v.validate(make_cfg(tmp_path, ["decomp=ffnx"]))
    with pytest.raises(v.ConfigError):  # a failed config is never remembered as passed
        v.validate(make_cfg(tmp_path, ["decomp=ffnx"]))
