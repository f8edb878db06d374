"""Timing helpers shared by the benchmarks: synchronised wall-clock, interleaved medians, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu",
                rounds: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, taking turns round by round.

    Alternating the candidates spreads slow phases of a shared machine (other processes,
    clock changes) over all of them, so their ratios are steadier than timings taken one
    after the other.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_reset() -> bool:
    """Reset this process's peak resident memory (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process since the last reset (Linux VmHWM), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine(device: torch.device | str) -> dict[str, object]:
    """What the numbers were measured on."""
    info: dict[str, object] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
