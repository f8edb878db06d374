"""krony: compress GPT-2 with Kronecker products (Krony-PT).

The math lives in plain PyTorch modules: `kronecker` (the layer and its cost model),
`inits` (Van Loan, pruning, random), `schemes` (Table 1), `model` (GPT-2),
`compress` (swap layers, count parameters) and `checkpoint` (HF / hub / local files).
The names below are imported on first use, so `import krony` itself is instant.
"""

from krony._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "compress": "krony.compression", "count_params": "krony.compression", "decompress": "krony.compression",
    "kronecker_layers": "krony.compression", "model_size": "krony.compression",
    "INITS": "krony.inits", "prune": "krony.inits", "random_factors": "krony.inits", "vanloan": "krony.inits",
    "KroneckerLinear": "krony.kronecker", "choose_path": "krony.kronecker", "kron_weight": "krony.kronecker",
    "path_costs": "krony.kronecker",
    "GPT": "krony.model",
    "GPTConfig": "krony.config", "PRESETS": "krony.config",
    "NAMED": "krony.schemes", "SCHEMES": "krony.schemes", "TABLE1": "krony.schemes", "Scheme": "krony.schemes", "get_scheme": "krony.schemes",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
