"""`python -m krony.data prepare ...` (tokenise into memmaps), `python -m krony.data throughput ...`
and `python -m krony.data fetch-eval ...` (the evaluation sets as local files).

    python -m krony.data prepare --out data/openwebtext                       # OpenWebText from the hub
    python -m krony.data prepare --out data/sample --files krony/data/samples/openwebtext_sample.txt
    python -m krony.data prepare --out data/owt-smollm2 --tokenizer HuggingFaceTB/SmolLM2-135M   # a teacher's tokenizer
    python -m krony.data throughput --files krony/data/samples/openwebtext_sample.txt --workers 1 2
    python -m krony.data fetch-eval --out data/eval                            # WikiText, LAMBADA: data_dir=data/eval
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from krony.data.sources import TextSource
from krony.data.stream import stream_throughput


def source_from_args(args: argparse.Namespace) -> TextSource:
    """Local files (--files, format from --format) or the hub dataset (--path/--name/--revision)."""
    if args.files:
        return TextSource(path=args.format, name=None, revision=None, data_files=args.files, expected_files=None,
                          text_field=args.text_field)
    return TextSource(path=args.path, name=args.name, revision=args.revision, text_field=args.text_field,
                      expected_files=args.expected_files)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m krony.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("prepare", "tokenise a source into train.bin / val.bin"), ("throughput", "measure the stream's tokens/s")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--files", nargs="*", help="local files or globs (default: the hub dataset)")
        c.add_argument("--format", default="text", choices=["text", "json", "parquet"], help="format of --files")
        c.add_argument("--path", default=TextSource.path, help="hub dataset id")
        c.add_argument("--name", default=TextSource.name, help="hub dataset config")
        c.add_argument("--revision", default=TextSource.revision, help="hub commit to pin")
        c.add_argument("--expected-files", type=int, default=TextSource.expected_files, help="file-count check for the hub source")
        c.add_argument("--text-field", default="text", help="column with the document text")
        c.add_argument("--tokenizer", default=None, help="the teacher whose tokenizer to use (hub id, folder or "
                       ".gguf file; the run's model.teacher); default: GPT-2's BPE")
    prep = sub.choices["prepare"]
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--val-documents", type=int, default=4000, help="documents at the start of file 0 held out")
    prep.add_argument("--workers", type=int, default=0, help="tokeniser processes (0: one per CPU)")
    fetch = sub.add_parser("fetch-eval", help="write WikiText-103, WikiText-2 and LAMBADA as the local files of data_dir=")
    fetch.add_argument("--out", required=True, help="output directory (then: python -m krony.eval ... data_dir=<out>)")
    fetch.add_argument("--splits", nargs="+", default=["test"], choices=["test", "validation"],
                       help="WikiText splits to write (LAMBADA has only test)")
    thr = sub.choices["throughput"]
    thr.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="dataloader worker counts to try")
    thr.add_argument("--block-size", type=int, default=1024, help="tokens per block")
    thr.add_argument("--seconds", type=float, default=10.0, help="measuring time per setting")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fetch-eval":
            from krony.eval.data import fetch_eval

            files = fetch_eval(args.out, args.splits)
            print(f"wrote {len(files)} files; evaluate with data_dir={args.out}")
            return 0
        from krony.tokenizer import tokenizer_for

        source, tokenizer = source_from_args(args), tokenizer_for(args.tokenizer)
        if args.command == "prepare":
            from krony.data.memmap import prepare

            meta = prepare(source, args.out, val_documents=args.val_documents, workers=args.workers, tokenizer=tokenizer)
            print(json.dumps({k: meta[k] for k in ("train_tokens", "val_tokens")}))
        else:
            for w in args.workers:
                print(json.dumps(stream_throughput(source, w, args.block_size, args.seconds, tokenizer)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
