"""Command line: `python -m krony schemes`, `python -m krony compress ...`, `python -m krony publish ...`.

    python -m krony schemes                                   # Table 1 with counts and forward paths
    python -m krony schemes --structure lowrank               # low-rank (or monarch) at every Table-1 budget
    python -m krony schemes --structure monarch --match flops # ... at the Kronecker layers' multiply-adds
    python -m krony schemes --model SmolLM2-135M-Instruct.Q4_1.gguf  # any model: every structure at 50/25/12.5% FFN
    python -m krony compress --model gpt2 --scheme 81m --out runs/81m
    python -m krony compress --model gpt2 --random-weights --scheme 67m   # offline, no download
    python -m krony compress --model HuggingFaceTB/SmolLM2-135M --scheme ffn50 --structure lowrank --out runs/smol
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Sequence

import torch

from torch import nn

from krony.causal_lm import is_gpt2_preset, load_model
from krony.compression import CONVENTIONS, compress, count_params, decompress, factored_layers
from krony.sizing import model_size
from krony.config import MATCHES, PRESETS, CompressConfig, ConfigError, GPTConfig
from krony.export import save_pretrained
from krony.layers import STRUCTURES
from krony.layers.kronecker_init import INITS
from krony.model import GPT
from krony.schemes import NAMED, dims_key, path_costs
from krony.targets import dense_weight, find_targets, get_family

FRACTIONS = (0.5, 0.25, 0.125)
"""The FFN fractions `schemes --model` prints."""


def schemes_table() -> str:
    """Markdown table of every Table-1 row and `95m`: dims, parameter counts, cheapest path for the expand matrix."""
    rows = [
        "| scheme | A (expand) | B (expand) | params / matrix | model size | expand path | FLOPs vs dense |",
        "| --- | --- | --- | ---: | ---: | --- | ---: |",
    ]
    dense_size = model_size(None)
    for s in NAMED:
        m2, n2 = s.b_dims_for("expand")
        costs = path_costs(*s.a_dims, m2, n2)
        best = min(costs, key=costs.get)
        rows.append(
            f"| {s.key} | {s.a_dims} | ({m2}, {n2}) | {s.params_per_matrix():,} | {model_size(s):,} "
            f"| {best} | {costs[best] / costs['dense']:.3f} |"
        )
    rows.append(f"\nDense GPT-2 small: {dense_size:,} parameters (Table-1 convention).")
    return "\n".join(rows)


def meta_model(spec: str) -> nn.Module:
    """The model `spec` names (a GPT-2 preset, hub id, directory or .gguf file) built on the meta
    device from its config alone: shapes and counts, no weights read."""
    if is_gpt2_preset(spec):
        with torch.device("meta"):
            return GPT(GPTConfig.from_preset(spec))
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(_config(spec))


@functools.lru_cache(maxsize=4)
def _config(spec: str):
    from krony.causal_lm import load_config

    return load_config(spec)


def _size_of(layer: nn.Module) -> str:
    """A factored layer's size in a few words: A and B dims, rank, or blocks and block rank."""
    spec = {k: v for k, v in layer.spec().items() if k not in ("in_features", "out_features", "bias", "scalars")}
    if "a_dims" in spec:
        a = tuple(spec.pop("a_dims"))
        named = next((f" ({s.name})" for s in NAMED if s.name and s.a_dims == a), "")
        return f"A {dims_key(a)}{named}, B {dims_key(layer.b_dims)}" + (f", r={spec['factors']}" if spec["factors"] > 1 else "")
    return ", ".join(f"{k}={v}" for k, v in spec.items())


def model_schemes_table(spec: str, fractions: Sequence[float] = FRACTIONS, factors: int = 1) -> str:
    """Markdown table: every structure at each FFN fraction of the model `spec`, its size for the
    first expand matrix, the FFN kept and the model's count under each convention."""
    dense = meta_model(spec)
    targets = find_targets(dense)
    ffn = sum(t.in_features * t.out_features for t in targets)
    counts = {c: count_params(dense, c) for c in CONVENTIONS}
    family = get_family(dense)
    head = "tied" if dense.get_output_embeddings() is not None and dense.get_output_embeddings().weight is \
        dense.get_input_embeddings().weight else "untied"
    lines = [f"{spec}: family {type(dense).__name__} ({family.blocks}), {len(targets)} FFN matrices "
             f"({targets[0].out_features} x {targets[0].in_features} expand), {ffn:,} FFN parameters of "
             f"{counts['table1']:,} ({ffn / counts['table1']:.1%}), {head} output embedding", "",
             "| FFN kept | structure | expand matrix | FFN parameters | model (table1) | vs dense "
             "| no_output_embedding | non_embedding |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines.append(f"| 100% | dense | {targets[0].out_features} x {targets[0].in_features} | {ffn:,} "
                 f"| {counts['table1']:,} | 1.000 | {counts['no_output_embedding']:,} | {counts['non_embedding']:,} |")
    for fraction in fractions:
        for structure in STRUCTURES:
            model = meta_model(spec)
            try:
                compress(model, structure=structure, ffn_fraction=fraction, factors=factors, init="random")
            except ValueError as e:
                lines.append(f"| {fraction:.1%} | {structure} | {e} | | | | | |")
                continue
            layers = factored_layers(model)
            kept = sum(m.num_params() - (m.bias.numel() if m.bias is not None else 0) for m in layers.values())
            n = {c: count_params(model, c) for c in CONVENTIONS}
            lines.append(f"| {fraction:.1%} | {structure} | {_size_of(layers[targets[0].name])} | {kept:,} "
                         f"({kept / ffn:.1%}) | {n['table1']:,} | {n['table1'] / counts['table1']:.3f} "
                         f"| {n['no_output_embedding']:,} | {n['non_embedding']:,} |")
    return "\n".join(lines)


def ffn_multiply_adds(model: GPT) -> int:
    """Multiply-adds per token of a model's factored FFN layers (their forward paths)."""
    return sum(layer.multiply_adds() for layer in factored_layers(model).values())


def structure_table(structure: str, match: str = "params") -> str:
    """Markdown table of `structure` sized to every scheme's budget (`match`: its parameter count
    or its Kronecker layers' multiply-adds): the size, the model's parameters and FFN
    multiply-adds per token beside the Kronecker model's, and the expand matrix's cost against dense."""
    rows = [
        f"| budget | Kronecker model | {structure} (expand) | model size | off by | FFN multiply-adds (Kronecker) "
        f"| off by | expand multiply-adds vs dense |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in NAMED:
        with torch.device("meta"):
            kron = compress(GPT(GPTConfig()), s.key, init="random")
            model = compress(GPT(GPTConfig()), s.key, init="random", structure=structure, match=match)
        fc = next(iter(factored_layers(model).values()))
        size = ", ".join(f"{k}={v}" for k, v in fc.spec().items() if k not in ("in_features", "out_features", "bias"))
        got, target = count_params(model), count_params(kron)
        madds, kron_madds = ffn_multiply_adds(model), ffn_multiply_adds(kron)
        rows.append(f"| {s.key} | {target:,} | {size} | {got:,} | {(got - target) / target:+.2%} "
                    f"| {madds:,} ({kron_madds:,}) | {(madds - kron_madds) / kron_madds:+.2%} "
                    f"| {fc.multiply_adds() / (fc.in_features * fc.out_features):.3f} |")
    return "\n".join(rows)


def _load(args: argparse.Namespace) -> nn.Module:
    if not args.random_weights:
        return load_model(args.model)
    if not is_gpt2_preset(args.model):
        raise ValueError(f"--random-weights builds a GPT-2 preset ({', '.join(PRESETS)}), not {args.model!r}")
    torch.manual_seed(args.seed)
    return GPT(GPTConfig.from_preset(args.model))


@torch.no_grad()
def _relative_error(before: dict[str, torch.Tensor], model: nn.Module) -> float:
    """Mean over compressed matrices of ||W - W_hat||_F / ||W||_F."""
    errs = [((before[n] - layer.to_dense()).norm() / before[n].norm()).item() for n, layer in factored_layers(model).items()]
    return sum(errs) / len(errs)


def _logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    return model(idx)[0]  # krony's GPT: (logits, loss); transformers: its output's first field


def _init_options(args: argparse.Namespace) -> dict:
    if args.init == "vanloan":
        return {"normalize": args.normalize, "svd": args.svd}
    if args.init == "prune":
        return {"fill": args.fill}
    return {}


def cmd_compress(args: argparse.Namespace) -> int:
    layers = args.layers if args.layers in ("all", "odd", "even") else [int(i) for i in args.layers.split(",")]
    try:  # a bad scheme, fraction or init fails before the model loads
        cfg = CompressConfig(structure=args.structure, scheme=args.scheme, init=args.init, factors=args.factors,
                             scalars=args.scalars, layers=layers, match=args.match, init_options=_init_options(args))
    except ConfigError as e:
        raise ValueError(str(e)) from None
    model = _load(args).eval()
    dense_counts = {c: count_params(model, c) for c in CONVENTIONS}
    family = get_family(model)
    weights = {t.name: dense_weight(model.get_submodule(t.name), family.transposed).detach().clone()
               for t in find_targets(model)}
    torch.manual_seed(args.seed)
    c = model.config
    context = getattr(c, "block_size", None) or getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", 64)
    idx = torch.randint(0, c.vocab_size, (1, min(64, context)))
    with torch.no_grad():
        logits_before = _logits(model, idx)
    compress(model, config=cfg, progress=True)
    with torch.no_grad():
        logits_after = _logits(model, idx)
    first = next(iter(factored_layers(model).values()))
    sized = f", {cfg.match}-matched to {cfg.scheme}" if cfg.structure != "kronecker" and cfg.scheme is not None else ""
    print(f"{args.scheme}: structure {args.structure} ({_size_of(first)} for the first matrix{sized}), init {args.init}, "
          f"factors {args.factors}, scalars {args.scalars}")
    for c in CONVENTIONS:
        n = count_params(model, c)
        print(f"  parameters ({c}): {n:,}  (dense {dense_counts[c]:,}, {n / dense_counts[c]:.1%})")
    print(f"  FFN weight relative error (mean over matrices): {_relative_error(weights, model):.4f}")
    print(f"  max |logits change| on one random sequence: {(logits_after - logits_before).abs().max().item():.4f}")
    tokenizer = _tokenizer(args) if args.out or args.dense_out else None
    if args.out:
        print(f"  saved compressed model to {save_pretrained(model, args.out, tokenizer)}")
    if args.dense_out:
        print(f"  saved dense (decompressed) model to {save_pretrained(decompress(model), args.dense_out, tokenizer)}")
    return 0


def _tokenizer(args: argparse.Namespace):
    """The model's tokenizer to save beside an export (krony's GPT writes GPT-2's itself)."""
    if args.random_weights or is_gpt2_preset(args.model):
        return None
    from krony.causal_lm import load_tokenizer

    try:
        return load_tokenizer(args.model)
    except (OSError, ValueError):
        return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m krony", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("schemes", help="print Table 1 with parameter counts and forward paths")
    sc.add_argument("--structure", default="kronecker", choices=list(STRUCTURES),
                    help="lowrank / monarch: that structure sized to every scheme's budget")
    sc.add_argument("--match", default="params", choices=list(MATCHES),
                    help="size lowrank / monarch to the scheme's parameters or to its Kronecker multiply-adds")
    sc.add_argument("--model", help="any model (hub id, directory, .gguf file, GPT-2 preset): every structure "
                    "at 50%%, 25%% and 12.5%% of its FFN parameters, read from its config alone")
    sc.add_argument("--factors", type=int, default=1, help="--model: Kronecker products per matrix (r)")
    c = sub.add_parser("compress", help="compress a model and report its size")
    c.add_argument("--model", default="gpt2", help="hub name, local directory, weights file or .gguf file (default gpt2)")
    c.add_argument("--random-weights", action="store_true", help=f"random weights of a preset instead of loading ({', '.join(PRESETS)})")
    c.add_argument("--seed", type=int, default=0, help="seed for --random-weights and the probe sequence")
    c.add_argument("--scheme", default="81m", help="ffnNN (keep NN%% of the FFN parameters, any model), a Table-1 name "
                   "or A dims of the expand matrices as m1xn1 (see `python -m krony schemes`)")
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
    c.add_argument("--dense-out", help="directory to save the decompressed model (the family's dense layout)")
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
            if args.model:
                print(model_schemes_table(args.model, factors=args.factors))
            else:
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
