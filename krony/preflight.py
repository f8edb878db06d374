"""Checks of a run that look beyond its config: the accelerator, the hub, the files it will read.

They run after `krony.validate` and before anything heavy (loading the teacher, compressing,
starting dataloader workers), and each stops the run with one line:

- `trainer=gpu` on a machine without a GPU names `trainer=cpu`;
- a hub teacher or dataset is looked up once: the hub answers within `KRONY_HUB_TIMEOUT`
  seconds, or the run goes on from the local cache (`krony.hub`), or stops naming the fix;
- the streamed dataset is opened here, in the main process, so a wrong revision or a missing
  cache is one line, not a dataloader worker's traceback;
- a local teacher's and a checkpoint's headers are read to make sure they are what they claim.

The evaluation after training only warns: a run is not refused for its final benchmark.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from krony.config import ConfigError
from krony.validate import raise_first, sections

log = logging.getLogger(__name__)

GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
"""Device files of NVIDIA (and WSL) and AMD GPU drivers: without any, torch cannot see a GPU."""


def gpu_available(accelerator: str = "gpu") -> bool:
    """Whether Lightning's `accelerator` ("gpu": CUDA or Apple MPS; "cuda"; "mps") has a device."""
    if sys.platform != "darwin" and not any(Path(p).exists() for p in GPU_DEVICE_FILES):
        return False  # no driver: answer without importing torch
    import torch

    cuda = torch.cuda.is_available() and accelerator in ("gpu", "cuda")
    mps = accelerator in ("gpu", "mps") and torch.backends.mps.is_available()
    return cuda or mps


def check_accelerator(trainer: dict[str, Any]) -> None:
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "mps") and not gpu_available(accelerator):
        raise ConfigError("trainer.accelerator", accelerator, "this machine has no GPU that torch can use "
                          "(torch.cuda.is_available() is False); run on the CPU with trainer=cpu")


def check_teacher(model: dict[str, Any]) -> None:
    """A local teacher must be readable (headers only); a hub teacher downloadable now or cached."""
    from krony import hub

    teacher = model.get("teacher")
    if teacher is None:
        return  # random weights
    local = Path(str(teacher)).expanduser()
    if local.exists():
        from krony.hf import check_weights

        check_weights(local)
        return
    if hub.looks_like_path(str(teacher)):
        return  # a missing path: validate() names it
    if not hub.use_hub() and hub.cached_model_files(str(teacher)) is None:
        raise ConfigError("model.teacher", teacher, f"{hub.why_offline()} and no copy is cached in {hub.cache_dir()}; "
                          f"give a local copy (model.teacher=/path/to/dir, a folder written by save_pretrained) "
                          f"or run offline with experiment=smoke")


def check_stream(data: dict[str, Any]) -> None:
    """Open a streamed hub (or mirror) dataset in this process: files listed, count checked."""
    from krony.data.sources import LOCAL_BUILDERS, TextSource

    source = dict(data.get("source") or {})
    source.pop("_target_", None)
    if data.get("mode", "stream") != "stream" or source.get("path") in LOCAL_BUILDERS:
        return
    try:
        TextSource(**source).dataset()
    except ValueError as e:
        raise ConfigError("data.source.path", source.get("path"), str(e)) from None


def check_eval_data(callbacks: dict[str, Any]) -> None:
    """Warn (once, at the start) when the evaluation after training will have no data."""
    spec = callbacks.get("eval") or {}
    if spec.get("protocol") == "harness" or not spec.get("datasets") or spec.get("data_dir"):
        return  # lm-eval's tasks find their data themselves
    from krony import hub
    from krony.eval.data import HUB

    if hub.use_hub():
        return
    repos = {HUB[d][0] for d in spec["datasets"] if d in HUB}
    missing = sorted(r for r in repos if hub.cached_dataset(r) is None)
    if missing:
        log.warning("the evaluation after training will be skipped: %s and %s is not cached; set "
                    "callbacks.eval.data_dir=<local files> or callbacks.eval.datasets=[]", hub.why_offline(), ", ".join(missing))


def check_checkpoint(path: str | Path | None) -> None:
    """Open a checkpoint lazily (memory-mapped: nothing big is read) to make sure it is one;
    `InvalidFile` ("<path> is not a valid checkpoint: ...") otherwise."""
    if not path:
        return
    from krony.fileio import torch_load

    state = torch_load(path, "checkpoint", mmap=True)
    if not isinstance(state, dict) or "state_dict" not in state:
        from krony.fileio import InvalidFile

        raise InvalidFile(path, "checkpoint", "it is not a Lightning training checkpoint (no state_dict)")


def preflight(cfg: DictConfig) -> None:
    """Run the checks above on a composed (and validated) run config; raise the first problem
    and log the others."""
    parts = sections(cfg)
    checks = [lambda: check_accelerator(parts["trainer"]), lambda: check_teacher(parts["model"]),
              lambda: check_stream(parts["data"]), lambda: check_checkpoint(parts["ckpt_path"])]
    found = []
    for check in checks:
        try:
            check()
        except ConfigError as e:
            found.append(e)
    raise_first(found)
    check_eval_data(parts["callbacks"])


__all__ = ["check_accelerator", "check_checkpoint", "check_eval_data", "check_stream", "check_teacher",
           "gpu_available", "preflight"]
