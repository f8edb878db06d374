"""krony: compress GPT-2 with Kronecker products (Krony-PT).

The math lives in plain PyTorch modules: `kronecker` (the layer and its cost model),
`inits` (Van Loan, pruning, random), `schemes` (Table 1), `model` (GPT-2),
`compress` (swap layers, count parameters) and `checkpoint` (HF / hub / local files).
"""

from krony.compress import compress, count_params, decompress, kronecker_layers, model_size
from krony.inits import INITS, prune, random_factors, vanloan
from krony.kronecker import KroneckerLinear, choose_path, kron_weight, path_costs
from krony.model import GPT, PRESETS, GPTConfig
from krony.schemes import SCHEMES, TABLE1, Scheme, get_scheme

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "INITS",
    "KroneckerLinear",
    "PRESETS",
    "SCHEMES",
    "TABLE1",
    "Scheme",
    "choose_path",
    "compress",
    "count_params",
    "decompress",
    "get_scheme",
    "kron_weight",
    "kronecker_layers",
    "model_size",
    "path_costs",
    "prune",
    "random_factors",
    "vanloan",
]
