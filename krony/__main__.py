"""Command line: `python -m krony schemes`, `python -m krony compress ...`, `python -m krony publish ...`.

    python -m krony schemes                                   # Table 1 with counts and forward paths
    python -m krony schemes --structure lowrank               # low-rank (or monarch) at every Table-1 budget
    python -m krony schemes --structure monarch --match flops # ... at the Kronecker layers' multiply-adds
    python -m krony compress --model gpt2 --scheme 81m --out runs/81m
    python -m krony compress --model gpt2 --random-weights --scheme 67m   # offline, no download
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

from krony.compression import CONVENTIONS, compress, count_params, decompress, factored_layers, model_size
from krony.config import MATCHES, PRESETS, GPTConfig
from krony.layers.kronecker_init import INITS
from krony.layers import STRUCTURES
from krony.layers.kronecker import path_costs
from krony.model import GPT
from krony.schemes import NAMED, get_scheme


def schemes_table() -> str:
    """Markdown table of every Table-1 row and `95m`: dims, parameter counts, cheapest path for `c_fc`."""
    rows = [
        "| scheme | A (c_fc) | B (c_fc) | params / matrix | model size | c_fc path | FLOPs vs dense |",
        "| --- | --- | --- | ---: | ---: | --- | ---: |",
    ]
    dense_size = model_size(None)
    for s in NAMED:
        m2, n2 = s.b_dims_for("c_fc")
        costs = path_costs(*s.a_dims, m2, n2)
        best = min(costs, key=costs.get)
        rows.append(
            f"| {s.key} | {s.a_dims} | ({m2}, {n2}) | {s.params_per_matrix():,} | {model_size(s):,} "
            f"| {best} | {costs[best] / costs['dense']:.3f} |"
        )
    rows.append(f"\nDense GPT-2 small: {dense_size:,} parameters (Table-1 convention).")
    return "\n".join(rows)


def ffn_multiply_adds(model: GPT) -> int:
    """Multiply-adds per token of a model's factored FFN layers (their forward paths)."""
    return sum(layer.multiply_adds() for layer in factored_layers(model).values())


def structure_table(structure: str, match: str = "params") -> str:
    """Markdown table of `structure` sized to every scheme's budget (`match`: its parameter count
    or its Kronecker layers' multiply-adds): the size, the model's parameters and FFN
    multiply-adds per token beside the Kronecker model's, and c_fc's cost against dense."""
    rows = [
        f"| budget | Kronecker model | {structure} (c_fc) | model size | off by | FFN multiply-adds (Kronecker) "
        f"| off by | c_fc multiply-adds vs dense |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in NAMED:
        with torch.device("meta"):
            kron = compress(GPT(GPTConfig()), s.key, init="random")
            model = compress(GPT(GPTConfig()), s.key, init="random", structure=structure, match=match)
        fc = model.transformer.h[0].mlp.c_fc
        size = ", ".join(f"{k}={v}" for k, v in fc.spec().items() if k not in ("in_features", "out_features", "bias"))
        got, target = count_params(model), count_params(kron)
        madds, kron_madds = ffn_multiply_adds(model), ffn_multiply_adds(kron)
        rows.append(f"| {s.key} | {target:,} | {size} | {got:,} | {(got - target) / target:+.2%} "
                    f"| {madds:,} ({kron_madds:,}) | {(madds - kron_madds) / kron_madds:+.2%} "
                    f"| {fc.multiply_adds() / (fc.in_features * fc.out_features):.3f} |")
    return "\n".join(rows)


def _load(args: argparse.Namespace) -> GPT:
    if args.random_weights:
        torch.manual_seed(args.seed)
        return GPT(GPTConfig.from_preset(args.model))
    return GPT.from_pretrained(args.model)


@torch.no_grad()
def _relative_error(before: dict[str, torch.Tensor], model: GPT) -> float:
    """Mean over compressed matrices of ||W - W_hat||_F / ||W||_F."""
    errs = [((before[n] - layer.to_dense()).norm() / before[n].norm()).item() for n, layer in factored_layers(model).items()]
    return sum(errs) / len(errs)


def cmd_compress(args: argparse.Namespace) -> int:
    scheme = get_scheme(args.scheme)  # fail on a bad name before loading anything
    model = _load(args).eval()
    dense_counts = {c: count_params(model, c) for c in CONVENTIONS}
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith(("mlp.c_fc", "mlp.c_proj"))}
    idx = torch.randint(0, model.config.vocab_size, (1, min(64, model.config.block_size)))
    logits_before, _ = model(idx)
    init_kwargs = {}
    if args.init == "vanloan":
        init_kwargs = {"normalize": args.normalize, "svd": args.svd}
    elif args.init == "prune":
        init_kwargs = {"fill": args.fill}
    layers = args.layers if args.layers in ("all", "odd", "even") else [int(i) for i in args.layers.split(",")]
    compress(model, scheme, args.init, args.factors, args.scalars, layers, progress=True, structure=args.structure,
             match=args.match, **init_kwargs)
    logits_after, _ = model(idx)
    fc = model.transformer.h[layers[0] if isinstance(layers, list) else 0].mlp.c_fc
    size = "" if args.structure == "kronecker" else f" ({args.match}-matched: {fc.extra_repr()})"
    print(f"scheme {scheme.key}, structure {args.structure}{size}, init {args.init}, factors {args.factors}, scalars {args.scalars}")
    for c in CONVENTIONS:
        n = count_params(model, c)
        print(f"  parameters ({c}): {n:,}  (dense {dense_counts[c]:,}, {n / dense_counts[c]:.1%})")
    print(f"  FFN weight relative error (mean over matrices): {_relative_error(weights, model):.4f}")
    print(f"  max |logits change| on one random sequence: {(logits_after - logits_before).abs().max().item():.4f}")
    if args.out:
        print(f"  saved compressed model to {model.save_pretrained(args.out)}")
    if args.dense_out:
        print(f"  saved dense (decompressed) model to {decompress(model).save_pretrained(args.dense_out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m krony", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("schemes", help="print Table 1 with parameter counts and forward paths")
    sc.add_argument("--structure", default="kronecker", choices=list(STRUCTURES),
                    help="lowrank / monarch: that structure sized to every scheme's budget")
    sc.add_argument("--match", default="params", choices=list(MATCHES),
                    help="size lowrank / monarch to the scheme's parameters or to its Kronecker multiply-adds")
    c = sub.add_parser("compress", help="compress a GPT-2 checkpoint and report its size")
    c.add_argument("--model", default="gpt2", help="hub name, local directory or weights file (default gpt2)")
    c.add_argument("--random-weights", action="store_true", help=f"random weights of a preset instead of loading ({', '.join(PRESETS)})")
    c.add_argument("--seed", type=int, default=0, help="seed for --random-weights and the probe sequence")
    c.add_argument("--scheme", default="81m", help="Table-1 name or A dims of c_fc as m1xn1 (see `python -m krony schemes`)")
    c.add_argument("--init", default="vanloan", choices=sorted(INITS), help="factor initialisation")
    c.add_argument("--structure", default="kronecker", choices=list(STRUCTURES),
                   help="lowrank / monarch: sized to the scheme's budget (init vanloan: their optimal projection)")
    c.add_argument("--match", default="params", choices=list(MATCHES),
                   help="lowrank / monarch: the scheme's parameters or its Kronecker multiply-adds")
    c.add_argument("--factors", type=int, default=1, help="Kronecker products per matrix (r)")
    c.add_argument("--scalars", action="store_true", help="learnable scalar per factor")
    c.add_argument("--layers", default="all", help="all, odd, even, or comma-separated block indices")
    c.add_argument("--normalize", action="store_true", help="vanloan: adaptive normalisation ||W_hat|| = ||W||")
    c.add_argument("--svd", default="exact", choices=["exact", "lowrank"], help="vanloan: SVD method")
    c.add_argument("--fill", type=float, default=0.0, help="prune: value of the other entries of B (paper: 0 or 0.1)")
    c.add_argument("--out", help="directory to save the compressed model (krony layout)")
    c.add_argument("--dense-out", help="directory to save the decompressed model (HF GPT-2 layout)")
    pub = sub.add_parser("publish", help="write a model folder with a model card and upload it to the hub")
    pub.add_argument("source", help="a run directory (its export/ and records) or a model directory")
    pub.add_argument("--repo", required=True, help="hub repository, org/name")
    pub.add_argument("--private", action="store_true", help="create the repository private")
    pub.add_argument("--dry-run", action="store_true", help="only write the folder (model, tokenizer, code, README.md)")
    pub.add_argument("--out", help="where to write the folder (default: <run dir>/publish-<name>)")
    pub.add_argument("--allow-random-teacher", action="store_true",
                     help="publish a run distilled from a random teacher (a smoke run); its card says so")
    return p


def cmd_publish(args: argparse.Namespace) -> int:
    from krony.publish import prepare, upload

    folder = prepare(args.source, args.repo, args.out, allow_random_teacher=args.allow_random_teacher)
    print(f"wrote {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return 0
    print(f"uploaded: {upload(folder, args.repo, args.private)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "schemes":
            print(schemes_table() if args.structure == "kronecker" else structure_table(args.structure, args.match))
            return 0
        if args.command == "publish":
            return cmd_publish(args)
        return cmd_compress(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
