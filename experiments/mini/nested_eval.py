"""Evaluate the nested mini experiment (experiments/mini/nested.sh) at every prefix.

For Van Loan's truncation of the teacher (no training), the plain r = 16 run, the nested
(sandwich) run and the independently trained 4-factor run: the in-domain loss on the runs'
validation set (`data=local`: the shipped OpenWebText sample's first 100 paragraphs, held out of
training) and the paper-protocol perplexity on WikiText-2 and LAMBADA (first 32K tokens each),
with the first k = 1, 2, 4, 8, 16 factors active. Writes results.json and table.md. Usage: python experiments/mini/nested_eval.py <root> <data_dir> <out dir>
"""

import json
import sys
from pathlib import Path

import torch

from krony import GPT, compress, count_params, extract, set_active_factors
from krony.eval.protocols import evaluate_model
from krony.mixnmatch import mean_loss, sample_tokens

KS = [1, 2, 4, 8, 16]


def main(root: Path, data_dir: str, out: Path) -> None:
    teacher = GPT.from_pretrained(root / "teacher" / "export").eval()
    _, val = sample_tokens(teacher.config.block_size, 128)  # the runs' validation set
    sweep = root / "sweep"
    models = {
        "Van Loan truncation (no training)": compress(GPT.from_pretrained(root / "teacher" / "export"), "128x32",
                                                      factors=16).eval(),
        "plain r = 16, then truncation": GPT.from_pretrained(sweep / "128x32-vanloan-r16" / "export").eval(),
        "nested (sandwich)": GPT.from_pretrained(sweep / "128x32-vanloan-r16-nest_sandwich" / "export").eval(),
        "independent k = 4": GPT.from_pretrained(sweep / "128x32-vanloan-r4" / "export").eval(),
    }
    results = {"teacher": {"val_loss": mean_loss(teacher, val), "params": count_params(teacher),
                           **{d: r["ppl"] for d, r in evaluate_model(teacher, ["wikitext2", "lambada"], context=128,
                                                                      data_dir=data_dir, max_tokens=32768,
                                                                      progress=False).items()}}}
    for name, model in models.items():
        factors = max(layer.factors for layer in model.modules() if hasattr(layer, "factors"))
        results[name] = {}
        for k in [k for k in KS if k <= factors]:
            set_active_factors(model, k)
            with torch.no_grad():
                ppl = evaluate_model(model, ["wikitext2", "lambada"], context=128, data_dir=data_dir, max_tokens=32768,
                                     progress=False)
            results[name][k] = {"val_loss": mean_loss(model, val), "params": count_params(extract(model)),
                                **{d: r["ppl"] for d, r in ppl.items()}}
            print(name, k, results[name][k], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| model | " + " | ".join(f"k = {k}" for k in KS) + " |", "|---" * (len(KS) + 1) + "|"]
    for name in models:
        cells = [f"{r['val_loss']:.4f} ({r['wikitext2']:,.0f} / {r['lambada']:,.0f})" if (r := results[name].get(k))
                 else "-" for k in KS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    t = results["teacher"]
    lines.append(f"\nTeacher: {t['val_loss']:.4f} ({t['wikitext2']:,.0f} / {t['lambada']:,.0f}). Cells: in-domain loss "
                 "(nats/token) and WikiText-2 / LAMBADA perplexity, paper protocol. Parameters per k: "
                 + ", ".join(f"{k}: {results['nested (sandwich)'][k]['params']:,}" for k in KS) + ".")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
