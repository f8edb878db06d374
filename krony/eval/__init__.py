"""Evaluation: where the text comes from, how a model is scored, and the command line.

- `data`: the paper's datasets (WikiText-103, WikiText-2, the original LAMBADA) from local
  files or the hub, with their sources.
- `protocols`: the paper and sliding-window perplexities, and `evaluate_model`, which runs
  any protocol (the harness one through `harness`).
- `harness`: lm-evaluation-harness on krony models (the "krony" lm-eval model, offline tasks).
- `__main__`: `python -m krony.eval model=... protocol=...`.

Names are imported on first use (the protocols pull in torch).
"""

from krony._lazy import lazy_exports

_EXPORTS = {
    "DATASETS": "krony.eval.data", "Rows": "krony.eval.data", "load_rows": "krony.eval.data",
    "token_ids": "krony.eval.data",
    "PROTOCOLS": "krony.eval.protocols", "evaluate_model": "krony.eval.protocols",
    "perplexity": "krony.eval.protocols", "record": "krony.eval.protocols",
    "score_windows": "krony.eval.protocols",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
