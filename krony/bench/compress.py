"""Compression time: Van Loan on every FFN matrix of GPT-2 small, krony's top-r against a full SVD."""

from __future__ import annotations

import copy
import time

import torch

from krony.compression import compress
from krony.config import GPTConfig
from krony.layers.kronecker_init import rearranged
from krony.model import GPT
from krony.schemes import get_scheme
from krony.targets import find_targets


def full_svd_seconds(model: GPT, scheme: str) -> float:
    """What Van Loan took before: a full thin SVD (float64) of each rearranged FFN matrix."""
    sch = get_scheme(scheme)
    start = time.perf_counter()
    for t in find_targets(model):
        R = rearranged(model.get_submodule(t.name).weight, sch.a_dims_for(t.role))
        torch.linalg.svd(R.double(), full_matrices=False)
    return time.perf_counter() - start


def bench_compress(schemes: list[str] | None, factors: int = 1, svd: str = "exact", reference: bool = True,
                   seed: int = 0) -> list[dict]:
    """One row per scheme: seconds for `krony.compress(gpt2, scheme, "vanloan")` on GPT-2 small
    (random weights: the SVD's cost does not depend on the values), per matrix, and beside it
    the full-SVD time it replaces."""
    torch.manual_seed(seed)
    dense = GPT(GPTConfig.from_preset("gpt2")).eval()
    rows = []
    for scheme in schemes or ["67m", "81m", "96m", "95m"]:
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        compress(model, scheme, init="vanloan", factors=factors, svd=svd)
        seconds = time.perf_counter() - start
        row = {"scheme": get_scheme(scheme).key, "factors": factors, "svd": svd, "compress_s": seconds,
               "per_matrix_ms": 1000 * seconds / (2 * dense.config.n_layer)}
        if reference:
            row["full_svd_s"] = full_svd_seconds(dense, scheme)
            row["speedup"] = row["full_svd_s"] / seconds
        rows.append(row)
    return rows
