"""krony: compress GPT-2 and any Hugging Face causal LM with Kronecker products (Krony-PT).

The math lives in plain PyTorch modules: `model` (GPT-2, nothing else), `layers` (the
factored structures: `layers.kronecker`, the layer and its cost model; `layers.kronecker_init`,
Van Loan, pruning, random), `schemes` (Table 1), `compression` (swap layers in and out, count
parameters), `nested` (every size from one set of factors), `hf` (Hugging Face / hub / local
files) and `eval` (evaluation protocols).
The names below are imported on first use, so `import krony` itself is instant.
"""

from krony._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "compress": "krony.compression", "save_pretrained": "krony.export", "CompressConfig": "krony.config",
    "load_causal_lm": "krony.causal_lm", "count_params": "krony.compression", "decompress": "krony.compression",
    "kronecker_layers": "krony.compression", "factored_layers": "krony.compression", "model_size": "krony.sizing",
    "INITS": "krony.layers.kronecker_init", "prune": "krony.layers.kronecker_init", "random_factors": "krony.layers.kronecker_init", "vanloan": "krony.layers.kronecker_init",
    "FactoredLinear": "krony.layers", "STRUCTURES": "krony.layers", "KroneckerLinear": "krony.layers.kronecker", "choose_path": "krony.layers.kronecker", "kron_weight": "krony.layers.kronecker",
    "path_costs": "krony.layers.kronecker",
    "set_active_factors": "krony.nested", "extract": "krony.nested", "active_factors": "krony.nested",
    "GPT": "krony.model",
    "GPTConfig": "krony.config", "PRESETS": "krony.config",
    "NAMED": "krony.schemes", "SCHEMES": "krony.schemes", "TABLE1": "krony.schemes", "Scheme": "krony.schemes", "get_scheme": "krony.schemes",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
