"""`python -m krony.mixnmatch <nested model> --out DIR`: per-layer factor counts for a parameter
budget, from one nested model (Mix'n'Match; docs/method.md, "Nested factors").

1. `sensitivity`: the loss increase on calibration tokens of each (layer, k): that layer with its
   first k factors, every other layer with all of them.
2. `choose`: the multiple-choice knapsack, by dynamic programming: one k per layer, within the
   budget, the smallest summed increase (the increases are taken as additive).
3. `pareto`: for a list of budgets, the chosen per-layer k, its parameters and its measured
   validation loss, beside the uniform k that fits the same budget; `write` saves them as
   `pareto.json` and `pareto.csv`, and the increases as `sensitivity.json`.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from krony.compression import count_params, kronecker_layers
from krony.lm import context_length, logits
from krony.nested import set_active_factors
from krony.tokenizer import TextTokenizer
from krony.train.losses import lm_loss


@torch.no_grad()
def mean_loss(model: nn.Module, tokens: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token loss of `model` over rows of `tokens` (N, T + 1)."""
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i:i + batch_size]
        loss = lm_loss(logits(model, batch[:, :-1]), batch[:, 1:])
        total += loss.item() * batch[:, 1:].numel()
        count += batch[:, 1:].numel()
    return total / count


def factor_params(model: nn.Module) -> dict[str, int]:
    """{layer name: parameters of one of its factors} (A and B entries, and its scalar)."""
    return {name: layer.m1 * layer.n1 + layer.m2 * layer.n2 + (layer.scalars is not None)
            for name, layer in kronecker_layers(model).items()}


def params_with(model: nn.Module, sizes: dict[str, int]) -> int:
    """The parameter count (Table-1 convention) of `model` extracted at per-layer `sizes`."""
    per = factor_params(model)
    layers = kronecker_layers(model)
    return count_params(model) - sum((layers[n].factors - k) * per[n] for n, k in sizes.items())


@torch.no_grad()
def sensitivity(model: nn.Module, tokens: torch.Tensor, ks: Sequence[int], batch_size: int = 8,
                progress: bool = False) -> dict[str, dict[int, float]]:
    """{layer: {k: loss increase}} on `tokens`, one layer at k at a time (the full model's loss is 0)."""
    set_active_factors(model, None)
    base = mean_loss(model, tokens, batch_size)
    layers = kronecker_layers(model)
    out = {}
    for name in tqdm(layers, desc="sensitivity", disable=not progress, unit="layer"):
        out[name] = {}
        for k in ks:
            if k == layers[name].factors:
                out[name][k] = 0.0
                continue
            set_active_factors(model, {name: k})
            out[name][k] = mean_loss(model, tokens, batch_size) - base
            set_active_factors(model, {name: None})
    return out


def choose(increase: dict[str, dict[int, float]], per_factor: dict[str, int], budget: int) -> dict[str, int] | None:
    """One k per layer with Σ k·per_factor ≤ `budget` (factor parameters) and the smallest Σ increase:
    a multiple-choice knapsack solved exactly by dynamic programming over parameters in units of
    the factors' greatest common divisor. None when even the smallest k everywhere does not fit."""
    names = list(increase)
    unit = math.gcd(*per_factor.values())
    cap = budget // unit
    best: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}  # units used -> (summed increase, ks so far)
    for name in names:
        step: dict[int, tuple[float, list[int]]] = {}
        w = per_factor[name] // unit
        for used, (cost, picks) in best.items():
            for k, inc in increase[name].items():
                u = used + k * w
                if u <= cap and (u not in step or cost + inc < step[u][0]):
                    step[u] = (cost + inc, picks + [k])
        best = step
        if not best:
            return None
    _, picks = min(best.values(), key=lambda v: v[0])
    return dict(zip(names, picks))


def pareto(model: nn.Module, increase: dict[str, dict[int, float]], validation: torch.Tensor,
           budgets: Sequence[int] | None = None, batch_size: int = 8, progress: bool = False) -> list[dict]:
    """Rows, one per budget (model parameters, Table-1 convention; default: the uniform sizes of
    the k in `increase` (from `sensitivity`) and the midpoints between them): the Mix'n'Match
    choice and the uniform k at that budget, each with its parameters and validation loss."""
    ks = sorted(next(iter(increase.values())))
    per = factor_params(model)
    layers = list(increase)
    uniform = {k: params_with(model, dict.fromkeys(layers, k)) for k in ks}
    if budgets is None:
        sizes = list(uniform.values())
        budgets = sorted(set(sizes) | {(a + b) // 2 for a, b in zip(sizes, sizes[1:])})
    fixed = count_params(model) - sum(kronecker_layers(model)[n].factors * per[n] for n in layers)
    rows = []
    for budget in tqdm(budgets, desc="budgets", disable=not progress):
        picks = choose(increase, per, budget - fixed)
        row: dict = {"budget": int(budget)}
        if picks is not None:
            set_active_factors(model, picks)
            row.update(params=params_with(model, picks), val_loss=mean_loss(model, validation, batch_size),
                       predicted_increase=sum(increase[n][k] for n, k in picks.items()), per_layer=picks)
        fits = [k for k in ks if uniform[k] <= budget]
        if fits:
            k = fits[-1]
            set_active_factors(model, k)
            row.update(uniform_k=k, uniform_params=uniform[k], uniform_val_loss=mean_loss(model, validation, batch_size))
        set_active_factors(model, None)
        rows.append(row)
    return rows


def write(rows: list[dict], increase: dict[str, dict[int, float]], out: str | Path) -> Path:
    """`pareto.json` (every field), `pareto.csv` (per-layer k as one "name=k;..." column) and
    `sensitivity.json` ({layer: {k: loss increase on the calibration tokens}}) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sensitivity.json").write_text(json.dumps(increase, indent=2) + "\n")
    (out / "pareto.json").write_text(json.dumps(rows, indent=2) + "\n")
    fields = ["budget", "params", "val_loss", "predicted_increase", "uniform_k", "uniform_params", "uniform_val_loss",
              "per_layer"]
    with open(out / "pareto.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            flat = {**r, "per_layer": ";".join(f"{n}={k}" for n, k in r.get("per_layer", {}).items())}
            w.writerow({k: flat.get(k, "") for k in fields})
    return out


def sample_tokens(context: int, calibration: int, validation: int | None = None, val_documents: int = 100,
                  calibration_file: str | Path | None = None,
                  validation_file: str | Path | None = None,
                  tokenizer: TextTokenizer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration, validation) rows of `context` + 1 tokens, packed as `data=local` packs text
    (one document per paragraph, end-of-text between).

    Validation: the first `validation` tokens (None: all) of `validation_file`, or by default that
    run's validation set, the first `val_documents` paragraphs of the OpenWebText sample shipped
    with krony (held out of its training). Calibration: the first `calibration` tokens of
    `calibration_file`, or by default of the text a `data=local` run trains on (the rest of the
    sample)."""
    from krony.data.sources import TextSource, file_problem, sample_path
    from krony.data.stream import PackedBlocks

    def rows(path: str | Path, split: str, held_out: int, limit: int | None, what: str, flag: str) -> torch.Tensor:
        source = TextSource(path="text", name=None, revision=None, data_files=[str(path)], expected_files=None,
                            sample_by="paragraph")
        ds = PackedBlocks(source, context, split=split, val_documents=held_out, shuffle_buffer=0, epochs=1,
                          tokenizer=tokenizer)
        n = None if limit is None else max(1, limit // context)
        got = list(itertools.islice(ds, n))
        if n is not None and len(got) < n:
            raise ValueError(f"{what} holds {len(got) * context:,} tokens at context {context}: "
                             f"ask for at most that many ({flag}-tokens)")
        if not got:
            raise ValueError(f"{what} holds no block of {context + 1} tokens: lower --context")
        return torch.stack(got)

    def from_file(path: str | Path, limit: int | None, flag: str) -> torch.Tensor:
        problem = file_problem(path)
        if problem:
            raise ValueError(f"{flag}-file {path} {problem}: give a UTF-8 text file")
        return rows(path, "train", 0, limit, str(path), flag)

    sample = sample_path()
    if calibration_file is not None:
        cal = from_file(calibration_file, calibration, "--calibration")
    else:
        cal = rows(sample, "train", val_documents, calibration, "the shipped sample's training text", "--calibration")
    if validation_file is not None:
        val = from_file(validation_file, validation, "--validation")
    else:
        val = rows(sample, "val", val_documents, validation, f"the sample's {val_documents} held-out paragraphs",
                   "--validation")
    return cal, val


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m krony.mixnmatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a nested model: run directory, model directory or hub name")
    p.add_argument("--out", required=True, help="directory for pareto.json and pareto.csv")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="factor counts each layer may take")
    p.add_argument("--budgets", type=int, nargs="*", default=None,
                   help="model sizes (Table-1 parameters); default: the uniform sizes and the midpoints")
    p.add_argument("--context", type=int, default=None, help="tokens per row (default: the model's block size)")
    p.add_argument("--calibration-tokens", type=int, default=16384, help="tokens measuring each layer's sensitivity")
    p.add_argument("--calibration-file", default=None,
                   help="text file to calibrate on (default: the shipped sample's training text); use text the model "
                        "has not trained on for several epochs")
    p.add_argument("--validation-tokens", type=int, default=None, help="tokens measuring each choice (default: all)")
    p.add_argument("--validation-file", default=None,
                   help="text file to measure each choice on (default: data=local's validation set, the shipped "
                        "sample's first 100 paragraphs)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward")
    args = p.parse_args(argv)
    try:
        from krony.causal_lm import resolve_model, resolved_folder
        from krony.tokenizer import tokenizer_for

        model = resolve_model(args.model)[0].eval()
        tokenizer = tokenizer_for(resolved_folder(args.model))
        layers = kronecker_layers(model)
        if not layers:
            raise ValueError(f"{args.model} has no Kronecker layers: Mix'n'Match needs a nested model")
        too_big = [k for k in args.ks if any(k > layer.factors or k < 1 for layer in layers.values())]
        if too_big:
            raise ValueError(f"--ks {too_big}: every k must be in 1..{min(layer.factors for layer in layers.values())}")
        cal, val = sample_tokens(args.context or context_length(model), args.calibration_tokens, args.validation_tokens,
                                 calibration_file=args.calibration_file, validation_file=args.validation_file,
                                 tokenizer=tokenizer)
        increase = sensitivity(model, cal, sorted(args.ks), args.batch_size, progress=True)
        rows = pareto(model, increase, val, args.budgets, args.batch_size, progress=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = write(rows, increase, args.out)
    for r in rows:
        mix = f"{r['params']:,} params, val loss {r['val_loss']:.4f}" if "params" in r else "nothing fits"
        uni = f"k={r['uniform_k']}, val loss {r['uniform_val_loss']:.4f}" if "uniform_k" in r else "nothing fits"
        print(f"budget {r['budget']:,}: mix'n'match {mix} | uniform {uni}")
    print(f"wrote {out / 'pareto.json'}, {out / 'pareto.csv'} and {out / 'sensitivity.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
