"""`python -m krony.bench layer|model|causal-lm|data|compress`: side-by-side speed of factored and dense models.

    python -m krony.bench layer --threads 2                 # FFN pair per Table-1 scheme vs dense, CPU fp32
    python -m krony.bench layer --structure kronecker lowrank monarch --schemes 67m 81m 96m
    python -m krony.bench model --threads 2                 # training / generation tokens/s, dense vs 67m 81m 96m mf2x4
    python -m krony.bench model --device cuda --dtype bf16 --compile --batch 16 --seq-len 1024 --max-batch
    python -m krony.bench causal-lm --model <hub id | folder | .gguf> --threads 2   # dense vs each structure at 50%, 25%
    python -m krony.bench data                              # stream and memmap tokens/s per dataloader worker
    python -m krony.bench compress --threads 2              # Van Loan on GPT-2 small per scheme, vs a full SVD

Each prints a markdown table and writes the rows with a description of the machine as JSON
(`--out`). Ratios come from one run, with the candidates timed in turns.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from krony.config import MATCHES, STRUCTURE_NAMES

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

COLUMNS = {
    "layer": [("scheme", "{}"), ("structure", "{}"), ("size", "{}"), ("params", "{:,}"), ("path_fc", "{}"),
              ("path_proj", "{}"), ("dense_ms", "{:.1f}"), ("factored_ms", "{:.1f}"),
              ("speedup", "{:.2f}x"), ("bound", "{:.2f}x"), ("of_bound", "{:.0%}")],
    "model": [("model", "{}"), ("params", "{:,}"), ("train_tokens_per_sec", "{:,.0f}"), ("train_speedup", "{:.2f}x"),
              ("gen_tokens_per_sec", "{:,.1f}"), ("gen_speedup", "{:.2f}x"), ("train_step_mib", "{:,.0f}"),
              ("flops_per_token", "{:.3g}"), ("mfu", "{:.1%}"), ("max_batch", "{}")],
    "causal-lm": [("model", "{}"), ("dtype", "{}"), ("params", "{:,}"), ("train_tokens_per_sec", "{:,.0f}"),
                  ("train_speedup", "{:.2f}x"), ("flop_bound", "{:.2f}x"), ("flops_per_token", "{:.3g}")],
    "compress": [("scheme", "{}"), ("factors", "{}"), ("svd", "{}"), ("compress_s", "{:.2f}"),
                 ("per_matrix_ms", "{:.0f}"), ("full_svd_s", "{:.2f}"), ("speedup", "{:.1f}x")],
    "data": [("source", "{}"), ("workers", "{}"), ("tokens_per_sec", "{:,.0f}"), ("tokens_per_sec_per_worker", "{:,.0f}")],
}


def portable(value: Any) -> Any:
    """An argument as a results file records it: an absolute path by its file name alone (results
    are committed and shared; this machine's folders mean nothing elsewhere)."""
    if isinstance(value, list):
        return [portable(v) for v in value]
    return Path(value).name if isinstance(value, str) and Path(value).is_absolute() else value


def markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table of `rows`, with the columns present in them; None shows as '-'."""
    cols = [(k, f) for k, f in columns if any(k in r for r in rows)]
    lines = ["| " + " | ".join(k for k, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r.get(k) is None else f.format(r[k]) for k, f in cols) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m krony.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    common.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="fp32, or bf16/fp16 autocast (model)")
    common.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    common.add_argument("--rounds", type=int, default=5, help="timed calls per candidate, taken in turns")
    common.add_argument("--out", default=None, help="JSON file for the rows (default: bench-<command>.json)")
    layer = sub.add_parser("layer", parents=[common], help="FFN pair per Table-1 scheme vs the dense pair")
    layer.add_argument("--schemes", nargs="*", default=None, help="scheme names or m1xn1 (default: all of Table 1)")
    layer.add_argument("--tokens", type=int, default=1024, help="tokens per forward")
    layer.add_argument("--factors", type=int, default=1, help="Kronecker factors per matrix")
    layer.add_argument("--compile", action="store_true", help="torch.compile both pairs")
    layer.add_argument("--structure", nargs="+", default=["kronecker"], choices=list(STRUCTURE_NAMES),
                       help="structures at each scheme's budget, each timed beside the dense pair")
    layer.add_argument("--match", default="params", choices=list(MATCHES),
                       help="lowrank / monarch sized to the scheme's parameters or its Kronecker multiply-adds")
    model = sub.add_parser("model", parents=[common], help="training and generation tokens/s of whole models")
    from krony.bench.model import MODELS

    model.add_argument("--models", nargs="*", default=list(MODELS), help=f"first is the baseline; from {', '.join(MODELS)}")
    model.add_argument("--preset", default="gpt2", help="GPT-2 size the models derive from")
    model.add_argument("--n-layer", type=int, default=None, help="override the preset's blocks (quick runs)")
    model.add_argument("--batch", type=int, default=2, help="training sequences per step")
    model.add_argument("--seq-len", type=int, default=256, help="training tokens per sequence")
    model.add_argument("--gen-batch", type=int, default=1, help="sequences generated at once")
    model.add_argument("--prompt", type=int, default=32, help="prompt tokens before generation")
    model.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence")
    model.add_argument("--compile", action="store_true", help="torch.compile the models")
    model.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s for MFU (default: from the device)")
    model.add_argument("--max-batch", action="store_true", help="find the largest batch that fits (CUDA)")
    data = sub.add_parser("data", parents=[common], help="stream and memmap tokens/s per dataloader worker")
    data.add_argument("--files", nargs="*", default=None, help="text files (default: the shipped OpenWebText sample)")
    data.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="dataloader worker counts")
    data.add_argument("--block-size", type=int, default=1024, help="tokens per block")
    data.add_argument("--seconds", type=float, default=5.0, help="measuring time per setting")
    lm = sub.add_parser("causal-lm", parents=[common], help="training tokens/s of any causal LM, dense vs each structure")
    lm.add_argument("--model", required=True, help="hub id, model folder or .gguf file")
    lm.add_argument("--structures", nargs="+", default=["kronecker", "lowrank", "monarch"], help="structures to compare")
    lm.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25], help="FFN fractions kept")
    lm.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES), help="fp32 and/or autocast dtypes")
    lm.add_argument("--batch", type=int, default=1, help="training sequences per step")
    lm.add_argument("--seq-len", type=int, default=256, help="training tokens per sequence")
    comp = sub.add_parser("compress", parents=[common], help="Van Loan on GPT-2 small per scheme, vs a full SVD")
    comp.add_argument("--schemes", nargs="*", default=None, help="scheme names or m1xn1 (default: 67m 81m 96m 95m)")
    comp.add_argument("--factors", type=int, default=1, help="Kronecker factors per matrix")
    comp.add_argument("--svd", default="exact", choices=["exact", "lowrank"], help="vanloan's SVD")
    comp.add_argument("--no-reference", action="store_true", help="skip timing the full SVD")
    return p


def run(args: argparse.Namespace) -> list[dict]:
    dtype = DTYPES[args.dtype]
    if args.command == "layer":
        from krony.bench.layer import bench_layers

        return bench_layers(args.schemes, args.tokens, args.device, dtype, args.factors, args.rounds, args.compile,
                            tuple(args.structure), args.match)
    if args.command == "model":
        from krony.bench.model import bench_models
        from krony.config import GPTConfig

        config = GPTConfig.from_preset(args.preset, **({"n_layer": args.n_layer} if args.n_layer else {}))
        return bench_models(args.models, config, args.batch, args.seq_len, args.device, dtype, args.rounds,
                            args.gen_batch, args.prompt, args.new_tokens, args.compile, args.peak_flops, args.max_batch)
    if args.command == "causal-lm":
        from krony.bench.model import bench_causal_lm

        return bench_causal_lm(args.model, args.structures, args.fractions, [DTYPES[d] for d in args.dtypes],
                               args.batch, args.seq_len, args.device, args.rounds)
    if args.command == "compress":
        from krony.bench.compress import bench_compress

        return bench_compress(args.schemes, args.factors, args.svd, not args.no_reference)
    from krony.bench.data import bench_data

    return bench_data(args.files, args.workers, args.block_size, args.seconds)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    from krony.bench.timing import machine

    try:
        rows = run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(rows, COLUMNS[args.command]))
    record = {"command": args.command, "args": {k: portable(v) for k, v in vars(args).items()}, "machine": machine(args.device),
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    out = Path(args.out or f"bench-{args.command}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
